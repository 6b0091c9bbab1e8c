"""``AuthMiddleware``: every request names its caller, or is refused; admin writes are audited.

The outermost layer of the server (``create_asgi_app``), in pure ASGI because it sits in
front of the inference hot path: per request it scans the header list once, answers a known
key from memory (``AccountService.authenticate``: two dict lookups, a clock comparison, no
hashing, no SQL), checks the route's scope with a few string tests, and sets
``engine.principal.CURRENT`` for everything below it (rate limits, metering, ownership).

- Open paths need no key: V2 health, ``/health*``, the API docs, and ``/metrics`` when
  ``Settings.metrics_public``.
- The key comes from ``Authorization: Bearer <key>`` (what the openai SDK sends) or
  ``x-api-key: <key>``. None, unknown, expired or revoked → 401 with ``WWW-Authenticate:
  Bearer``; a key without the route's scope → 403; both in the route family's error shape.
- Scopes by route (``required_scope``): inference POSTs need ``inference``; reads need only a
  valid key, except usage/invoices (``billing:read``) and the audit log and recent usage
  (``admin``); writes need ``models:write`` (artifacts, models, datasets, training runs),
  ``deploy`` (deployments), ``keys:write`` (tenants, keys: the routes narrow it to the key's
  own tenant) and ``admin`` for anything else (prices, and any write route not listed here).
- Every ``/api`` write (including 403 refusals) is recorded in the audit log as
  ``"METHOD /route/template"`` with its status, just before the response's last bytes go out.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from fastapi import Depends
from starlette.concurrency import run_in_threadpool
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.api.errors import error_response
from modelport.api.inference_paths import classify, inference_target
from modelport.api.payperuse import fuse
from modelport.engine.apikeys import CHALLENGE_HEADERS
from modelport.engine.principal import (
    ADMIN,
    BILLING_READ,
    CURRENT,
    DEPLOY,
    INFERENCE,
    KEYS_WRITE,
    MODELS_WRITE,
    Principal,
    RequestContext,
    current_principal,
)
from modelport.engine.services import Services
from modelport.errors import Unauthenticated

log = logging.getLogger("modelport.auth")

_OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/docs", "/redoc", "/openapi.json"})
_OPEN_PREFIXES = ("/health", "/docs/")
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# /api/<segment>...: the scope a write needs; a segment not listed needs ``admin``.
_WRITE_SCOPES = {
    "artifacts": MODELS_WRITE,
    "models": MODELS_WRITE,
    "datasets": MODELS_WRITE,
    "runs": MODELS_WRITE,
    "deployments": DEPLOY,
    "pipelines": DEPLOY,
    "tenants": KEYS_WRITE,
    "keys": KEYS_WRITE,
}
# /api/<segment>...: reads that need more than a valid key.
_READ_SCOPES = {"usage": BILLING_READ, "invoices": BILLING_READ, "audit": ADMIN}
_MISSING_KEY = "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"


def required_scope(method: str, path: str, inference: bool | None = None) -> str | None:
    """The scope a call needs beyond a valid key (``None``: any valid key will do).

    ``inference``: whether it is an inference call, when already known
    (``inference_paths.inference_target``).
    """
    if inference if inference is not None else classify(method, path)[0]:
        return INFERENCE
    write = method in _WRITES
    if path.startswith("/v2/repository/"):  # V2 repository: the index is a read
        return DEPLOY if path.endswith(("/load", "/unload")) else None
    if not path.startswith("/api/"):
        return ADMIN if write else None
    segment = path[5:].split("/", 1)[0]
    if write:
        return _WRITE_SCOPES.get(segment, ADMIN)
    if path == "/api/usage/recent" or path.startswith("/api/usage/recent/"):
        return ADMIN
    return _READ_SCOPES.get(segment)


def api_key_of(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key a request presents (``Authorization: Bearer`` first, then ``x-api-key``)."""
    fallback: str | None = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            fallback = value.decode("latin-1").strip()
    return fallback


def _remote(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""


class AuthMiddleware:
    """Authenticate, authorise, set ``CURRENT``, audit ``/api`` writes (see module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        services: Services,
        openapi: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        # The rate-limit and metering layers directly inside run fused into this one for
        # inference calls (``api/payperuse.py``); every other call goes straight past them.
        self.app, self._gate = fuse(app)
        self.accounts = services.accounts
        self.audit = services.audit
        self.open_paths = _OPEN_PATHS | (
            {"/metrics"} if services.settings.metrics_public else frozenset()
        )
        # Request ids: 32 hex digits, a random per-process half and a counter (cheaper than a
        # uuid4 per request, and still unique across restarts and processes).
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()
        # Where route templates come from for calls refused before routing (built on first use).
        self._openapi = openapi
        self._templates: list[tuple[str, re.Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":  # no websocket route is authenticated: refuse
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in self.open_paths or path.startswith(_OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        raw = api_key_of(scope["headers"])
        if raw is None:
            await self._refuse(scope, receive, send, 401, _MISSING_KEY, "unauthenticated")
            return
        try:
            if self.accounts.knows(raw):
                principal = self.accounts.authenticate(raw)
            else:
                principal = await run_in_threadpool(self.accounts.authenticate, raw)
        except Unauthenticated as exc:
            await self._refuse(scope, receive, send, 401, exc.message, exc.code)
            return
        method: str = scope["method"]
        request_id = f"{self._id_prefix}{next(self._ids):016x}"
        context = RequestContext(principal, request_id, _remote(scope))
        token = CURRENT.set(context)
        try:
            inference, model = inference_target(scope)
            scope_needed = required_scope(method, path, inference)
            audited = method in _WRITES and path.startswith("/api/")
            if scope_needed is not None and not principal.allows(scope_needed):
                message = f"this API key lacks the {scope_needed!r} scope"
                response = error_response(path, 403, message, "permission_denied")
                if audited:
                    await self._record(scope, context, 403)
                await response(scope, receive, send)
            elif audited:
                await self._call_audited(scope, receive, send, context)
            elif inference and self._gate is not None:
                await self._gate(scope, receive, send, context, model)
            else:
                await self.app(scope, receive, send)
        finally:
            CURRENT.reset(token)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, message: str, code: str
    ) -> None:
        headers = CHALLENGE_HEADERS if status == 401 else None
        response = error_response(scope["path"], status, message, code, headers=headers)
        await response(scope, receive, send)

    async def _call_audited(
        self, scope: Scope, receive: Receive, send: Send, context: RequestContext
    ) -> None:
        status = 500
        recorded = False

        async def send_and_record(message: Message) -> None:
            nonlocal status, recorded
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif (
                message["type"] == "http.response.body"
                and not message.get("more_body")
                and not recorded
            ):
                recorded = True
                await self._record(scope, context, status)
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            if not recorded:  # the app failed or the client left before the end
                await self._record(scope, context, status)

    async def _record(self, scope: Scope, context: RequestContext, status: int) -> None:
        method: str = scope["method"]
        path: str = scope["path"]
        detail: dict[str, Any] = dict(_audit_detail(context))
        query = scope.get("query_string", b"")
        if query:
            detail["query"] = query.decode("latin-1")
        action = f"{method} {self._template(scope)}"
        try:
            await run_in_threadpool(
                self.audit.record,
                context.principal,
                action,
                path,
                status,
                context.remote,
                detail,
            )
        except Exception:  # the action itself is done; losing its entry must be loud
            log.exception("could not write the audit entry for %s (%s)", action, status)

    def _template(self, scope: Scope) -> str:
        """The route template of a call ("/api/keys/{key_id}"), or its path if none matches.

        A routed call carries its route in the scope; for one refused before routing, the
        templates of the OpenAPI schema are matched instead.
        """
        route = scope.get("route")
        template = getattr(route, "path", None)
        if isinstance(template, str):
            return template
        if self._templates is None:
            self._templates = _schema_templates(self._openapi() if self._openapi else {})
        method: str = scope["method"].lower()
        path: str = scope["path"]
        for verb, regex, candidate in self._templates:
            if verb == method and regex.match(path):
                return candidate
        return path


def _schema_templates(schema: dict[str, Any]) -> list[tuple[str, re.Pattern[str], str]]:
    """(method, regex, template) for every /api operation of an OpenAPI schema."""
    found: list[tuple[str, re.Pattern[str], str]] = []
    for template, operations in schema.get("paths", {}).items():
        if template.startswith("/api/"):
            regex = compile_path(template)[0]
            found.extend((verb, regex, template) for verb in operations)
    return found


def _audit_detail(context: RequestContext) -> dict[str, Any]:
    detail = context.extra.get("audit")
    return detail if isinstance(detail, dict) else {}


def add_audit_detail(**values: Any) -> None:
    """Add facts (never secrets) to the audit entry of the current ``/api`` write."""
    context = CURRENT.get()
    if context is not None:
        detail = context.extra.setdefault("audit", {})
        if isinstance(detail, dict):
            detail.update(values)


async def require_principal() -> Principal:
    """The caller of the current request (set by ``AuthMiddleware``)."""
    principal = current_principal()
    if principal is None:
        raise Unauthenticated(_MISSING_KEY, headers=dict(CHALLENGE_HEADERS))
    return principal


PrincipalDep = Annotated[Principal, Depends(require_principal)]
