"""``modelport canary | promote | rollback | shadow | traffic`` and ``modelport pipelines``.

Traffic verbs are top-level (``main`` registers them): ``canary iris 3 --weight 10`` deploys
version 3 as ``iris.v3`` if needed and gives it 10 % of the requests; ``promote iris 3``
sends it all; ``rollback iris`` cancels a canary or returns to the version before the
promotion; ``shadow iris 3`` copies every request to version 3 (answers discarded).
``pipelines`` is a sub-app: ``create NAME --step A --step B [--kind ...] [--visibility
public]``, ``list``, ``show``, ``share NAME --visibility shared --tenant T`` (as ``models
share``) and ``delete``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from modelport.cli import connect, output
from modelport.cli.sharing import TenantOption, Visibility, VisibilityOption, report, tenant_list
from modelport.errors import InvalidInput
from modelport.types.traffic import PipelineInfo, PipelineKind, TrafficStatus

pipelines_app = typer.Typer(help="Pipelines: graphs of deployed models served as one model.")
pipelines_app.info.no_args_is_help = True

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
Model = Annotated[str, typer.Argument(help="Model name.")]
_WHEN = re.compile(
    r"^(?P<source>parameter|input):(?P<name>[^\[=!<>]+)(?:\[(?P<index>\d+)\])?"
    r"(?P<op>==|!=|<=|>=|<|>)(?P<value>.+)$"
)


def _show(status: TrafficStatus, as_json: bool) -> None:
    if as_json:
        output.print_json(status)
        return
    table = Table(title=f"Traffic of {status.model}")
    for header in ("Deployment", "Version", "Share", "State"):
        table.add_column(header)
    for r in status.routes:
        mark = " (stable)" if r.deployment == status.stable else ""
        table.add_row(r.deployment + mark, str(r.version), f"{r.weight} %", r.state)
    if status.shadow is not None:
        s = status.shadow
        table.add_row(s.deployment + " (shadow)", str(s.version), "copies", s.state)
    Console(highlight=False).print(table)
    if status.previous:
        output.success(f"rollback returns to {status.previous}")


@output.cli_errors
def traffic(ctx: typer.Context, model: Model, as_json: JsonFlag = False) -> None:
    """Show how a model's requests are split between its deployments."""
    with connect(ctx) as client:
        _show(client.traffic(model), as_json)


@output.cli_errors
def canary(
    ctx: typer.Context,
    model: Model,
    version: Annotated[int, typer.Argument(min=1, help="Version to send traffic to.")],
    weight: Annotated[int, typer.Option(min=0, max=100, help="Percent of requests.")] = 10,
    as_json: JsonFlag = False,
) -> None:
    """Give a version a share of the requests (deploying it as MODEL.vN first if needed)."""
    show_traffic(ctx, model, version, weight, as_json)


def show_traffic(ctx: typer.Context, model: str, version: int, weight: int, as_json: bool) -> None:
    """Route ``weight`` % of ``model`` to ``version`` and print the resulting split."""
    label = f"Routing {weight} % of {model} to v{version}..."
    with connect(ctx) as client, output.spinner(label, enabled=not as_json):
        status = client.canary(model, version, weight)
    _show(status, as_json)


@output.cli_errors
def promote(
    ctx: typer.Context,
    model: Model,
    version: Annotated[
        int | None, typer.Argument(min=1, help="Version (default: the current canary).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Send all of a model's requests to a version; the old one stays up for rollback."""
    with connect(ctx) as client, output.spinner(f"Promoting {model}...", enabled=not as_json):
        status = client.promote(model, version)
    _show(status, as_json)


@output.cli_errors
def rollback(ctx: typer.Context, model: Model, as_json: JsonFlag = False) -> None:
    """Cancel the canary and shadow, or return to the version before the last promotion."""
    with connect(ctx) as client:
        _show(client.rollback(model), as_json)


@output.cli_errors
def shadow(
    ctx: typer.Context,
    model: Model,
    version: Annotated[int | None, typer.Argument(min=1, help="Version to copy to.")] = None,
    off: Annotated[bool, typer.Option("--off", help="Stop shadowing.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Copy every request of a model to a version (its answers are discarded)."""
    if (version is None) != off:
        raise InvalidInput("give a VERSION to shadow, or --off", param="version")
    with connect(ctx) as client:
        _show(client.shadow(model, None if off else version), as_json)


# --- pipelines ----------------------------------------------------------------------------


def parse_when(text: str) -> dict[str, Any]:
    """``parameter:tier==cheap`` or ``input:input[2]>4.0`` → a condition."""
    match = _WHEN.fullmatch(text.strip())
    if match is None:
        raise InvalidInput(
            f"--when {text!r} must look like parameter:NAME==VALUE or input:NAME[COLUMN]>VALUE",
            param="when",
        )
    raw = match["value"]
    value: float | str = raw
    if match["source"] == "input" or re.fullmatch(r"-?\d+(\.\d*)?([eE]-?\d+)?", raw):
        try:
            value = float(raw)
        except ValueError:
            value = raw
    cond: dict[str, Any] = {match["source"]: match["name"], "op": match["op"], "value": value}
    if match["index"] is not None:
        cond["index"] = int(match["index"])
    return cond


def build_steps(steps: list[str], maps: list[str], whens: list[str]) -> list[dict[str, Any]]:
    """Steps from ``--step`` names, ``--map STEP:INPUT=SOURCE`` and ``--when`` (in order)."""
    if len(whens) >= len(steps) and whens:
        raise InvalidInput("give one --when per step but the last (the default)", param="when")
    out: list[dict[str, Any]] = [{"deployment": s} for s in steps]
    for item in maps:
        index, _, pair = item.partition(":")
        target, sep, source = pair.partition("=")
        if not (index.isdigit() and sep and target and source) or int(index) >= len(steps):
            raise InvalidInput(
                f"--map {item!r} must look like STEP:INPUT=SOURCE with STEP a step index",
                param="map",
            )
        out[int(index)].setdefault("inputs", {})[target] = source
    for i, when in enumerate(whens):
        out[i]["when"] = parse_when(when)
    return out


def _print_pipelines(items: list[PipelineInfo]) -> None:
    table = Table(title="Pipelines")
    for header in ("Name", "Kind", "Steps", "Inputs", "Outputs", "Owner", "Visibility"):
        table.add_column(header)
    for p in items:
        table.add_row(
            p.name, p.kind.value, " → ".join(s.deployment for s in p.steps),
            ", ".join(t.name for t in p.inputs_signature),
            ", ".join(t.name for t in p.outputs_signature), p.owner or "", p.visibility,
        )  # fmt: skip
    Console(highlight=False).print(table)


@pipelines_app.command("create")
@output.cli_errors
def create_pipeline(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Pipeline name (served like a model).")],
    step: Annotated[list[str], typer.Option("--step", help="A deployment, in order.")],
    kind: Annotated[PipelineKind, typer.Option(help="How steps combine.")] = (
        PipelineKind.SEQUENCE
    ),
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="Sequence: STEP:INPUT=SOURCE (an earlier output)."),
    ] = None,
    when: Annotated[
        list[str] | None,
        typer.Option(help="Switch, per step but the last: parameter:N==V or input:N[i]>V."),
    ] = None,
    output_: Annotated[
        list[str] | None, typer.Option("--output", help="Ensembles: outputs to combine.")
    ] = None,
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
    visibility: VisibilityOption = Visibility.PRIVATE,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a pipeline over deployed models (validated by the server)."""
    steps = build_steps(step, map_ or [], when or [])
    tenants = tenant_list(tenant)
    with connect(ctx) as client:
        info = client.create_pipeline(
            name, steps, kind=kind.value, outputs=output_ or [], description=description,
            visibility=visibility.value, tenants=tenants,
        )  # fmt: skip
    if as_json:
        output.print_json(info)
    else:
        _print_pipelines([info])


@pipelines_app.command("list")
@output.cli_errors
def list_pipelines(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The pipelines you may use."""
    with connect(ctx) as client:
        items = client.list_pipelines()
    if as_json:
        output.print_json(items)
    else:
        _print_pipelines(items)


@pipelines_app.command("show")
@output.cli_errors
def show_pipeline(
    ctx: typer.Context, name: Annotated[str, typer.Argument()], as_json: JsonFlag = False
) -> None:
    """One pipeline with its steps and signature."""
    with connect(ctx) as client:
        info = client.get_pipeline(name)
    if as_json:
        output.print_json(info)
    else:
        output.print_pretty_json(info)


@pipelines_app.command("share")
@output.cli_errors
def share_pipeline(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
    visibility: VisibilityOption,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Set who may see and call a pipeline: its owner, named tenants, or everyone."""
    tenants = tenant_list(tenant)
    with connect(ctx) as client:
        info = client.set_pipeline_visibility(name, visibility.value, tenants)
    report(info, tenants, as_json=as_json)


@pipelines_app.command("delete")
@output.cli_errors
def delete_pipeline(
    ctx: typer.Context, name: Annotated[str, typer.Argument()], as_json: JsonFlag = False
) -> None:
    """Delete a pipeline (its steps keep running)."""
    with connect(ctx) as client:
        client.delete_pipeline(name)
    if as_json:
        output.print_json({"deleted": name})
    else:
        output.success(f"deleted pipeline {name}")
