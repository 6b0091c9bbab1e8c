"""Month-to-date spend and monthly budgets, in memory, for refusing calls without SQL.

``SpendTracker`` holds what each tenant and each key spent this calendar month (UTC): read
from ``usage_records`` at start, then increased by every usage record the meter makes. The
budget check on each inference call is two dict lookups and two ``Decimal`` comparisons.

A tenant's budget comes from a lookup answering from memory: the account service's tenant
table in the server (changes apply at once), else ``TenantBudgets``, a cache the meter's
writer thread refreshes from the database every ``metering_tenant_refresh_s``. Keys carry
their own budget on the ``Principal``.

``money_sum`` sums a money column *exactly* on both databases: SQLite stores ``Numeric`` as
a float, so each value is scaled to an integer (it has at most 10 decimal places, and at
most 15 significant digits are needed for it to round-trip) and the integers are summed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import BigInteger, ColumnElement, cast, func, select

from modelport.storage.db import Database
from modelport.storage.tables import TenantRow, UsageRow

Clock = Callable[[], datetime]
ZERO = Decimal(0)
DEFAULT_SOFT_RATIO = Decimal("0.8")


def money_sum(column: Any, places: int) -> ColumnElement[Any]:
    """``SUM`` of a decimal column with ``places`` decimals, as an exact integer of units."""
    return func.sum(cast(func.round(column * 10**places), BigInteger))


def from_units(value: int | Decimal | None, places: int) -> Decimal:
    """The ``Decimal`` of an integer sum made by ``money_sum`` (None: zero)."""
    return Decimal(value or 0).scaleb(-places)


def month_bounds(at: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month holding ``at``: ``[start, end)``."""
    at = at.astimezone(UTC)
    start = datetime(at.year, at.month, 1, tzinfo=UTC)
    end = datetime(at.year + at.month // 12, at.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


class SpendTracker:
    """What each tenant and key spent this month (see the module docstring).

    Used from the event loop only (``load`` runs before serving).
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.month_start, self.month_end = month_bounds(clock())
        self.month_end_ts = self.month_end.timestamp()  # for a check against time.time()
        self.tenants: dict[int, Decimal] = {}
        self.keys: dict[int, Decimal] = {}

    def load(self, database: Database) -> None:
        """Sum this month's usage records by tenant and key."""
        self.month_start, self.month_end = month_bounds(self._clock())
        self.month_end_ts = self.month_end.timestamp()
        tenants: dict[int, Decimal] = {}
        keys: dict[int, Decimal] = {}
        query = (
            select(UsageRow.tenant_id, UsageRow.key_id, money_sum(UsageRow.cost, 10))
            .where(UsageRow.created_at >= self.month_start, UsageRow.created_at < self.month_end)
            .group_by(UsageRow.tenant_id, UsageRow.key_id)
        )
        with database.session() as session:
            for tenant_id, key_id, units in session.execute(query):
                spent = from_units(units, 10)
                if tenant_id is not None:
                    tenants[tenant_id] = tenants.get(tenant_id, ZERO) + spent
                if key_id is not None:
                    keys[key_id] = keys.get(key_id, ZERO) + spent
        self.tenants, self.keys = tenants, keys

    def roll(self, now: datetime) -> None:
        """Start a new month at zero when ``now`` is past this one."""
        if now >= self.month_end:
            self.month_start, self.month_end = month_bounds(now)
            self.month_end_ts = self.month_end.timestamp()
            self.tenants, self.keys = {}, {}

    def add(self, tenant_id: int | None, key_id: int | None, cost: Decimal, at: datetime) -> None:
        """Count a record's cost (records of another month do not count)."""
        if at >= self.month_end:
            self.roll(at)
        if not cost or not self.month_start <= at < self.month_end:
            return
        if tenant_id is not None:
            self.tenants[tenant_id] = self.tenants.get(tenant_id, ZERO) + cost
        if key_id is not None:
            self.keys[key_id] = self.keys.get(key_id, ZERO) + cost

    def tenant(self, tenant_id: int) -> Decimal:
        return self.tenants.get(tenant_id, ZERO)

    def key(self, key_id: int) -> Decimal:
        return self.keys.get(key_id, ZERO)


class BudgetLike(Protocol):
    """What the budget check needs of a tenant (``accounts.TenantLimits`` has it too)."""

    @property
    def monthly_budget(self) -> Decimal | None: ...

    @property
    def soft_budget_ratio(self) -> Decimal: ...


BudgetLookup = Callable[[int], BudgetLike | None]


@dataclass(frozen=True)
class TenantBudget:
    name: str
    monthly_budget: Decimal | None
    soft_budget_ratio: Decimal


class TenantBudgets:
    """Every tenant's name and budget, refreshed from the database (see the module doc)."""

    def __init__(self) -> None:
        self._by_id: dict[int, TenantBudget] = {}

    def refresh(self, database: Database) -> None:
        query = select(
            TenantRow.id, TenantRow.name, TenantRow.monthly_budget, TenantRow.soft_budget_ratio
        )
        with database.session() as session:
            rows = session.execute(query).all()
        self._by_id = {  # replaced whole: readers on the event loop need no lock
            tenant_id: TenantBudget(
                name, budget, ratio if ratio is not None else DEFAULT_SOFT_RATIO
            )
            for tenant_id, name, budget, ratio in rows
        }

    def get(self, tenant_id: int) -> TenantBudget | None:
        return self._by_id.get(tenant_id)
