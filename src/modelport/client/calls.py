"""The unit of the sans-IO client: a ``Call`` (a ``Request`` plus the parser of its answer).

``ClientCore`` and its mixins (``client.accounts``, ``client.billing``) build calls with the
helpers here; ``Client`` and ``AsyncClient`` only send them. Nothing in this module does IO.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ValidationError

from modelport import errors
from modelport.client.responses import ERROR_CODE_HEADER, error_from_response, parse_model

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

_JSON = "application/json"

QueryValue = str | int | Decimal | date | datetime | None
"""What a query parameter may be given as; ``None`` leaves the parameter out."""


@dataclass(frozen=True)
class Request:
    """One HTTP request, relative to the client's base URL."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Call(Generic[T]):
    """A request and the parser of its successful response body."""

    request: Request
    parse: Callable[[bytes], T]

    def handle(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> T:
        """The parsed result of a 2xx response; any other status raises its error."""
        if not 200 <= status < 300:
            code = headers.get(ERROR_CODE_HEADER) if headers is not None else None
            raise error_from_response(status, body, code)
        return self.parse(body)


def path_segment(value: str | int) -> str:
    """One URL path segment; names are validated by the server, quoting keeps them whole."""
    return quote(str(value), safe="")


def json_headers() -> dict[str, str]:
    return {"Content-Type": _JSON}


def validated_body(model: type[M], values: dict[str, Any]) -> M:
    """Build a request body, turning pydantic's complaint into an ``InvalidInput``."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise errors.InvalidInput(f"invalid {where}: {first['msg']}", param=where) from None


def json_call(
    method: str,
    path: str,
    body: BaseModel,
    model: type[M],
    *,
    exclude: set[str] | None = None,
    exclude_unset: bool = False,
) -> Call[M]:
    """A call sending ``body`` as JSON and parsing the answer as ``model``.

    Unset (``exclude_unset``) or ``None`` fields are left out, so the server's defaults
    apply; money fields go out as decimal strings (pydantic's JSON form of ``Decimal``).
    """
    content = body.model_dump_json(
        exclude_none=True, exclude=exclude, exclude_unset=exclude_unset
    ).encode()
    request = Request(method, path, content=content, headers=json_headers())
    return Call(request, parse_model(model))


def query(**values: QueryValue) -> dict[str, str]:
    """Query parameters from keyword values, leaving out ``None``.

    Times are sent in ISO 8601, decimals exactly as written (``str(Decimal)``), never as
    floats.
    """
    params: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        params[name] = value.isoformat() if isinstance(value, date) else str(value)
    return params


def given(**values: Any) -> dict[str, Any]:
    """The keyword values that are not ``None``: the fields a request body sets."""
    return {name: value for name, value in values.items() if value is not None}
