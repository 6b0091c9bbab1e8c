"""Wire models of accounts: tenants, users, API keys, ``whoami`` and the audit log.

Shared by the server (``api/admin/accounts.py``, ``api/admin/audit.py``) and the Python
client. Money is ``Decimal`` (JSON: a decimal string), never a float. A key's secret appears
in exactly one shape, ``KeyCreated``, returned once by ``POST /api/keys``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TENANT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
USER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$"

Role = Literal["owner", "admin", "developer", "viewer"]
PerMinute = Annotated[int, Field(ge=1, le=1_000_000_000)]
Budget = Annotated[Decimal, Field(ge=0, max_digits=20, decimal_places=10)]
Ratio = Annotated[Decimal, Field(gt=0, le=1, max_digits=4, decimal_places=3)]
KeyName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]


class TenantCreate(BaseModel):
    """Body of ``POST /api/tenants`` (platform admin only)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TENANT_NAME_PATTERN)
    rpm: PerMinute | None = None
    tpm: PerMinute | None = None
    monthly_budget: Budget | None = None
    soft_budget_ratio: Ratio = Decimal("0.8")


class TenantPatch(BaseModel):
    """Body of ``PATCH /api/tenants/{name}``: only the fields sent change; ``null`` clears."""

    model_config = ConfigDict(extra="forbid")

    rpm: PerMinute | None = None
    tpm: PerMinute | None = None
    monthly_budget: Budget | None = None
    soft_budget_ratio: Ratio | None = None


class TenantInfo(BaseModel):
    id: int
    name: str
    rpm: int | None = None
    tpm: int | None = None
    monthly_budget: Decimal | None = None
    soft_budget_ratio: Decimal
    created_at: datetime


class UserCreate(BaseModel):
    """Body of ``POST /api/tenants/{tenant}/users``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=USER_NAME_PATTERN)
    role: Role


class UserInfo(BaseModel):
    id: int
    tenant: str
    name: str
    role: str
    created_at: datetime


class KeyCreate(BaseModel):
    """Body of ``POST /api/keys``; ``tenant`` defaults to the caller's own tenant."""

    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(default=None, pattern=TENANT_NAME_PATTERN)
    name: KeyName
    scopes: list[str] = Field(min_length=1, max_length=16)
    user: str | None = Field(default=None, pattern=USER_NAME_PATTERN)
    rpm: PerMinute | None = None
    tpm: PerMinute | None = None
    monthly_budget: Budget | None = None
    expires_at: datetime | None = Field(
        default=None, description="When the key stops working (a naive time is read as UTC)."
    )


class KeyPatch(BaseModel):
    """Body of ``PATCH /api/keys/{key_id}``: only the fields sent change; ``null`` clears."""

    model_config = ConfigDict(extra="forbid")

    name: KeyName | None = None
    rpm: PerMinute | None = None
    tpm: PerMinute | None = None
    monthly_budget: Budget | None = None
    expires_at: datetime | None = None


class KeyInfo(BaseModel):
    """An API key as listed: everything but the secret."""

    id: int
    key_id: str
    prefix: str = Field(description='"mp-<key_id>": how the key starts, to recognise it.')
    tenant: str
    name: str
    scopes: list[str]
    user: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    monthly_budget: Decimal | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    created_at: datetime


class KeyCreated(KeyInfo):
    """``POST /api/keys``: the key's only appearance in clear. Store it now."""

    key: str


class WhoAmI(BaseModel):
    """``GET /api/whoami``: the caller's tenant and key."""

    tenant: str
    key_id: str
    name: str
    scopes: list[str]


class AuditEntry(BaseModel):
    """One admin action: who (tenant, key, actor), what, when, from where, and the outcome."""

    id: int
    at: datetime
    tenant: str | None = None
    key_id: str | None = None
    actor: str
    action: str = Field(description='"METHOD /route/template", e.g. "POST /api/keys".')
    target: str
    status: int
    remote: str
    detail: dict[str, Any] = Field(default_factory=dict)
