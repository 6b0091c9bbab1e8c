"""A pure-ASGI fast path for the inference routes.

FastAPI's routing and dependency machinery costs more per request than decoding a tensor
and calling a small model, and every inference request pays it. This middleware matches the
few inference paths (V2 infer, V1 predict, and the OpenAI embeddings, chat and completions
POSTs) with precompiled regexes and calls the very same handlers the FastAPI routes call
(those routes stay, for the OpenAPI docs and as the fallback), rendering errors with the
one error renderer. Everything else goes on to FastAPI untouched.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from modelport.api.errors import render_exception
from modelport.api.openai.chat import handle_chat
from modelport.api.openai.completions import handle_completion
from modelport.api.openai.embeddings import handle_embeddings
from modelport.api.v1.routes import handle_predict
from modelport.api.v2.routes import handle_infer

Handler = Callable[[Request, str, str | None], Awaitable[Response]]


def _whole_body(handler: Callable[[Request], Awaitable[Response]]) -> Handler:
    """Adapt a handler that takes no model/version from the path."""

    async def handle(request: Request, _model: str, _version: str | None) -> Response:
        return await handler(request)

    return handle


_ROUTES: list[tuple[re.Pattern[str], Handler]] = [
    (re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$"),
     handle_infer),
    (re.compile(r"^/v1/models/(?P<model>[^/:]+)(?:/versions/(?P<version>[^/:]+))?:predict$"),
     handle_predict),
    (re.compile(r"^/v1/embeddings$"), _whole_body(handle_embeddings)),
    (re.compile(r"^/v1/chat/completions$"), _whole_body(handle_chat)),
    (re.compile(r"^/v1/completions$"), _whole_body(handle_completion)),
]  # fmt: skip


class InferenceFastPath:
    """Serve ``POST`` inference paths directly; pass everything else to ``app``.

    It wraps the FastAPI app from the outside (see ``create_asgi_app``), so the hot path also
    skips the app's middleware stack; handlers still find the app in ``scope["app"]``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            for pattern, handler in _ROUTES:
                match = pattern.match(path)
                if match is None:
                    continue
                scope["app"] = self.app
                request = Request(scope, receive)
                try:
                    groups = match.groupdict()
                    model: str = groups.get("model", "")
                    response = await handler(request, model, groups.get("version"))
                except Exception as exc:  # rendered exactly as the app's handlers would
                    response = render_exception(request, exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
