"""Price sheets: what a model costs, versioned in time and never retroactive.

A model's price is a series of sheets (``prices`` rows), each in force from its
``effective_from`` until the next one starts: per 1k requests, per 1k input tokens, per 1k
output tokens and per compute-second, in one currency. A new sheet may start now or later,
never earlier (``InvalidInput``, 400): a request already answered keeps the price it was
billed at. A sheet set without a start time applies from ``PRICE_LEAD`` after the call, so it
is in every pricing cache before the first request it applies to.

``PriceBook`` keeps every sheet in memory (sheets are few and only ever added), so pricing a
request costs a dict lookup and a few ``Decimal`` operations, no SQL. Money is ``Decimal``
throughout, never float.

A record's cost is ``price * quantity`` summed over the four units and rounded half-up to the
10 decimal places of the ``Money`` column (``COST_QUANTUM``); compute time counts in whole
microseconds (``compute_us``), the precision of ``usage_records.compute_ms``. Rounding to
cents happens only on invoices (``engine.billing``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from modelport.errors import Conflict, InvalidInput
from modelport.storage.db import Database
from modelport.storage.tables import PriceRow

Clock = Callable[[], datetime]

ZERO = Decimal(0)
COST_QUANTUM = Decimal("1e-10")  # the scale of the Money columns
PRICE_LEAD = timedelta(seconds=1)
# Wide enough that no product or sum of billing quantities is ever rounded.
EXACT = Context(prec=60, rounding=ROUND_HALF_UP)
_PER_1K = Decimal("0.001")
_PER_US = Decimal("0.000001")  # seconds per microsecond

# Invoice units, in line order, and the attribute of the sheet that prices each.
UNIT_PRICES = {
    "requests": "per_1k_requests",
    "input_tokens": "per_1k_input_tokens",
    "output_tokens": "per_1k_output_tokens",
    "compute_seconds": "per_compute_second",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PriceSheet:
    """One price sheet of ``model`` (money as ``Decimal``)."""

    id: int
    model: str
    effective_from: datetime
    per_1k_requests: Decimal
    per_1k_input_tokens: Decimal
    per_1k_output_tokens: Decimal
    per_compute_second: Decimal
    currency: str
    # Price per single request, token and compute microsecond (exact; None when free).
    _factors: tuple[Decimal | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        per_1k = (self.per_1k_requests, self.per_1k_input_tokens, self.per_1k_output_tokens)
        factors = [EXACT.multiply(price, _PER_1K) or None for price in per_1k]
        factors.append(EXACT.multiply(self.per_compute_second, _PER_US) or None)
        object.__setattr__(self, "_factors", tuple(factors))

    def unit_price(self, unit: str) -> Decimal:
        """The price of ``unit`` (per 1k for counts, per second for compute)."""
        price: Decimal = getattr(self, UNIT_PRICES[unit])
        return price

    def amount(self, unit: str, quantity: Decimal | int) -> Decimal:
        """The exact (unrounded) price of ``quantity`` of ``unit``; compute in seconds."""
        price = self.unit_price(unit)
        if unit != "compute_seconds":
            price = EXACT.multiply(price, _PER_1K)
        return EXACT.multiply(price, Decimal(quantity))

    def cost(
        self, requests: int, input_tokens: int, output_tokens: int, compute_us: int
    ) -> Decimal:
        """What one usage record costs under this sheet, at the Money scale (half-up).

        The sum is exact before the rounding: a cost fits the Money column (below 1e10,
        10 decimals), so each term has at most 26 significant digits, within the default
        context's 28.
        """
        total = ZERO
        for factor, quantity in zip(
            self._factors, (requests, input_tokens, output_tokens, compute_us), strict=True
        ):
            if factor is not None and quantity:
                total += factor * quantity
        return total.quantize(COST_QUANTUM, rounding=ROUND_HALF_UP) if total else ZERO

    @property
    def is_free(self) -> bool:
        return not any(self.unit_price(unit) for unit in UNIT_PRICES)


def _check_money(name: str, value: Decimal) -> None:
    """Refuse what the ``Money`` column cannot hold exactly (so cache and database agree)."""
    if not value.is_finite() or value < 0:
        raise InvalidInput(f"{name} must be a finite amount >= 0", param=name)
    if value != value.quantize(COST_QUANTUM, context=EXACT) or value >= Decimal("1e10"):
        raise InvalidInput(
            f"{name} must have at most 10 decimal places and 10 integer digits", param=name
        )


def _sheet(row: PriceRow) -> PriceSheet:
    return PriceSheet(
        id=row.id,
        model=row.model,
        effective_from=row.effective_from,
        per_1k_requests=row.per_1k_requests,
        per_1k_input_tokens=row.per_1k_input_tokens,
        per_1k_output_tokens=row.per_1k_output_tokens,
        per_compute_second=row.per_compute_second,
        currency=row.currency,
    )


class PriceBook:
    """Every price sheet, cached in memory (see the module docstring).

    Reads (``price_at``, ``get``) run on the event loop without locks: the per-model lists
    are replaced whole, never changed in place. ``set`` writes the database first and the
    cache after. ``clock`` is injectable for tests.
    """

    def __init__(self, database: Database, clock: Clock = utcnow) -> None:
        self._database = database
        self._clock = clock
        self._by_model: dict[str, tuple[PriceSheet, ...]] = {}
        self._by_id: dict[int, PriceSheet] = {}
        self._write_lock = threading.Lock()

    def load(self) -> None:
        """Read every sheet from the database (at start)."""
        with self._database.session() as session:
            rows = session.scalars(select(PriceRow).order_by(PriceRow.effective_from)).all()
            sheets = [_sheet(row) for row in rows]
        by_model: dict[str, list[PriceSheet]] = {}
        for sheet in sheets:
            by_model.setdefault(sheet.model, []).append(sheet)
        self._by_model = {model: tuple(found) for model, found in by_model.items()}
        self._by_id = {sheet.id: sheet for sheet in sheets}

    def price_at(self, model: str, at: datetime) -> PriceSheet | None:
        """The sheet of ``model`` in force at ``at`` (None: the model has no price then)."""
        sheets = self._by_model.get(model)
        if sheets is None:
            return None
        for sheet in reversed(sheets):  # the newest sheet is the usual answer
            if sheet.effective_from <= at:
                return sheet
        return None

    def get(self, price_id: int) -> PriceSheet | None:
        return self._by_id.get(price_id)

    def sheets(self, model: str | None = None) -> list[PriceSheet]:
        """Every sheet (of ``model``), by model and start time."""
        if model is not None:
            return list(self._by_model.get(model, ()))
        return [sheet for name in sorted(self._by_model) for sheet in self._by_model[name]]

    def set(
        self,
        model: str,
        *,
        per_1k_requests: Decimal = ZERO,
        per_1k_input_tokens: Decimal = ZERO,
        per_1k_output_tokens: Decimal = ZERO,
        per_compute_second: Decimal = ZERO,
        currency: str = "USD",
        effective_from: datetime | None = None,
    ) -> PriceSheet:
        """Add a sheet for ``model`` from ``effective_from`` (default: ``PRICE_LEAD`` from now)."""
        now = self._clock()
        if effective_from is None:
            effective_from = now + PRICE_LEAD
        elif effective_from.tzinfo is None:
            raise InvalidInput(
                "effective_from needs a timezone (e.g. 2026-12-01T00:00:00Z)",
                param="effective_from",
            )
        elif effective_from < now:
            raise InvalidInput(
                f"effective_from {effective_from.isoformat()} is in the past: a price applies "
                "from now or later, never retroactively",
                param="effective_from",
            )
        prices = {
            "per_1k_requests": per_1k_requests,
            "per_1k_input_tokens": per_1k_input_tokens,
            "per_1k_output_tokens": per_1k_output_tokens,
            "per_compute_second": per_compute_second,
        }
        for name, value in prices.items():
            _check_money(name, value)
        with self._write_lock:
            try:
                with self._database.session() as session:
                    row = PriceRow(
                        model=model,
                        effective_from=effective_from.astimezone(UTC),
                        currency=currency,
                        created_at=now,
                        **prices,
                    )
                    session.add(row)
                    session.flush()
                    sheet = _sheet(row)
            except IntegrityError:
                raise Conflict(
                    f"model {model!r} already has a price starting at {effective_from.isoformat()}",
                    param="effective_from",
                ) from None
            self._add(sheet)
        return sheet

    def _add(self, sheet: PriceSheet) -> None:
        current = self._by_model.get(sheet.model, ())
        self._by_model = {
            **self._by_model,
            sheet.model: tuple(sorted((*current, sheet), key=lambda s: s.effective_from)),
        }
        self._by_id = {**self._by_id, sheet.id: sheet}
