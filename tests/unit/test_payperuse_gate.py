"""The fused pay-per-use gate (api/payperuse.py) gives a call what the separate layers gave it.

Rate-limit headers on the answer or a 429, the budget refusal, exactly one journaled usage
record for a 2xx answer and none for a failed one; ``fuse`` only takes the layers directly
inside, in their order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from modelport.api.limits import LimitsMiddleware
from modelport.api.metering import MeteringMiddleware
from modelport.api.payperuse import InferenceGate, fuse
from modelport.engine.metering import Meter
from modelport.engine.pricing import PriceBook
from modelport.engine.principal import CURRENT, INFERENCE, Principal, RequestContext
from modelport.engine.ratelimit import RateLimiter
from modelport.engine.usage import UsageEvent
from modelport.engine.usage_journal import FIELDS, read
from modelport.settings import Settings
from modelport.storage.db import Database

NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
CALLER = Principal(
    tenant_id=1, tenant="acme", key_id=7, key_name="ci", scopes=frozenset({INFERENCE}), rpm=1
)


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[Meter]:
    settings = Settings(data_dir=tmp_path, metering_flush_ms=3_600_000)
    database = Database(settings.db_url)
    database.migrate()
    made = Meter(settings, database, PriceBook(database, clock=lambda: NOW), clock=lambda: NOW)
    made.start()
    yield made
    made._stopping.set()
    if made._thread is not None:
        made._thread.join()
    database.dispose()


def _app(status: int, meter: Meter) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        context = CURRENT.get()
        assert context is not None
        if status == 200:  # what the engine does for an answered call
            meter.on_event(UsageEvent(context.request_id, "iris", 1, "inference", 0, 0, 0,
                                      created=NOW))  # fmt: skip
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def _call(gate: InferenceGate, request_id: str, principal: Principal = CALLER) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}"}

    async def send(message: Message) -> None:
        sent.append(message)

    async def scenario() -> None:
        context = RequestContext(principal, request_id)
        token = CURRENT.set(context)
        try:
            scope = {"type": "http", "method": "POST", "path": "/v2/models/iris/infer"}
            await gate(scope, receive, send, context, "iris")
        finally:
            CURRENT.reset(token)

    asyncio.run(scenario())
    return sent


def _journaled(meter: Meter) -> dict[str, dict[str, Any]]:
    return read(meter.journal.directory)[0]


def test_an_answered_call_gets_the_headers_and_one_record_then_a_429(meter: Meter) -> None:
    gate = InferenceGate(_app(200, meter), RateLimiter(), 1024, meter)
    start, _body = _call(gate, "r1")
    headers = dict(start["headers"])
    assert start["status"] == 200
    assert headers[b"x-ratelimit-limit-requests"] == b"1"
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"
    records = _journaled(meter)
    assert list(records) == ["r1"]
    assert set(records["r1"]) == set(FIELDS) and records["r1"]["tenant_id"] == 1
    refused = _call(gate, "r2")[0]
    assert refused["status"] == 429
    assert dict(refused["headers"])[b"retry-after"] == b"60"
    assert list(_journaled(meter)) == ["r1"]  # a refused call is not billed


def test_a_failed_call_is_not_billed(meter: Meter) -> None:
    gate = InferenceGate(_app(500, meter), None, 0, meter)
    assert _call(gate, "bad")[0]["status"] == 500
    assert _journaled(meter) == {}


def test_a_key_over_its_budget_is_refused(meter: Meter) -> None:
    broke = Principal(1, "acme", 8, "broke", frozenset({INFERENCE}), monthly_budget=Decimal(1))
    meter.spend.add(1, 8, Decimal(1), NOW)
    start = _call(InferenceGate(_app(200, meter), None, 0, meter), "r", broke)[0]
    assert start["status"] == 429
    assert dict(start["headers"])[b"x-modelport-error"] == b"insufficient_quota"


def test_fuse_takes_only_the_layers_directly_inside(meter: Meter) -> None:
    inner = _app(200, meter)
    limiter = RateLimiter()
    app, gate = fuse(LimitsMiddleware(MeteringMiddleware(inner, meter), limiter, 10))
    assert app is inner and gate is not None
    assert gate.limiter is limiter and gate.meter is meter and gate.max_body_bytes == 10
    app, gate = fuse(MeteringMiddleware(inner, meter))
    assert app is inner and gate is not None and gate.limiter is None
    unfused = MeteringMiddleware(LimitsMiddleware(inner, limiter, 10), meter)  # other order
    app, gate = fuse(unfused)
    assert app is unfused.app and gate is not None and gate.limiter is None
    assert fuse(inner) == (inner, None)
