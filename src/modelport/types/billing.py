"""Wire models of billing: prices, usage reports and records, budgets and invoices.

Shared by the server (``api/admin/billing.py``) and the Python client. Money is ``Decimal``
and travels as a decimal string in JSON, never a float; so do compute milliseconds and
compute seconds (exact to the microsecond).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Price = Annotated[Decimal, Field(ge=0, max_digits=20, decimal_places=10)]
Unit = Literal["requests", "input_tokens", "output_tokens", "compute_seconds"]
GROUP_KEYS = ("day", "model", "key")
PERIOD_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"


class PriceSet(BaseModel):
    """Body of ``PUT /api/prices/{model}``: a new sheet; unset prices are 0.

    ``effective_from`` defaults to one second from now and may not be in the past.
    """

    model_config = ConfigDict(extra="forbid")

    per_1k_requests: Price = Decimal(0)
    per_1k_input_tokens: Price = Decimal(0)
    per_1k_output_tokens: Price = Decimal(0)
    per_compute_second: Price = Decimal(0)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    effective_from: datetime | None = None


class PriceInfo(BaseModel):
    id: int
    model: str
    effective_from: datetime
    per_1k_requests: Decimal
    per_1k_input_tokens: Decimal
    per_1k_output_tokens: Decimal
    per_compute_second: Decimal
    currency: str


class UsageTotals(BaseModel):
    """Sums over usage records."""

    requests: int = 0
    rows: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    compute_ms: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)


class UsageGroup(UsageTotals):
    """Sums of one group; the keys it was grouped by are set, the others null."""

    day: str | None = Field(default=None, description="UTC date, YYYY-MM-DD")
    model: str | None = None
    key: str | None = Field(default=None, description="public key id (the <key_id> of mp-<key_id>)")


class BudgetStatus(BaseModel):
    """Month-to-date spend against the monthly budgets (null budget: none set)."""

    tenant: str
    tenant_budget: Decimal | None = None
    tenant_spend: Decimal
    key_budget: Decimal | None = None
    key_spend: Decimal | None = None
    soft_threshold_reached: bool
    hard_limit_reached: bool


class UsageReport(BaseModel):
    """``GET /api/usage``: grouped sums, their total, and the budget of the tenant in view."""

    groups: list[UsageGroup]
    total: UsageTotals
    budget: BudgetStatus | None = None


class UsageRecordInfo(BaseModel):
    """One usage record: one answered request."""

    request_id: str
    tenant: str | None = None
    key: str | None = None
    model: str
    version: int
    kind: str
    requests: int
    rows: int
    input_tokens: int
    output_tokens: int
    compute_ms: Decimal
    streamed: bool
    finished: bool
    price_id: int | None = None
    cost: Decimal
    created_at: datetime


class InvoiceLine(BaseModel):
    """One model, unit and price sheet: ``amount`` is in cents (see ``engine.billing``)."""

    model: str
    unit: Unit
    quantity: Decimal
    unit_price: Decimal = Field(description="per 1k requests/tokens, or per compute second")
    price_id: int
    amount: Decimal


class Invoice(BaseModel):
    """A tenant's bill for one calendar month (UTC)."""

    tenant: str
    period: str = Field(description="YYYY-MM")
    currency: str
    lines: list[InvoiceLine]
    total: Decimal
    records: int = Field(description="usage records billed")
