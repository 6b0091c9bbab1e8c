"""``modelport models ...``: push, list, inspect, alias, share and delete registry entries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from modelport.cli import connect, load_json_arg, output
from modelport.cli.sharing import TenantOption, VisibilityOption, report, tenant_list
from modelport.errors import InvalidInput

app = typer.Typer(help="Manage the model registry.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]


@app.command("push")
@output.cli_errors
def push(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            exists=True, readable=True, help="Artifact file, or a model folder (sent as a tar)."
        ),
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name.")],
    runtime: Annotated[
        str, typer.Option("--runtime", "-r", help="sklearn, onnx, torch, gguf, transformers...")
    ],
    task: Annotated[
        str | None,
        typer.Option(
            help="What the model does (stored as metadata 'task'): embeddings, "
            "text-classification, text-generation."
        ),
    ] = None,
    trusted: Annotated[
        bool, typer.Option("--trusted", help="Allow pickle-based artifacts (runs their code).")
    ] = False,
    signature: Annotated[
        str | None, typer.Option(help="Signature JSON, or @file (default: read from model).")
    ] = None,
    metadata: Annotated[str | None, typer.Option(help="Metadata JSON object, or @file.")] = None,
    alias: Annotated[
        list[str] | None, typer.Option("--alias", "-a", help="Alias for the new version.")
    ] = None,
    description: Annotated[str | None, typer.Option(help="Model description.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Upload an artifact (file or model folder) and register it as the model's next version."""
    meta = load_json_arg(metadata, "--metadata") if metadata is not None else None
    if meta is not None and not isinstance(meta, dict):
        raise InvalidInput("--metadata must be a JSON object")
    if task is not None:
        meta = {**(meta or {}), "task": task}
    sig = load_json_arg(signature, "--signature") if signature is not None else None
    with (
        connect(ctx) as client,
        output.upload_progress(path.name, _size(path), enabled=not as_json) as progress,
    ):
        version = client.push_model(
            path,
            name,
            runtime,
            trusted=trusted,
            signature=sig,
            metadata=meta,
            description=description,
            aliases=alias or (),
            progress=progress,
        )
    if as_json:
        output.print_json(version)
    else:
        output.print_version(version)


def _size(path: Path) -> int:
    """Bytes the upload will send (a folder goes as a tar stream)."""
    if path.is_dir():
        from modelport.runtimes.unpack import packed_size

        return packed_size(path)
    return path.stat().st_size


@app.command("list")
@output.cli_errors
def list_models(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List registered models."""
    with connect(ctx) as client:
        models = client.list_models()
    if as_json:
        output.print_json(models)
    else:
        output.print_models(models)


@app.command("get")
@output.cli_errors
def get(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[
        str | None, typer.Option("--version", "-v", help="Show one version (number or alias).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show a model with its versions, or one version with --version."""
    with connect(ctx) as client:
        result: Any = (
            client.get_model(name) if version is None else client.get_version(name, version)
        )
    if as_json:
        output.print_json(result)
    elif version is None:
        output.print_model(result)
    else:
        output.print_version(result)


@app.command("delete")
@output.cli_errors
def delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[
        int | None, typer.Option("--version", "-v", min=1, help="Delete only this version.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a model with all its versions, or one version."""
    target = f"model {name!r}" if version is None else f"version {version} of model {name!r}"
    if not yes:
        typer.confirm(f"Delete {target}?", abort=True)
    with connect(ctx) as client:
        if version is None:
            client.delete_model(name)
        else:
            client.delete_version(name, version)
    output.success(f"Deleted {target}.")


@app.command("alias")
@output.cli_errors
def alias(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help="Alias, e.g. prod.")],
    version: Annotated[int, typer.Argument(min=1, help="Version the alias points to.")],
    as_json: JsonFlag = False,
) -> None:
    """Point an alias of a model at one of its versions."""
    with connect(ctx) as client:
        info = client.set_alias(name, alias_name, version)
    if as_json:
        output.print_json(info)
    else:
        output.success(f"{name}@{alias_name} → v{info.version}")


@app.command("share")
@output.cli_errors
def share(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name.")],
    visibility: VisibilityOption,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Set who may see and call a model: its owner, named tenants, or everyone."""
    tenants = tenant_list(tenant)
    with connect(ctx) as client:
        info = client.set_visibility(name, visibility.value, tenants)
    report(info, tenants, as_json=as_json)
