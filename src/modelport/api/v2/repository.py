"""The V2 model repository extension (as Triton and KServe define it).

- ``GET|POST /v2/repository/index``: every model the caller may see, deployed or not, with
  its state (``READY``, ``LOADING`` or ``UNAVAILABLE`` and why); body ``{"ready": true}``
  lists only the ready ones.
- ``POST /v2/repository/models/{m}/load``: start the deployment's replicas (deploying the
  newest version with the defaults if it is registered but not deployed) and answer once it
  serves; bounded by ``cold_start_timeout_s`` (503 past it).
- ``POST /v2/repository/models/{m}/unload``: stop its replicas; the deployment stays, but
  requests get 503 (no cold start) until it is loaded again.

Load and unload need the ``deploy`` scope and change rights on the model; what the caller
may not see is 404, like a name that never existed.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from modelport.api.body import read_body
from modelport.api.deps import ServicesDep
from modelport.errors import InvalidInput, MalformedRequest, ModelLoadError
from modelport.types.admin import DeploymentState, DeploymentStatus

router = APIRouter(prefix="/v2/repository", tags=["Open Inference Protocol V2"])

_MAX_BODY = 64 * 1024
_UNLOAD_PARAMETERS = frozenset({"unload_dependents"})


def _json(data: object) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


async def _body(request: Request) -> dict[str, Any]:
    """The optional JSON object body (tritonclient sends none, or ``{"parameters": ...}``)."""
    raw = await read_body(request, _MAX_BODY)
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    return body


def _parameters(body: dict[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be a JSON object", param="parameters")
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise InvalidInput(
            f"unsupported parameter(s) {', '.join(unknown)}: models load from the registry "
            "as registered (no config or file overrides)",
            param=unknown[0],
        )
    return params


def _entry(status: DeploymentStatus) -> dict[str, Any]:
    if status.state == DeploymentState.READY:
        return {"name": status.name, "version": str(status.version), "state": "READY"}
    if status.state == DeploymentState.LOADING:
        return {"name": status.name, "version": str(status.version), "state": "LOADING"}
    reasons = {
        DeploymentState.IDLE: "idle at zero replicas: loads on the next request",
        DeploymentState.STOPPED: "unloaded" if status.unloaded else "scaled to 0 replicas",
    }
    reason = reasons.get(status.state) or status.reason or status.state.value
    return {
        "name": status.name,
        "version": str(status.version),
        "state": "UNAVAILABLE",
        "reason": reason,
    }


@router.get("/index", summary="Model repository index")
@router.post("/index", summary="Model repository index")
async def index(request: Request, services: ServicesDep) -> Response:
    body = await _body(request) if request.method == "POST" else {}
    ready_only = body.get("ready", False)
    if not isinstance(ready_only, bool):
        raise InvalidInput("'ready' must be true or false", param="ready")
    entries = {s.name: _entry(s) for s in services.deployments.statuses()}
    for model in await run_in_threadpool(services.registry.list_models):
        if model.name not in entries:
            entries[model.name] = {"name": model.name, "state": "UNAVAILABLE",
                                   "reason": "not deployed"}  # fmt: skip
    found = [entries[name] for name in sorted(entries)]
    return _json([e for e in found if e["state"] == "READY"] if ready_only else found)


@router.post("/models/{model}/load", summary="Load a model (start its replicas)")
async def load(request: Request, services: ServicesDep, model: str) -> Response:
    _parameters(await _body(request), frozenset())
    status = await services.deployments.load(model)
    if status.state == DeploymentState.FAILED:
        raise ModelLoadError(f"model {model!r} failed to load: {status.reason}", param="model")
    return _json({})


@router.post("/models/{model}/unload", summary="Unload a model (stop its replicas)")
async def unload(request: Request, services: ServicesDep, model: str) -> Response:
    _parameters(await _body(request), _UNLOAD_PARAMETERS)
    await services.deployments.unload(model)
    return _json({})
