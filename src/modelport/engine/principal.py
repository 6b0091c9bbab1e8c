"""Who is calling: the ``Principal`` behind an API key, scopes, roles, and the request context.

The auth layer (``api/auth.py``) turns a key into a ``Principal`` once per request and puts a
``RequestContext`` in ``CURRENT`` (a context variable: every task the request starts sees it,
SSE pumps included). Engine code that needs the caller — ownership checks, usage events,
rate limits — reads it from there instead of threading it through every signature.

Scopes (what a key may do):

- ``inference``: call models (V2, V1 predict, OpenAI);
- ``models:write``: upload artifacts, register versions, aliases, share, delete models;
- ``deploy``: create, scale and remove deployments;
- ``billing:read``: usage and invoices of the key's own tenant;
- ``keys:write``: manage the keys and users of the key's own tenant;
- ``admin``: the platform operator — every tenant, prices, audit log; implies all others.

Every valid key may *read* (list and get) what its tenant may see. Roles bound the scopes a
key of a user may get: owner/admin → all but ``admin``; developer → inference, models:write,
deploy; viewer → inference, billing:read.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal

INFERENCE = "inference"
MODELS_WRITE = "models:write"
DEPLOY = "deploy"
BILLING_READ = "billing:read"
KEYS_WRITE = "keys:write"
ADMIN = "admin"
SCOPES = frozenset({INFERENCE, MODELS_WRITE, DEPLOY, BILLING_READ, KEYS_WRITE, ADMIN})

ROLES: dict[str, frozenset[str]] = {
    "owner": SCOPES - {ADMIN},
    "admin": SCOPES - {ADMIN},
    "developer": frozenset({INFERENCE, MODELS_WRITE, DEPLOY}),
    "viewer": frozenset({INFERENCE, BILLING_READ}),
}

# The tenant the platform itself belongs to: the first admin key and the demo models.
SYSTEM_TENANT = "system"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a key of a tenant, with its scopes and limits."""

    tenant_id: int
    tenant: str
    key_id: int  # api_keys.id
    key_name: str
    scopes: frozenset[str]
    rpm: int | None = None
    tpm: int | None = None
    monthly_budget: Decimal | None = None

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes

    def allows(self, scope: str) -> bool:
        """Whether this key holds ``scope`` (``admin`` holds every scope)."""
        return scope in self.scopes or ADMIN in self.scopes

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"{self.tenant}/{self.key_name}"


@dataclass
class RequestContext:
    """Per-request facts the engine may need: the caller and where the call came from."""

    principal: Principal | None
    request_id: str = ""
    remote: str = ""
    # Filled by the engine as the request runs; read by metering and rate limiting.
    extra: dict[str, object] = field(default_factory=dict)


CURRENT: ContextVar[RequestContext | None] = ContextVar("modelport_request", default=None)


def current_principal() -> Principal | None:
    """The caller of the request being handled, if any (None outside a request)."""
    context = CURRENT.get()
    return None if context is None else context.principal
