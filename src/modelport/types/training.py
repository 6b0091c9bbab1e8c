"""Training wire models: datasets, trainers, runs (jobs) and their progress.

These are the shapes the training API returns and the Python client parses, so the client
and server cannot drift apart. A *run* is one training job and its experiment record: what
went in (dataset version, trainer, hyperparameters, preprocessing, split, seed, code version),
how it went (status, per-epoch metrics, logs) and what came out (metrics, a model version).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelport.types.admin import NAME_PATTERN

DatasetFormat = Literal["csv", "parquet", "jsonl", "npz", "zip", "builtin"]
DatasetKind = Literal["tabular", "text", "image"]
Task = Literal["classification", "regression"]


# --- datasets -----------------------------------------------------------------------------


class ColumnInfo(BaseModel):
    """One column of a dataset as inferred at upload."""

    name: str
    dtype: Literal["numeric", "categorical", "text", "image", "label"]
    missing: int = Field(default=0, description="Rows where the value is missing.")
    distinct: int | None = Field(default=None, description="Distinct values (categorical/label).")
    shape: list[int] | None = Field(default=None, description="Per-row shape (images).")


class DatasetSchema(BaseModel):
    kind: DatasetKind
    task: Task | None = Field(default=None, description="From the target's type; null: none.")
    target: str | None = None
    columns: list[ColumnInfo] = Field(default_factory=list)
    classes: list[str] | None = Field(default=None, description="Target classes (sorted).")


class CreateDataset(BaseModel):
    """Register an uploaded file (``POST /api/artifacts`` first) as a new dataset version."""

    model_config = ConfigDict(extra="forbid")

    artifact_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    filename: str = Field(min_length=1, max_length=255)
    name: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="Dataset name. Default: the file's stem."
    )
    format: DatasetFormat | None = Field(default=None, description="Default: from filename.")
    target: str | None = Field(default=None, description="Target column (tabular/text).")
    task: Task | None = Field(default=None, description="Default: inferred from the target.")
    text_column: str | None = Field(default=None, description="JSONL: the text field.")
    description: str | None = None


class DatasetInfo(BaseModel):
    name: str
    version: int
    format: DatasetFormat
    filename: str
    sha256: str | None = Field(default=None, description="Null for built-in datasets.")
    size: int = 0
    rows: int
    dataset_schema: DatasetSchema = Field(alias="schema")
    description: str = ""
    owner: str | None = Field(default=None, description="Owning tenant; null: built-in.")
    builtin: bool = False
    created_at: datetime

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class DatasetDetail(DatasetInfo):
    versions: list[DatasetInfo] = Field(default_factory=list)


class DatasetPreview(BaseModel):
    name: str
    version: int
    columns: list[str]
    rows: list[dict[str, Any]] = Field(description="JSON values; images as nested lists.")


# --- trainers -----------------------------------------------------------------------------


class TrainerInfo(BaseModel):
    name: str
    description: str
    kinds: list[DatasetKind] = Field(description="Dataset kinds it accepts.")
    tasks: list[Task]
    epochs: bool = Field(description="Trains in epochs (progress, checkpoints, resume).")
    params_schema: dict[str, Any] = Field(description="JSON schema of its hyperparameters.")


# --- runs -----------------------------------------------------------------------------------


class PreprocessSpec(BaseModel):
    """Preprocessing declared per job, fitted on the training split, saved with the model."""

    model_config = ConfigDict(extra="forbid")

    numeric: Literal["standardize", "normalize", "none"] = "standardize"
    categorical: Literal["onehot", "ordinal"] = "onehot"
    missing: Literal["mean", "median", "zero", "drop"] = Field(
        default="mean",
        description="Numeric gaps; 'drop' drops training rows, serving imputes the mean.",
    )
    max_categories: int = Field(default=50, ge=1, le=10_000)
    text: Literal["tokens", "minilm"] = Field(
        default="tokens", description="tokens: word vocabulary; minilm: MiniLM sentence embeddings."
    )
    lowercase: bool = True
    vocab_size: int = Field(default=20_000, ge=10, le=1_000_000)
    max_length: int = Field(default=128, ge=1, le=4096)
    image_scale: Literal["max", "standardize", "none"] = Field(
        default="max", description="max: divide by the training split's maximum pixel value."
    )


class SplitSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    validation: float = Field(default=0.15, ge=0.0, lt=1.0)
    test: float = Field(default=0.15, ge=0.0, lt=1.0)
    seed: int = 0
    stratify: bool = Field(default=True, description="Classification: keep class shares.")
    folds: int | None = Field(default=None, ge=2, le=20, description="Also k-fold CV on train.")

    @model_validator(mode="after")
    def _fractions(self) -> SplitSpec:
        if self.validation + self.test >= 0.9:
            raise ValueError("validation + test must leave at least 10 % for training")
        return self


class TrainRequest(BaseModel):
    """Start a training run (``POST /api/runs``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    dataset: str = Field(pattern=NAME_PATTERN)
    dataset_version: int | None = Field(default=None, ge=1, description="Default: newest.")
    trainer: str
    params: dict[str, Any] = Field(default_factory=dict, description="Trainer hyperparameters.")
    preprocessing: PreprocessSpec = Field(default_factory=PreprocessSpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    seed: int = 0
    model_name: str = Field(pattern=NAME_PATTERN, description="Registry model the result joins.")
    register_model: bool = Field(
        default=True, description="Register the result as a model version."
    )
    description: str | None = None


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}


class RunProgress(BaseModel):
    epoch: int = 0
    epochs: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="Latest epoch's.")
    resumed_from_epoch: int | None = None


class RunInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: int
    status: RunStatus
    model_name: str
    dataset: str
    dataset_version: int
    trainer: str
    params: dict[str, Any] = Field(description="Validated, with defaults filled in.")
    preprocessing: PreprocessSpec
    split: SplitSpec
    seed: int
    owner: str | None = None
    progress: RunProgress = Field(default_factory=RunProgress)
    metrics: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Final metrics by split: validation, test, cv."
    )
    error: str | None = None
    model_version: int | None = Field(default=None, description="The registered result.")
    code_version: str = Field(description="modelport version (+ git commit when known).")
    description: str = ""
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class EpochMetrics(BaseModel):
    epoch: int
    metrics: dict[str, float]
    at: datetime


class RunArtifact(BaseModel):
    name: str = Field(description="e.g. model bundle, checkpoint")
    sha256: str | None = None
    size: int = 0


class RunDetail(RunInfo):
    epochs: list[EpochMetrics] = Field(default_factory=list)
    artifacts: list[RunArtifact] = Field(default_factory=list)
    lineage: dict[str, Any] = Field(default_factory=dict)


class RunEvent(BaseModel):
    """One progress event, as stored and as streamed over SSE (``event: <type>``)."""

    seq: int
    type: Literal["status", "started", "epoch", "log", "metrics", "done"]
    at: datetime
    data: dict[str, Any] = Field(default_factory=dict)


class RunComparison(BaseModel):
    runs: list[RunDetail]
    params: dict[str, list[Any]] = Field(description="Each param: its value per run (in order).")
    metrics: dict[str, list[Any]] = Field(
        description="'split.metric' (e.g. test.accuracy): its value per run (in order)."
    )
