"""LimitsMiddleware over a small real ASGI app: which paths, headers, 429 shapes, body replay."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import httpx
import orjson
from starlette.types import Receive, Scope, Send

from modelport.api.limits import LimitsMiddleware
from modelport.engine.principal import CURRENT, INFERENCE, Principal, RequestContext
from modelport.engine.ratelimit import RateLimiter

CALLER = Principal(
    tenant_id=1, tenant="acme", key_id=7, key_name="ci", scopes=frozenset({INFERENCE}), rpm=1
)


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 200 with the request body it read (so a replayed body can be checked)."""
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
    await send({"type": "http.response.body", "body": body})


class AsCaller:
    """Stands in for the auth middleware: puts a caller in ``CURRENT`` for the request."""

    def __init__(self, app: Any, principal: Principal | None) -> None:
        self.app = app
        self.principal = principal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = CURRENT.set(RequestContext(self.principal, "req"))
        try:
            await self.app(scope, receive, send)
        finally:
            CURRENT.reset(token)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def client(limiter: RateLimiter, principal: Principal | None = CALLER) -> httpx.AsyncClient:
    app = AsCaller(LimitsMiddleware(echo_app, limiter, max_body_bytes=1024), principal)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test")


def test_v2_calls_get_headers_then_a_429_in_the_v2_shape() -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with client(RateLimiter()) as http:
            first = await http.post("/v2/models/iris/infer", content=b"{}")
            second = await http.post("/v2/models/iris/versions/1/infer", content=b"{}")
            return first, second

    first, second = run(scenario())
    assert first.status_code == 200 and first.content == b"{}"
    assert first.headers["x-app"] == "1"
    assert first.headers["x-ratelimit-limit-requests"] == "1"
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert first.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert second.status_code == 429
    assert second.headers["retry-after"] == "60"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.headers["x-modelport-error"] == "rate_limit_exceeded"
    assert "key 'ci'" in second.json()["error"]


def test_openai_and_v1_predict_refusals_use_their_shapes() -> None:
    async def scenario() -> list[httpx.Response]:
        limiter = RateLimiter()
        async with client(limiter) as http:
            await http.post("/v1/models/iris:predict", json={"instances": [[1, 2, 3, 4]]})
            return [
                await http.post("/v1/models/iris:predict", json={}),
                await http.post("/v1/chat/completions", json={"model": "m"}),
            ]

    predict, chat = run(scenario())
    assert predict.status_code == 429 and isinstance(predict.json()["error"], str)
    assert chat.status_code == 429
    error = chat.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert chat.headers["retry-after"] == "60"


def test_other_paths_methods_and_anonymous_calls_pass_untouched() -> None:
    async def scenario() -> list[httpx.Response]:
        limiter = RateLimiter()
        async with client(limiter) as http:
            answers = [await http.post("/api/models/x/versions", content=b"a") for _ in range(3)]
            answers += [await http.get("/v2/models/iris/infer") for _ in range(3)]
        async with client(limiter, principal=None) as http:
            answers += [await http.post("/v2/models/iris/infer") for _ in range(3)]
        return answers

    for answer in run(scenario()):
        assert answer.status_code == 200
        assert "x-ratelimit-limit-requests" not in answer.headers


def test_per_model_limits_read_the_openai_body_and_replay_it() -> None:
    unlimited = Principal(
        tenant_id=1, tenant="acme", key_id=8, key_name="bot", scopes=frozenset({INFERENCE})
    )
    body = orjson.dumps({"model": "gemma", "input": "x" * 100})

    async def scenario() -> list[httpx.Response]:
        limiter = RateLimiter(model_rpm={"gemma": 1})
        async with client(limiter, unlimited) as http:
            return [
                await http.post("/v1/embeddings", content=body),
                await http.post("/v1/embeddings", content=body),
                await http.post("/v1/embeddings", content=orjson.dumps({"model": "other"})),
                await http.post("/v1/embeddings", content=b"not json"),
                await http.post("/v1/embeddings", content=b"y" * 2000),  # over the limit
            ]

    first, second, other, bad, big = run(scenario())
    assert first.status_code == 200 and first.content == body  # the handler saw it all
    assert first.headers["x-ratelimit-limit-requests"] == "1"
    assert second.status_code == 429
    assert "model 'gemma'" in second.json()["error"]["message"]
    assert other.status_code == 200 and "x-ratelimit-limit-requests" not in other.headers
    assert bad.status_code == 200 and bad.content == b"not json"
    assert big.status_code == 200 and big.content == b"y" * 2000
