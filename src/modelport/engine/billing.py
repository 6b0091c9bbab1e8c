"""Usage reports, budgets and invoices over ``usage_records``.

Every read first commits what the meter has journaled (``Meter.flush``), so a report
includes every request answered before it was asked for. Sums of money are exact on both
databases (``engine.budgets.money_sum``).

Invoices, and why they equal the sum of their usage records to the cent: each record's
``cost`` was fixed when it was made (``engine.pricing``: the exact price of its units,
rounded half-up to 10 decimal places). An invoice has one line per model, unit and price
sheet, whose *exact* amount is ``quantity * unit price``; the exact amounts of all lines
add up to the records' costs before their 10-decimal rounding. Cents appear only here:

1. ``total`` = (sum of the records' ``cost``) rounded half-up to cents;
2. each line's amount = its exact amount rounded half-up to cents;
3. if the lines then do not add up to ``total``, the difference (a few cents at most) is
   spread one cent at a time over the lines whose rounding was furthest off in that
   direction (largest-remainder method).

So ``sum(line.amount) == total == round(sum(record.cost), 2)`` holds by construction, and
no line is more than one cent from its own rounded exact amount.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, String, func, select

from modelport.engine.budgets import from_units, money_sum, month_bounds
from modelport.engine.metering import Meter
from modelport.engine.pricing import EXACT, UNIT_PRICES, PriceBook
from modelport.errors import Conflict, InvalidInput, NotFound
from modelport.storage.db import Database
from modelport.storage.tables import ApiKeyRow, TenantRow, UsageRow
from modelport.types.billing import (
    GROUP_KEYS,
    BudgetStatus,
    Invoice,
    InvoiceLine,
    UsageGroup,
    UsageRecordInfo,
    UsageReport,
    UsageTotals,
)

CENT = Decimal("0.01")
_Query = TypeVar("_Query", bound=Select[*tuple[Any, ...]])


@dataclass(frozen=True)
class UsageFilter:
    """Which records a report covers (None: any); ``key`` is ``api_keys.id``."""

    tenant_id: int | None = None
    key: int | None = None
    model: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, query: _Query) -> _Query:
        if self.tenant_id is not None:
            query = query.where(UsageRow.tenant_id == self.tenant_id)
        if self.key is not None:
            query = query.where(UsageRow.key_id == self.key)
        if self.model is not None:
            query = query.where(UsageRow.model == self.model)
        if self.since is not None:
            query = query.where(UsageRow.created_at >= self.since)
        if self.until is not None:
            query = query.where(UsageRow.created_at < self.until)
        return query


@dataclass(frozen=True)
class KeyRef:
    """An API key as billing sees it."""

    id: int
    key_id: str
    tenant_id: int
    monthly_budget: Decimal | None


def allocate_cents(exact: list[Decimal], total: Decimal) -> list[Decimal]:
    """Round ``exact`` amounts half-up to cents so that they add up to ``total`` (cents)."""
    rounded = [amount.quantize(CENT, rounding=ROUND_HALF_UP) for amount in exact]
    if not rounded:
        return rounded
    missing = int((total - sum(rounded, Decimal(0))) / CENT)
    if missing:
        step = CENT if missing > 0 else -CENT
        # Adding: the lines rounded down the most first; taking away: rounded up the most.
        order = sorted(range(len(exact)), key=lambda i: exact[i] - rounded[i], reverse=missing > 0)
        for n in range(abs(missing)):
            rounded[order[n % len(order)]] += step
    return rounded


def parse_period(period: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` as the UTC month ``[start, end)``; ``InvalidInput`` otherwise."""
    try:
        start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidInput(
            f"period {period!r} is not a month like 2026-11", param="period"
        ) from None
    return month_bounds(start)


class BillingService:
    """Usage queries, budgets and invoices (see the module docstring)."""

    def __init__(self, database: Database, prices: PriceBook, meter: Meter) -> None:
        self._database = database
        self._prices = prices
        self._meter = meter

    # -- names ----------------------------------------------------------------------------

    def tenant_id(self, name: str) -> int:
        """The id of tenant ``name`` (``NotFound`` naming it)."""
        with self._database.session() as session:
            found = session.scalar(select(TenantRow.id).where(TenantRow.name == name))
        if found is None:
            raise NotFound(f"tenant {name!r} not found", param="tenant")
        return found

    def tenant_name(self, tenant_id: int) -> str:
        with self._database.session() as session:
            name = session.scalar(select(TenantRow.name).where(TenantRow.id == tenant_id))
        return name if name is not None else str(tenant_id)

    def key(self, key_id: str) -> KeyRef:
        """The key with public id ``key_id`` (also accepted: its ``mp-<key_id>`` prefix)."""
        key_id = key_id.removeprefix("mp-")
        with self._database.session() as session:
            row = session.scalars(select(ApiKeyRow).where(ApiKeyRow.key_id == key_id)).first()
            if row is None:
                raise NotFound(f"API key {key_id!r} not found", param="key")
            return KeyRef(row.id, row.key_id, row.tenant_id, row.monthly_budget)

    # -- usage ----------------------------------------------------------------------------

    def usage(self, where: UsageFilter, group_by: list[str]) -> UsageReport:
        """Sums of the records ``where`` selects, by ``group_by`` (day, model, key)."""
        for name in group_by:
            if name not in GROUP_KEYS:
                raise InvalidInput(
                    f"cannot group by {name!r}; use any of {', '.join(GROUP_KEYS)}",
                    param="group_by",
                )
        self._meter.flush()
        keys: list[ColumnElement[Any]] = []
        for name in dict.fromkeys(group_by):
            if name == "day":
                keys.append(self._day().label("day"))
            elif name == "model":
                keys.append(UsageRow.model.label("model"))
            else:
                keys.append(ApiKeyRow.key_id.label("key"))
        query = select(*keys, *_sums()).select_from(UsageRow)
        if "key" in group_by:
            query = query.outerjoin(ApiKeyRow, ApiKeyRow.id == UsageRow.key_id)
        query = where.apply(query)
        if keys:
            query = query.group_by(*keys).order_by(*keys)
        with self._database.session() as session:
            rows = session.execute(query).all()
        groups = []
        total = UsageTotals()
        for row in rows:
            values = row._asdict()
            sums = _totals(values)
            if keys:
                groups.append(
                    UsageGroup(
                        **sums.model_dump(),
                        **{k: values[k] for k in ("day", "model", "key") if k in values},
                    )
                )
            total = _add(total, sums)
        return UsageReport(groups=groups, total=total)

    def _day(self) -> ColumnElement[Any]:
        if self._database.dialect_name == "postgresql":
            return func.to_char(func.timezone("UTC", UsageRow.created_at), "YYYY-MM-DD")
        # SQLite keeps naive UTC text: "YYYY-MM-DD HH:MM:SS..."
        return func.substr(UsageRow.created_at, 1, 10, type_=String)

    def records(self, where: UsageFilter, limit: int = 100) -> list[UsageRecordInfo]:
        """The newest ``limit`` records ``where`` selects, newest first."""
        self._meter.flush()
        query = (
            select(UsageRow, TenantRow.name, ApiKeyRow.key_id)
            .outerjoin(TenantRow, TenantRow.id == UsageRow.tenant_id)
            .outerjoin(ApiKeyRow, ApiKeyRow.id == UsageRow.key_id)
        )
        query = where.apply(query).order_by(UsageRow.created_at.desc(), UsageRow.id.desc())
        with self._database.session() as session:
            found = session.execute(query.limit(limit)).all()
            return [
                UsageRecordInfo(
                    request_id=row.request_id,
                    tenant=tenant,
                    key=key,
                    model=row.model,
                    version=row.version,
                    kind=row.kind,
                    requests=row.requests,
                    rows=row.rows,
                    input_tokens=row.input_tokens,
                    output_tokens=row.output_tokens,
                    compute_ms=row.compute_ms,
                    streamed=row.streamed,
                    finished=row.finished,
                    price_id=row.price_id,
                    cost=row.cost,
                    created_at=row.created_at,
                )
                for row, tenant, key in found
            ]

    # -- budgets --------------------------------------------------------------------------

    def budget(self, tenant_id: int, key: KeyRef | None = None) -> BudgetStatus:
        """Month-to-date spend of the tenant (and key) against their budgets."""
        with self._database.session() as session:
            tenant = session.get(TenantRow, tenant_id)
            if tenant is None:
                raise NotFound(f"tenant {tenant_id} not found", param="tenant")
            name, budget, ratio = tenant.name, tenant.monthly_budget, tenant.soft_budget_ratio
        spend = self._meter.spend  # updated by the event loop: read it, never roll it here
        new_month = self._meter.now() >= spend.month_end
        spent = Decimal(0) if new_month else spend.tenant(tenant_id)
        pairs = [(spent, budget)]
        key_spent = None
        if key is not None:
            key_spent = Decimal(0) if new_month else spend.key(key.id)
            pairs.append((key_spent, key.monthly_budget))
        limits = [(s, b) for s, b in pairs if b is not None]
        return BudgetStatus(
            tenant=name,
            tenant_budget=budget,
            tenant_spend=spent,
            key_budget=None if key is None else key.monthly_budget,
            key_spend=key_spent,
            soft_threshold_reached=any(s >= EXACT.multiply(b, ratio) for s, b in limits),
            hard_limit_reached=any(s >= b for s, b in limits),
        )

    # -- invoices -------------------------------------------------------------------------

    def invoice(self, tenant_id: int, period: str) -> Invoice:
        """The tenant's invoice for ``period`` (YYYY-MM, UTC); see the module docstring."""
        start, end = parse_period(period)
        self._meter.flush()
        where = UsageFilter(tenant_id=tenant_id, since=start, until=end)
        grouped = where.apply(
            select(
                UsageRow.model,
                UsageRow.price_id,
                func.sum(UsageRow.requests),
                func.sum(UsageRow.input_tokens),
                func.sum(UsageRow.output_tokens),
                money_sum(UsageRow.compute_ms, 3),
            )
            .where(UsageRow.price_id.is_not(None))
            .group_by(UsageRow.model, UsageRow.price_id)
            .order_by(UsageRow.model, UsageRow.price_id)
        )
        totals = where.apply(select(money_sum(UsageRow.cost, 10), func.count()))
        with self._database.session() as session:
            groups = session.execute(grouped).all()
            cost_units, records = session.execute(totals).one()
        lines: list[InvoiceLine] = []
        exact: list[Decimal] = []
        currencies = set()
        for model, price_id, requests, input_tokens, output_tokens, compute_us in groups:
            sheet = self._prices.get(price_id)
            if sheet is None:
                raise Conflict(f"price sheet {price_id} of model {model!r} is missing")
            quantities = {
                "requests": Decimal(requests or 0),
                "input_tokens": Decimal(input_tokens or 0),
                "output_tokens": Decimal(output_tokens or 0),
                "compute_seconds": from_units(compute_us, 6),
            }
            for unit in UNIT_PRICES:
                quantity, price = quantities[unit], sheet.unit_price(unit)
                if quantity and price:
                    currencies.add(sheet.currency)
                    exact.append(sheet.amount(unit, quantity))
                    lines.append(
                        InvoiceLine(
                            model=model,
                            unit=unit,
                            quantity=quantity,
                            unit_price=price,
                            price_id=price_id,
                            amount=Decimal(0),
                        )
                    )
        if len(currencies) > 1:
            raise Conflict(f"the usage of {period} was priced in several currencies")
        total = from_units(cost_units, 10).quantize(CENT, rounding=ROUND_HALF_UP)
        for line, amount in zip(lines, allocate_cents(exact, total), strict=True):
            line.amount = amount
        return Invoice(
            tenant=self.tenant_name(tenant_id),
            period=period,
            currency=currencies.pop() if currencies else "USD",
            lines=lines,
            total=total,
            records=int(records),
        )


def invoice_csv(invoice: Invoice) -> str:
    """The invoice's lines as CSV, then a total row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["model", "unit", "quantity", "unit_price", "currency", "price_id", "amount"])
    for line in invoice.lines:
        writer.writerow(
            [line.model, line.unit, line.quantity, line.unit_price, invoice.currency,
             line.price_id, line.amount]
        )  # fmt: skip
    writer.writerow(["total", "", "", "", invoice.currency, "", invoice.total])
    return out.getvalue()


def _sums() -> list[ColumnElement[Any]]:
    return [
        func.sum(UsageRow.requests).label("requests"),
        func.sum(UsageRow.rows).label("rows"),
        func.sum(UsageRow.input_tokens).label("input_tokens"),
        func.sum(UsageRow.output_tokens).label("output_tokens"),
        money_sum(UsageRow.compute_ms, 3).label("compute_us"),
        money_sum(UsageRow.cost, 10).label("cost_units"),
    ]


def _totals(values: dict[str, Any]) -> UsageTotals:
    return UsageTotals(
        requests=int(values["requests"] or 0),
        rows=int(values["rows"] or 0),
        input_tokens=int(values["input_tokens"] or 0),
        output_tokens=int(values["output_tokens"] or 0),
        compute_ms=from_units(values["compute_us"], 3),
        cost=from_units(values["cost_units"], 10),
    )


def _add(a: UsageTotals, b: UsageTotals) -> UsageTotals:
    return UsageTotals(
        requests=a.requests + b.requests,
        rows=a.rows + b.rows,
        input_tokens=a.input_tokens + b.input_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
        compute_ms=a.compute_ms + b.compute_ms,
        cost=a.cost + b.cost,
    )
