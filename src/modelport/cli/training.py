"""``modelport datasets | trainers | train | runs``: upload data, train, track and compare runs.

``datasets``, ``trainers`` and ``runs`` are sub-apps; ``train`` is a top-level command
(``main`` registers it). ``train --follow`` and ``runs follow`` stream the run's events and
show a live progress bar (stderr), then the final metrics and the registered model version
(stdout); they exit with status 1 unless the run succeeded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from modelport.cli import connect, output
from modelport.cli import training_output as show
from modelport.client import Client
from modelport.errors import InvalidInput
from modelport.types.training import RunDetail, RunStatus

datasets_app = typer.Typer(help="Upload, list, inspect and delete training datasets.")
trainers_app = typer.Typer(help="The trainers the server offers and their hyperparameters.")
runs_app = typer.Typer(help="Training runs: list, inspect, compare, follow, cancel, logs.")
for _sub in (datasets_app, trainers_app, runs_app):
    _sub.info.no_args_is_help = True

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
DatasetName = Annotated[str, typer.Argument(help="Dataset name.")]
RunId = Annotated[int, typer.Argument(min=1, help="Run id.")]

# --- datasets -------------------------------------------------------------------------------


@datasets_app.command("push")
@output.cli_errors
def push_dataset(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Data file.")
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name.")],
    target: Annotated[
        str | None, typer.Option("--target", "-t", help="Target column (label to predict).")
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(help="classification or regression (default: from the target's type)."),
    ] = None,
    text_column: Annotated[
        str | None, typer.Option("--text-column", help="JSONL: the field holding the text.")
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="csv, parquet, jsonl, npz or zip (default: from name)."),
    ] = None,
    description: Annotated[str | None, typer.Option(help="What the data is.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Upload a data file as the next version of a dataset; its schema is inferred."""
    size = path.stat().st_size
    with (
        connect(ctx) as client,
        output.upload_progress(path.name, size, enabled=not as_json) as progress,
    ):
        dataset = client.push_dataset(
            path,
            name,
            target=target,
            task=task,
            text_column=text_column,
            fmt=fmt,
            description=description,
            progress=progress,
        )
    if as_json:
        output.print_json(dataset)
    else:
        show.print_datasets([dataset])


@datasets_app.command("list")
@output.cli_errors
def list_datasets(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List datasets (newest version of each), built-ins included."""
    with connect(ctx) as client:
        datasets = client.list_datasets()
    if as_json:
        output.print_json(datasets)
    else:
        show.print_datasets(datasets)


@datasets_app.command("show")
@output.cli_errors
def show_dataset(ctx: typer.Context, name: DatasetName, as_json: JsonFlag = False) -> None:
    """Show a dataset's schema (columns, target, classes) and its versions."""
    with connect(ctx) as client:
        dataset = client.get_dataset(name)
    if as_json:
        output.print_json(dataset)
    else:
        show.print_dataset(dataset)


@datasets_app.command("preview")
@output.cli_errors
def preview_dataset(
    ctx: typer.Context,
    name: DatasetName,
    rows: Annotated[int | None, typer.Option("--rows", min=1, help="Rows to show.")] = None,
    version: Annotated[int | None, typer.Option("--version", "-v", min=1)] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the first rows of a dataset."""
    with connect(ctx) as client:
        preview = client.preview_dataset(name, version=version, rows=rows)
    if as_json:
        output.print_json(preview)
    else:
        show.print_preview(preview)


@datasets_app.command("delete")
@output.cli_errors
def delete_dataset(ctx: typer.Context, name: DatasetName) -> None:
    """Delete a dataset with all its versions (runs keep their records)."""
    with connect(ctx) as client:
        client.delete_dataset(name)
    output.success(f"Deleted dataset {name}.")


@trainers_app.command("list")
@output.cli_errors
def list_trainers(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the trainers, the data they take and their hyperparameters."""
    with connect(ctx) as client:
        trainers = client.list_trainers()
    if as_json:
        output.print_json(trainers)
    else:
        show.print_trainers(trainers)


# --- train ----------------------------------------------------------------------------------


def parse_pairs(pairs: list[str] | None, what: str) -> dict[str, Any]:
    """``k=v`` options as a dict; a value that parses as JSON is taken as JSON (``lr=0.1``,
    ``hidden=[64,32]``, ``lowercase=false``), anything else as a string (``optimizer=sgd``).
    """
    values: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInput(f"{what} takes key=value, got {pair!r}", param=what)
        if key in values:
            raise InvalidInput(f"{what} {key} given twice", param=what)
        try:
            values[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            values[key] = raw
    return values


def with_shortcuts(params: dict[str, Any], **shortcuts: Any) -> dict[str, Any]:
    """``--epochs``/``--lr``/``--batch-size`` merged into the ``--param`` values."""
    for key, value in shortcuts.items():
        if value is None:
            continue
        if key in params:
            flag = "--" + key.replace("_", "-")
            raise InvalidInput(f"{flag} and --param {key}= both given; use one", param=key)
        params[key] = value
    return params


@output.cli_errors
def train(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name.")],
    trainer: Annotated[str, typer.Option("--trainer", help="Trainer (see `trainers list`).")],
    name: Annotated[
        str | None,
        typer.Option("--name", "-n", help="Model the result joins (default <dataset>-<trainer>)."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Shortcut for --param epochs=N.")] = None,
    lr: Annotated[float | None, typer.Option(help="Shortcut for --param lr=X.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Shortcut for --param batch_size=N.")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Hyperparameter key=value.")
    ] = None,
    preprocess: Annotated[
        list[str] | None, typer.Option("--preprocess", help="Preprocessing key=value.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split and the training.")] = None,
    validation: Annotated[
        float | None, typer.Option(help="Validation share (default 0.15).")
    ] = None,
    test: Annotated[float | None, typer.Option(help="Test share (default 0.15).")] = None,
    folds: Annotated[int | None, typer.Option(help="Also k-fold cross-validation.")] = None,
    dataset_version: Annotated[
        int | None, typer.Option("--dataset-version", min=1, help="Default: newest.")
    ] = None,
    no_register: Annotated[
        bool, typer.Option("--no-register", help="Do not register the result as a model.")
    ] = False,
    description: Annotated[str | None, typer.Option(help="What this run tries.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Show live progress until the run ends.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Start a training run; with --follow, watch it and end with its metrics."""
    params = with_shortcuts(
        parse_pairs(param, "--param"), epochs=epochs, lr=lr, batch_size=batch_size
    )
    split = {"validation": validation, "test": test, "folds": folds, "seed": seed}
    with connect(ctx) as client:
        run = client.train(
            dataset=dataset,
            trainer=trainer,
            model_name=name or f"{dataset}-{trainer}",
            params=params,
            preprocessing=parse_pairs(preprocess, "--preprocess"),
            split={key: value for key, value in split.items() if value is not None},
            seed=seed,
            dataset_version=dataset_version,
            register_model=False if no_register else None,
            description=description,
        )
        if follow:
            _follow_to_end(client, run.id, as_json=as_json)
            return
    if as_json:
        output.print_json(run)
    else:
        show.print_runs([run])
        output.success(f"Queued run {run.id}; watch it with: modelport runs follow {run.id}")


def _follow_to_end(client: Client, run_id: int, *, as_json: bool) -> None:
    """Stream a run's events into the live view, then print the result; exit 1 unless ok."""
    with show.run_view(run_id, enabled=not as_json) as view:
        for event in client.follow_run(run_id):
            view.show(event)
        final: RunDetail = client.wait_run(run_id)  # the stream may end before the record
    if as_json:
        output.print_json(final)
    else:
        show.print_result(final)
    if final.status != RunStatus.SUCCEEDED:
        raise typer.Exit(1)


# --- runs -----------------------------------------------------------------------------------


@runs_app.command("list")
@output.cli_errors
def list_runs(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only this model.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Only this set.")] = None,
    trainer: Annotated[str | None, typer.Option("--trainer", help="Only this trainer.")] = None,
    status: Annotated[
        str | None, typer.Option("--status", "-s", help="queued, running, succeeded...")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N runs.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List training runs, newest first."""
    with connect(ctx) as client:
        runs = client.list_runs(
            model=model, dataset=dataset, trainer=trainer, status=status, limit=limit
        )
    if as_json:
        output.print_json(runs)
    else:
        show.print_runs(runs)


@runs_app.command("show")
@output.cli_errors
def show_run(ctx: typer.Context, run_id: RunId, as_json: JsonFlag = False) -> None:
    """Show a run: params, per-epoch metrics, final metrics, lineage."""
    with connect(ctx) as client:
        run = client.get_run(run_id)
    if as_json:
        output.print_json(run)
    else:
        show.print_run(run)


@runs_app.command("compare")
@output.cli_errors
def compare_runs(
    ctx: typer.Context,
    run_ids: Annotated[list[int], typer.Argument(min=1, help="Run ids.")],
    as_json: JsonFlag = False,
) -> None:
    """Compare runs side by side: params and metrics."""
    with connect(ctx) as client:
        comparison = client.compare_runs(run_ids)
    if as_json:
        output.print_json(comparison)
    else:
        show.print_comparison(comparison)


@runs_app.command("cancel")
@output.cli_errors
def cancel_run(ctx: typer.Context, run_id: RunId, as_json: JsonFlag = False) -> None:
    """Cancel a queued or running run."""
    with connect(ctx) as client:
        run = client.cancel_run(run_id)
    if as_json:
        output.print_json(run)
    else:
        show.print_runs([run])


@runs_app.command("logs")
@output.cli_errors
def run_logs(ctx: typer.Context, run_id: RunId) -> None:
    """Print a run's job log."""
    with connect(ctx) as client:
        text = client.run_logs(run_id)
    typer.echo(text, nl=not text.endswith("\n"))


@runs_app.command("follow")
@output.cli_errors
def follow_run(ctx: typer.Context, run_id: RunId, as_json: JsonFlag = False) -> None:
    """Watch a run live until it ends; exit status 1 unless it succeeded."""
    with connect(ctx) as client:
        _follow_to_end(client, run_id, as_json=as_json)
