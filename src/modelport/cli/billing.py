"""``modelport prices | usage | invoices``: what calls cost, what was used, what is owed.

``prices`` and ``invoices`` are sub-apps; ``usage`` is a top-level command (``main``
registers it). Money options are parsed as exact decimals, never floats.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from modelport.cli import connect, csv_arg, decimal_arg, output, tenancy_output

prices_app = typer.Typer(help="Set and list model prices (versioned in time).")
invoices_app = typer.Typer(help="Invoices per tenant and month.")
for _sub in (prices_app, invoices_app):
    _sub.info.no_args_is_help = True

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
Since = Annotated[str | None, typer.Option("--since", help="From this ISO date/time (inclusive).")]
Until = Annotated[str | None, typer.Option("--until", help="Until this ISO date/time (exclusive).")]


@prices_app.command("set")
@output.cli_errors
def set_price(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    per_1k_requests: Annotated[
        str | None, typer.Option("--per-1k-requests", help="Price per 1000 requests.")
    ] = None,
    per_1k_input_tokens: Annotated[
        str | None, typer.Option("--per-1k-input-tokens", help="Price per 1000 input tokens.")
    ] = None,
    per_1k_output_tokens: Annotated[
        str | None,
        typer.Option("--per-1k-output-tokens", help="Price per 1000 output tokens."),
    ] = None,
    per_compute_second: Annotated[
        str | None,
        typer.Option("--per-compute-second", help="Price per second of model compute."),
    ] = None,
    currency: Annotated[
        str | None, typer.Option("--currency", help="ISO currency code (default USD).")
    ] = None,
    effective_from: Annotated[
        str | None,
        typer.Option("--from", help="When the price starts (ISO time; default now, never past)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Set a model's price from now (or --from); earlier usage keeps its old price."""
    with connect(ctx) as client:
        price = client.set_price(
            model,
            per_1k_requests=decimal_arg(per_1k_requests, "--per-1k-requests"),
            per_1k_input_tokens=decimal_arg(per_1k_input_tokens, "--per-1k-input-tokens"),
            per_1k_output_tokens=decimal_arg(per_1k_output_tokens, "--per-1k-output-tokens"),
            per_compute_second=decimal_arg(per_compute_second, "--per-compute-second"),
            currency=currency,
            effective_from=effective_from,
        )
    if as_json:
        output.print_json(price)
    else:
        tenancy_output.print_prices([price])


@prices_app.command("list")
@output.cli_errors
def list_prices(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only this model.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List the price sheet: every price version with its start time."""
    with connect(ctx) as client:
        prices = client.list_prices(model)
    if as_json:
        output.print_json(prices)
    else:
        tenancy_output.print_prices(prices)


@output.cli_errors
def usage(
    ctx: typer.Context,
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="Tenant (default: your own).")
    ] = None,
    key: Annotated[str | None, typer.Option("--key", help="Only this key id.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only this model.")] = None,
    since: Since = None,
    until: Until = None,
    group_by: Annotated[
        str | None, typer.Option("--group-by", help="Comma-separated: day, model, key.")
    ] = None,
    records: Annotated[
        bool, typer.Option("--records", help="List single usage records instead of totals.")
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="With --records: at most N.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show usage and cost (totals, or grouped), with the budget state."""
    with connect(ctx) as client:
        if records:
            found = client.usage_records(
                tenant=tenant, key=key, model=model, since=since, until=until, limit=limit
            )
            if as_json:
                output.print_json(found)
            else:
                tenancy_output.print_usage_records(found)
            return
        report = client.usage(
            tenant=tenant,
            key=key,
            model=model,
            since=since,
            until=until,
            group_by=csv_arg(group_by),
        )
    if as_json:
        output.print_json(report)
    else:
        tenancy_output.print_usage(report)


class InvoiceFormat(StrEnum):
    JSON = "json"
    CSV = "csv"


@invoices_app.command("show")
@output.cli_errors
def show_invoice(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="Tenant.")],
    period: Annotated[str, typer.Option("--period", "-p", help="Month, YYYY-MM.")],
    fmt: Annotated[
        InvoiceFormat | None,
        typer.Option("--format", "-f", help="json, or csv (raw CSV on stdout)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show a tenant's invoice for one month: lines per model and unit, and the total."""
    with connect(ctx) as client:
        if fmt is InvoiceFormat.CSV:
            typer.echo(client.invoice_csv(tenant, period), nl=False)
            return
        invoice = client.invoice(tenant, period)
    if as_json or fmt is InvoiceFormat.JSON:
        output.print_json(invoice)
    else:
        tenancy_output.print_invoice(invoice)
