"""``POST /v1/embeddings``: vectors from an embedding model, through the adaptive batcher.

``input`` is a string, a list of strings, a list of token ids or a list of such lists (at
most 2048 inputs, none empty). ``encoding_format="base64"`` — what the ``openai`` SDK asks
for by default and decodes itself — sends each vector as base64 of its little-endian FP32
bytes; ``"float"`` sends numbers. ``dimensions`` is accepted only when it equals the model's
own size (these models cannot shorten vectors). This is a hot path: the answer is built as
a plain dict and written by orjson, numpy rows included.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from modelport.api.deps import get_services
from modelport.api.openai.protocol import (
    MAX_EMBEDDING_INPUTS,
    EmbeddingList,
    EmbeddingRequest,
    read_request,
)
from modelport.api.openai.sampling import new_id
from modelport.errors import InvalidInput

router = APIRouter(tags=["OpenAI"])

_MAX_TOKEN_ID = 2**31 - 1


def embedding_inputs(value: Any) -> list[str] | list[list[int]]:
    """The inputs of a request as texts or token-id lists; ``InvalidInput`` naming ``input``."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidInput("input must be a string or a non-empty list", param="input")
    if all(_is_token(t) for t in value):
        value = [value]  # one token array
    if len(value) > MAX_EMBEDDING_INPUTS:
        raise InvalidInput(f"input takes at most {MAX_EMBEDDING_INPUTS} items", param="input")
    if all(isinstance(item, str) for item in value):
        if any(not item for item in value):
            raise InvalidInput("input must not contain empty strings", param="input")
        return [str(item) for item in value]
    if all(isinstance(item, list) and item and all(map(_is_token, item)) for item in value):
        return [[int(t) for t in item] for item in value]
    raise InvalidInput(
        "input must be a string, a list of strings, a list of token ids (integers from 0 "
        f"to {_MAX_TOKEN_ID}) or a list of such lists, none empty",
        param="input",
    )


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_TOKEN_ID


async def handle_embeddings(request: Request) -> Response:
    """Run one embeddings request (also called by ``api.fastpath``)."""
    services = get_services(request)
    started = time.perf_counter()
    body = await read_request(request, EmbeddingRequest, services.settings.max_request_bytes)
    inputs = embedding_inputs(body.input)
    result = await services.llm.embed(
        body.model, inputs, request_id=new_id("embd"), dimensions=body.dimensions
    )
    vectors = result.vectors
    if body.encoding_format == "base64":
        little = vectors.astype("<f4", copy=False)
        rows: list[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    else:
        rows = list(vectors)
    answer = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)
        ],
        "model": body.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    payload = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    services.metrics.observe_request(body.model, "openai", 200, time.perf_counter() - started)
    return Response(payload, media_type="application/json")


@router.post(
    "/v1/embeddings",
    summary="Embeddings (OpenAI API)",
    response_model=EmbeddingList,
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}}
        }
    },
)
async def embeddings(request: Request) -> Response:
    return await handle_embeddings(request)
