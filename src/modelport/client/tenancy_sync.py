"""``Client`` methods of the pay-per-use API: tenants, users, keys, audit, prices, usage.

A mixin of ``Client``: each method sends the ``Call`` that ``ClientCore`` builds
(``client.accounts``, ``client.billing``) and returns the wire model
(``modelport.types.accounts``, ``modelport.types.billing``). ``AsyncTenancyMixin`` in
``client.tenancy_async`` mirrors it with ``await``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, TypeVar

from modelport.client.accounts import Money
from modelport.client.calls import Call
from modelport.types.accounts import AuditEntry, KeyCreated, KeyInfo, TenantInfo, UserInfo, WhoAmI
from modelport.types.admin import ModelInfo
from modelport.types.billing import Invoice, PriceInfo, UsageRecordInfo, UsageReport

if TYPE_CHECKING:
    from modelport.client.core import ClientCore

T = TypeVar("T")
When = datetime | date | str


class TenancyMixin:
    """Accounts and billing methods of ``Client`` (see the module docstring)."""

    _core: ClientCore

    if TYPE_CHECKING:

        def _send(self, call: Call[T]) -> T: ...

    # tenants and users

    def create_tenant(
        self,
        name: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        monthly_budget: Money | None = None,
        soft_budget_ratio: Money | None = None,
    ) -> TenantInfo:
        """Create a tenant (platform admin), with optional limits and monthly budget."""
        call = self._core.create_tenant(
            name,
            rpm=rpm,
            tpm=tpm,
            monthly_budget=monthly_budget,
            soft_budget_ratio=soft_budget_ratio,
        )
        return self._send(call)

    def list_tenants(self) -> list[TenantInfo]:
        """Every tenant for an admin key; otherwise the caller's own."""
        return self._send(self._core.list_tenants())

    def get_tenant(self, name: str) -> TenantInfo:
        return self._send(self._core.get_tenant(name))

    def update_tenant(
        self,
        name: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        monthly_budget: Money | None = None,
        soft_budget_ratio: Money | None = None,
    ) -> TenantInfo:
        """Change a tenant's limits or budget (only the values given)."""
        call = self._core.update_tenant(
            name,
            rpm=rpm,
            tpm=tpm,
            monthly_budget=monthly_budget,
            soft_budget_ratio=soft_budget_ratio,
        )
        return self._send(call)

    def create_user(self, tenant: str, name: str, role: str) -> UserInfo:
        """Add a user (owner, admin, developer or viewer) to a tenant."""
        return self._send(self._core.create_user(tenant, name, role))

    def list_users(self, tenant: str) -> list[UserInfo]:
        return self._send(self._core.list_users(tenant))

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
        expires_at: When | None = None,
    ) -> KeyCreated:
        """Create an API key; ``.key`` holds its secret, which the server never shows again."""
        call = self._core.create_key(
            name,
            scopes,
            tenant=tenant,
            user=user,
            rpm=rpm,
            tpm=tpm,
            monthly_budget=monthly_budget,
            expires_at=expires_at,
        )
        return self._send(call)

    def list_keys(self, tenant: str | None = None) -> list[KeyInfo]:
        """API keys (without secrets), of one tenant or all the caller may see."""
        return self._send(self._core.list_keys(tenant))

    def revoke_key(self, key_id: str) -> None:
        """Revoke a key by its public id; it is refused from the next request on."""
        self._send(self._core.revoke_key(key_id))

    def whoami(self) -> WhoAmI:
        """The tenant, key and scopes the server sees for this client's key."""
        return self._send(self._core.whoami())

    def audit(
        self,
        *,
        tenant: str | None = None,
        action: str | None = None,
        since: When | None = None,
        until: When | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """Admin actions from the audit log (admin key), filtered."""
        call = self._core.audit(tenant=tenant, action=action, since=since, until=until, limit=limit)
        return self._send(call)

    def set_visibility(self, name: str, visibility: str, tenants: Sequence[str] = ()) -> ModelInfo:
        """Make a model ``private``, ``public`` or ``shared`` with the named tenants."""
        return self._send(self._core.set_visibility(name, visibility, tenants))

    # prices, usage and invoices

    def set_price(
        self,
        model: str,
        *,
        per_1k_requests: Money | None = None,
        per_1k_input_tokens: Money | None = None,
        per_1k_output_tokens: Money | None = None,
        per_compute_second: Money | None = None,
        currency: str | None = None,
        effective_from: When | None = None,
    ) -> PriceInfo:
        """Set a model's price from ``effective_from`` (default now; never in the past)."""
        call = self._core.set_price(
            model,
            per_1k_requests=per_1k_requests,
            per_1k_input_tokens=per_1k_input_tokens,
            per_1k_output_tokens=per_1k_output_tokens,
            per_compute_second=per_compute_second,
            currency=currency,
            effective_from=effective_from,
        )
        return self._send(call)

    def list_prices(self, model: str | None = None) -> list[PriceInfo]:
        """The price sheet: every price version, of one model or all."""
        return self._send(self._core.list_prices(model))

    def usage(
        self,
        *,
        tenant: str | None = None,
        key: str | None = None,
        model: str | None = None,
        since: When | None = None,
        until: When | None = None,
        group_by: Sequence[str] = (),
    ) -> UsageReport:
        """Usage totals and cost, grouped by any of ``day``, ``model``, ``key``, with budgets."""
        call = self._core.usage(
            tenant=tenant, key=key, model=model, since=since, until=until, group_by=group_by
        )
        return self._send(call)

    def usage_records(
        self,
        *,
        tenant: str | None = None,
        key: str | None = None,
        model: str | None = None,
        since: When | None = None,
        until: When | None = None,
        limit: int | None = None,
    ) -> list[UsageRecordInfo]:
        """Single usage records (one per answered request), filtered."""
        call = self._core.usage_records(
            tenant=tenant, key=key, model=model, since=since, until=until, limit=limit
        )
        return self._send(call)

    def invoice(self, tenant: str, period: str) -> Invoice:
        """The invoice of ``tenant`` for ``period`` (``YYYY-MM``): lines per model and unit."""
        return self._send(self._core.invoice(tenant, period))

    def invoice_csv(self, tenant: str, period: str) -> str:
        """The same invoice as CSV text: its lines plus a total row."""
        return self._send(self._core.invoice_csv(tenant, period))
