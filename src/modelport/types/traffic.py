"""Wire models of traffic management (canary, shadow, promote, rollback) and pipelines.

Shared by the admin API (``api/admin/traffic.py``, ``api/admin/pipelines.py``) and the client,
so the two cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from modelport.types.admin import NAME_PATTERN, Signature, TensorSpec

# --- traffic ------------------------------------------------------------------------------


class TrafficSpec(BaseModel):
    """Body of ``PUT /api/models/{name}/traffic``: how a model's requests are split.

    ``weights`` gives versions other than the stable one a percentage of the requests; the
    stable deployment gets the rest. A version without a deployment gets its own
    (``<model>.v<version>``, configured like the stable one) before any traffic moves to it.
    An empty body sends everything back to the stable deployment and stops shadowing.
    """

    model_config = ConfigDict(extra="forbid")

    weights: dict[int, int] = Field(
        default_factory=dict, description="Version → percent of requests (0-100, sum ≤ 100)."
    )
    shadow: int | None = Field(
        default=None, ge=1, description="Version receiving a copy of every request."
    )


class PromoteSpec(BaseModel):
    """Body of ``POST /api/models/{name}/promote``."""

    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(
        default=None, ge=1, description="Version to promote; default: the current canary."
    )


class RouteEntry(BaseModel):
    """One deployment in a model's traffic split."""

    deployment: str
    version: int
    weight: int = Field(description="Percent of requests.")
    state: str = Field(description="The deployment's state (ready, loading, failed, ...).")


class TrafficStatus(BaseModel):
    """A model's traffic: the deployments serving it and their shares."""

    model: str
    stable: str = Field(description="The deployment that gets the requests no weight claims.")
    routes: list[RouteEntry]
    shadow: RouteEntry | None = None
    previous: str | None = Field(default=None, description="What rollback returns to.")
    shadow_dropped: int = Field(
        default=0, description="Shadow copies skipped because too many were in flight."
    )


# --- pipelines ----------------------------------------------------------------------------


class PipelineKind(StrEnum):
    SEQUENCE = "sequence"
    ENSEMBLE_AVERAGE = "ensemble-average"
    ENSEMBLE_VOTE = "ensemble-vote"
    SWITCH = "switch"


Op = Literal["==", "!=", "<", "<=", ">", ">="]


class Condition(BaseModel):
    """When a switch takes a step: a request parameter, or one column of an input per row."""

    model_config = ConfigDict(extra="forbid")

    parameter: str | None = Field(default=None, description="Request parameter to test.")
    input: str | None = Field(default=None, description="Input tensor to test, row by row.")
    index: int = Field(default=0, ge=0, description="Column of the input's row (flattened).")
    op: Op = "=="
    value: float | str | bool


class StepSpec(BaseModel):
    """One step: a deployment (or another pipeline) by name."""

    model_config = ConfigDict(extra="forbid")

    deployment: str = Field(pattern=NAME_PATTERN)
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="Sequence: this step's input ← an earlier output (or pipeline input) name.",
    )
    when: Condition | None = Field(
        default=None, description="Switch: take this step when true (the last step: default)."
    )


class PipelineSpec(BaseModel):
    """Body of ``POST /api/pipelines``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    kind: PipelineKind = PipelineKind.SEQUENCE
    steps: list[StepSpec] = Field(min_length=1, max_length=32)
    outputs: list[str] = Field(
        default_factory=list,
        description="Ensembles: the outputs to combine (default: every float output for "
        "average, every other output for vote, that all steps share).",
    )
    description: str = ""
    visibility: Literal["private", "shared", "public"] = Field(
        default="private",
        description="Who may see and call it, as for models (shared/public: every step must "
        "be visible to that audience).",
    )
    tenants: list[str] = Field(default_factory=list, description="With 'shared': who.")


class PipelineInfo(BaseModel):
    """A pipeline as the API shows it."""

    name: str
    kind: PipelineKind
    steps: list[StepSpec]
    outputs: list[str] = Field(default_factory=list)
    description: str = ""
    inputs_signature: list[TensorSpec] = Field(default_factory=list)
    outputs_signature: list[TensorSpec] = Field(default_factory=list)
    owner: str | None = Field(default=None, description="Owning tenant; null: the platform.")
    visibility: str = Field(default="private", description="private, shared or public.")
    created_at: datetime

    def signature(self) -> Signature:
        return Signature(inputs=self.inputs_signature, outputs=self.outputs_signature)
