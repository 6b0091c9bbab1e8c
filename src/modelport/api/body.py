"""Reading request bodies with a size limit (413 before the whole body is in memory)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request

from modelport.errors import MalformedRequest, PayloadTooLarge


def _declared_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise MalformedRequest(f"bad Content-Length header {raw!r}") from None


def check_declared_length(request: Request, limit: int) -> None:
    """Refuse early when the client announces a body over ``limit`` bytes."""
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or ``PayloadTooLarge`` as soon as it passes ``limit`` bytes."""
    check_declared_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    receive = request.receive  # straight from ASGI: this runs on every inference request
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise MalformedRequest("client disconnected before the body was complete")
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def stream_body(request: Request) -> AsyncIterator[bytes]:
    """The body chunk by chunk; a client that hangs up midway is a malformed request."""
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise MalformedRequest("client disconnected before the body was complete") from None
