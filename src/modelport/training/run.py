"""One training run, end to end: ``run_training(spec, workdir, reporter)``.

validate the hyperparameters → load the dataset (uploaded file or built-in) → seeded split
→ fit the preprocessing on the training rows only → train (checkpoints under
``<workdir>/checkpoints``, so a killed run resumes) → metrics on validation and test (and
k-fold CV on the training rows when asked) → export → write the bundle
``<workdir>/model.mpbundle``.

Progress goes to a ``Reporter`` as events (types as ``RunEvent.type``): "started"
``{resumed_from_epoch}``, "epoch" ``{epoch, epochs, metrics}``, "log" ``{message}``,
"metrics" ``{split, metrics}``, "done" ``{metrics}``. The job worker turns them into JSON
lines; tests can pass a list-backed reporter and call this in process.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from modelport.errors import InvalidInput
from modelport.training.bundle import build_manifest, write_bundle
from modelport.training.table import Kind, Table, Task
from modelport.types.admin import Signature
from modelport.types.training import DatasetFormat, PreprocessSpec, SplitSpec

if TYPE_CHECKING:
    from modelport.training.preprocess import Preprocessor
    from modelport.training.splits import Split
    from modelport.training.trainers.base import FitData, Trainer, TrainerParams

BUNDLE_NAME = "model.mpbundle"
CHECKPOINTS = "checkpoints"
_EXPORT_DIR = "export"
_INPUT_KINDS = {"tabular": "features", "image": "image"}
_TEXT_INPUT_KINDS = {"tokens": "tokens", "minilm": "embeddings"}


class RunSpec(BaseModel):
    """Everything one job needs; the engine writes it as ``<workdir>/spec.json``."""

    model_config = ConfigDict(extra="forbid")

    run_id: int
    dataset_path: str | None = Field(default=None, description="None for a built-in set.")
    dataset_format: DatasetFormat
    dataset_name: str
    dataset_version: int = 1
    target: str | None = None
    task: Task | None = None
    text_column: str | None = None
    trainer: str
    params: dict[str, Any] = Field(default_factory=dict)
    preprocessing: PreprocessSpec = Field(default_factory=PreprocessSpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    seed: int = 0
    threads: int = Field(default=0, ge=0, description="0: all cores.")


class Reporter(Protocol):
    """Where a run's progress events go."""

    def event(self, type: str, data: dict[str, Any]) -> None: ...


@dataclass
class FittedRun:
    """The in-process result of training: what the bundle was exported from."""

    preprocessor: Preprocessor
    trainer: Trainer
    table: Table
    split: Split


@dataclass
class RunOutcome:
    """What a finished run produced (``to_json`` is the job worker's "result" line)."""

    metrics: dict[str, dict[str, Any]]
    bundle_path: Path
    signature: Signature
    metadata: dict[str, Any]
    epochs_run: int
    fitted: FittedRun | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "bundle_path": str(self.bundle_path),
            "signature": self.signature.model_dump(mode="json"),
            "metadata": self.metadata,
            "epochs_run": self.epochs_run,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunOutcome:
        return cls(
            metrics=dict(data["metrics"]),
            bundle_path=Path(data["bundle_path"]),
            signature=Signature.model_validate(data["signature"]),
            metadata=dict(data["metadata"]),
            epochs_run=int(data["epochs_run"]),
        )


class RunContext:
    """The ``TrainContext`` a trainer sees: seeds, checkpoints, progress, cancellation.

    "started" is sent once, when it is known whether the trainer resumed: on ``resumed``,
    else on the first epoch (or when ``start`` is called); logs before it are held back so
    "started" always comes first. A ``label`` (cross-validation folds) silences epochs and
    prefixes logs, so the run's progress shows the main fit only.
    """

    def __init__(
        self,
        *,
        seed: int,
        checkpoint_dir: Path,
        threads: int,
        reporter: Reporter,
        should_stop: Callable[[], bool],
        label: str | None = None,
    ) -> None:
        self.seed = seed
        self.checkpoint_dir = checkpoint_dir
        self.threads = threads
        self.epochs_run = 0
        self._reporter = reporter
        self._should_stop = should_stop
        self._label = label
        self._started = label is not None
        self._pending: list[str] = []
        checkpoint_dir.mkdir(parents=True, exist_ok=True)

    def start(self, resumed_from_epoch: int | None = None) -> None:
        if self._started:
            return
        self._started = True
        self._reporter.event("started", {"resumed_from_epoch": resumed_from_epoch})
        for message in self._pending:
            self._reporter.event("log", {"message": message})
        self._pending.clear()

    def resumed(self, epoch: int) -> None:
        self.epochs_run = epoch
        self.start(epoch)

    def epoch_done(self, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        self.epochs_run = epoch
        if self._label is None:
            self.start(None)
            data = {"epoch": epoch, "epochs": epochs, "metrics": dict(metrics)}
            self._reporter.event("epoch", data)

    def should_stop(self) -> bool:
        return self._should_stop()

    def log(self, message: str) -> None:
        if self._label is not None:
            self._reporter.event("log", {"message": f"{self._label}: {message}"})
        elif self._started:
            self._reporter.event("log", {"message": message})
        else:
            self._pending.append(message)


def run_training(
    spec: RunSpec,
    workdir: Path,
    reporter: Reporter,
    *,
    should_stop: Callable[[], bool] = lambda: False,
) -> RunOutcome:
    """Run the whole pipeline (module docstring); raises ``InvalidInput`` for bad input
    and ``TrainingCancelled`` when ``should_stop`` turns true."""
    from modelport.training.trainers import trainer_class, validate_params

    params = validate_params(spec.trainer, spec.params)
    trainer_cls = trainer_class(spec.trainer)
    table = load_table(spec)
    check_trainer_fits(spec.trainer, table.kind, table.task, spec.preprocessing)
    split = _split(spec, table)
    _check_stop(should_stop)
    ctx = RunContext(
        seed=spec.seed,
        checkpoint_dir=workdir / CHECKPOINTS / "main",
        threads=spec.threads or os.cpu_count() or 1,
        reporter=reporter,
        should_stop=should_stop,
    )
    fitted = _fit(spec, trainer_cls(params), table, split, ctx)
    metrics = _evaluate(fitted, reporter)
    if spec.split.folds:
        metrics["cv"] = _cross_validate(spec, trainer_cls, params, fitted, ctx, reporter)
    _check_stop(should_stop)
    outcome = _package(spec, params, fitted, workdir, metrics, ctx.epochs_run)
    reporter.event("done", {"metrics": metrics})
    return outcome


def load_table(spec: RunSpec) -> Table:
    """The run's dataset: a built-in set by name, else the uploaded file."""
    from modelport.training.builtin import load_builtin
    from modelport.training.formats import read_dataset

    if spec.dataset_format == "builtin":
        table = load_builtin(spec.dataset_name)
    elif spec.dataset_path is None:
        raise InvalidInput("the job spec names no dataset file", param="dataset")
    else:
        table = read_dataset(
            Path(spec.dataset_path),
            spec.dataset_format,
            target=spec.target,
            task=spec.task,
            text_column=spec.text_column,
        )
    if table.target is None or table.task is None:
        raise InvalidInput(
            f"dataset {spec.dataset_name!r} has no target column to train on", param="dataset"
        )
    return table


def check_trainer_fits(trainer: str, kind: Kind, task: Task | None, prep: PreprocessSpec) -> None:
    """``InvalidInput`` when ``trainer`` cannot learn this kind of data and task.

    Cheap (no data loaded): the engine calls it before queueing a run.
    """
    from modelport.training.trainers import trainer_class

    cls = trainer_class(trainer)
    if kind not in cls.kinds:
        raise InvalidInput(
            f"trainer {trainer!r} takes {sorted(cls.kinds)} datasets; this one is {kind!r}",
            param="trainer",
        )
    if task is not None and task not in cls.tasks:
        raise InvalidInput(
            f"trainer {trainer!r} does {sorted(cls.tasks)}; this dataset is {task}",
            param="trainer",
        )
    input_kind = _TEXT_INPUT_KINDS[prep.text] if kind == "text" else _INPUT_KINDS[kind]
    if input_kind not in cls.input_kinds:
        raise InvalidInput(
            f"trainer {trainer!r} takes {sorted(cls.input_kinds)} inputs; preprocessing "
            f"text={prep.text!r} gives {input_kind!r}",
            param="preprocessing.text",
        )


def _split(spec: RunSpec, table: Table) -> Split:
    from modelport.training.splits import split_indices

    stratify = table.target if table.task == "classification" and spec.split.stratify else None
    return split_indices(
        len(table),
        validation=spec.split.validation,
        test=spec.split.test,
        seed=spec.split.seed,
        stratify=stratify,
    )


def _fit(spec: RunSpec, trainer: Trainer, table: Table, split: Split, ctx: RunContext) -> FittedRun:
    preprocessor, data = _prepare(spec.preprocessing, table, split.train, split.validation)
    if not type(trainer).epochs:
        ctx.start(None)
    trainer.fit(data, ctx)
    ctx.start(None)
    return FittedRun(preprocessor=preprocessor, trainer=trainer, table=table, split=split)


def _prepare(
    prep: PreprocessSpec, table: Table, train_rows: np.ndarray, val_rows: np.ndarray
) -> tuple[Preprocessor, FitData]:
    """Fit the preprocessing on the training rows; the trainer's arrays."""
    from modelport.training.preprocess import Preprocessor
    from modelport.training.trainers.base import FitData

    train = table.take(train_rows)
    preprocessor = Preprocessor.fit(prep, train)
    train = train.take(np.flatnonzero(preprocessor.drop_mask(train)))
    if not len(train):
        raise InvalidInput("no training rows left after dropping missing values", param="data")
    assert train.target is not None  # load_table checked
    x_val = y_val = None
    if len(val_rows):
        val = table.take(val_rows)
        assert val.target is not None
        x_val, y_val = preprocessor.transform(val.columns), preprocessor.encode_target(val.target)
    data = FitData(
        x_train=preprocessor.transform(train.columns),
        y_train=preprocessor.encode_target(train.target),
        x_val=x_val,
        y_val=y_val,
        task=preprocessor.task,
        n_classes=len(preprocessor.classes or ()),
        input_kind=preprocessor.input_kind,
        feature_dim=preprocessor.feature_dim,
        vocab_size=preprocessor.vocab_size,
        seq_len=preprocessor.seq_len,
        image_shape=preprocessor.image_shape,
    )
    return preprocessor, data


def _score(preprocessor: Preprocessor, trainer: Trainer, part: Table) -> dict[str, Any]:
    """Metrics of ``trainer`` on ``part``'s rows (raw columns, preprocessed like serving)."""
    from modelport.training.metrics import classification_metrics, regression_metrics

    assert part.target is not None
    y_true = preprocessor.encode_target(part.target)
    y_pred = trainer.predict(preprocessor.transform(part.columns))
    if preprocessor.task == "classification":
        return classification_metrics(y_true, y_pred, list(preprocessor.classes or ()))
    return dict(regression_metrics(y_true, y_pred))


def _evaluate(fitted: FittedRun, reporter: Reporter) -> dict[str, dict[str, Any]]:
    metrics: dict[str, dict[str, Any]] = {}
    for name, rows in (("validation", fitted.split.validation), ("test", fitted.split.test)):
        if len(rows):
            scores = _score(fitted.preprocessor, fitted.trainer, fitted.table.take(rows))
            metrics[name] = scores
            reporter.event("metrics", {"split": name, "metrics": scores})
    return metrics


def _cross_validate(
    spec: RunSpec,
    trainer_cls: type[Trainer],
    params: TrainerParams,
    fitted: FittedRun,
    ctx: RunContext,
    reporter: Reporter,
) -> dict[str, Any]:
    """k-fold CV on the training rows: a fresh preprocessor and trainer per fold."""
    from modelport.training.splits import kfold_indices

    folds = int(spec.split.folds or 0)
    train = fitted.table.take(fitted.split.train)
    stratify = train.target if train.task == "classification" and spec.split.stratify else None
    scores: list[dict[str, Any]] = []
    for i, (fold_train, fold_val) in enumerate(
        kfold_indices(len(train), folds, seed=spec.split.seed, stratify=stratify), start=1
    ):
        _check_stop(ctx.should_stop)
        label = f"cv fold {i}/{folds}"
        fold_ctx = RunContext(
            seed=spec.seed,
            checkpoint_dir=ctx.checkpoint_dir.parent / f"cv-{i}",
            threads=ctx.threads,
            reporter=reporter,
            should_stop=ctx.should_stop,
            label=label,
        )
        preprocessor, data = _prepare(spec.preprocessing, train, fold_train, fold_val)
        trainer = trainer_cls(params)
        trainer.fit(data, fold_ctx)
        scores.append(_score(preprocessor, trainer, train.take(fold_val)))
    summary = _summarize(scores, folds)
    reporter.event("metrics", {"split": "cv", "metrics": summary})
    return summary


def _summarize(scores: list[dict[str, Any]], folds: int) -> dict[str, Any]:
    """Mean and standard deviation over folds of every scalar metric."""
    summary: dict[str, Any] = {"folds": folds}
    for key, value in scores[0].items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        values = [float(s[key]) for s in scores if isinstance(s.get(key), int | float)]
        if len(values) == len(scores):
            summary[key] = float(np.mean(values))
            summary[f"{key}_std"] = float(np.std(values))
    return summary


def _package(
    spec: RunSpec,
    params: TrainerParams,
    fitted: FittedRun,
    workdir: Path,
    metrics: dict[str, dict[str, Any]],
    epochs_run: int,
) -> RunOutcome:
    """Export the trained model and write the bundle; the outcome to report."""
    export_dir = workdir / _EXPORT_DIR
    shutil.rmtree(export_dir, ignore_errors=True)
    export_dir.mkdir(parents=True)
    preprocessor = fitted.preprocessor
    exported = fitted.trainer.export(export_dir)
    feature_names = fitted.table.feature_names
    manifest = build_manifest(
        preprocessor, exported, trainer=spec.trainer, feature_names=feature_names
    )
    bundle = write_bundle(
        workdir / BUNDLE_NAME, manifest=manifest, preprocessor=preprocessor, export_dir=export_dir
    )
    shutil.rmtree(export_dir, ignore_errors=True)
    metadata = {
        "task": preprocessor.task,
        "classes": manifest.classes,
        "trainer": spec.trainer,
        "params": params.model_dump(mode="json"),
        "preprocessing": spec.preprocessing.model_dump(mode="json"),
        "format": exported.format,
        "input_kind": preprocessor.input_kind,
        "feature_names": feature_names,
    }
    return RunOutcome(
        metrics=metrics,
        bundle_path=bundle,
        signature=manifest.signature,
        metadata=metadata,
        epochs_run=epochs_run,
        fitted=fitted,
    )


def _check_stop(should_stop: Callable[[], bool]) -> None:
    if should_stop():
        from modelport.training.trainers.base import TrainingCancelled

        raise TrainingCancelled("the run was cancelled")
