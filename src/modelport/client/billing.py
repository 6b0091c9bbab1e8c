"""Sans-IO calls of the billing API: the price sheet, usage reports and invoices.

A mixin of ``ClientCore``: each method builds the ``Call`` of one route of ``/api/prices``,
``/api/usage`` and ``/api/invoices``, parsed into the wire models of
``modelport.types.billing``. Prices go out as exact decimal strings, never floats.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime

from modelport import errors
from modelport.client.accounts import Money
from modelport.client.calls import (
    Call,
    Request,
    given,
    json_call,
    path_segment,
    query,
    validated_body,
)
from modelport.client.responses import parse_list, parse_model
from modelport.types.billing import (
    GROUP_KEYS,
    PERIOD_PATTERN,
    Invoice,
    PriceInfo,
    PriceSet,
    UsageRecordInfo,
    UsageReport,
)

When = datetime | date | str
_PERIOD = re.compile(PERIOD_PATTERN)


class BillingCalls:
    """Builds the billing requests; stateless, mixed into ``ClientCore``."""

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
    ) -> Call[PriceInfo]:
        """``PUT /api/prices/{model}`` (admin): a new price version from ``effective_from``."""
        values = given(
            per_1k_requests=per_1k_requests,
            per_1k_input_tokens=per_1k_input_tokens,
            per_1k_output_tokens=per_1k_output_tokens,
            per_compute_second=per_compute_second,
            currency=currency,
            effective_from=effective_from,
        )
        body = validated_body(PriceSet, values)
        path = f"/api/prices/{path_segment(model)}"
        return json_call("PUT", path, body, PriceInfo, exclude_unset=True)

    def list_prices(self, model: str | None = None) -> Call[list[PriceInfo]]:
        """``GET /api/prices[?model=]``: every price version."""
        return Call(Request("GET", "/api/prices", query(model=model)), parse_list(PriceInfo))

    def usage(
        self,
        *,
        tenant: str | None = None,
        key: str | None = None,
        model: str | None = None,
        since: When | None = None,
        until: When | None = None,
        group_by: Sequence[str] = (),
    ) -> Call[UsageReport]:
        """``GET /api/usage``: totals (and groups by ``day``, ``model``, ``key``), budgets."""
        unknown = [item for item in group_by if item not in GROUP_KEYS]
        if unknown:
            raise errors.InvalidInput(
                f"cannot group usage by {', '.join(unknown)}; choose from day, model, key",
                param="group_by",
            )
        params = query(
            tenant=tenant,
            key=key,
            model=model,
            since=since,
            until=until,
            group_by=",".join(group_by) or None,
        )
        return Call(Request("GET", "/api/usage", params), parse_model(UsageReport))

    def usage_records(
        self,
        *,
        tenant: str | None = None,
        key: str | None = None,
        model: str | None = None,
        since: When | None = None,
        until: When | None = None,
        limit: int | None = None,
    ) -> Call[list[UsageRecordInfo]]:
        """``GET /api/usage/records``: one record per answered request."""
        params = query(tenant=tenant, key=key, model=model, since=since, until=until, limit=limit)
        return Call(Request("GET", "/api/usage/records", params), parse_list(UsageRecordInfo))

    def invoice(self, tenant: str, period: str) -> Call[Invoice]:
        """``GET /api/invoices/{tenant}/{period}`` (``period``: ``YYYY-MM``)."""
        return Call(_invoice_request(tenant, period, "json"), parse_model(Invoice))

    def invoice_csv(self, tenant: str, period: str) -> Call[str]:
        """The same invoice as CSV text (``?format=csv``): its lines and a total row."""
        request = _invoice_request(tenant, period, "csv")
        return Call(request, lambda body: body.decode("utf-8"))


def _invoice_request(tenant: str, period: str, fmt: str) -> Request:
    if not _PERIOD.match(period):
        raise errors.InvalidInput(
            f"invoice period must look like YYYY-MM, got {period!r}", param="period"
        )
    path = f"/api/invoices/{path_segment(tenant)}/{path_segment(period)}"
    accept = "text/csv" if fmt == "csv" else "application/json"
    return Request("GET", path, {"format": fmt}, headers={"Accept": accept})
