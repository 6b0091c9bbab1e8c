"""The one error handler: every failure becomes the wire shape of its route family.

- V2 (``/v2/...``) and V1 predict (``/v1/models/...:predict``): ``{"error": "message"}``
  (what Triton, KServe and MLServer clients expect);
- OpenAI (every other ``/v1/...`` path): ``{"error": {"message", "type", "param", "code"}}``
  with the statuses the ``openai`` SDK maps to its exceptions (``openai_error``);
- admin (``/api/...``) and everything else: ``{"error": {"code", "message", "param"}}``.

Statuses come from the exception class (``modelport.errors``), so there is one table of
codes, not one handler per exception.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from modelport.errors import ModelportError

log = logging.getLogger("modelport.api")


def _is_inference_route(path: str) -> bool:
    return path.startswith("/v2") or (path.startswith("/v1/models/") and path.endswith(":predict"))


def _is_openai_route(path: str) -> bool:
    return path.startswith("/v1/") and not _is_inference_route(path)


# OpenAI's error ``type`` by status; the SDK picks its exception class by status alone.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
# Our codes that OpenAI spells differently.
_OPENAI_CODES = {"deployment_not_found": "model_not_found", "unauthenticated": "invalid_api_key"}


def openai_error(status: int, message: str, code: str, param: str | None) -> dict[str, Any]:
    """The body of an OpenAI API error (also sent as an SSE event when a stream fails)."""
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {
        "error": {
            "message": message,
            "type": kind,
            "param": param,
            "code": _OPENAI_CODES.get(code, code),
        }
    }


def error_response(
    path: str,
    status: int,
    message: str,
    code: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Render one error in the shape of the route family that ``path`` belongs to."""
    body: dict[str, Any]
    if _is_inference_route(path):
        # The body shape is fixed by the protocol; the code rides in a header for our client.
        body = {"error": message}
        headers = {**(headers or {}), "X-Modelport-Error": code}
    elif _is_openai_route(path):
        body = openai_error(status, message, code, param)
    else:
        body = {"error": {"code": code, "message": message, "param": param}}
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts = []
    first_field: str | None = None
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc)
        first_field = first_field or field or None
        parts.append(f"{field or 'body'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts), first_field


def render_exception(request: Request, exc: Exception) -> Response:
    """The response for a ``ModelportError`` or an unexpected exception on ``request``."""
    path = request.url.path
    if isinstance(exc, ModelportError):
        if exc.status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            log.warning("%s %s -> %s: %s", request.method, path, exc.code, exc)
        return error_response(
            path, exc.status, exc.message, exc.code, exc.param, exc.headers or None
        )
    log.error("unhandled error on %s %s", request.method, path, exc_info=exc)
    return error_response(path, 500, f"internal error: {type(exc).__name__}", "internal")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``; routes just raise ``ModelportError``s."""

    async def on_error(request: Request, exc: Exception) -> Response:
        return render_exception(request, exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        message, field = _validation_message(exc)
        return error_response(request.url.path, 400, message, "invalid_input", field)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        return error_response(
            request.url.path, exc.status_code, str(exc.detail), code, headers=exc.headers
        )

    app.add_exception_handler(ModelportError, on_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_error)
