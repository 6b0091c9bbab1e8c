"""The OpenAI wire format: request models, their checks, and response models.

Requests are parsed strictly: an unknown field is a 400 naming it, and so is every OpenAI
field modelport does not implement (tools, logprobs, ...) unless it carries its no-op value
(``tools=[]``, ``logprobs=false``, ``response_format={"type": "text"}``...). Nothing is
silently ignored, except identifiers that never change an answer (``user``,
``safety_identifier``, ``prompt_cache_key``). ``parse`` turns pydantic's complaints into
``InvalidInput`` naming the parameter (``messages[0].role``), so clients get a 400 in
OpenAI's error shape.

The response models document the answers (OpenAPI) and are what chat and completions
serialize; embeddings and stream chunks are built as plain dicts on their hot paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request

from modelport.api.body import read_body
from modelport.errors import InvalidInput, MalformedRequest

M = TypeVar("M", bound=BaseModel)

MAX_STOP = 4
MAX_EMBEDDING_INPUTS = 2048


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # checked below: only its no-op value


class SamplingRequest(_Strict):
    """Fields chat and completions share."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None  # an end-user id for abuse tracking: never changes an answer
    # Not implemented: accepted only with their no-op values (see UNSUPPORTED).
    logit_bias: Any = None
    logprobs: Any = None


class ChatCompletionRequest(SamplingRequest):
    """``POST /v1/chat/completions``."""

    messages: list[Any] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    top_logprobs: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    response_format: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    service_tier: Any = None
    store: Any = None
    metadata: Any = None
    web_search_options: Any = None
    verbosity: Any = None
    moderation: Any = None
    prompt_cache_options: Any = None
    prompt_cache_retention: Any = None


class CompletionRequest(SamplingRequest):
    """``POST /v1/completions``."""

    prompt: Any
    suffix: Any = None
    echo: Any = None
    best_of: Any = None


class EmbeddingRequest(_Strict):
    """``POST /v1/embeddings``."""

    model: str = Field(min_length=1)
    input: Any
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


def _none(value: Any) -> bool:
    return value is None


def _falsy(value: Any) -> bool:
    return value is None or value is False


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {}


# Parameters modelport does not implement -> the values that ask for nothing.
UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "logit_bias": _empty,
    "logprobs": _falsy,
    "top_logprobs": lambda v: v is None or v == 0,
    "tools": _empty,
    "tool_choice": lambda v: v is None or v == "none",
    "functions": _empty,
    "function_call": lambda v: v is None or v == "none",
    "parallel_tool_calls": _none,
    "response_format": lambda v: v is None or v == {"type": "text"},
    "audio": _none,
    "modalities": lambda v: v is None or v == ["text"],
    "prediction": _none,
    "reasoning_effort": _none,
    "service_tier": lambda v: v in (None, "auto", "default"),
    "store": _falsy,
    "metadata": _empty,
    "web_search_options": _none,
    "verbosity": _none,
    "moderation": _none,
    "prompt_cache_options": _none,
    "prompt_cache_retention": _none,
    "suffix": lambda v: v is None or v == "",
    "echo": _falsy,
}


async def read_request(request: Request, model: type[M], limit: int) -> M:
    """Read (at most ``limit`` bytes), decode and ``parse`` one request body."""
    raw = await read_body(request, limit)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"the request body is not valid JSON: {exc}") from None
    return parse(model, body)


def parse(model: type[M], body: Any) -> M:
    """Validate a decoded JSON body; ``InvalidInput`` names the first offending parameter."""
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = _location(error["loc"])
        if error["type"] == "extra_forbidden":
            raise InvalidInput(f"unknown parameter {where!r}", param=where) from None
        if error["type"] == "missing":
            raise InvalidInput(f"missing required parameter {where!r}", param=where) from None
        raise InvalidInput(f"invalid {where}: {error['msg']}", param=where) from None
    _refuse_unsupported(request)
    return request


def _location(loc: tuple[int | str, ...]) -> str:
    where = ""
    for part in loc:
        if isinstance(part, int):
            where += f"[{part}]"
        elif part in ("str", "list[str]") or "[" in part:  # union member tags
            continue
        else:
            where += f".{part}" if where else part
    return where or "body"


def _refuse_unsupported(request: BaseModel) -> None:
    values = request.__dict__
    for name in request.model_fields_set:
        allowed = UNSUPPORTED.get(name)
        if allowed is not None and not allowed(values[name]):
            raise InvalidInput(
                f"parameter {name!r} is not supported by modelport (got {values[name]!r})",
                param=name,
            )
    if isinstance(request, CompletionRequest) and request.best_of not in (None, request.n or 1):
        raise InvalidInput(
            "parameter 'best_of' is not supported by modelport (only best_of = n)",
            param="best_of",
        )
    options = getattr(request, "stream_options", None)
    if options is not None:
        if not getattr(request, "stream", False):
            raise InvalidInput("stream_options needs stream=true", param="stream_options")
        if options.include_obfuscation:
            raise InvalidInput(
                "stream_options.include_obfuscation is not supported by modelport",
                param="stream_options.include_obfuscation",
            )


# -- responses ------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian FP32")


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: dict[str, int]


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "modelport"
    task: str = Field(description="modelport: embedding, text-generation, ...")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
