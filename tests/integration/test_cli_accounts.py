"""The pay-per-use CLI (tenants, users, keys, prices, usage, invoices, audit) and the Python
client's key pickup, against a real server.

Each command runs through Typer's ``CliRunner`` in this process, talking HTTP to a
``modelport serve`` subprocess; keys reach the CLI the three ways a user passes them
(``--api-key``, ``MODELPORT_API_KEY``, the ``<data_dir>/admin.key`` file).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from modelport import errors
from modelport.cli.main import app
from modelport.client import AsyncClient, Client
from tests.integration.helpers import TEST_ADMIN_KEY
from tests.integration.server_process import ServerProcess

runner = CliRunner()
ROW = "[[5.1, 3.5, 1.4, 0.2]]"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the small demo models only (iris, digits: public, platform-owned)."""
    data = tmp_path_factory.mktemp("cli-accounts") / "data"
    env = {"MODELPORT_DEMO_TEXT_MODELS": "false", "MODELPORT_ADMIN_KEY": TEST_ADMIN_KEY}
    proc = ServerProcess(data, env=env).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(autouse=True)
def _no_ambient_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No key from the developer's shell or a ``.modelport/admin.key`` in the cwd."""
    monkeypatch.delenv("MODELPORT_API_KEY", raising=False)
    monkeypatch.setenv("MODELPORT_DATA_DIR", str(tmp_path / "no-data-dir"))


def cli(server: ServerProcess, *args: str, key: str | None = None, **env: str) -> Result:
    """Run ``modelport --url ... [--api-key key] ARGS`` with extra environment variables."""
    prefix = ["--url", server.url] + (["--api-key", key] if key is not None else [])
    return runner.invoke(app, [*prefix, *args], env=env)


def admin(server: ServerProcess, *args: str) -> Result:
    return cli(server, *args, key=TEST_ADMIN_KEY)


def ok_json(result: Result) -> Any:
    """A ``--json`` command's output: it succeeded and stdout is JSON only."""
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def new_key(server: ServerProcess, tenant: str, scopes: str, *extra: str) -> dict[str, Any]:
    created = ok_json(
        admin(server, "keys", "create", "--tenant", tenant, "--scopes", scopes, *extra, "--json")
    )
    assert isinstance(created, dict)
    return created


def test_tenant_user_and_key_lifecycle(server: ServerProcess) -> None:
    tenant = ok_json(
        admin(server, "tenants", "create", "acme", "--rpm", "600", "--budget", "50.25", "--json")
    )
    assert tenant["name"] == "acme" and tenant["rpm"] == 600
    assert Decimal(tenant["monthly_budget"]) == Decimal("50.25")  # a decimal string, exact
    assert "acme" in [t["name"] for t in ok_json(admin(server, "tenants", "list", "--json"))]
    table = admin(server, "tenants", "show", "acme")
    assert table.exit_code == 0 and "acme" in table.stdout and "50.25" in table.stdout

    user = ok_json(
        admin(
            server,
            "users",
            "create",
            "--tenant",
            "acme",
            "--name",
            "ann",
            "--role",
            "developer",
            "--json",
        )
    )
    assert (user["tenant"], user["name"], user["role"]) == ("acme", "ann", "developer")
    users = ok_json(admin(server, "users", "list", "--tenant", "acme", "--json"))
    assert [u["name"] for u in users] == ["ann"]

    result = admin(
        server,
        "keys",
        "create",
        "--tenant",
        "acme",
        "--scopes",
        "inference",
        "--name",
        "ci-bot",
        "--user",
        "ann",
        "--rpm",
        "600",
        "--tpm",
        "100000",
        "--budget",
        "50",
        "--expires",
        "2099-01-01",
        "--json",
    )
    created = ok_json(result)
    secret = created["key"]
    assert secret.startswith(f"mp-{created['key_id']}_")
    assert created["scopes"] == ["inference"] and created["user"] == "ann"
    assert created["expires_at"].startswith("2099-01-01")
    assert "only time" in result.stderr  # says so, outside the JSON

    listing = admin(server, "keys", "list", "--tenant", "acme", "--json")
    keys = ok_json(listing)
    assert [k["key_id"] for k in keys] == [created["key_id"]]
    assert "key" not in keys[0] and secret.split("_", 1)[1] not in listing.stdout
    assert secret.split("_", 1)[1] not in admin(server, "keys", "list").stdout

    # The new key, from the environment: who it is, and what it may list.
    me = ok_json(cli(server, "whoami", "--json", MODELPORT_API_KEY=secret))
    assert (me["tenant"], me["key_id"], me["scopes"]) == ("acme", created["key_id"], ["inference"])
    models = ok_json(cli(server, "models", "list", "--json", MODELPORT_API_KEY=secret))
    assert {"iris", "digits"} <= {m["name"] for m in models}
    # A key without admin or keys:write may not create tenants: 403, exit status 1.
    refused = cli(server, "tenants", "create", "evil", MODELPORT_API_KEY=secret)
    assert refused.exit_code == 1 and "Error" in refused.stderr

    revoked = admin(server, "keys", "revoke", created["prefix"])
    assert revoked.exit_code == 0, revoked.output
    after = cli(server, "models", "list", MODELPORT_API_KEY=secret)
    assert after.exit_code == 1 and after.stdout == ""
    with Client(server.url, api_key=secret) as client, pytest.raises(errors.Unauthenticated):
        client.list_models()
    listed = ok_json(admin(server, "keys", "list", "--tenant", "acme", "--json"))
    assert listed[0]["revoked_at"] is not None


def test_key_from_flag_env_then_admin_key_file(server: ServerProcess, tmp_path: Path) -> None:
    data_dir = tmp_path / "operator"
    data_dir.mkdir()
    (data_dir / "admin.key").write_text(TEST_ADMIN_KEY + "\n")
    me = ok_json(cli(server, "whoami", "--json", MODELPORT_DATA_DIR=str(data_dir)))
    assert me["tenant"] == "system" and "admin" in me["scopes"]

    other = new_key(server, "system", "inference", "--name", "narrow")
    # The environment beats the file; the flag beats both.
    me = ok_json(
        cli(
            server,
            "whoami",
            "--json",
            MODELPORT_DATA_DIR=str(data_dir),
            MODELPORT_API_KEY=other["key"],
        )
    )
    assert me["key_id"] == other["key_id"]
    me = ok_json(
        cli(server, "whoami", "--json", key=TEST_ADMIN_KEY, MODELPORT_API_KEY=other["key"])
    )
    assert "admin" in me["scopes"]
    nothing = cli(server, "whoami")  # no flag, no env, no file
    assert nothing.exit_code == 1 and "Error" in nothing.stderr


def _period() -> str:
    return f"{datetime.now(UTC):%Y-%m}"


def _wait_usage(server: ServerProcess, tenant: str, requests: int) -> dict[str, Any]:
    """The usage report once ``requests`` records are in (metering may commit just after)."""
    deadline = time.monotonic() + 30
    while True:
        report = ok_json(admin(server, "usage", "--tenant", tenant, "--json"))
        if report["total"]["requests"] >= requests or time.monotonic() > deadline:
            assert isinstance(report, dict)
            return report
        time.sleep(0.2)


def test_prices_usage_and_invoice(server: ServerProcess) -> None:
    ok_json(admin(server, "tenants", "create", "billco", "--json"))
    key = new_key(server, "billco", "inference,billing:read", "--name", "app")["key"]

    price = ok_json(
        admin(
            server,
            "prices",
            "set",
            "iris",
            "--per-1k-requests",
            "10",
            "--per-1k-input-tokens",
            "0.0002",
            "--json",
        )
    )
    assert price["model"] == "iris"
    assert Decimal(price["per_1k_requests"]) == Decimal("10")
    assert Decimal(price["per_1k_input_tokens"]) == Decimal("0.0002")
    prices = ok_json(admin(server, "prices", "list", "--model", "iris", "--json"))
    assert price["id"] in [p["id"] for p in prices]
    assert admin(server, "prices", "list").exit_code == 0
    # A new price starts a moment from now, never retroactively: wait until it applies.
    starts = datetime.fromisoformat(price["effective_from"].replace("Z", "+00:00"))
    time.sleep(max(0.0, (starts - datetime.now(UTC)).total_seconds()) + 0.05)
    bad = admin(server, "prices", "set", "iris", "--per-1k-requests", "ten")
    assert bad.exit_code == 1 and "--per-1k-requests" in bad.stderr

    for _ in range(3):
        result = cli(server, "predict", "iris", "--input", ROW, "--json", MODELPORT_API_KEY=key)
        assert result.exit_code == 0, result.output

    report = _wait_usage(server, "billco", 3)
    assert report["total"]["requests"] == 3
    assert Decimal(report["total"]["cost"]) == Decimal("0.03")  # 3 x 10 per 1k requests
    own = ok_json(cli(server, "usage", "--json", MODELPORT_API_KEY=key))  # billing:read, own
    assert own["total"]["requests"] == 3
    grouped = ok_json(
        admin(server, "usage", "--tenant", "billco", "--group-by", "day,model", "--json")
    )
    assert [g["model"] for g in grouped["groups"]] == ["iris"]
    assert grouped["groups"][0]["day"] and grouped["groups"][0]["requests"] == 3
    assert admin(server, "usage", "--tenant", "billco", "--group-by", "model").exit_code == 0

    invoice = ok_json(
        admin(server, "invoices", "show", "--tenant", "billco", "--period", _period(), "--json")
    )
    amounts = [Decimal(line["amount"]) for line in invoice["lines"]]
    assert sum(amounts) == Decimal(invoice["total"]) == Decimal("0.03")

    as_csv = admin(
        server, "invoices", "show", "--tenant", "billco", "--period", _period(), "--format", "csv"
    )
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert len(rows) >= 3  # header, at least one line, total
    assert any("iris" in row for row in rows[1:-1])
    assert Decimal("0.03") in [_decimal(cell) for cell in rows[-1]]
    table = admin(server, "invoices", "show", "--tenant", "billco", "--period", _period())
    assert table.exit_code == 0 and "iris" in table.stdout


def _decimal(cell: str) -> Decimal | None:
    try:
        return Decimal(cell)
    except ArithmeticError:
        return None


def test_audit_and_share(server: ServerProcess) -> None:
    ok_json(admin(server, "tenants", "create", "audited", "--json"))
    shared = ok_json(
        admin(
            server,
            "models",
            "share",
            "digits",
            "--visibility",
            "shared",
            "--tenant",
            "audited",
            "--json",
        )
    )
    assert shared["visibility"] == "shared"
    line = admin(server, "models", "share", "digits", "--visibility", "shared", "-t", "audited")
    assert line.exit_code == 0 and "digits is now shared with audited." in line.output
    public = admin(server, "models", "share", "digits", "--visibility", "public", "--json")
    assert ok_json(public)["visibility"] == "public"
    entries = ok_json(admin(server, "audit", "--limit", "500", "--json"))
    actions = {entry["action"] for entry in entries}
    assert "POST /api/tenants" in actions
    # The route template or the concrete path, depending on what the audit records.
    assert any(a.startswith("PUT /api/models/") and a.endswith("/visibility") for a in actions)
    assert all(entry["actor"] and entry["remote"] for entry in entries)
    only = ok_json(admin(server, "audit", "--action", "POST /api/tenants", "--json"))
    assert only and {entry["action"] for entry in only} == {"POST /api/tenants"}
    assert admin(server, "audit", "--limit", "5").exit_code == 0


def test_async_client_covers_accounts(server: ServerProcess) -> None:
    import asyncio

    async def scenario() -> None:
        async with AsyncClient(server.url, api_key=TEST_ADMIN_KEY) as client:
            tenant = await client.create_tenant("async-co", monthly_budget=Decimal("12.5"))
            assert tenant.monthly_budget == Decimal("12.5")
            created = await client.create_key("bot", ["inference"], tenant="async-co")
            keys = await client.list_keys("async-co")
            assert [k.key_id for k in keys] == [created.key_id]
            await client.revoke_key(created.key_id)
        async with AsyncClient(server.url, api_key=created.key) as revoked:
            with pytest.raises(errors.Unauthenticated):
                await revoked.whoami()

    asyncio.run(scenario())
