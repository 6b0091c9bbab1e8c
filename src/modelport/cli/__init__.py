"""The ``modelport`` command line: a Typer app over the Python client.

Commands live in ``main`` (global options, predict, status, serve), ``models``,
``deployments``, ``accounts`` (tenants, users, keys, whoami, audit) and ``billing`` (prices,
usage, invoices); they share the small helpers below. The CLI reaches the server only through
``modelport.client``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson
import typer

from modelport.client import Client
from modelport.errors import InvalidInput


@dataclass(frozen=True)
class CliState:
    """Global options, stored on the Typer context by the root callback."""

    url: str
    api_key: str | None = None

    def connect(self) -> Client:
        # No --api-key and no MODELPORT_API_KEY: the client falls back to the admin key file.
        return Client(self.url, api_key=self.api_key)


def connect(ctx: typer.Context) -> Client:
    """A client for the server named by the global ``--url``/``--api-key`` options."""
    state = ctx.find_object(CliState)
    if state is None:  # a command invoked without the root app (only in odd embeddings)
        raise InvalidInput("no server configured; run through the modelport app")
    return state.connect()


def load_json_arg(value: str, what: str) -> Any:
    """Parse a JSON option: inline JSON, ``@path`` to read a file, or ``-`` for stdin."""
    if value == "-":
        text = sys.stdin.read()
    elif value.startswith("@"):
        path = Path(value[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidInput(f"cannot read {what} file {str(path)!r}: {exc.strerror}") from None
    else:
        text = value
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None


def decimal_arg(value: str | None, what: str) -> Decimal | None:
    """A money option as an exact ``Decimal`` (never a float); ``None`` when not given."""
    if value is None:
        return None
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        raise InvalidInput(f"{what} must be a decimal number, got {value!r}") from None
    if not number.is_finite() or number < 0:
        raise InvalidInput(f"{what} must be a finite number >= 0, got {value!r}")
    return number


def csv_arg(value: str | None) -> list[str]:
    """A comma-separated option (``--scopes inference,deploy``) as a list, blanks dropped."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]
