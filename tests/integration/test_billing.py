"""Prices, usage reports, invoices and budgets, on SQLite and PostgreSQL.

The meter and the price book run in-process on a real database with a clock the tests
move, so usage lands at chosen times (a price change mid-month, a record in the next
month). Budget refusal runs through a real server, with keys made through the API.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from modelport.engine.billing import BillingService, UsageFilter, allocate_cents, invoice_csv
from modelport.engine.metering import Meter
from modelport.engine.pricing import PriceBook
from modelport.engine.principal import Principal
from modelport.engine.usage import UsageEvent
from modelport.errors import InvalidInput, QuotaExceeded
from modelport.settings import Settings
from modelport.storage.db import Database
from modelport.storage.tables import ApiKeyRow, TenantRow, UsageRow
from tests.integration.helpers import AUTH
from tests.integration.server_process import ServerProcess

CENT = Decimal("0.01")
NOV = datetime(2026, 11, 1, tzinfo=UTC)
DB_PARAMS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class Clock:
    """A clock the test sets."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=DB_PARAMS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'billing.db'}"
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url


class World:
    """A meter, price book and billing service over one database, and two tenants."""

    def __init__(self, url: str, data_dir: Path) -> None:
        self.clock = Clock(NOV - timedelta(hours=1))
        settings = Settings(data_dir=data_dir, database_url=url, metering_flush_ms=3_600_000)
        self.database = Database(url)
        self.database.migrate()
        self.prices = PriceBook(self.database, clock=self.clock)
        self.meter = Meter(settings, self.database, self.prices, clock=self.clock)
        self.billing = BillingService(self.database, self.prices, self.meter)
        with self.database.session() as session:
            acme, other = TenantRow(name="acme"), TenantRow(name="other")
            session.add_all([acme, other])
            session.flush()
            keys = [
                ApiKeyRow(key_id=f"{i:012x}", secret_hash="0" * 64, tenant_id=tenant.id,
                          name=f"k{i}", scopes=["inference"])
                for i, tenant in enumerate([acme, acme, other])
            ]  # fmt: skip
            session.add_all(keys)
            session.flush()
            self.acme, self.other = acme.id, other.id
            self.keys = [(k.id, k.tenant_id) for k in keys]
        self.meter.start()
        self._n = 0

    def use(self, at: datetime, key: int = 0, model: str = "iris", **units: Any) -> None:
        """One answered request of key ``key`` at time ``at``."""
        key_id, tenant_id = self.keys[key]
        self._n += 1
        prompt, completion = units.pop("prompt", 0), units.pop("completion", 0)
        self.meter.record(
            UsageEvent(f"req-{self._n}", model, 1, "inference", prompt, completion,
                       prompt + completion, created=at, tenant_id=tenant_id, key_id=key_id,
                       **units),
            None,
        )  # fmt: skip

    def records(self, tenant_id: int, start: datetime, end: datetime) -> list[UsageRow]:
        self.meter.flush()
        query = select(UsageRow).where(
            UsageRow.tenant_id == tenant_id,
            UsageRow.created_at >= start,
            UsageRow.created_at < end,
        )
        with self.database.session() as session:
            return list(session.scalars(query))

    def close(self) -> None:
        self.meter.stop()
        self.database.dispose()


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[World]:
    made = World(db_url, tmp_path / "data")
    yield made
    made.close()


def _check_invoice_adds_up(world: World, tenant_id: int, period: str) -> None:
    start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    end = (start + timedelta(days=32)).replace(day=1)
    records = world.records(tenant_id, start, end)
    invoice = world.billing.invoice(tenant_id, period)
    exact = sum((r.cost for r in records), Decimal(0))
    assert invoice.records == len(records)
    assert invoice.total == exact.quantize(CENT, rounding=ROUND_HALF_UP)
    assert sum((line.amount for line in invoice.lines), Decimal(0)) == invoice.total
    for line in invoice.lines:  # each line within a cent of its own exact amount
        unit = line.unit_price if line.unit == "compute_seconds" else line.unit_price / 1000
        assert abs(line.amount - line.quantity * unit) <= CENT


@pytest.mark.parametrize("seed", [1, 2])
def test_invoice_equals_the_sum_of_its_usage_records_to_the_cent(world: World, seed: int) -> None:
    world.prices.set(
        "iris",
        per_1k_requests=Decimal("0.0333333333"),
        per_compute_second=Decimal("0.0000123457"),
        effective_from=NOV,
    )
    world.prices.set("gemma", per_1k_input_tokens=Decimal("0.0002"),
                     per_1k_output_tokens=Decimal("0.0008"), per_1k_requests=Decimal("0.5"),
                     effective_from=NOV)  # fmt: skip
    rng = random.Random(seed)
    for _ in range(400):
        at = NOV + timedelta(seconds=rng.uniform(0, 29 * 86400))
        model = rng.choice(["iris", "gemma", "unpriced"])
        world.use(at, key=rng.choice([0, 1, 2]), model=model, rows=rng.randint(1, 8),
                  compute_ms=rng.uniform(0, 50), prompt=rng.randint(0, 900),
                  completion=rng.randint(0, 700))  # fmt: skip
    world.use(datetime(2026, 12, 1, tzinfo=UTC), model="gemma", prompt=10**6)  # not November
    for tenant_id in (world.acme, world.other):
        _check_invoice_adds_up(world, tenant_id, "2026-11")
    invoice = world.billing.invoice(world.acme, "2026-11")
    assert {line.model for line in invoice.lines} == {"iris", "gemma"}
    assert {line.unit for line in invoice.lines if line.model == "gemma"} == {
        "requests", "input_tokens", "output_tokens"
    }  # fmt: skip
    csv = invoice_csv(invoice).splitlines()
    assert csv[0] == "model,unit,quantity,unit_price,currency,price_id,amount"
    assert csv[-1] == f"total,,,,USD,,{invoice.total}"
    assert len(csv) == len(invoice.lines) + 2


def test_a_mid_month_price_change_splits_the_line_items(world: World) -> None:
    first = world.prices.set("iris", per_1k_requests=Decimal("10"), effective_from=NOV)
    world.clock.now = datetime(2026, 11, 3, tzinfo=UTC)
    for day in range(3, 8):  # 5 requests at the first price
        world.use(datetime(2026, 11, day, 9, tzinfo=UTC))
    world.clock.now = datetime(2026, 11, 15, 10, tzinfo=UTC)
    change = datetime(2026, 11, 15, 12, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="never retroactively"):
        world.prices.set("iris", per_1k_requests=Decimal("20"), effective_from=world.clock.now
                         - timedelta(seconds=1))  # fmt: skip
    second = world.prices.set("iris", per_1k_requests=Decimal("20"), effective_from=change)
    world.use(change - timedelta(microseconds=1))  # still the first price
    for hour in range(3):  # 3 requests at the second price
        world.use(change + timedelta(hours=hour))
    invoice = world.billing.invoice(world.acme, "2026-11")
    lines = [(line.price_id, line.quantity, line.unit_price, line.amount) for line in invoice.lines]
    assert lines == [
        (first.id, Decimal(6), Decimal(10), Decimal("0.06")),
        (second.id, Decimal(3), Decimal(20), Decimal("0.06")),
    ]
    assert invoice.total == Decimal("0.12")
    records = world.records(world.acme, NOV, NOV + timedelta(days=30))
    assert sorted({r.price_id for r in records}) == [first.id, second.id]
    assert [p.id for p in world.prices.sheets("iris")] == [first.id, second.id]


def test_usage_groups_by_day_model_and_key_with_filters(world: World) -> None:
    day1, day2 = datetime(2026, 11, 2, 10, tzinfo=UTC), datetime(2026, 11, 3, 23, tzinfo=UTC)
    world.use(day1, key=0, model="iris", rows=2, compute_ms=1.5)
    world.use(day1, key=1, model="iris", rows=3, compute_ms=0.25)
    world.use(day2, key=0, model="gemma", prompt=10, completion=20)
    world.use(day2, key=2, model="gemma", prompt=5)  # tenant "other"
    acme = UsageFilter(tenant_id=world.acme)
    report = world.billing.usage(acme, ["day", "model", "key"])
    got = [(g.day, g.model, g.key, g.requests, g.rows) for g in report.groups]
    assert got == [
        ("2026-11-02", "iris", f"{0:012x}", 1, 2),
        ("2026-11-02", "iris", f"{1:012x}", 1, 3),
        ("2026-11-03", "gemma", f"{0:012x}", 1, 0),
    ]
    assert report.total.requests == 3 and report.total.compute_ms == Decimal("1.750")
    by_model = world.billing.usage(acme, ["model"])
    assert [(g.model, g.requests, g.input_tokens, g.output_tokens) for g in by_model.groups] == [
        ("gemma", 1, 10, 20), ("iris", 2, 0, 0)
    ]  # fmt: skip
    everyone = world.billing.usage(UsageFilter(model="gemma"), [])
    assert everyone.groups == [] and everyone.total.input_tokens == 15
    key0 = world.keys[0][0]
    assert world.billing.usage(UsageFilter(key=key0), []).total.requests == 2
    window = UsageFilter(since=day1 + timedelta(hours=1), until=day2 + timedelta(hours=1))
    assert world.billing.usage(window, []).total.requests == 2
    records = world.billing.records(acme, limit=2)
    assert [r.model for r in records] == ["gemma", "iris"]  # newest first
    assert records[0].tenant == "acme" and records[0].key == f"{0:012x}"
    with pytest.raises(InvalidInput, match="cannot group by 'week'"):
        world.billing.usage(acme, ["week"])


def test_month_to_date_spend_refuses_over_budget_and_resets_next_month(world: World) -> None:
    world.prices.set("iris", per_1k_requests=Decimal("1000"), effective_from=NOV)  # $1 each
    world.clock.now = datetime(2026, 11, 20, tzinfo=UTC)
    key_id, tenant_id = world.keys[0]
    caller = Principal(tenant_id, "acme", key_id, "k0", frozenset({"inference"}),
                       monthly_budget=Decimal(2))  # fmt: skip
    world.meter.check_budget(caller)
    world.use(world.clock.now)
    world.meter.check_budget(caller)
    world.use(world.clock.now)
    with pytest.raises(QuotaExceeded, match="API key 'k0' has spent 2 of its monthly budget of 2"):
        world.meter.check_budget(caller)
    status = world.billing.budget(tenant_id)
    assert status.tenant_spend == Decimal(2) and not status.hard_limit_reached
    world.clock.now = datetime(2026, 12, 1, tzinfo=UTC)
    world.meter.check_budget(caller)  # a new month starts at zero


def test_cents_are_allocated_so_lines_add_up_to_the_total() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        exact = [Decimal(rng.randint(0, 10**9)).scaleb(-rng.randint(4, 12)) for _ in range(6)]
        total = sum(exact, Decimal(0)).quantize(CENT, rounding=ROUND_HALF_UP)
        amounts = allocate_cents(exact, total)
        assert sum(amounts, Decimal(0)) == total
        for amount, value in zip(amounts, exact, strict=True):
            assert abs(amount - value.quantize(CENT, rounding=ROUND_HALF_UP)) <= CENT


# -- budgets through a real server -------------------------------------------------------------


@pytest.fixture(scope="module", params=DB_PARAMS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = {"MODELPORT_DEMO_TEXT_MODELS": "false"}
    if request.param == "postgres":
        env["MODELPORT_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    started = ServerProcess(tmp_path_factory.mktemp("billing") / "data", env=env).start()
    try:
        yield started
    finally:
        started.stop()


def _api(server: ServerProcess, method: str, path: str, **body: Any) -> Any:
    resp = httpx.request(method, f"{server.url}{path}", json=body or None, headers=AUTH, timeout=30)
    assert resp.status_code < 300, resp.text
    return resp.json()


IRIS = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                    "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip


def test_budgets_refuse_calls_through_the_server(server: ServerProcess) -> None:
    tenant = f"budget-{time.monotonic_ns()}"
    _api(server, "POST", "/api/tenants", name=tenant, monthly_budget="3")
    scopes = ["inference", "billing:read"]
    key = _api(server, "POST", "/api/keys", tenant=tenant, name="ci", scopes=scopes)["key"]
    small = _api(server, "POST", "/api/keys", tenant=tenant, name="small", scopes=scopes,
                 monthly_budget="1")["key"]  # fmt: skip
    price = _api(server, "PUT", "/api/prices/iris", per_1k_requests="1000")  # $1 per call
    wait = datetime.fromisoformat(price["effective_from"]) - datetime.now(UTC)
    time.sleep(max(0.0, wait.total_seconds()) + 0.05)

    def infer(raw: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {raw}"}
        return httpx.post(f"{server.url}/v2/models/iris/infer", json=IRIS, headers=headers)

    assert infer(small).status_code == 200
    refused = infer(small)  # the key's own budget (1) is spent
    assert refused.status_code == 429
    assert refused.headers["x-modelport-error"] == "insufficient_quota"
    assert "API key 'small'" in refused.json()["error"]
    assert [infer(key).status_code for _ in range(3)] == [200, 200, 429]  # tenant budget: 3
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.embeddings.create(model="minilm", input="refused before any model runs")
    assert info.value.code == "insufficient_quota"

    headers = {"Authorization": f"Bearer {key}"}
    report = httpx.get(f"{server.url}/api/usage", headers=headers, timeout=30).json()
    assert report["total"]["requests"] == 3 and Decimal(report["total"]["cost"]) == 3
    budget = report["budget"]
    assert budget["tenant"] == tenant and Decimal(budget["tenant_spend"]) == 3
    assert budget["soft_threshold_reached"] and budget["hard_limit_reached"]
    other = httpx.get(f"{server.url}/api/usage", params={"tenant": "system"}, headers=headers)
    assert other.status_code == 404  # another tenant's usage does not exist for this key
    period = datetime.now(UTC).strftime("%Y-%m")
    invoice = httpx.get(f"{server.url}/api/invoices/{tenant}/{period}", headers=headers).json()
    assert Decimal(invoice["total"]) == 3 and invoice["records"] == 3
    _api(server, "PUT", "/api/prices/iris", per_1k_requests="0")  # leave iris free again
