"""The ``modelport`` command line: a Typer app over the Python client.

Commands live in ``main`` (global options, predict, status, serve), ``models`` and
``deployments``; they share the small helpers below. The CLI reaches the server only through
``modelport.client``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
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
