"""Server-sent events, and stopping work the moment the client goes away.

Generation is the one place where a client hanging up must stop work at once: every token
after that is compute for nobody. Starlette's ``StreamingResponse`` notices a disconnect only
by cancelling a task group, and it leaves the body iterator to be closed by the garbage
collector; so this module has its own small response. The body is pumped by a child task
while the request's task waits on either it or the ASGI ``http.disconnect`` message; on a
disconnect the pump is cancelled, and cancelling it closes the body iterator, which closes
the engine's generation (the worker gets "cancel", the replica is freed, usage is emitted).
The request's own task is never cancelled, so nothing stray is left pending on it.

``until_disconnect`` does the same for a non-streamed answer that takes long to compute.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")

DONE = b"data: [DONE]\n\n"


def event(data: Any) -> bytes:
    """One ``data:`` event carrying ``data`` as JSON."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready."""


async def _wait_disconnect(receive: Receive) -> None:
    # The body has been read, so the next message is the disconnect (or the end of the
    # response, which uvicorn also reports as a disconnect: callers stop this task first).
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it (``ClientDisconnected``) if the client goes away."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        raise ClientDisconnected("the client closed the connection")
    return task.result()


class EventStreamResponse(Response):
    """A ``text/event-stream`` response from an async iterator of ready-made events."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], headers: dict[str, str] | None = None):
        # Not Response.__init__: that would render an empty body and send Content-Length: 0.
        self.status_code = 200
        self.background = None
        self.init_headers(
            {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})}
        )
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not pump.done():
                pump.cancel()  # the client left: closes the events, hence the generation
            await asyncio.gather(pump, watcher, return_exceptions=True)
        error = None if pump.cancelled() else pump.exception()
        if error is not None:
            raise error  # a bug (engine errors become events): let the server log it

    async def _pump(self, send: Send) -> None:
        events = self._events
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code,
                 "headers": self.raw_headers}
            )  # fmt: skip
            async for chunk in events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
