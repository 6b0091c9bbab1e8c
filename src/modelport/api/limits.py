"""``LimitsMiddleware``: rate limits on the inference calls, before their bodies are read.

It sits inside the auth middleware (which puts the caller in ``engine.principal.CURRENT``) and
outside metering. On the inference ``POST`` paths (V2 infer, V1 ``:predict``, OpenAI
embeddings, chat and completions) it asks ``RateLimiter.admit`` and either answers 429 in the
route family's error shape with ``Retry-After`` and the ``x-ratelimit-*`` headers, or lets the
call through and adds those headers to its response. Other paths, and calls without a
principal, pass untouched.

The model of a V2/V1 call is in its path. OpenAI calls name it in the body, which is only
read here when a per-model limit is configured (``Settings.model_rpm``/``model_tpm``): the
body is then buffered (up to the request size limit), its ``model`` picked out, and replayed
to the handler unchanged.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.api.errors import error_response
from modelport.api.inference_paths import inference_target
from modelport.engine.principal import current_principal
from modelport.engine.ratelimit import RateLimiter
from modelport.errors import RateLimited


async def _peek_model(receive: Receive, limit: int) -> tuple[str | None, Receive]:
    """Read the body (at most ``limit`` bytes) for its ``model``; a ``receive`` replaying it.

    A body over the limit, or one that is not a JSON object with a string ``model``, gives
    ``None``: the handler then answers it (413, 400) as it always does.
    """
    pending: list[Message] = []
    size = 0
    more = True
    while more and size <= limit:
        message = await receive()
        pending.append(message)
        if message["type"] != "http.request":
            break  # a disconnect: let the handler see it
        size += len(message.get("body", b""))
        more = bool(message.get("more_body", False))
    model: str | None = None
    if not more and size <= limit:
        body = b"".join(m.get("body", b"") for m in pending if m["type"] == "http.request")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("model"), str):
            model = data["model"]

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return model, replay


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    """``send`` that adds ``headers`` to the response start."""
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *raw]}
        await send(message)

    return send_with_headers


class LimitsMiddleware:
    """Enforce ``limiter`` on the inference paths of ``app`` (see the module docstring)."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, max_body_bytes: int) -> None:
        self.app = app
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        inference, model = inference_target(scope)
        principal = current_principal() if inference else None
        if principal is None:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if model is None and self.limiter.limits_models:
            model, receive = await _peek_model(receive, self.max_body_bytes)
        try:
            headers = self.limiter.admit(principal, model)
        except RateLimited as exc:
            response = error_response(path, exc.status, exc.message, exc.code, None, exc.headers)
            await response(scope, receive, send)
            return
        if headers:
            send = _with_headers(send, headers)
        await self.app(scope, receive, send)
