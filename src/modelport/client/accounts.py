"""Sans-IO calls of the accounts API: tenants, users, API keys, ``whoami``, audit, sharing.

A mixin of ``ClientCore``: each method builds the ``Call`` of one route of
``/api/tenants``, ``/api/keys``, ``/api/whoami``, ``/api/audit`` and
``/api/models/{name}/visibility``. Bodies are checked against the server's own request
models (``modelport.types.accounts``) before anything is sent, so a bad value fails here
with ``InvalidInput`` naming the field. Money is ``Decimal`` (or a decimal string), never a
float.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal

from modelport.client.calls import (
    Call,
    Request,
    given,
    json_call,
    path_segment,
    query,
    validated_body,
)
from modelport.client.responses import parse_list, parse_model, parse_nothing
from modelport.types.accounts import (
    AuditEntry,
    KeyCreate,
    KeyCreated,
    KeyInfo,
    TenantCreate,
    TenantInfo,
    TenantPatch,
    UserCreate,
    UserInfo,
    WhoAmI,
)
from modelport.types.admin import ModelInfo, SetVisibility

Money = Decimal | str
"""A money amount as given by the caller: a ``Decimal`` or its exact decimal string."""


class AccountCalls:
    """Builds the accounts requests; stateless, mixed into ``ClientCore``."""

    # tenants and users

    def create_tenant(
        self,
        name: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        monthly_budget: Money | None = None,
        soft_budget_ratio: Money | None = None,
    ) -> Call[TenantInfo]:
        """``POST /api/tenants`` (platform admin)."""
        values = given(
            name=name,
            rpm=rpm,
            tpm=tpm,
            monthly_budget=monthly_budget,
            soft_budget_ratio=soft_budget_ratio,
        )
        body = validated_body(TenantCreate, values)
        return json_call("POST", "/api/tenants", body, TenantInfo, exclude_unset=True)

    def list_tenants(self) -> Call[list[TenantInfo]]:
        """``GET /api/tenants``: all tenants for an admin, else the caller's own."""
        return Call(Request("GET", "/api/tenants"), parse_list(TenantInfo))

    def get_tenant(self, name: str) -> Call[TenantInfo]:
        return Call(Request("GET", f"/api/tenants/{path_segment(name)}"), parse_model(TenantInfo))

    def update_tenant(
        self,
        name: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        monthly_budget: Money | None = None,
        soft_budget_ratio: Money | None = None,
    ) -> Call[TenantInfo]:
        """``PATCH /api/tenants/{name}``: changes only the limits given."""
        values = given(
            rpm=rpm, tpm=tpm, monthly_budget=monthly_budget, soft_budget_ratio=soft_budget_ratio
        )
        body = validated_body(TenantPatch, values)
        path = f"/api/tenants/{path_segment(name)}"
        return json_call("PATCH", path, body, TenantInfo, exclude_unset=True)

    def create_user(self, tenant: str, name: str, role: str) -> Call[UserInfo]:
        """``POST /api/tenants/{tenant}/users``; role: owner, admin, developer or viewer."""
        body = validated_body(UserCreate, {"name": name, "role": role})
        return json_call("POST", f"/api/tenants/{path_segment(tenant)}/users", body, UserInfo)

    def list_users(self, tenant: str) -> Call[list[UserInfo]]:
        path = f"/api/tenants/{path_segment(tenant)}/users"
        return Call(Request("GET", path), parse_list(UserInfo))

    # API keys

    def create_key(
        self,
        name: str,
        scopes: Sequence[str],
        *,
        tenant: str | None = None,
        user: str | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        monthly_budget: Money | None = None,
        expires_at: datetime | date | str | None = None,
    ) -> Call[KeyCreated]:
        """``POST /api/keys``; the answer holds the secret (``.key``), shown this once.

        ``tenant`` defaults, on the server, to the caller's own; a ``date`` expiry means
        midnight UTC at its start.
        """
        if isinstance(expires_at, date) and not isinstance(expires_at, datetime):
            expires_at = expires_at.isoformat() + "T00:00:00Z"
        values = given(
            tenant=tenant,
            name=name,
            scopes=list(scopes),
            user=user,
            rpm=rpm,
            tpm=tpm,
            monthly_budget=monthly_budget,
            expires_at=expires_at,
        )
        body = validated_body(KeyCreate, values)
        return json_call("POST", "/api/keys", body, KeyCreated, exclude_unset=True)

    def list_keys(self, tenant: str | None = None) -> Call[list[KeyInfo]]:
        """``GET /api/keys[?tenant=]``: keys without their secrets."""
        return Call(Request("GET", "/api/keys", query(tenant=tenant)), parse_list(KeyInfo))

    def revoke_key(self, key_id: str) -> Call[None]:
        """``DELETE /api/keys/{key_id}``: the key stops working at once."""
        return Call(Request("DELETE", f"/api/keys/{path_segment(key_id)}"), parse_nothing)

    def whoami(self) -> Call[WhoAmI]:
        return Call(Request("GET", "/api/whoami"), parse_model(WhoAmI))

    # audit and sharing

    def audit(
        self,
        *,
        tenant: str | None = None,
        action: str | None = None,
        since: datetime | date | str | None = None,
        until: datetime | date | str | None = None,
        limit: int | None = None,
    ) -> Call[list[AuditEntry]]:
        """``GET /api/audit`` (admin): admin actions, filtered."""
        params = query(tenant=tenant, action=action, since=since, until=until, limit=limit)
        return Call(Request("GET", "/api/audit", params), parse_list(AuditEntry))

    def set_visibility(
        self, name: str, visibility: str, tenants: Sequence[str] = ()
    ) -> Call[ModelInfo]:
        """``PUT /api/models/{name}/visibility``: private, public, or shared with ``tenants``."""
        body = validated_body(SetVisibility, {"visibility": visibility, "tenants": list(tenants)})
        return json_call("PUT", f"/api/models/{path_segment(name)}/visibility", body, ModelInfo)
