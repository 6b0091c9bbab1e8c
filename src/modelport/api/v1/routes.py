"""``POST /v1/models/{m}:predict`` with ``{"instances": [...]}`` → ``{"predictions": [...]}``.

Instances are rows. For a model with one input each instance is that input's row; with
several inputs each instance is an object keyed by input name. Predictions follow
TF-Serving: one output gives plain values per row, several give an object per row.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from modelport.api.body import read_body
from modelport.api.deps import get_services
from modelport.codecs.dtypes import to_numpy_dtype
from modelport.errors import DtypeMismatch, MalformedRequest, ModelportError, ShapeMismatch
from modelport.runtimes.base import Tensors
from modelport.types.admin import Signature

router = APIRouter(tags=["V1 predict"])


def _array(values: Any, datatype: str, name: str) -> np.ndarray:
    dtype = to_numpy_dtype(datatype)
    try:
        if dtype.kind == "O":
            return np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=object)
        arr = np.asarray(values)
    except ValueError as exc:  # ragged rows
        raise ShapeMismatch(f"instances for {name!r} are ragged: {exc}", param=name) from None
    if arr.dtype.kind not in "biuf":
        raise DtypeMismatch(
            f"instances for {name!r} must be numbers for datatype {datatype}", param=name
        )
    return arr


def _inputs(payload: Any, signature: Signature) -> Tensors:
    if not isinstance(payload, dict):
        raise MalformedRequest('body must be a JSON object like {"instances": [...]}')
    if "instances" in payload:
        instances = payload["instances"]
        if not isinstance(instances, list) or not instances:
            raise MalformedRequest('"instances" must be a non-empty list', param="instances")
        if len(signature.inputs) == 1:
            spec = signature.inputs[0]
            return {spec.name: _array(instances, spec.datatype, spec.name)}
        if not all(isinstance(row, dict) for row in instances):
            raise MalformedRequest(
                "this model has several inputs; each instance must be an object keyed by "
                f"input name ({[t.name for t in signature.inputs]})",
                param="instances",
            )
        names = {t.name: t.datatype for t in signature.inputs}
        return {
            name: _array([row.get(name) for row in instances], dtype, name)
            for name, dtype in names.items()
        }
    if "inputs" in payload:  # TF-Serving's columnar form
        columns = payload["inputs"]
        if not isinstance(columns, dict):
            if len(signature.inputs) != 1:
                raise MalformedRequest('"inputs" must map input names to values', param="inputs")
            columns = {signature.inputs[0].name: columns}
        types = {t.name: t.datatype for t in signature.inputs}
        return {n: _array(v, types.get(n, "FP32"), n) for n, v in columns.items()}
    raise MalformedRequest('body needs "instances" (rows) or "inputs" (columns)')


def _predictions(outputs: Tensors) -> list[Any]:
    lists = {name: _jsonable(arr) for name, arr in outputs.items()}
    if len(lists) == 1:
        return next(iter(lists.values()))
    rows = len(next(iter(lists.values())))
    return [{name: values[i] for name, values in lists.items()} for i in range(rows)]


def _jsonable(arr: np.ndarray) -> list[Any]:
    if arr.dtype.kind == "O":
        flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in arr.flat]
        return list(np.array(flat, dtype=object).reshape(arr.shape).tolist())
    return list(arr.tolist())


async def handle_predict(request: Request, model: str, version: str | None) -> Response:
    """Run one ``:predict`` request (also called by ``api.fastpath``)."""
    services = get_services(request)
    live = services.inference.resolve(model, version)
    started = time.perf_counter()
    status = 500
    try:
        body = await read_body(request, services.settings.max_request_bytes)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedRequest(f"body is not valid JSON: {exc}") from None
        inputs = _inputs(payload, live.version.signature)
        outputs = await services.inference.infer(live, inputs, cast=True)
        answer = orjson.dumps(
            {"predictions": _predictions(outputs)}, option=orjson.OPT_SERIALIZE_NUMPY
        )
        services.inference.answered(live, inputs)  # its one usage event (metering)
        status = 200
    except ModelportError as exc:
        status = exc.status
        raise
    finally:
        services.metrics.observe_request(model, "v1", status, time.perf_counter() - started)
    return Response(answer, media_type="application/json")


@router.post("/v1/models/{model}:predict", summary="Predict (TF-Serving / KServe V1 JSON)")
async def predict(request: Request, model: str) -> Response:
    return await handle_predict(request, model, None)


@router.post("/v1/models/{model}/versions/{version}:predict", summary="Predict on a given version")
async def predict_version(request: Request, model: str, version: str) -> Response:
    return await handle_predict(request, model, version)
