"""The flow chat and completions share: wait for a turn, then stream or collect.

A generation first waits in its model's line (a client that leaves meanwhile gives its turn
up: 499, nothing generated). Streamed, it becomes an SSE response: ``stream_chunks`` frames
every chunk (id, object, model, the usage chunk, ``[DONE]``, an error event if the stream
breaks) and the endpoint only shapes the choices (``choices``); otherwise every choice is
collected — stopping at once if the client goes away — and the endpoint builds the JSON
answer from them (``answer``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from modelport.api.errors import openai_error
from modelport.api.openai.sampling import FINGERPRINT, usage
from modelport.api.openai.sse import (
    DONE,
    ClientDisconnected,
    EventStreamResponse,
    event,
    until_disconnect,
)
from modelport.engine.llm_generation import Choice, Generation, GenerationEvent
from modelport.engine.services import Services
from modelport.errors import ModelportError

# Turns the generation's events into the endpoint's choice objects, one per chunk.
Choices = Callable[[AsyncIterator[GenerationEvent]], AsyncGenerator[dict[str, Any], None]]
Answer = Callable[[Generation, list[Choice]], BaseModel]


async def stream_chunks(
    generation: Generation, include_usage: bool, obj: str, choices: Choices
) -> AsyncIterator[bytes]:
    """SSE chunks of object type ``obj``, the usage chunk if asked for, then ``[DONE]``."""
    head = {
        "id": generation.id,
        "object": obj,
        "created": generation.created,
        "model": generation.model,
        "system_fingerprint": FINGERPRINT,
    }
    tail: dict[str, Any] = {"usage": None} if include_usage else {}
    try:
        try:
            async with (
                aclosing(generation.events()) as events,
                aclosing(choices(events)) as shaped,
            ):
                async for choice in shaped:
                    yield event({**head, "choices": [choice], **tail})
        except ModelportError as exc:  # the stream broke after it began: tell the client so
            yield event(openai_error(exc.status, exc.message, exc.code, exc.param))
            return
        if include_usage:
            yield event({**head, "choices": [], "usage": usage(generation)})
        yield DONE
    finally:  # also when closed before the first event: free the replica
        await generation.aclose()


async def respond(
    request: Request,
    services: Services,
    model: str,
    turn: Awaitable[Generation],
    *,
    stream: bool,
    include_usage: bool,
    started: float,
    obj: str,
    choices: Choices,
    answer: Answer,
) -> Response:
    """Run one chat/completion request to its response (see the module doc)."""
    try:
        generation = await until_disconnect(request.receive, turn)
    except ClientDisconnected:
        return Response(status_code=499)
    if stream:
        services.metrics.observe_request(model, "openai", 200, time.perf_counter() - started)
        return EventStreamResponse(stream_chunks(generation, include_usage, obj, choices))
    try:
        collected = await until_disconnect(request.receive, generation.collect())
    except ClientDisconnected:
        return Response(status_code=499)  # nobody is listening; the generation is stopped
    finally:
        await generation.aclose()
    body = answer(generation, collected)
    services.metrics.observe_request(model, "openai", 200, time.perf_counter() - started)
    return Response(body.model_dump_json(), media_type="application/json")
