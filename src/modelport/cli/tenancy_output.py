"""Rich tables for tenants, users, keys, ``whoami``, the audit log, prices, usage, invoices.

Like ``cli.output``: data to stdout, notes and warnings to stderr. Money is printed exactly
as the server sent it (``Decimal``), never rounded through a float.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from modelport.types.accounts import AuditEntry, KeyInfo, TenantInfo, UserInfo, WhoAmI
from modelport.types.billing import Invoice, PriceInfo, UsageRecordInfo, UsageReport, UsageTotals


def _out() -> Console:
    # Built per call: the console must write to whatever sys.stdout is now (tests swap it).
    return Console(highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """A yellow note on stderr (keeps ``--json`` output clean)."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(Text(message, style="yellow"))


def _none(what: str) -> None:
    _out().print(Text(f"No {what}.", style="dim"))


def money(value: Decimal | None) -> str:
    """A decimal amount without exponent or trailing zeros; ``-`` for none."""
    if value is None:
        return "-"
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def when(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M}"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def print_tenants(tenants: Sequence[TenantInfo]) -> None:
    if not tenants:
        _none("tenants")
        return
    table = Table("Tenant", "RPM", "TPM", "Monthly budget", "Soft at", "Created", title="Tenants")
    for tenant in tenants:
        table.add_row(
            tenant.name,
            _count(tenant.rpm),
            _count(tenant.tpm),
            money(tenant.monthly_budget),
            f"{tenant.soft_budget_ratio * 100:.0f}%",
            when(tenant.created_at),
        )
    _out().print(table)


def print_users(users: Sequence[UserInfo]) -> None:
    if not users:
        _none("users")
        return
    table = Table("User", "Tenant", "Role", "Created", title="Users")
    for user in users:
        table.add_row(user.name, user.tenant, user.role, when(user.created_at))
    _out().print(table)


def print_keys(keys: Sequence[KeyInfo]) -> None:
    if not keys:
        _none("API keys")
        return
    table = Table(title="API keys")
    for header in ("Key", "Tenant", "Name", "Scopes", "User", "RPM", "TPM", "Budget"):
        table.add_column(header, no_wrap=header == "Key")
    for header in ("Expires", "Last used", "State"):
        table.add_column(header)
    for key in keys:
        state = Text("revoked", style="red") if key.revoked_at else Text("active", style="green")
        table.add_row(
            key.prefix,
            key.tenant,
            key.name,
            ", ".join(key.scopes),
            key.user or "-",
            _count(key.rpm),
            _count(key.tpm),
            money(key.monthly_budget),
            when(key.expires_at),
            when(key.last_used_at),
            state,
        )
    _out().print(table)


def print_whoami(me: WhoAmI) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for label, value in (
        ("tenant", me.tenant),
        ("key", me.key_id),
        ("name", me.name),
        ("scopes", ", ".join(me.scopes)),
    ):
        table.add_row(label, value)
    _out().print(table)


def print_audit(entries: Sequence[AuditEntry]) -> None:
    if not entries:
        _none("audit entries")
        return
    table = Table("At", "Tenant", "Actor", "Action", "Target", "Status", "From", title="Audit log")
    for entry in entries:
        status = Text(str(entry.status), style="green" if entry.status < 400 else "red")
        table.add_row(
            f"{entry.at:%Y-%m-%d %H:%M:%S}",
            entry.tenant or "-",
            entry.actor,
            entry.action,
            entry.target,
            status,
            entry.remote,
        )
    _out().print(table)


# --- billing ------------------------------------------------------------------------------


def print_prices(prices: Sequence[PriceInfo]) -> None:
    if not prices:
        _none("prices")
        return
    table = Table(title="Prices")
    for header in ("Model", "From", "/1k requests", "/1k input tok", "/1k output tok"):
        table.add_column(header, no_wrap=header == "Model")
    table.add_column("/compute s")
    table.add_column("Cur.")
    for price in prices:
        table.add_row(
            price.model,
            f"{price.effective_from:%Y-%m-%d %H:%M:%S}",
            money(price.per_1k_requests),
            money(price.per_1k_input_tokens),
            money(price.per_1k_output_tokens),
            money(price.per_compute_second),
            price.currency,
        )
    _out().print(table)


def _totals(totals: UsageTotals) -> list[str]:
    return [
        str(totals.requests),
        str(totals.rows),
        str(totals.input_tokens),
        str(totals.output_tokens),
        money(totals.compute_ms),
        money(totals.cost),
    ]


def print_usage(report: UsageReport) -> None:
    """The groups (by the keys asked for), a total row, then the budget state."""
    keys = [k for k in ("day", "model", "key") if any(getattr(g, k) for g in report.groups)]
    headers = ("Requests", "Rows", "Input tok", "Output tok", "Compute ms", "Cost")
    totals = _totals(report.total)
    table = Table(title="Usage", show_footer=bool(keys))
    for key in keys:
        table.add_column(key.capitalize(), footer="total" if key == keys[0] else "")
    for header, total in zip(headers, totals, strict=True):
        table.add_column(header, footer=total, justify="right")
    for group in report.groups if keys else []:
        table.add_row(*[getattr(group, key) or "-" for key in keys], *_totals(group))
    if not keys:
        table.add_row(*totals)
    _out().print(table)
    budget = report.budget
    if budget is not None:
        state = (
            Text("hard limit reached: calls are refused", style="bold red")
            if budget.hard_limit_reached
            else Text("soft threshold reached", style="yellow")
            if budget.soft_threshold_reached
            else Text("within budget", style="green")
        )
        line = Text(f"{budget.tenant}: spent {money(budget.tenant_spend)}")
        line.append(f" of {money(budget.tenant_budget)}" if budget.tenant_budget else "")
        if budget.key_spend is not None:
            line.append(f"; key spent {money(budget.key_spend)}")
            line.append(f" of {money(budget.key_budget)}" if budget.key_budget else "")
        _out().print(line, Text(" — "), state)


def print_usage_records(records: Sequence[UsageRecordInfo]) -> None:
    if not records:
        _none("usage records")
        return
    table = Table(
        "At",
        "Tenant",
        "Key",
        "Model",
        "Kind",
        "Req",
        "In tok",
        "Out tok",
        "Cost",
        title="Usage records",
    )
    for record in records:
        table.add_row(
            f"{record.created_at:%Y-%m-%d %H:%M:%S}",
            record.tenant or "-",
            record.key or "-",
            f"{record.model} v{record.version}",
            record.kind,
            str(record.requests),
            str(record.input_tokens),
            str(record.output_tokens),
            money(record.cost),
        )
    _out().print(table)


def print_invoice(invoice: Invoice) -> None:
    title = f"Invoice {invoice.tenant} {invoice.period} ({invoice.currency})"
    table = Table(
        "Model", "Unit", "Quantity", "Unit price", "Amount", title=title, show_footer=True
    )
    table.columns[0].footer = "total"
    table.columns[4].footer = money(invoice.total)
    for line in invoice.lines:
        table.add_row(
            line.model, line.unit, money(line.quantity), money(line.unit_price), money(line.amount)
        )
    _out().print(table)
    _out().print(Text(f"{invoice.records} usage record(s) billed.", style="dim"))
