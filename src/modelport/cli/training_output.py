"""Rich tables for datasets, trainers and runs, and the live progress of a followed run.

Like ``cli.output``: data (tables, final metrics) to stdout; the progress bar and the run's
log lines to stderr, so ``--json`` output stays clean.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from modelport.types.training import (
    DatasetDetail,
    DatasetInfo,
    DatasetPreview,
    RunComparison,
    RunDetail,
    RunEvent,
    RunInfo,
    RunStatus,
    TrainerInfo,
)

STATUS_STYLE = {
    RunStatus.QUEUED: "dim",
    RunStatus.RUNNING: "yellow",
    RunStatus.SUCCEEDED: "green",
    RunStatus.FAILED: "red",
    RunStatus.CANCELLED: "magenta",
}
_HEADLINE = ("accuracy", "f1_macro", "r2", "mse")
"""Metrics a run list shows first, in this order of preference."""
_CELL = 40


def _out() -> Console:
    # Built per call: the console must write to whatever sys.stdout is now (tests swap it).
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _none(what: str) -> None:
    _out().print(Text(f"No {what}.", style="dim"))


def _when(value: Any) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M}"


def _value(value: Any) -> str:
    """A cell: numbers rounded for reading, anything else as compact JSON, cut to size."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= _CELL else text[: _CELL - 1] + "…"


def _status(status: RunStatus) -> Text:
    return Text(str(status), style=STATUS_STYLE.get(status, ""))


# --- datasets and trainers ------------------------------------------------------------------


def print_datasets(datasets: Sequence[DatasetInfo]) -> None:
    if not datasets:
        _none("datasets")
        return
    table = Table(title="Datasets")
    table.add_column("Dataset", no_wrap=True)
    for header in ("Version", "Kind", "Task", "Target", "Rows", "Format", "Owner", "Created"):
        table.add_column(header)
    for ds in datasets:
        schema = ds.dataset_schema
        table.add_row(
            ds.name,
            str(ds.version),
            schema.kind,
            schema.task or "-",
            schema.target or "-",
            str(ds.rows),
            ds.format,
            "built-in" if ds.builtin else (ds.owner or "-"),
            _when(ds.created_at),
        )
    _out().print(table)


def print_dataset(dataset: DatasetDetail) -> None:
    """One dataset: header line, its columns (schema), then its versions."""
    console = _out()
    schema = dataset.dataset_schema
    console.print(
        Text(f"{dataset.name} v{dataset.version}", style="bold"),
        f"{schema.kind}, {schema.task or 'no task'}, target {schema.target or '-'}, "
        f"{dataset.rows} rows",
        Text(dataset.description, style="dim"),
    )
    if schema.classes:
        console.print(f"classes: {', '.join(schema.classes)}", markup=False)
    columns = Table("Column", "Type", "Missing", "Distinct", "Shape", title="Schema")
    for column in schema.columns:
        columns.add_row(
            column.name,
            column.dtype,
            str(column.missing),
            _value(column.distinct),
            _value(column.shape),
        )
    console.print(columns)
    versions = Table("Version", "File", "Format", "Rows", "SHA-256", "Created", title="Versions")
    for version in dataset.versions or [dataset]:
        versions.add_row(
            str(version.version),
            version.filename,
            version.format,
            str(version.rows),
            (version.sha256 or "-")[:12],
            _when(version.created_at),
        )
    console.print(versions)


def print_preview(preview: DatasetPreview) -> None:
    table = Table(*preview.columns, title=f"{preview.name} v{preview.version}")
    for row in preview.rows:
        table.add_row(*(_value(row.get(column)) for column in preview.columns))
    _out().print(table)


def print_trainers(trainers: Sequence[TrainerInfo]) -> None:
    table = Table(title="Trainers")
    table.add_column("Trainer", no_wrap=True)
    for header in ("Kinds", "Tasks", "Epochs", "Parameters", "Description"):
        table.add_column(header)
    for trainer in trainers:
        params = trainer.params_schema.get("properties", {})
        table.add_row(
            trainer.name,
            ", ".join(trainer.kinds),
            ", ".join(trainer.tasks),
            "yes" if trainer.epochs else "no",
            ", ".join(params) if isinstance(params, dict) else "-",
            trainer.description,
        )
    _out().print(table)


# --- runs -----------------------------------------------------------------------------------


def headline(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """The run's key result, e.g. ``test.accuracy 0.9812``; ``-`` before it has one."""
    for split in ("test", "validation"):
        values = metrics.get(split) or {}
        for name in _HEADLINE:
            if isinstance(values.get(name), int | float):
                return f"{split}.{name} {values[name]:.4g}"
    return "-"


def _progress(run: RunInfo) -> str:
    progress = run.progress
    if progress.epochs:
        return f"{progress.epoch}/{progress.epochs}"
    return "-"


def print_runs(runs: Sequence[RunInfo]) -> None:
    if not runs:
        _none("runs")
        return
    table = Table("Run", title="Runs")
    for header in ("Status", "Model"):
        table.add_column(header, no_wrap=True)
    for header in ("Dataset", "Trainer", "Epoch"):
        table.add_column(header)
    for header in ("Result", "Created"):
        table.add_column(header, no_wrap=True)
    for run in runs:
        model = f"{run.model_name} v{run.model_version}" if run.model_version else run.model_name
        table.add_row(
            str(run.id),
            _status(run.status),
            model,
            f"{run.dataset} v{run.dataset_version}",
            run.trainer,
            _progress(run),
            headline(run.metrics),
            f"{run.created_at:%m-%d %H:%M}",
        )
    _out().print(table)


def print_run(run: RunDetail) -> None:
    """A run's record: what went in, how it went (per epoch), what came out."""
    console = _out()
    facts = Table(show_header=False, box=None, title=f"run {run.id}")
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("status", _status(run.status))
    for key, value in (
        ("model", _model_line(run)),
        ("dataset", f"{run.dataset} v{run.dataset_version}"),
        ("trainer", run.trainer),
        ("params", orjson.dumps(run.params).decode()),
        ("preprocessing", run.preprocessing.model_dump_json()),
        ("split", run.split.model_dump_json()),
        ("seed", str(run.seed)),
        ("code", run.code_version),
        ("created", _when(run.created_at)),
        ("finished", _when(run.finished_at)),
    ):
        facts.add_row(key, value)
    if run.error:
        facts.add_row("error", Text(run.error, style="red"))
    console.print(facts)
    if run.epochs:
        names = sorted({name for epoch in run.epochs for name in epoch.metrics})
        table = Table("Epoch", *names, title="Epochs")
        for epoch in run.epochs:
            table.add_row(str(epoch.epoch), *(_value(epoch.metrics.get(n)) for n in names))
        console.print(table)
    print_metrics(run.metrics)


def _model_line(run: RunInfo) -> str:
    if run.model_version is None:
        return f"{run.model_name} (not registered)"
    return f"{run.model_name} v{run.model_version}"


def print_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> None:
    """Scalar metrics by split (per-class figures and confusion matrices stay in --json)."""
    splits = [split for split in ("validation", "test", "cv") if metrics.get(split)]
    splits += [split for split in metrics if split not in splits and metrics[split]]
    names: list[str] = []
    for split in splits:
        for name, value in metrics[split].items():
            if isinstance(value, int | float) and name not in names:
                names.append(name)
    if not names:
        return
    table = Table("Split", *names, title="Metrics")
    for split in splits:
        table.add_row(split, *(_value(metrics[split].get(name)) for name in names))
    _out().print(table)


def print_result(run: RunDetail) -> None:
    """The end of ``train --follow``: final metrics, then the model version or the error."""
    print_metrics(run.metrics)
    console = _out()
    if run.status == RunStatus.SUCCEEDED:
        console.print(Text(f"run {run.id} succeeded: {_model_line(run)}", style="green"))
    else:
        reason = f": {run.error}" if run.error else ""
        console.print(Text(f"run {run.id} {run.status}{reason}", style="red"))


def print_comparison(comparison: RunComparison) -> None:
    table = Table("", *(f"run {run.id}" for run in comparison.runs), title="Comparison")
    for label, get in (
        ("model", _model_line),
        ("trainer", lambda run: run.trainer),
        ("dataset", lambda run: f"{run.dataset} v{run.dataset_version}"),
    ):
        table.add_row(label, *(get(run) for run in comparison.runs))
    table.add_row("status", *(_status(run.status) for run in comparison.runs))
    for name, values in comparison.params.items():
        table.add_row(f"params.{name}", *(_value(value) for value in values))
    for name, values in comparison.metrics.items():
        table.add_row(Text(name, style="bold"), *(_value(value) for value in values))
    _out().print(table)


# --- live progress --------------------------------------------------------------------------


class RunView:
    """The live view of a followed run: a progress bar over epochs, log lines above it."""

    def __init__(self, progress: Progress, task: TaskID, run_id: int) -> None:
        self._progress, self._task, self._run_id = progress, task, run_id

    def show(self, event: RunEvent) -> None:
        """Update the bar (status, epoch, metrics) or print a log line, by event type."""
        data = event.data
        if event.type == "status" and "status" in data:
            self._describe(str(data["status"]))
        elif event.type == "started":
            resumed = data.get("resumed_from_epoch")
            self._describe("running" + (f" (resumed after epoch {resumed})" if resumed else ""))
        elif event.type == "epoch":
            self._epoch(data)
        elif event.type == "log" and "message" in data:
            self._progress.console.print(Text(str(data["message"]), style="dim"))
        elif event.type == "metrics":
            self._describe(f"evaluating ({data.get('split', '')})")
        elif event.type == "done":
            self._describe("done")

    def _describe(self, what: str) -> None:
        self._progress.update(self._task, description=f"run {self._run_id} {what}")

    def _epoch(self, data: Mapping[str, Any]) -> None:
        epoch, epochs = int(data.get("epoch", 0)), data.get("epochs")
        metrics = data.get("metrics") or {}
        shown = [
            f"{name} {metrics[name]:.4g}"
            for name in ("loss", "val_loss", "val_accuracy", "val_r2")
            if isinstance(metrics.get(name), int | float)
        ]
        self._progress.update(
            self._task,
            completed=epoch,
            total=int(epochs) if epochs else None,
            where=f"epoch {epoch}/{epochs or '?'}",
            stats="  ".join(shown),
        )


@contextmanager
def run_view(run_id: int, *, enabled: bool) -> Iterator[RunView]:
    """A live Rich progress bar on stderr for one run, gone once the run ends."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[where]}"),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=_err(),
        transient=True,  # the final metrics table printed next says how it went
        disable=not enabled,
    )
    with progress:
        task = progress.add_task(f"run {run_id} queued", total=None, where="", stats="")
        yield RunView(progress, task, run_id)
