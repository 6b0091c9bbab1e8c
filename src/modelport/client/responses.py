"""Reading server responses: 2xx bodies into wire models, everything else into errors.

Errors come back as the very ``modelport.errors`` classes the server raised, rebuilt from
the admin shape ``{"error": {"code", "message", "param"}}`` or, on inference routes whose
body has no room for a code, from the ``X-Modelport-Error`` header.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from modelport import errors

M = TypeVar("M", bound=BaseModel)

ERROR_CODE_HEADER = "X-Modelport-Error"
"""Carries the error code where the body's shape has no room for it (V1/V2 inference)."""


def error_class(code: str | None, status: int) -> type[errors.ModelportError]:
    """The error class for a wire ``code`` (see ``modelport.errors.error_for_code``)."""
    return errors.error_for_code(code, status)


def error_from_response(status: int, body: bytes, code: str | None = None) -> errors.ModelportError:
    """Rebuild the server's exception from an error response.

    Understands the admin shape ``{"error": {"code", "message", "param"}}``, the V2 shape
    ``{"error": "message"}`` (whose code, if any, comes in the ``X-Modelport-Error`` header,
    passed as ``code``), FastAPI's ``{"detail": ...}`` and, for anything else (a proxy's
    HTML page), the status and the start of the body.
    """
    param: str | None = None
    message = ""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        detail = data.get("error", data.get("detail"))
        if isinstance(detail, dict):
            code = _str_or_none(detail.get("code")) or code
            param = _str_or_none(detail.get("param"))
            message = str(detail.get("message", ""))
        elif detail is not None:
            message = detail if isinstance(detail, str) else orjson.dumps(detail).decode()
    if not message:
        text = body[:200].decode("utf-8", errors="replace").strip()
        message = f"HTTP {status}" + (f": {text}" if text else "")
    return error_class(code, status)(message, param=param)


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def transport_error(exc: httpx.TransportError, base_url: str) -> errors.ModelportError:
    """The modelport error for a request that got no response at all."""
    if isinstance(exc, httpx.TimeoutException):
        return errors.DeadlineExceeded(f"request to {base_url} timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError):
        return errors.Unavailable(f"cannot connect to the modelport server at {base_url}: {exc}")
    return errors.Unavailable(f"connection to {base_url} failed: {exc}")


def parse_model(model: type[M]) -> Callable[[bytes], M]:
    def parse(body: bytes) -> M:
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise _unexpected(model.__name__, exc) from None

    return parse


def parse_list(model: type[M]) -> Callable[[bytes], list[M]]:
    adapter = TypeAdapter(list[model])  # type: ignore[valid-type]

    def parse(body: bytes) -> list[M]:
        try:
            result: list[M] = adapter.validate_json(body)
        except ValidationError as exc:
            raise _unexpected(f"list of {model.__name__}", exc) from None
        return result

    return parse


def parse_nothing(body: bytes) -> None:
    return None


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.ModelportError(f"the server sent invalid JSON: {exc}") from None


def _unexpected(what: str, exc: ValidationError) -> errors.ModelportError:
    return errors.ModelportError(
        f"unexpected response from the server (expected {what}): "
        f"{exc.error_count()} problem(s), first: {exc.errors()[0]['msg']}"
    )
