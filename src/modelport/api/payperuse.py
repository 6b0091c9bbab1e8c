"""The pay-per-use checks of one inference call, fused into the auth layer's hot path.

``create_asgi_app`` stacks ``AuthMiddleware(LimitsMiddleware(MeteringMiddleware(app)))``.
Each layer is cheap, but an inference call paid every layer again: its own coroutine frame,
its own look at the scope and at ``CURRENT``, its own ``send`` wrapper around the one
below. ``fuse`` takes the rate-limit and metering layers that sit directly inside the auth
layer (in that order) and returns an ``InferenceGate`` that does their work in one call,
with one ``send`` wrapper, for the request the auth layer has just authenticated; plus the
app inside them, which the auth layer then calls directly (for every other request those
layers only pass the call on).

What a call gets is exactly what the two layers give it (their modules say what that is):
rate limits first (429 with ``Retry-After`` and ``x-ratelimit-*`` headers, or those headers
added to the response), then the budget check (429 ``insufficient_quota``), then its usage
record journaled right before the last body bytes of a 2xx response, and a stream's
snapshots before its start and before each chunk. A layer that is not directly there (not
configured, or something else in between) is simply not fused: it stays in the chain.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.api.errors import error_response
from modelport.api.limits import LimitsMiddleware, _peek_model
from modelport.api.metering import MeteringMiddleware
from modelport.engine.metering import METERED, Meter
from modelport.engine.principal import RequestContext
from modelport.engine.ratelimit import RateLimiter
from modelport.errors import QuotaExceeded, RateLimited


class InferenceGate:
    """Rate limits, budget and metering of one authenticated inference call (module doc)."""

    def __init__(
        self, app: ASGIApp, limiter: RateLimiter | None, max_body_bytes: int, meter: Meter | None
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes
        self.meter = meter

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        context: RequestContext,
        model: str | None,
    ) -> None:
        principal = context.principal
        assert principal is not None  # the auth layer only calls with a caller
        extra: list[tuple[bytes, bytes]] | None = None
        limiter = self.limiter
        if limiter is not None:
            if model is None and limiter.limits_models:
                model, receive = await _peek_model(receive, self.max_body_bytes)
            try:
                headers = limiter.admit(principal, model)
            except RateLimited as exc:
                await error_response(
                    scope["path"], exc.status, exc.message, exc.code, None, exc.headers
                )(scope, receive, send)
                return
            if headers:
                extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        meter = self.meter
        if meter is None:
            if extra is not None:
                send = _adding(send, extra)
            await self.app(scope, receive, send)
            return
        try:
            meter.check_budget(principal)
        except QuotaExceeded as exc:
            await error_response(scope["path"], exc.status, exc.message, exc.code)(
                scope, receive, send
            )
            return
        context.extra[METERED] = True  # Meter.begin: usage events wait for settle
        ok = False

        async def metered_send(message: Message) -> None:
            nonlocal ok
            kind = message["type"]
            if kind == "http.response.body":
                if ok:
                    if message.get("more_body", False):
                        meter.snapshot(context)
                    else:
                        meter.settle(context)
            elif kind == "http.response.start":
                if extra is not None:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
                ok = 200 <= message["status"] < 300
                if ok:
                    meter.snapshot(context)  # a stream is billed from its first byte
            await send(message)

        try:
            await self.app(scope, receive, metered_send)
        finally:
            if ok:  # a stream the client left: billed for what it was sent
                meter.settle(context)


def _adding(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return send_with_headers


def fuse(app: ASGIApp) -> tuple[ASGIApp, InferenceGate | None]:
    """The app inside the pay-per-use layers directly in ``app``, and their fused gate
    (``None``, with ``app`` unchanged, when there are none)."""
    inner = app
    limiter: RateLimiter | None = None
    max_body_bytes = 0
    meter: Meter | None = None
    if isinstance(inner, LimitsMiddleware):
        limiter, max_body_bytes = inner.limiter, inner.max_body_bytes
        inner = inner.app
    if isinstance(inner, MeteringMiddleware):
        meter = inner.meter
        inner = inner.app
    if limiter is None and meter is None:
        return app, None
    return inner, InferenceGate(inner, limiter, max_body_bytes, meter)
