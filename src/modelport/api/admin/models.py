"""Registry routes: upload artifacts, register versions, aliases, list/get/delete."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from modelport.api.body import check_declared_length, stream_body
from modelport.api.deps import ServicesDep
from modelport.errors import InvalidInput
from modelport.types.admin import (
    ArtifactInfo,
    CreateVersion,
    ModelDetail,
    ModelInfo,
    SetAlias,
    SetVisibility,
    VersionInfo,
)

router = APIRouter(prefix="/api", tags=["registry"])

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_FLUSH_BYTES = 1 << 20  # hand writes to a thread in ~1 MiB pieces, not per network chunk


@router.post(
    "/artifacts",
    status_code=201,
    response_model=ArtifactInfo,
    summary="Upload an artifact (raw body, streamed to the content-addressed store)",
    openapi_extra={"requestBody": {"content": {"application/octet-stream": _BINARY}}},
)
async def upload_artifact(
    services: ServicesDep,
    request: Request,
    sha256: str | None = Query(default=None, pattern=r"^[0-9a-f]{64}$"),
) -> ArtifactInfo:
    limit = services.settings.max_upload_bytes
    check_declared_length(request, limit)
    writer = services.artifacts.begin(max_bytes=limit)
    with writer:
        pending: list[bytes] = []
        size = 0
        async for chunk in stream_body(request):
            pending.append(chunk)
            size += len(chunk)
            if size >= _FLUSH_BYTES:
                await run_in_threadpool(writer.write, b"".join(pending))
                pending, size = [], 0
        if pending:
            await run_in_threadpool(writer.write, b"".join(pending))
        info = await run_in_threadpool(writer.commit, sha256)
    if info.size == 0:
        raise InvalidInput("empty artifact: the request body had no bytes")
    return info


@router.get("/models", response_model=list[ModelInfo], summary="List models")
def list_models(services: ServicesDep) -> list[ModelInfo]:
    return services.registry.list_models()


@router.get("/models/{name}", response_model=ModelDetail, summary="A model and its versions")
def get_model(services: ServicesDep, name: str) -> ModelDetail:
    return services.registry.get_model(name)


@router.delete("/models/{name}", status_code=204, summary="Delete a model and all its versions")
def delete_model(services: ServicesDep, name: str) -> Response:
    services.registry.delete_model(name)
    return Response(status_code=204)


@router.post(
    "/models/{name}/versions",
    status_code=201,
    response_model=VersionInfo,
    summary="Register an uploaded artifact as a new version (creates the model if needed)",
)
async def create_version(services: ServicesDep, name: str, body: CreateVersion) -> VersionInfo:
    return await services.models.register(name, body)


@router.get(
    "/models/{name}/versions/{ref}",
    response_model=VersionInfo,
    summary="A version by number, alias or 'latest'",
)
def get_version(services: ServicesDep, name: str, ref: str) -> VersionInfo:
    return services.registry.get_version(name, ref)


@router.delete("/models/{name}/versions/{version}", status_code=204, summary="Delete a version")
def delete_version(services: ServicesDep, name: str, version: int) -> Response:
    services.registry.delete_version(name, version)
    return Response(status_code=204)


@router.put("/models/{name}/aliases/{alias}", response_model=VersionInfo, summary="Point an alias")
def set_alias(services: ServicesDep, name: str, alias: str, body: SetAlias) -> VersionInfo:
    return services.registry.set_alias(name, alias, body.version)


@router.delete("/models/{name}/aliases/{alias}", status_code=204, summary="Remove an alias")
def delete_alias(services: ServicesDep, name: str, alias: str) -> Response:
    services.registry.delete_alias(name, alias)
    return Response(status_code=204)


@router.put(
    "/models/{name}/visibility",
    response_model=ModelInfo,
    summary="Make a model private, public, or shared with named tenants (owner or admin)",
)
def set_visibility(services: ServicesDep, name: str, body: SetVisibility) -> ModelInfo:
    return services.registry.set_visibility(name, body.visibility, body.tenants)
