"""``MeteringMiddleware``: budgets before an inference call, usage journaled around its bytes.

It sits inside the auth and rate-limit middlewares (which put the caller in
``principal.CURRENT``) and outside the inference fast path, and acts on the inference POSTs
only (V2 infer, V1 predict, OpenAI embeddings/chat/completions):

- A caller whose tenant or key has spent its monthly budget gets 429 ``insufficient_quota``
  in its route family's shape (the openai SDK raises ``RateLimitError``).
- The request's usage event, parked by the meter, is journaled immediately *before* the
  last body message of a 2xx response goes to the server; other statuses journal nothing.
  A stream (2xx from its first byte) journals a snapshot before its start message and
  before every chunk, and its final record at its end, or when the client left.

See ``engine.metering`` for why this makes billing exact across a SIGKILL.
"""

from __future__ import annotations

import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.api.errors import error_response
from modelport.api.inference_paths import inference_target
from modelport.engine.metering import Meter
from modelport.engine.principal import CURRENT, RequestContext
from modelport.errors import QuotaExceeded


class MeteringMiddleware:
    """Refuse over-budget calls; journal each answered call's usage record (module doc)."""

    def __init__(self, app: ASGIApp, meter: Meter) -> None:
        self.app = app
        self.meter = meter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not inference_target(scope)[0]:
            await self.app(scope, receive, send)
            return
        context = CURRENT.get()
        token = None
        if context is None:  # no auth layer in front: meter the call anonymously
            context = RequestContext(None, uuid.uuid4().hex)
            token = CURRENT.set(context)
        try:
            if context.principal is not None:
                try:
                    self.meter.check_budget(context.principal)
                except QuotaExceeded as exc:
                    response = error_response(scope["path"], exc.status, exc.message, exc.code)
                    await response(scope, receive, send)
                    return
            await self._metered(context, scope, receive, send)
        finally:
            if token is not None:
                CURRENT.reset(token)

    async def _metered(
        self, context: RequestContext, scope: Scope, receive: Receive, send: Send
    ) -> None:
        meter = self.meter
        meter.begin(context)
        ok = False

        async def metered_send(message: Message) -> None:
            nonlocal ok
            kind = message["type"]
            if kind == "http.response.start":
                ok = 200 <= message["status"] < 300
                if ok:
                    meter.snapshot(context)  # a stream is billed from its first byte
            elif ok and kind == "http.response.body":
                if message.get("more_body", False):
                    meter.snapshot(context)
                else:
                    meter.settle(context)
            await send(message)

        try:
            await self.app(scope, receive, metered_send)
        finally:
            if ok:  # a stream the client left: billed for what it was sent
                meter.settle(context)
