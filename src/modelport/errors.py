"""The one exception tree of modelport.

Every failure a caller can cause or observe is one of these. Each class carries a stable
machine ``code`` and the ``HTTPStatus`` it maps to; the API layer turns them into the wire
shape of the route family (V2 ``{"error": ...}``, OpenAI ``{"error": {...}}``, admin JSON).
This module imports no web framework on purpose: engine, runtimes and workers raise these.

::

    ModelportError (500 internal)
    ├── InvalidInput (400 invalid_input)
    │   ├── MalformedRequest (400 malformed_request)     bad JSON / body framing
    │   ├── ShapeMismatch (400 shape_mismatch)
    │   ├── DtypeMismatch (400 dtype_mismatch)
    │   └── UnsafeArtifact (400 unsafe_artifact)         pickle without trusted=True
    ├── Unauthenticated (401 unauthenticated)            no, unknown, expired or revoked key
    ├── PermissionDenied (403 permission_denied)         the key lacks a scope
    ├── TooManyRequests (429 too_many_requests)
    │   ├── RateLimited (429 rate_limit_exceeded)        requests/tokens per minute
    │   └── QuotaExceeded (429 insufficient_quota)       monthly budget spent
    ├── NotFound (404 not_found)
    │   ├── ModelNotFound (404 model_not_found)
    │   ├── VersionNotFound (404 version_not_found)
    │   └── DeploymentNotFound (404 deployment_not_found)
    ├── Conflict (409 conflict)
    ├── PayloadTooLarge (413 payload_too_large)
    ├── Unavailable (503 unavailable)
    │   ├── NotReady (503 not_ready)
    │   └── WorkerCrashed (503 worker_crashed)
    ├── DeadlineExceeded (504 deadline_exceeded)
    ├── ArtifactCorrupted (500 artifact_corrupted)       bytes on disk changed
    └── ModelLoadError (500 model_load_failed)
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar


class ModelportError(Exception):
    """Base of all modelport errors: a message, a code and an HTTP status."""

    code: ClassVar[str] = "internal"
    status: ClassVar[HTTPStatus] = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        # Response headers the error carries (Retry-After, x-ratelimit-*, WWW-Authenticate).
        self.headers = headers or {}
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description, also used to carry errors across process boundaries."""
        return {"type": type(self).__name__, "message": self.message, "param": self.param}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ModelportError:
        """Rebuild an error sent by ``to_dict`` (unknown types become ``ModelportError``)."""
        cls = _BY_NAME.get(str(data.get("type")), ModelportError)
        return cls(str(data.get("message", "")), param=data.get("param"))


class InvalidInput(ModelportError):
    code = "invalid_input"
    status = HTTPStatus.BAD_REQUEST


class MalformedRequest(InvalidInput):
    code = "malformed_request"


class ShapeMismatch(InvalidInput):
    code = "shape_mismatch"


class DtypeMismatch(InvalidInput):
    code = "dtype_mismatch"


class UnsafeArtifact(InvalidInput):
    code = "unsafe_artifact"


class Unauthenticated(ModelportError):
    code = "unauthenticated"
    status = HTTPStatus.UNAUTHORIZED


class PermissionDenied(ModelportError):
    code = "permission_denied"
    status = HTTPStatus.FORBIDDEN


class TooManyRequests(ModelportError):
    code = "too_many_requests"
    status = HTTPStatus.TOO_MANY_REQUESTS


class RateLimited(TooManyRequests):
    code = "rate_limit_exceeded"


class QuotaExceeded(TooManyRequests):
    code = "insufficient_quota"


class NotFound(ModelportError):
    code = "not_found"
    status = HTTPStatus.NOT_FOUND


class ModelNotFound(NotFound):
    code = "model_not_found"


class VersionNotFound(NotFound):
    code = "version_not_found"


class DeploymentNotFound(NotFound):
    code = "deployment_not_found"


class Conflict(ModelportError):
    code = "conflict"
    status = HTTPStatus.CONFLICT


class PayloadTooLarge(ModelportError):
    code = "payload_too_large"
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class Unavailable(ModelportError):
    code = "unavailable"
    status = HTTPStatus.SERVICE_UNAVAILABLE


class NotReady(Unavailable):
    code = "not_ready"


class WorkerCrashed(Unavailable):
    code = "worker_crashed"


class DeadlineExceeded(ModelportError):
    code = "deadline_exceeded"
    status = HTTPStatus.GATEWAY_TIMEOUT


class ArtifactCorrupted(ModelportError):
    code = "artifact_corrupted"


class ModelLoadError(ModelportError):
    code = "model_load_failed"


def _subclasses(cls: type[ModelportError]) -> list[type[ModelportError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_subclasses(sub))
    return found


_ALL = _subclasses(ModelportError)  # parents before children
_BY_NAME: dict[str, type[ModelportError]] = {c.__name__: c for c in _ALL}
_BY_CODE: dict[str, type[ModelportError]] = {c.code: c for c in _ALL}


def error_for_code(code: str | None, status: int) -> type[ModelportError]:
    """The class for a wire ``code``; an unknown code falls back to the most general class
    with that HTTP status (so ``except NotFound`` keeps working against a newer server)."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    return next((c for c in _ALL if c.status == status), ModelportError)
