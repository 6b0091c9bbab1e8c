"""The ``modelport`` Typer app: global options, ``predict``, ``status`` and ``serve``.

Registry commands live in ``cli.models``, deployment commands in ``cli.deployments``,
tenants, users, keys, ``whoami`` and ``audit`` in ``cli.accounts``, prices, ``usage`` and
invoices in ``cli.billing``, datasets, trainers, ``train`` and runs in ``cli.training``,
``traffic``/``canary``/``promote``/``rollback``/``shadow`` and pipelines in ``cli.traffic``.
Every command but ``serve`` is a client of a running server (``--url``, env
``MODELPORT_URL``; the key: ``--api-key``, env ``MODELPORT_API_KEY``, or the admin key file
``<data dir>/admin.key``).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from modelport.cli import (
    CliState,
    accounts,
    billing,
    connect,
    deployments,
    load_json_arg,
    models,
    output,
    traffic,
    training,
)
from modelport.client import DEFAULT_URL
from modelport.errors import InvalidInput
from modelport.settings import Settings

app = typer.Typer(
    name="modelport",
    help="Self-hosted model serving: registry, replicas, adaptive batching, Open Inference V2.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # never print API keys held in local variables
)
app.add_typer(models.app, name="models")
app.command("deploy")(deployments.deploy)
app.command("undeploy")(deployments.undeploy)
app.command("scale")(deployments.scale)
app.command("deployments")(deployments.deployments)
app.add_typer(accounts.tenants_app, name="tenants")
app.add_typer(accounts.users_app, name="users")
app.add_typer(accounts.keys_app, name="keys")
app.command("whoami")(accounts.whoami)
app.command("audit")(accounts.audit)
app.add_typer(billing.prices_app, name="prices")
app.command("usage")(billing.usage)
app.add_typer(billing.invoices_app, name="invoices")
app.add_typer(training.datasets_app, name="datasets")
app.add_typer(training.trainers_app, name="trainers")
app.command("train")(training.train)
app.add_typer(training.runs_app, name="runs")
app.command("traffic")(traffic.traffic)
app.command("canary")(traffic.canary)
app.command("promote")(traffic.promote)
app.command("rollback")(traffic.rollback)
app.command("shadow")(traffic.shadow)
app.add_typer(traffic.pipelines_app, name="pipelines")


class BackendName(StrEnum):
    """Values of ``serve --backend`` (``Settings.backend``)."""

    LOCAL = "local"
    RAY = "ray"


class LogLevel(StrEnum):
    """Levels both ``logging`` and uvicorn accept."""

    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    DEBUG = "debug"


JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option(envvar="MODELPORT_URL", help="Server URL.", show_envvar=True)
    ] = DEFAULT_URL,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="MODELPORT_API_KEY",
            help="API key (else env MODELPORT_API_KEY, else <data dir>/admin.key).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Manage and query a modelport server."""
    ctx.obj = CliState(url=url, api_key=api_key)


@app.command("predict")
@output.cli_errors
def predict(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Deployment to query.")],
    input_: Annotated[
        str,
        typer.Option(
            "--input",
            "-i",
            help='Instances as JSON (a list, or {"instances": [...]}); @file reads a file, '
            "- reads stdin.",
        ),
    ],
    version: Annotated[
        str | None, typer.Option("--version", "-v", help="Version number or alias to query.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run instances through a deployed model and print its predictions."""
    instances = _instances(load_json_arg(input_, "--input"))
    with connect(ctx) as client:
        predictions = client.predict(name, instances, version)
    if as_json:
        output.print_json(predictions)
    else:
        output.print_pretty_json(predictions)


def _instances(data: Any) -> list[Any]:
    if isinstance(data, dict) and "instances" in data:
        data = data["instances"]
    if not isinstance(data, list):
        raise InvalidInput('--input must be a JSON list of instances or {"instances": [...]}')
    return data


@app.command("status")
@output.cli_errors
def status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show the server's version, storage, backend and deployments."""
    with connect(ctx) as client:
        server = client.status()
    if as_json:
        output.print_json(server)
    else:
        output.print_status(server)


@app.command("serve")
@output.cli_errors
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="Port.")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(file_okay=False, help="Database and artifact folder.")
    ] = None,
    demo: Annotated[
        bool | None, typer.Option("--demo/--no-demo", help="Deploy the bundled demo models.")
    ] = None,
    log_level: Annotated[LogLevel | None, typer.Option(case_sensitive=False)] = None,
    backend: Annotated[
        BackendName | None,
        typer.Option(case_sensitive=False, help="Where replicas run: local processes or Ray."),
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray head to join (host:port or 'auto'); --backend ray.")
    ] = None,
) -> None:
    """Run the modelport server in the foreground (options override MODELPORT_* env)."""
    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "data_dir": data_dir,
        "demo_models": demo,
        "log_level": log_level.value if log_level is not None else None,
        "backend": backend.value if backend is not None else None,
        "ray_address": ray_address,
    }
    try:
        settings = Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidInput(f"invalid server settings: {problems}") from None
    from modelport.server import run  # the server's dependencies load only when serving

    run(settings)
