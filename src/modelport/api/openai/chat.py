"""``POST /v1/chat/completions``: chat on a text-generation model, streamed or not.

Messages are flattened to ``{"role", "content"}`` with text content (text parts joined by
newlines; ``developer`` is a ``system`` message) and rendered by the model's own chat
template in the worker. Anything else a message may carry (images, tool calls, names) is a
400 naming it.
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
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
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

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def chat_messages(raw: list[Any]) -> list[dict[str, str]]:
    """The conversation as the runtimes take it; ``InvalidInput`` names what is refused."""
    out = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidInput(f"{where} must be an object", param=where)
        for key in message:
            if key not in ("role", "content"):
                raise InvalidInput(
                    f"{where}.{key} is not supported by modelport", param=f"{where}.{key}"
                )
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidInput(
                f"{where}.role {role!r} is not supported; use one of {sorted(_ROLES)}",
                param=f"{where}.role",
            )
        out.append({"role": _ROLES[role], "content": _text(message.get("content"), where)})
    return out


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise InvalidInput(
            f"{where}.content must be a string or a list of text parts", param=f"{where}.content"
        )
    texts = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise InvalidInput(f"{here}: content of type {kind!r} is not supported", param=here)
        if set(part) != {"type", "text"} or not isinstance(part["text"], str):
            raise InvalidInput(f'{here} must be {{"type": "text", "text": "..."}}', param=here)
        texts.append(part["text"])
    return "\n".join(texts)


async def handle_chat(request: Request) -> Response:
    """Run one chat completion request (also called by ``api.fastpath``)."""
    services = get_services(request)
    settings = services.settings
    started = time.perf_counter()
    body = await read_request(request, ChatCompletionRequest, settings.max_request_bytes)
    messages = chat_messages(body.messages)
    n = choices_per_prompt(body, settings)
    params = sampling_params(body, settings, settings.llm_default_max_tokens)
    streamed = bool(body.stream)
    turn = services.llm.generate(
        body.model,
        expand(params, n, messages=messages),
        n=n,
        kind="chat",
        streamed=streamed,
        request_id=new_id("chatcmpl"),
    )
    options = body.stream_options

    def answer(generation: Generation, choices: list[Choice]) -> BaseModel:
        return ChatCompletion(
            id=generation.id,
            created=generation.created,
            model=generation.model,
            system_fingerprint=FINGERPRINT,
            choices=[
                ChatChoice(
                    index=c.index,
                    message=ChatMessage(content=c.text),
                    finish_reason=c.finish_reason,
                )
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
        obj="chat.completion.chunk",
        choices=_choices,
        answer=answer,
    )


def _choice(index: int, delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


async def _choices(
    events: AsyncIterator[GenerationEvent],
) -> AsyncGenerator[dict[str, Any], None]:
    """Chat chunk choices: a role delta opens each choice, then content, then the finish."""
    current = 0
    yield _choice(0, {"role": "assistant", "content": ""})
    async for item in events:
        if item.index != current:  # the next choice begins
            current = item.index
            yield _choice(current, {"role": "assistant", "content": ""})
        if isinstance(item, Delta):
            if item.text:
                yield _choice(current, {"content": item.text})
        else:
            yield _choice(current, {}, item.finish_reason)


@router.post(
    "/v1/chat/completions",
    summary="Chat completion (OpenAI API; stream=true answers server-sent events)",
    response_model=ChatCompletion,
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": ChatCompletionRequest.model_json_schema()}}
        }
    },
)
async def chat_completions(request: Request) -> Response:
    return await handle_chat(request)
