"""What every trainer is: the :class:`Trainer` ABC and the shapes it trades in.

A trainer turns a :class:`FitData` (already preprocessed numpy arrays) into a fitted model,
predicts with it, and exports it in a format that serving can load without pickle
(:class:`Exported`: ONNX, or safetensors + an architecture JSON). Progress, cancellation and
checkpoint storage come from the caller through :class:`TrainContext`, so a trainer does not
know whether it runs in a test, a subprocess job or (later) a Ray task.

Hyperparameters are pydantic models (:class:`TrainerParams`, ``extra="forbid"``) so that the
API validates them before a job is queued and publishes their JSON schema.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from modelport.errors import InvalidInput
from modelport.training.table import Kind, Task

InputKind = Literal["features", "tokens", "embeddings", "image"]


class TrainingCancelled(Exception):
    """Raised by ``Trainer.fit`` when ``ctx.should_stop()`` asked it to stop.

    The last finished epoch's checkpoint is on disk, so a later ``fit`` with the same
    checkpoint directory resumes from there.
    """


@dataclass
class FitData:
    """The preprocessed training (and validation) arrays a trainer fits on.

    ``x`` by ``input_kind``: features/embeddings float32 [N, D]; tokens int64 [N, L]
    (0 = pad); image float32 [N, C, H, W]. ``y``: classification int64 class indices in
    ``range(n_classes)``; regression float32.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    task: Task
    n_classes: int  # 0 for regression
    input_kind: InputKind
    feature_dim: int | None = None
    vocab_size: int | None = None
    seq_len: int | None = None
    image_shape: tuple[int, int, int] | None = None  # (C, H, W)

    @property
    def has_validation(self) -> bool:
        return self.x_val is not None and self.y_val is not None and len(self.x_val) > 0


class TrainContext(Protocol):
    """What the caller of ``fit`` provides: seed, storage, threads, progress, cancellation."""

    seed: int
    checkpoint_dir: Path  # exists; survives a server restart
    threads: int  # 0: all cores

    def epoch_done(self, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        """One epoch finished (1-based): loss, val_loss, val_accuracy|val_r2, lr."""

    def should_stop(self) -> bool:
        """True once a cancel was requested: stop after the current batch."""

    def log(self, message: str) -> None:
        """A line for the run's log."""

    def resumed(self, epoch: int) -> None:
        """Called once when fit resumes from a checkpoint written after ``epoch``."""


class TrainerParams(BaseModel):
    """Base of every trainer's hyperparameters: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class EpochParams(TrainerParams):
    """Hyperparameters of the shared torch epoch loop (``torch_loop``)."""

    epochs: int = Field(default=20, ge=1, le=10_000)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="SGD only.")
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    lr_schedule: Literal["none", "step", "cosine"] = "none"
    step_size: int = Field(default=10, ge=1, description="step schedule: epochs per decay.")
    gamma: float = Field(default=0.1, gt=0.0, le=1.0, description="step schedule: decay factor.")
    early_stopping_patience: int | None = Field(
        default=None, ge=1, description="Stop after this many epochs without a better val_loss."
    )


@dataclass(frozen=True)
class Exported:
    """A model written by ``Trainer.export``: its format, files (relative names), manifest.

    ``manifest`` is JSON-able and is what ``exported.load_predictor`` needs besides the
    directory holding ``files``.
    """

    format: Literal["onnx", "safetensors"]
    files: list[str]
    manifest: dict[str, Any] = field(default_factory=dict)


class Trainer(ABC):
    """One training algorithm: fit on a FitData, predict, export without pickle."""

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[TrainerParams]]
    kinds: ClassVar[frozenset[Kind]]
    tasks: ClassVar[frozenset[Task]]
    input_kinds: ClassVar[frozenset[InputKind]]
    epochs: ClassVar[bool] = False

    def __init__(self, params: TrainerParams) -> None:
        if not isinstance(params, self.Params):
            raise TypeError(f"{self.name} takes {self.Params.__name__}, not {type(params)}")
        self.params = params

    @abstractmethod
    def fit(self, data: FitData, ctx: TrainContext) -> None:
        """Fit on ``data``; epoch trainers checkpoint to and resume from ctx.checkpoint_dir."""

    @abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Classification: probabilities float32 [N, C]; regression: float32 [N]."""

    @abstractmethod
    def export(self, dest: Path) -> Exported:
        """Write the fitted model under ``dest`` (input "x", output "y"); never pickle."""

    def check_data(self, data: FitData) -> None:
        """Refuse data this trainer cannot fit, naming the trainer (InvalidInput)."""
        if data.task not in self.tasks:
            raise InvalidInput(
                f"trainer {self.name!r} does not do {data.task}; it does "
                f"{', '.join(sorted(self.tasks))}",
                param="trainer",
            )
        if data.input_kind not in self.input_kinds:
            raise InvalidInput(
                f"trainer {self.name!r} takes {', '.join(sorted(self.input_kinds))} inputs, "
                f"not {data.input_kind} (check the dataset kind and preprocessing.text)",
                param="trainer",
            )
        if len(data.x_train) == 0:
            raise InvalidInput("the training split has no rows", param="split")
        if data.task == "classification" and data.n_classes < 2:
            raise InvalidInput("classification needs at least 2 classes", param="target")


def flat(x: np.ndarray) -> np.ndarray:
    """Rows as flat float32 vectors (images and features alike) for the classic trainers."""
    return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)
