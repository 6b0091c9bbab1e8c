"""Billing routes: price sheets, usage reports and records, invoices.

Scopes are checked by the auth middleware (prices writes: ``admin``; usage and invoices:
``billing:read``). Here: a caller who is not a platform admin sees only its own tenant, and
naming another tenant (or another tenant's key) answers 404, as if it did not exist.
Times without a zone are taken as UTC. Money is a decimal string in JSON.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from modelport.api.deps import ServicesDep
from modelport.engine.billing import KeyRef, UsageFilter, invoice_csv
from modelport.engine.pricing import PriceSheet
from modelport.engine.principal import Principal, current_principal
from modelport.engine.services import Services
from modelport.errors import NotFound
from modelport.types.admin import NAME_PATTERN
from modelport.types.billing import (
    PERIOD_PATTERN,
    Invoice,
    PriceInfo,
    PriceSet,
    UsageRecordInfo,
    UsageReport,
)

router = APIRouter(prefix="/api", tags=["billing"])

ModelName = Annotated[str, Path(pattern=NAME_PATTERN)]
TenantQuery = Annotated[str | None, Query(description="tenant name (default: your own)")]
KeyQuery = Annotated[str | None, Query(description="public key id (or its mp- prefix)")]
ModelQuery = Annotated[str | None, Query(description="model name")]
Since = Annotated[datetime | None, Query(description="from this time (inclusive)")]
Until = Annotated[datetime | None, Query(description="until this time (exclusive)")]


def _price(sheet: PriceSheet) -> PriceInfo:
    return PriceInfo(
        id=sheet.id,
        model=sheet.model,
        effective_from=sheet.effective_from,
        per_1k_requests=sheet.per_1k_requests,
        per_1k_input_tokens=sheet.per_1k_input_tokens,
        per_1k_output_tokens=sheet.per_1k_output_tokens,
        per_compute_second=sheet.per_compute_second,
        currency=sheet.currency,
    )


def _utc(when: datetime | None) -> datetime | None:
    if when is None or when.tzinfo is not None:
        return when
    return when.replace(tzinfo=UTC)


def _own_tenant(principal: Principal | None) -> int | None:
    """The one tenant the caller may see, or None when it may see every tenant.

    No principal means no auth layer in front (in-process use): nothing to restrict.
    """
    return None if principal is None or principal.is_admin else principal.tenant_id


def _tenant_in_view(
    services: Services, principal: Principal | None, tenant: str | None
) -> int | None:
    """The tenant id a request may see (None: every tenant, for admins only)."""
    own = _own_tenant(principal)
    if tenant is None:
        return own
    tenant_id = services.billing.tenant_id(tenant)
    if own is not None and tenant_id != own:
        raise NotFound(f"tenant {tenant!r} not found", param="tenant")
    return tenant_id


def _key_in_view(services: Services, principal: Principal | None, key: str) -> KeyRef:
    ref = services.billing.key(key)
    own = _own_tenant(principal)
    if own is not None and ref.tenant_id != own:
        raise NotFound(f"API key {key!r} not found", param="key")
    return ref


def _filter(
    services: Services,
    principal: Principal | None,
    tenant: str | None,
    key: str | None,
    model: str | None,
    since: datetime | None,
    until: datetime | None,
) -> tuple[UsageFilter, KeyRef | None]:
    tenant_id = _tenant_in_view(services, principal, tenant)
    ref = None if key is None else _key_in_view(services, principal, key)
    where = UsageFilter(
        tenant_id=tenant_id,
        key=None if ref is None else ref.id,
        model=model,
        since=_utc(since),
        until=_utc(until),
    )
    return where, ref


@router.put(
    "/prices/{model}",
    status_code=201,
    response_model=PriceInfo,
    summary="Set a model's price from now (or a later effective_from); never retroactive",
)
async def set_price(services: ServicesDep, model: ModelName, body: PriceSet) -> PriceInfo:
    sheet = await run_in_threadpool(
        lambda: services.prices.set(
            model,
            per_1k_requests=body.per_1k_requests,
            per_1k_input_tokens=body.per_1k_input_tokens,
            per_1k_output_tokens=body.per_1k_output_tokens,
            per_compute_second=body.per_compute_second,
            currency=body.currency,
            effective_from=_utc(body.effective_from),
        )
    )
    return _price(sheet)


@router.get("/prices", response_model=list[PriceInfo], summary="Price sheets, by model and time")
async def list_prices(services: ServicesDep, model: ModelQuery = None) -> list[PriceInfo]:
    return [_price(sheet) for sheet in services.prices.sheets(model)]


@router.get("/usage", response_model=UsageReport, summary="Usage sums, grouped, with budgets")
async def usage(
    services: ServicesDep,
    tenant: TenantQuery = None,
    key: KeyQuery = None,
    model: ModelQuery = None,
    since: Since = None,
    until: Until = None,
    group_by: Annotated[str, Query(description="comma-separated: day, model, key")] = "",
) -> UsageReport:
    principal = current_principal()
    groups = [g.strip() for g in group_by.split(",") if g.strip()]

    def report() -> UsageReport:
        where, ref = _filter(services, principal, tenant, key, model, since, until)
        found = services.billing.usage(where, groups)
        if ref is None and principal is not None and not principal.is_admin:
            ref = KeyRef(principal.key_id, "", principal.tenant_id, principal.monthly_budget)
        tenant_id = where.tenant_id if where.tenant_id is not None else None
        if tenant_id is None and ref is not None:
            tenant_id = ref.tenant_id
        if tenant_id is not None:
            found.budget = services.billing.budget(tenant_id, ref)
        return found

    return await run_in_threadpool(report)


@router.get(
    "/usage/records", response_model=list[UsageRecordInfo], summary="Usage records, newest first"
)
async def usage_records(
    services: ServicesDep,
    tenant: TenantQuery = None,
    key: KeyQuery = None,
    model: ModelQuery = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 100,
) -> list[UsageRecordInfo]:
    principal = current_principal()

    def records() -> list[UsageRecordInfo]:
        where, _ = _filter(services, principal, tenant, key, model, since, until)
        return services.billing.records(where, limit)

    return await run_in_threadpool(records)


@router.get(
    "/invoices/{tenant}/{period}",
    response_model=Invoice,
    summary="A tenant's invoice for a month (UTC), as JSON or CSV",
    responses={200: {"content": {"text/csv": {}}}},
)
async def invoice(
    services: ServicesDep,
    tenant: str,
    period: Annotated[str, Path(pattern=PERIOD_PATTERN, description="YYYY-MM")],
    format: Literal["json", "csv"] = "json",
) -> Response | Invoice:
    principal = current_principal()

    def build() -> Invoice:
        tenant_id = _tenant_in_view(services, principal, tenant)
        assert tenant_id is not None  # a tenant was named
        return services.billing.invoice(tenant_id, period)

    found = await run_in_threadpool(build)
    if format == "csv":
        return Response(
            invoice_csv(found),
            media_type="text/csv",
            headers={
                "Content-Disposition": f'attachment; filename="invoice-{tenant}-{period}.csv"'
            },
        )
    return found
