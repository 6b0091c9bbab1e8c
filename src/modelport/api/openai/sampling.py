"""From an OpenAI chat/completion request to the engine's generation requests.

Shared by ``chat`` and ``completions``: sampling settings (with the server's limits), ``n``
choices per prompt (choice ``i`` gets ``seed + i``, so a seeded request is reproducible yet
its choices differ), stop strings, ids and the ``usage`` object.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from modelport import __version__
from modelport.api.openai.protocol import MAX_STOP, ChatCompletionRequest, SamplingRequest
from modelport.engine.llm_generation import Generation
from modelport.errors import InvalidInput
from modelport.runtimes.text import GenerationRequest, SamplingParams
from modelport.settings import Settings

FINGERPRINT = f"modelport-{__version__}"


def new_id(prefix: str) -> str:
    """A fresh response id such as ``chatcmpl-<hex>``; also the usage event's request id."""
    return f"{prefix}-{uuid.uuid4().hex}"


def sampling_params(
    request: SamplingRequest, settings: Settings, default_max_tokens: int
) -> SamplingParams:
    """The request's sampling settings, checked against the server's limits."""
    max_tokens = request.max_tokens
    if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens is not None:
        if max_tokens is not None and max_tokens != request.max_completion_tokens:
            raise InvalidInput(
                "max_tokens and max_completion_tokens disagree; set only max_completion_tokens",
                param="max_tokens",
            )
        max_tokens = request.max_completion_tokens
    if max_tokens is None:
        max_tokens = min(default_max_tokens, settings.llm_max_tokens)
    elif max_tokens > settings.llm_max_tokens:
        raise InvalidInput(
            f"max_tokens={max_tokens} is above this server's limit of "
            f"{settings.llm_max_tokens} (llm_max_tokens)",
            param="max_tokens",
        )
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        stop=_stops(request.stop),
        seed=request.seed,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
    )


def choices_per_prompt(request: SamplingRequest, settings: Settings) -> int:
    """``n``, within the server's limit."""
    n = request.n or 1
    if n > settings.llm_max_n:
        raise InvalidInput(
            f"n={n} is above this server's limit of {settings.llm_max_n} (llm_max_n)",
            param="n",
        )
    return n


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP:
        raise InvalidInput(f"stop takes at most {MAX_STOP} sequences", param="stop")
    if any(not s for s in stops):
        raise InvalidInput("stop sequences must not be empty", param="stop")
    return stops


def expand(
    params: SamplingParams,
    n: int,
    *,
    prompts: list[str] | None = None,
    messages: list[dict[str, Any]] | None = None,
) -> list[GenerationRequest]:
    """``n`` consecutive requests per prompt (or for the one conversation)."""
    out: list[GenerationRequest] = []
    for prompt in prompts if prompts is not None else [None]:
        for i in range(n):
            seeded = params if params.seed is None else replace(params, seed=params.seed + i)
            out.append(GenerationRequest(params=seeded, prompt=prompt, messages=messages))
    return out


def usage(generation: Generation) -> dict[str, int]:
    """OpenAI's ``usage`` object for a generation."""
    prompt, completion = generation.prompt_tokens, generation.completion_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
