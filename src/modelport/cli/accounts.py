"""``modelport tenants | users | keys | whoami | audit``: who may call the server, and how.

``tenants``, ``users`` and ``keys`` are sub-apps; ``whoami`` and ``audit`` are top-level
commands (``main`` registers them). A new key's secret is printed once, by ``keys create``,
and never again: the server keeps only its hash.
"""

from __future__ import annotations

from typing import Annotated

import typer

from modelport.cli import connect, csv_arg, decimal_arg, output, tenancy_output
from modelport.errors import InvalidInput

tenants_app = typer.Typer(help="Manage tenants (accounts that own models and pay).")
users_app = typer.Typer(help="Manage the users of a tenant.")
keys_app = typer.Typer(help="Manage API keys: create (secret shown once), list, revoke.")
for _sub in (tenants_app, users_app, keys_app):
    _sub.info.no_args_is_help = True

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
Rpm = Annotated[int | None, typer.Option("--rpm", min=1, help="Requests per minute.")]
Tpm = Annotated[int | None, typer.Option("--tpm", min=1, help="Tokens per minute.")]
Budget = Annotated[
    str | None, typer.Option("--budget", help="Monthly budget in the price currency, e.g. 50.")
]
TenantOpt = Annotated[str, typer.Option("--tenant", "-t", help="Tenant name.")]

# --- tenants ------------------------------------------------------------------------------


@tenants_app.command("create")
@output.cli_errors
def create_tenant(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Tenant name, e.g. acme.")],
    rpm: Rpm = None,
    tpm: Tpm = None,
    budget: Budget = None,
    soft_ratio: Annotated[
        str | None,
        typer.Option("--soft-ratio", help="Share of the budget that flags the soft threshold."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a tenant (admin key), with optional rate limits and monthly budget."""
    with connect(ctx) as client:
        tenant = client.create_tenant(
            name,
            rpm=rpm,
            tpm=tpm,
            monthly_budget=decimal_arg(budget, "--budget"),
            soft_budget_ratio=decimal_arg(soft_ratio, "--soft-ratio"),
        )
    if as_json:
        output.print_json(tenant)
    else:
        tenancy_output.print_tenants([tenant])


@tenants_app.command("list")
@output.cli_errors
def list_tenants(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List tenants (all with an admin key, else your own)."""
    with connect(ctx) as client:
        tenants = client.list_tenants()
    if as_json:
        output.print_json(tenants)
    else:
        tenancy_output.print_tenants(tenants)


@tenants_app.command("show")
@output.cli_errors
def show_tenant(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Tenant name.")],
    as_json: JsonFlag = False,
) -> None:
    """Show one tenant's limits and budget."""
    with connect(ctx) as client:
        tenant = client.get_tenant(name)
    if as_json:
        output.print_json(tenant)
    else:
        tenancy_output.print_tenants([tenant])


@tenants_app.command("update")
@output.cli_errors
def update_tenant(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Tenant name.")],
    rpm: Rpm = None,
    tpm: Tpm = None,
    budget: Budget = None,
    soft_ratio: Annotated[
        str | None, typer.Option("--soft-ratio", help="Soft threshold as a share of budget.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Change a tenant's limits or budget (only the options given)."""
    with connect(ctx) as client:
        tenant = client.update_tenant(
            name,
            rpm=rpm,
            tpm=tpm,
            monthly_budget=decimal_arg(budget, "--budget"),
            soft_budget_ratio=decimal_arg(soft_ratio, "--soft-ratio"),
        )
    if as_json:
        output.print_json(tenant)
    else:
        tenancy_output.print_tenants([tenant])


# --- users --------------------------------------------------------------------------------


@users_app.command("create")
@output.cli_errors
def create_user(
    ctx: typer.Context,
    tenant: TenantOpt,
    name: Annotated[str, typer.Option("--name", "-n", help="User name.")],
    role: Annotated[
        str, typer.Option("--role", help="owner, admin, developer or viewer.")
    ] = "developer",
    as_json: JsonFlag = False,
) -> None:
    """Add a user to a tenant."""
    with connect(ctx) as client:
        user = client.create_user(tenant, name, role)
    if as_json:
        output.print_json(user)
    else:
        tenancy_output.print_users([user])


@users_app.command("list")
@output.cli_errors
def list_users(ctx: typer.Context, tenant: TenantOpt, as_json: JsonFlag = False) -> None:
    """List the users of a tenant."""
    with connect(ctx) as client:
        users = client.list_users(tenant)
    if as_json:
        output.print_json(users)
    else:
        tenancy_output.print_users(users)


# --- keys ---------------------------------------------------------------------------------


@keys_app.command("create")
@output.cli_errors
def create_key(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="What the key is for, e.g. ci-bot.")],
    scopes: Annotated[
        str,
        typer.Option(
            "--scopes",
            "-s",
            help="Comma-separated: inference, models:write, deploy, billing:read, "
            "keys:write, admin.",
        ),
    ],
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="Tenant (default: your own).")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="User the key belongs to.")] = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    budget: Budget = None,
    expires: Annotated[
        str | None,
        typer.Option("--expires", help="Expiry, ISO date or time (UTC), e.g. 2027-01-01."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an API key and print its secret: the only time it is shown."""
    scope_list = csv_arg(scopes)
    if not scope_list:
        raise InvalidInput("--scopes needs at least one scope, e.g. --scopes inference")
    with connect(ctx) as client:
        created = client.create_key(
            name,
            scope_list,
            tenant=tenant,
            user=user,
            rpm=rpm,
            tpm=tpm,
            monthly_budget=decimal_arg(budget, "--budget"),
            expires_at=expires,
        )
    if as_json:
        output.print_json(created)
    else:
        tenancy_output.print_keys([created])
        typer.echo(created.key)
    tenancy_output.warn(
        f"This is the only time the secret of key {created.key_id} is shown: store it now."
    )


@keys_app.command("list")
@output.cli_errors
def list_keys(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List API keys (never their secrets)."""
    with connect(ctx) as client:
        keys = client.list_keys(tenant)
    if as_json:
        output.print_json(keys)
    else:
        tenancy_output.print_keys(keys)


@keys_app.command("revoke")
@output.cli_errors
def revoke_key(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key id, or its prefix mp-<key_id>.")],
) -> None:
    """Revoke a key: it is refused from the next request on."""
    key_id = key_id.removeprefix("mp-").split("_", 1)[0]
    with connect(ctx) as client:
        client.revoke_key(key_id)
    output.success(f"Revoked key {key_id}.")


# --- whoami and audit ---------------------------------------------------------------------


@output.cli_errors
def whoami(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show the tenant, key and scopes of the API key in use."""
    with connect(ctx) as client:
        me = client.whoami()
    if as_json:
        output.print_json(me)
    else:
        tenancy_output.print_whoami(me)


@output.cli_errors
def audit(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant.")] = None,
    action: Annotated[
        str | None, typer.Option("--action", help='Only this action, e.g. "POST /api/keys".')
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="From (ISO date/time).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Until (ISO date/time).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N entries.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the audit log of admin actions (admin key)."""
    with connect(ctx) as client:
        entries = client.audit(tenant=tenant, action=action, since=since, until=until, limit=limit)
    if as_json:
        output.print_json(entries)
    else:
        tenancy_output.print_audit(entries)
