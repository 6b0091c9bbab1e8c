"""The flow chat and completions share: wait for a turn, then stream or collect.

A generation first waits in its model's line (a client that leaves meanwhile gives its turn
up: 499, nothing generated). Streamed, it becomes an SSE response whose body the endpoint
formats (``chunks``); otherwise every choice is collected — stopping at once if the client
goes away — and the endpoint builds the JSON answer from them (``answer``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from modelport.api.openai.sse import ClientDisconnected, EventStreamResponse, until_disconnect
from modelport.engine.llm_generation import Choice, Generation
from modelport.engine.services import Services

Chunks = Callable[[Generation, bool], AsyncIterator[bytes]]
Answer = Callable[[Generation, list[Choice]], BaseModel]


async def respond(
    request: Request,
    services: Services,
    model: str,
    turn: Awaitable[Generation],
    *,
    stream: bool,
    include_usage: bool,
    started: float,
    chunks: Chunks,
    answer: Answer,
) -> Response:
    """Run one chat/completion request to its response (see the module doc)."""
    try:
        generation = await until_disconnect(request.receive, turn)
    except ClientDisconnected:
        return Response(status_code=499)
    if stream:
        services.metrics.observe_request(model, "openai", 200, time.perf_counter() - started)
        return EventStreamResponse(chunks(generation, include_usage))
    try:
        choices = await until_disconnect(request.receive, generation.collect())
    except ClientDisconnected:
        return Response(status_code=499)  # nobody is listening; the generation is stopped
    finally:
        await generation.aclose()
    body = answer(generation, choices)
    services.metrics.observe_request(model, "openai", 200, time.perf_counter() - started)
    return Response(body.model_dump_json(), media_type="application/json")
