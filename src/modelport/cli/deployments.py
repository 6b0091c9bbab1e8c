"""``modelport deploy | undeploy | scale | deployments``: run model versions as replicas.

These are top-level commands (``main`` registers them) because they are the everyday verbs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from modelport.cli import connect, output
from modelport.cli.traffic import show_traffic
from modelport.errors import InvalidInput

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]


@output.cli_errors
def deploy(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model to deploy.")],
    version: Annotated[
        int | None, typer.Option(min=1, help="Version to serve (default: newest).")
    ] = None,
    alias: Annotated[str | None, typer.Option(help="Serve the version this alias names.")] = None,
    replicas: Annotated[int, typer.Option(min=0, max=64, help="Worker processes.")] = 1,
    max_batch_size: Annotated[
        int, typer.Option(min=1, help="Largest batch sent to one replica.")
    ] = 1,
    max_latency_ms: Annotated[
        float, typer.Option(min=0, help="Longest a request waits for its batch to fill.")
    ] = 5.0,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            help="Runtime option KEY=VALUE (repeatable), e.g. threads=2 or chat_template=@file.",
        ),
    ] = None,
    min_replicas: Annotated[
        int | None,
        typer.Option(min=0, max=64, help="Autoscale from this many replicas (0: scale to zero)."),
    ] = None,
    max_replicas: Annotated[
        int | None, typer.Option(min=1, max=64, help="Autoscale up to this many replicas.")
    ] = None,
    target_inflight: Annotated[
        float, typer.Option(min=0.001, help="Requests in flight per replica to aim for.")
    ] = 4.0,
    scale_down_delay: Annotated[
        float | None, typer.Option(min=0, help="Seconds fewer replicas must suffice first.")
    ] = None,
    idle_timeout: Annotated[
        float | None, typer.Option(min=0.001, help="Idle seconds before scaling to zero.")
    ] = None,
    pin: Annotated[
        bool, typer.Option("--pin", help="Never unload it to make room under the memory budget.")
    ] = False,
    canary: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=100,
            help="Give --version this percent of the model's traffic (deployed as MODEL.vN).",
        ),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the deployment is ready.")] = True,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait with --wait.")] = 120.0,
    as_json: JsonFlag = False,
) -> None:
    """Deploy a model version (replaces the running deployment of that model).

    With ``--canary N`` the stable deployment keeps serving and ``--version`` gets N % of the
    requests (``modelport promote``/``rollback`` finish or undo it).
    """
    if canary is not None:
        if version is None:
            raise InvalidInput("--canary needs --version: the version to send traffic to")
        show_traffic(ctx, name, version, canary, as_json)
        return
    with connect(ctx) as client:
        status = client.deploy(
            name,
            version=version,
            alias=alias,
            replicas=replicas,
            max_batch_size=max_batch_size,
            max_latency_ms=max_latency_ms,
            options=parse_options(option or []),
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            target_inflight=target_inflight,
            pinned=pin,
            **_delays(scale_down_delay, idle_timeout),
        )
        if wait:
            with output.spinner(f"Loading {status.name} v{status.version}...", enabled=not as_json):
                status = client.wait_ready(status.name, timeout)
    if as_json:
        output.print_json(status)
    else:
        output.print_deployments([status])


def _delays(scale_down_delay: float | None, idle_timeout: float | None) -> dict[str, float]:
    """The delay flags given (the server's defaults apply to the others)."""
    given = {"scale_down_delay_s": scale_down_delay, "idle_timeout_s": idle_timeout}
    return {key: value for key, value in given.items() if value is not None}


def parse_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs: JSON scalars (``2``, ``true``) as such, anything else as text;
    ``@path`` reads the text from a file (a chat template, say)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--option {item!r} must look like KEY=VALUE", param="option")
        if raw.startswith("@"):
            try:
                options[key] = Path(raw[1:]).read_text(encoding="utf-8")
            except OSError as exc:
                raise InvalidInput(f"--option {key}: {exc}", param="option") from None
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        options[key] = value if isinstance(value, str | int | float | bool) else raw
    return options


@output.cli_errors
def undeploy(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Deployment name.")]
) -> None:
    """Stop a deployment and its replicas."""
    with connect(ctx) as client:
        client.undeploy(name)
    output.success(f"Undeployed {name}.")


@output.cli_errors
def scale(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    replicas: Annotated[int, typer.Argument(min=0, max=64, help="New number of replicas.")],
    as_json: JsonFlag = False,
) -> None:
    """Change the number of replicas of a deployment."""
    with connect(ctx) as client:
        status = client.scale(name, replicas)
    if as_json:
        output.print_json(status)
    else:
        output.print_deployments([status])


@output.cli_errors
def deployments(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Show only this deployment.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List deployments and the state of their replicas."""
    with connect(ctx) as client:
        found = client.deployments() if name is None else [client.deployment(name)]
    if as_json:
        output.print_json(found)
    else:
        output.print_deployments(found)
