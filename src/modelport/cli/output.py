"""How the CLI shows things: Rich tables for people, plain JSON for programs, red errors.

Data goes to stdout; progress bars, spinners and errors go to stderr so that
``modelport ... --json | jq`` always sees JSON only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import orjson
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from modelport.errors import ModelportError
from modelport.types.admin import (
    DeploymentState,
    DeploymentStatus,
    ModelDetail,
    ModelInfo,
    ServerStatus,
    VersionInfo,
)

P = ParamSpec("P")
R = TypeVar("R")

_STATE_STYLE = {
    DeploymentState.READY: "green",
    DeploymentState.LOADING: "yellow",
    DeploymentState.FAILED: "red",
    DeploymentState.STOPPED: "dim",
    DeploymentState.IDLE: "cyan",
}


def _out() -> Console:
    # Built per call: the console must write to whatever sys.stdout is now (tests swap it).
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


# --- errors -------------------------------------------------------------------------------


def error(message: str) -> None:
    """One red line on stderr (line breaks inside the message are folded)."""
    _err().print(Text(f"Error: {' '.join(message.split())}", style="bold red"))


def cli_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a ``ModelportError`` into a one-line message and exit status 1 (no traceback).

    ``functools.wraps`` keeps the signature, so Typer still sees the command's options.
    """

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ModelportError as exc:
            error(exc.message)
            raise typer.Exit(1) from None

    return run


# --- JSON ---------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """Pydantic models (also inside lists and dicts) as plain JSON values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    return value


def print_json(value: Any) -> None:
    """Machine-readable output: indented JSON and nothing else."""
    text = orjson.dumps(
        jsonable(value), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
    ).decode()
    typer.echo(text)


def print_pretty_json(value: Any) -> None:
    """JSON for people: indented and coloured when stdout is a terminal."""
    _out().print_json(orjson.dumps(jsonable(value), option=orjson.OPT_SERIALIZE_NUMPY).decode())


def success(message: str) -> None:
    """A short confirmation of a change (not data: it goes to stderr)."""
    _err().print(Text(message, style="green"))


# --- tables -------------------------------------------------------------------------------


def print_models(models: Sequence[ModelInfo]) -> None:
    if not models:
        _out().print(Text("No models.", style="dim"))
        return
    table = Table(title="Models")
    table.add_column("Model", no_wrap=True)
    for header in ("Latest", "Aliases", "Description", "Created"):
        table.add_column(header)
    for model in models:
        table.add_row(
            model.name,
            str(model.latest_version or "-"),
            _aliases(model.aliases),
            model.description,
            f"{model.created_at:%Y-%m-%d %H:%M}",
        )
    _out().print(table)


def print_model(model: ModelDetail) -> None:
    console = _out()
    console.print(Text(model.name, style="bold"), Text(model.description, style="dim"))
    if model.aliases:
        console.print(f"aliases: {_aliases(model.aliases)}", markup=False)
    table = Table("Version", "Runtime", "Artifact", "Size", "SHA-256", "Aliases", "Created")
    for version in model.versions:
        table.add_row(
            str(version.version),
            version.runtime,
            version.artifact_name,
            _size(version.artifact_size),
            version.artifact_sha256[:12],
            ", ".join(version.aliases),
            f"{version.created_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


def print_version(version: VersionInfo) -> None:
    table = Table(show_header=False, box=None, title=f"{version.model} v{version.version}")
    table.add_column(style="bold")
    table.add_column()
    for key, value in (
        ("runtime", version.runtime),
        ("artifact", f"{version.artifact_name} ({_size(version.artifact_size)})"),
        ("sha256", version.artifact_sha256),
        ("trusted", str(version.trusted)),
        ("aliases", ", ".join(version.aliases) or "-"),
        ("created", f"{version.created_at:%Y-%m-%d %H:%M:%S}"),
    ):
        table.add_row(key, value)
    for direction, specs in (
        ("input", version.signature.inputs),
        ("output", version.signature.outputs),
    ):
        for spec in specs:
            table.add_row(direction, f"{spec.name}: {spec.datatype} {spec.shape}")
    if version.metadata:
        table.add_row("metadata", orjson.dumps(version.metadata).decode())
    _out().print(table)


def print_deployments(deployments: Sequence[DeploymentStatus]) -> None:
    if not deployments:
        _out().print(Text("No deployments.", style="dim"))
        return
    table = Table(title="Deployments")
    table.add_column("Deployment", no_wrap=True)
    headers = ("Model", "State", "Replicas", "Batch", "Wait ms", "Queue", "Memory", "Reason")
    for header in headers:
        table.add_column(header)
    for dep in deployments:
        table.add_row(
            dep.name,
            f"{dep.model} v{dep.version} ({dep.runtime})",
            Text(str(dep.state), style=_STATE_STYLE.get(dep.state, "")),
            _replicas(dep),
            str(dep.max_batch_size),
            f"{dep.max_latency_ms:g}",
            str(dep.queue_depth),
            _size(dep.memory_bytes) if dep.memory_bytes else "",
            dep.reason or "",
        )
    _out().print(table)
    for dep in deployments:
        if dep.decisions and dep.autoscaling:
            last = dep.decisions[-1]
            _out().print(
                Text(f"{dep.name}: {last.replicas_from}→{last.replicas_to} {last.reason}",
                     style="dim")
            )  # fmt: skip


def _replicas(dep: DeploymentStatus) -> str:
    """``ready/asked``, the autoscaling bounds and a pin mark."""
    text = f"{dep.ready_replicas}/{dep.replicas}"
    if dep.autoscaling:
        text += f" [{dep.min_replicas}-{dep.max_replicas}]"
    return text + (" pinned" if dep.pinned else "")


def print_status(status: ServerStatus) -> None:
    console = _out()
    console.print(
        Text.assemble(
            ("modelport ", "bold"),
            status.version,
            f"  database {status.database}  backend {status.backend}  models {status.models}",
        )
    )
    print_deployments(status.deployments)


def _aliases(aliases: dict[str, int]) -> str:
    return ", ".join(f"{alias}→v{version}" for alias, version in sorted(aliases.items()))


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# --- progress -----------------------------------------------------------------------------


@contextmanager
def upload_progress(label: str, total: int, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A Rich progress bar on stderr; yields the callback the client reports bytes sent to."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_err(),
        transient=True,  # the result printed next says what was uploaded
        disable=not enabled,
    )
    with progress:
        task = progress.add_task(label, total=total)
        yield lambda sent: progress.update(task, completed=sent)


@contextmanager
def spinner(message: str, *, enabled: bool) -> Iterator[None]:
    """A spinner on stderr while something slow happens (e.g. a model loads)."""
    if not enabled:
        yield
        return
    with _err().status(message):
        yield
