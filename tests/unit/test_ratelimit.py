"""RateLimiter: token buckets per key, per tenant and per tenant and model, on a fake clock."""

from __future__ import annotations

import threading
from typing import NamedTuple

import pytest

from modelport.engine.principal import CURRENT, INFERENCE, Principal, RequestContext
from modelport.engine.ratelimit import RateLimiter, format_reset, retry_after
from modelport.engine.usage import UsageEvent
from modelport.errors import RateLimited
from modelport.settings import Settings


class Limits(NamedTuple):
    rpm: int | None
    tpm: int | None


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def principal(
    key_id: int = 1,
    tenant_id: int = 10,
    rpm: int | None = None,
    tpm: int | None = None,
    tenant: str = "acme",
) -> Principal:
    return Principal(
        tenant_id=tenant_id,
        tenant=tenant,
        key_id=key_id,
        key_name=f"key{key_id}",
        scopes=frozenset({INFERENCE}),
        rpm=rpm,
        tpm=tpm,
    )


def refused(limiter: RateLimiter, who: Principal, model: str | None = None) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        limiter.admit(who, model)
    return info.value


@pytest.fixture
def clock() -> Clock:
    return Clock()


# --- durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (-1.0, "0s"),
        (0.02, "20ms"),
        (0.0171, "18ms"),  # rounded up: waiting that long is enough
        (0.9999, "1s"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (2.25, "2.25s"),
        (59.0, "59s"),
        (60.0, "1m0s"),
        (90.0, "1m30s"),
        (360.0, "6m0s"),
        (3600.0, "1h0m0s"),
        (3723.5, "1h2m3.5s"),
    ],
)
def test_format_reset_writes_go_durations_like_openai(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.0, 1), (0.001, 1), (1.0, 1), (1.2, 2), (59.9, 60), (60.0, 60)]
)
def test_retry_after_is_whole_seconds_rounded_up_at_least_one(seconds: float, header: int) -> None:
    assert retry_after(seconds) == header


# --- requests per minute ----------------------------------------------------------------


def test_no_limits_means_no_headers_and_no_refusal(clock: Clock) -> None:
    limiter = RateLimiter(clock=clock)
    for _ in range(1000):
        assert limiter.admit(principal()) == {}


def test_key_rpm_allows_a_burst_of_the_limit_then_refuses(clock: Clock) -> None:
    limiter = RateLimiter(clock=clock)
    who = principal(rpm=3)
    remaining = [limiter.admit(who)["x-ratelimit-remaining-requests"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    error = refused(limiter, who)
    assert error.status == 429 and error.code == "rate_limit_exceeded"
    # One request comes back every 60/3 = 20 s; the bucket is full again after 60 s.
    assert error.headers == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
        "retry-after": "20",
    }
    assert "key 'key1'" in error.message and "RPM" in error.message
    assert "try again in 20s" in error.message


def test_requests_refill_continuously(clock: Clock) -> None:
    limiter = RateLimiter(clock=clock)
    who = principal(rpm=60)  # one per second
    for _ in range(60):
        limiter.admit(who)
    clock.now += 0.5
    error = refused(limiter, who)
    assert error.headers["retry-after"] == "1"  # 0.5 s left, rounded up
    assert error.headers["x-ratelimit-reset-requests"] == "59.5s"
    clock.now += 0.5
    headers = limiter.admit(who)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    clock.now += 120  # never more than the limit, however long it was idle
    assert limiter.admit(who)["x-ratelimit-remaining-requests"] == "59"


def test_a_refused_call_takes_nothing(clock: Clock) -> None:
    limiter = RateLimiter(clock=clock)
    who = principal(rpm=2)
    limiter.admit(who)
    limiter.admit(who)
    for _ in range(5):
        refused(limiter, who)
    clock.now += 30  # exactly one request refilled, none spent by the refusals
    assert limiter.admit(who)["x-ratelimit-remaining-requests"] == "0"


def test_keys_have_their_own_buckets_and_share_the_tenants(clock: Clock) -> None:
    limiter = RateLimiter(lambda tenant_id: Limits(5, None), clock=clock)
    first, second = principal(key_id=1, rpm=3), principal(key_id=2, rpm=3)
    for _ in range(3):
        limiter.admit(first)
    assert "key 'key1'" in refused(limiter, first).message
    # The second key still has its own 3, but the tenant (5) has only 2 left.
    assert limiter.admit(second)["x-ratelimit-remaining-requests"] == "1"  # tenant: 1 left
    assert limiter.admit(second)["x-ratelimit-remaining-requests"] == "0"
    error = refused(limiter, second)
    assert "tenant 'acme'" in error.message
    assert error.headers["x-ratelimit-limit-requests"] == "5"
    # Another tenant is not affected.
    other = principal(key_id=3, tenant_id=11, tenant="globex")
    assert limiter.admit(other)["x-ratelimit-limit-requests"] == "5"


def test_headers_describe_the_tightest_bucket(clock: Clock) -> None:
    limiter = RateLimiter(lambda tenant_id: Limits(100, None), clock=clock)
    headers = limiter.admit(principal(rpm=10))
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert headers["x-ratelimit-remaining-requests"] == "9"
    headers = limiter.admit(principal(key_id=2, rpm=1000))
    assert headers["x-ratelimit-limit-requests"] == "100"
    assert headers["x-ratelimit-remaining-requests"] == "98"


def test_changed_limits_apply_at_once(clock: Clock) -> None:
    limits: dict[int, Limits] = {}
    limiter = RateLimiter(limits.get, clock=clock)
    who = principal(rpm=10)
    for _ in range(5):
        limiter.admit(who)
    lowered = principal(rpm=4)  # the key's limit was lowered below what it used
    error = refused(limiter, lowered)
    assert error.headers["x-ratelimit-limit-requests"] == "4"
    assert error.headers["retry-after"] == "15"
    raised = principal(rpm=20)  # raised: what was used (at most the lowered limit) stays used
    assert limiter.admit(raised)["x-ratelimit-remaining-requests"] == "15"
    limits[10] = Limits(1, None)  # a tenant limit set while keys were busy
    assert limiter.admit(who)["x-ratelimit-limit-requests"] == "1"  # key: back to 10
    assert "tenant" in refused(limiter, who).message


# --- tokens per minute ------------------------------------------------------------------


def test_tokens_charged_after_the_fact_block_until_refilled(clock: Clock) -> None:
    limiter = RateLimiter(clock=clock)
    who = principal(tpm=600)  # 10 tokens per second
    headers = limiter.admit(who)
    assert headers == {
        "x-ratelimit-limit-tokens": "600",
        "x-ratelimit-remaining-tokens": "600",
        "x-ratelimit-reset-tokens": "0s",
    }
    limiter.charge(who, 500)
    assert limiter.admit(who)["x-ratelimit-remaining-tokens"] == "100"
    limiter.charge(who, 700)  # more than was left: the bucket owes 600 tokens
    error = refused(limiter, who)
    # It needs 601 tokens back to hold one again: 60.1 s.
    assert error.headers["retry-after"] == "61"
    assert error.headers["x-ratelimit-remaining-tokens"] == "0"
    assert error.headers["x-ratelimit-reset-tokens"] == "2m0s"
    assert "TPM" in error.message
    clock.now += 60
    refused(limiter, who)
    clock.now += 0.5
    assert limiter.admit(who)["x-ratelimit-remaining-tokens"] == "5"


def test_tokens_are_charged_to_key_tenant_and_model(clock: Clock) -> None:
    limiter = RateLimiter(
        lambda tenant_id: Limits(None, 1000), model_tpm={"gemma": 300}, clock=clock
    )
    who = principal(tpm=5000)
    limiter.admit(who, "gemma")
    limiter.charge(who, 300, "gemma")
    error = refused(limiter, who, "gemma")
    assert "model 'gemma' for tenant 'acme'" in error.message
    # Other models are limited only by the key and the tenant (1000 - 300 left).
    assert limiter.admit(who, "iris")["x-ratelimit-remaining-tokens"] == "700"
    limiter.charge(who, 700, "iris")
    assert "tenant 'acme'" in refused(limiter, who, "iris").message


def test_charging_nothing_or_without_token_limits_is_a_no_op(clock: Clock) -> None:
    limiter = RateLimiter(clock=clock)
    who = principal(rpm=5)
    limiter.admit(who)
    limiter.charge(who, 10_000)
    limiter.charge(who, 0)
    assert limiter.admit(who)["x-ratelimit-remaining-requests"] == "3"


def test_usage_events_charge_the_caller_in_context(clock: Clock) -> None:
    limiter = RateLimiter(clock=clock)
    who = principal(tpm=100)
    limiter.admit(who)
    event = UsageEvent("r1", "gemma", 1, "chat", 40, 60, 100)
    limiter.on_usage(event)  # no caller in context: nothing to charge
    assert limiter.admit(who)["x-ratelimit-remaining-tokens"] == "100"
    token = CURRENT.set(RequestContext(who, "r1"))
    try:
        limiter.on_usage(event)
    finally:
        CURRENT.reset(token)
    assert "TPM" in refused(limiter, who).message


# --- per model --------------------------------------------------------------------------


def test_model_rpm_is_per_tenant_and_model(clock: Clock) -> None:
    limiter = RateLimiter(model_rpm={"iris": 2}, clock=clock)
    assert limiter.limits_models
    who = principal()
    limiter.admit(who, "iris")
    limiter.admit(who, "iris")
    error = refused(limiter, who, "iris")
    assert "model 'iris' for tenant 'acme'" in error.message
    assert error.headers["retry-after"] == "30"
    assert limiter.admit(who, "digits") == {}  # not limited
    assert limiter.admit(who) == {}  # model unknown (not read): only key and tenant apply
    other_tenant = principal(key_id=2, tenant_id=11)
    assert limiter.admit(other_tenant, "iris")["x-ratelimit-remaining-requests"] == "1"


def test_settings_carry_model_limits_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELPORT_MODEL_RPM", '{"iris": 600}')
    monkeypatch.setenv("MODELPORT_MODEL_TPM", '{"gemma-3-270m": 10000}')
    settings = Settings()
    assert settings.model_rpm == {"iris": 600}
    assert settings.model_tpm == {"gemma-3-270m": 10000}
    assert settings.rate_limits is True
    assert RateLimiter.from_settings(settings).limits_models
    monkeypatch.delenv("MODELPORT_MODEL_RPM")
    monkeypatch.delenv("MODELPORT_MODEL_TPM")
    assert not RateLimiter.from_settings(Settings()).limits_models


def test_settings_refuse_non_positive_model_limits() -> None:
    with pytest.raises(ValueError, match="model_rpm"):
        Settings(model_rpm={"iris": 0})


# --- threads ----------------------------------------------------------------------------


def test_admission_is_exact_across_threads() -> None:
    limiter = RateLimiter(lambda tenant_id: Limits(500, None), clock=lambda: 0.0)
    admitted = [0] * 8

    def run(slot: int) -> None:
        who = principal(key_id=slot)
        for _ in range(200):
            try:
                limiter.admit(who)
                admitted[slot] += 1
            except RateLimited:
                pass

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == 500
