"""``POST /v1/completions``: raw-prompt completion on a text-generation model.

``prompt`` is a string or a list of strings (each gets ``n`` choices, indexed prompt by
prompt as OpenAI does). Token-array prompts are refused: the API process holds no
tokenizer, and the runtimes take text. ``max_tokens`` defaults to 16, OpenAI's default for
this endpoint.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import Response

from modelport.api.deps import get_services
from modelport.api.openai.protocol import (
    Completion,
    CompletionChoice,
    CompletionRequest,
    Usage,
    read_request,
)
from modelport.api.openai.respond import respond
from modelport.api.openai.sampling import (
    FINGERPRINT,
    choices_per_prompt,
    expand,
    new_id,
    sampling_params,
    usage,
)
from modelport.engine.llm_generation import Choice, Delta, Generation, GenerationEvent
from modelport.errors import InvalidInput

router = APIRouter(tags=["OpenAI"])

DEFAULT_MAX_TOKENS = 16
MAX_PROMPTS = 64


def prompts(value: Any) -> list[str]:
    """The prompt(s) of a request; ``InvalidInput`` naming ``prompt`` otherwise."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        if len(value) > MAX_PROMPTS:
            raise InvalidInput(f"prompt takes at most {MAX_PROMPTS} strings", param="prompt")
        return value
    if isinstance(value, list) and value and all(isinstance(p, int | list) for p in value):
        raise InvalidInput(
            "token-array prompts are not supported by modelport; send the text", param="prompt"
        )
    raise InvalidInput("prompt must be a string or a non-empty list of strings", param="prompt")


async def handle_completion(request: Request) -> Response:
    """Run one completion request (also called by ``api.fastpath``)."""
    services = get_services(request)
    settings = services.settings
    started = time.perf_counter()
    body = await read_request(request, CompletionRequest, settings.max_request_bytes)
    texts = prompts(body.prompt)
    n = choices_per_prompt(body, settings)
    if n * len(texts) > settings.llm_max_n * MAX_PROMPTS:
        raise InvalidInput("too many choices: n times the number of prompts", param="n")
    params = sampling_params(body, settings, DEFAULT_MAX_TOKENS)
    streamed = bool(body.stream)
    turn = services.llm.generate(
        body.model,
        expand(params, n, prompts=texts),
        n=n,
        kind="completion",
        streamed=streamed,
        request_id=new_id("cmpl"),
    )
    options = body.stream_options

    def answer(generation: Generation, choices: list[Choice]) -> BaseModel:
        return Completion(
            id=generation.id,
            created=generation.created,
            model=generation.model,
            system_fingerprint=FINGERPRINT,
            choices=[
                CompletionChoice(index=c.index, text=c.text, finish_reason=c.finish_reason)
                for c in choices
            ],
            usage=Usage(**usage(generation)),
        )

    return await respond(
        request,
        services,
        body.model,
        turn,
        stream=streamed,
        include_usage=bool(options is not None and options.include_usage),
        started=started,
        obj="text_completion",
        choices=_choices,
        answer=answer,
    )


async def _choices(
    events: AsyncIterator[GenerationEvent],
) -> AsyncGenerator[dict[str, Any], None]:
    """Text completion chunk choices: each piece of text, then the finish."""
    async for item in events:
        text, finish = (item.text, None) if isinstance(item, Delta) else ("", item.finish_reason)
        if text or finish:
            yield {"index": item.index, "text": text, "logprobs": None, "finish_reason": finish}


@router.post(
    "/v1/completions",
    summary="Text completion (OpenAI API; stream=true answers server-sent events)",
    response_model=Completion,
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": CompletionRequest.model_json_schema()}}
        }
    },
)
async def completions(request: Request) -> Response:
    return await handle_completion(request)
