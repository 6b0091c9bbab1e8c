"""Open Inference Protocol V2 over REST, with the binary tensor extension.

The infer route is the hot path: it reads the body with a size limit, decodes it with the
hand-written codec (no pydantic per request), and answers with raw bytes.
"""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from modelport import __version__
from modelport.api.body import read_body
from modelport.api.deps import ServicesDep, get_services
from modelport.codecs.v2 import decode_request, encode_response, parse_header_length
from modelport.engine.routing import Routed, Target
from modelport.errors import ModelportError, NotReady
from modelport.types.admin import DeploymentState, VersionInfo
from modelport.types.v2 import InferenceRequest, InferenceResponse, ModelMetadata, ServerMetadata

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol V2"])

HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data"]


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


@router.get("/health/live", summary="Server liveness")
async def live() -> Response:
    return _json({"live": True})


@router.get("/health/ready", summary="Server readiness")
async def ready(request: Request) -> Response:
    if not getattr(request.app.state, "ready", False):
        raise NotReady("server is starting")
    return _json({"ready": True})


@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="modelport", version=__version__, extensions=EXTENSIONS)


def _metadata(version: VersionInfo, versions: list[str]) -> ModelMetadata:
    sig = version.signature
    return ModelMetadata.model_validate(
        {
            "name": version.model,
            "versions": versions,
            "platform": version.runtime,
            "inputs": [t.model_dump() for t in sig.inputs],
            "outputs": [t.model_dump() for t in sig.outputs],
        }
    )


async def _model_metadata(services: ServicesDep, model: str, version: str | None) -> ModelMetadata:
    try:
        live = services.inference.resolve(model, version)
    except ModelportError:
        # Not deployed (or not that version): registered models still have metadata.
        info = await run_in_threadpool(services.registry.get_version, model, version or "latest")
        detail = await run_in_threadpool(services.registry.get_model, model)
        return _metadata(info, [str(v.version) for v in detail.versions])
    return _metadata(live.version, [str(live.record.version)])


@router.get("/models/{model}", response_model=ModelMetadata, summary="Model metadata")
async def model_metadata(services: ServicesDep, model: str) -> ModelMetadata:
    return await _model_metadata(services, model, None)


@router.get(
    "/models/{model}/versions/{version}",
    response_model=ModelMetadata,
    summary="Model version metadata",
)
async def model_version_metadata(services: ServicesDep, model: str, version: str) -> ModelMetadata:
    return await _model_metadata(services, model, version)


def _check_ready(services: ServicesDep, live: Target) -> Response:
    if isinstance(live, Routed):  # a pipeline or a shadowed split: ready when its parts are
        reason = live.readiness()
        if reason is not None:
            raise NotReady(f"model {live.record.name!r} is not ready: {reason}")
        return _json({"name": live.record.name, "ready": True})
    status = services.deployments.status(live.record.name)
    if status.state != DeploymentState.READY:
        raise NotReady(
            f"model {live.record.name!r} is {status.state.value}"
            + (f": {status.reason}" if status.reason else "")
        )
    return _json({"name": live.record.name, "ready": True})


@router.get("/models/{model}/ready", summary="Model readiness")
async def model_ready(services: ServicesDep, model: str) -> Response:
    return _check_ready(services, services.inference.resolve(model))


@router.get("/models/{model}/versions/{version}/ready", summary="Model version readiness")
async def model_version_ready(services: ServicesDep, model: str, version: str) -> Response:
    return _check_ready(services, services.inference.resolve(model, version))


@router.get("/models/{model}/config", summary="Model configuration (Triton extension)")
async def model_config(services: ServicesDep, model: str) -> Response:
    live = services.inference.resolve(model)
    sig = live.version.signature
    return _json(
        {
            "name": model,
            "platform": live.version.runtime,
            "max_batch_size": live.record.max_batch_size,
            "input": [{"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": t.shape}
                      for t in sig.inputs],
            "output": [{"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": t.shape}
                       for t in sig.outputs],
        }
    )  # fmt: skip


async def handle_infer(request: Request, model: str, version: str | None) -> Response:
    """Decode, run and encode one V2 inference (also called by ``api.fastpath``)."""
    services = get_services(request)
    live = services.inference.resolve(model, version)  # unknown names never become labels
    started = time.perf_counter()
    status = 500
    try:
        body = await read_body(request, services.settings.max_request_bytes)
        req = decode_request(body, parse_header_length(request.headers.get(HEADER_LENGTH)))
        outputs = await services.inference.infer(live, req.inputs, req.parameters)
        payload, json_length = encode_response(
            model,
            str(live.record.version),
            req.id,
            outputs,
            req.outputs,
            req.binary_output_default,
        )
        services.inference.answered(live, req.inputs)  # its one usage event (metering)
        status = 200
    except ModelportError as exc:
        status = exc.status
        raise
    finally:
        services.metrics.observe_request(model, "v2", status, time.perf_counter() - started)
    if json_length is None:
        return Response(payload, media_type="application/json")
    return Response(
        payload,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )


_INFER_DOC = {
    "requestBody": {
        "content": {
            "application/json": {"schema": InferenceRequest.model_json_schema()},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        }
    }
}


@router.post(
    "/models/{model}/infer",
    summary="Inference (JSON or binary tensors)",
    response_model=InferenceResponse,
    openapi_extra=_INFER_DOC,
)
async def infer(request: Request, model: str) -> Response:
    return await handle_infer(request, model, None)


@router.post(
    "/models/{model}/versions/{version}/infer",
    summary="Inference on a given version",
    response_model=InferenceResponse,
    openapi_extra=_INFER_DOC,
)
async def infer_version(request: Request, model: str, version: str) -> Response:
    return await handle_infer(request, model, version)
