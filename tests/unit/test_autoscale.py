"""The autoscaling policy (a pure function) and the memory budget's eviction plan."""

from __future__ import annotations

from dataclasses import replace

import pytest

from modelport.engine.autoscale import AutoscaleConfig, ScalingContext, decide
from modelport.engine.model_memory import MemoryBudget, Resident
from modelport.errors import Unavailable

CONFIG = AutoscaleConfig(
    min_replicas=0,
    max_replicas=4,
    target_inflight=2.0,
    scale_up_delay_s=3.0,
    scale_down_delay_s=10.0,
    idle_timeout_s=60.0,
)


def ctx(**fields: float | int | None) -> ScalingContext:
    base = ScalingContext(
        now=1000.0, replicas=1, inflight=0, queue_depth=0, avg_load=0.0, rate=1.0, idle_s=0.0
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def test_load_above_target_scales_up_once_the_up_delay_has_passed() -> None:
    busy = ctx(inflight=2, queue_depth=4, avg_load=6.0)
    first = decide(CONFIG, busy)
    assert first.replicas == 1 and first.up_since == 1000.0  # wanted, not yet
    later = decide(CONFIG, replace(busy, now=1002.0, up_since=first.up_since))
    assert later.replicas == 1 and later.up_since == 1000.0
    done = decide(CONFIG, replace(busy, now=1003.0, up_since=first.up_since))
    assert done.replicas == 3  # ceil(6 / 2)
    assert "scale up" in done.reason and done.up_since is None


def test_scale_up_never_passes_max_replicas() -> None:
    flood = ctx(inflight=4, queue_depth=200, avg_load=204.0, up_since=0.0)
    assert decide(CONFIG, flood).replicas == 4


def test_a_burst_that_ends_before_the_delay_resets_the_timer() -> None:
    first = decide(CONFIG, ctx(inflight=8, avg_load=8.0))
    assert first.up_since is not None
    calm = decide(CONFIG, ctx(now=1001.0, inflight=1, avg_load=1.0, up_since=first.up_since))
    assert calm.replicas == 1 and calm.up_since is None


def test_scale_down_waits_for_the_down_delay() -> None:
    light = ctx(replicas=3, inflight=1, avg_load=1.0)
    first = decide(CONFIG, light)
    assert first.replicas == 3 and first.down_since == 1000.0
    assert decide(CONFIG, replace(light, now=1009.0, down_since=1000.0)).replicas == 3
    done = decide(CONFIG, replace(light, now=1010.0, down_since=1000.0))
    assert done.replicas == 1 and "scale down" in done.reason


def test_load_keeps_at_least_one_replica_until_idle() -> None:
    quiet = ctx(replicas=2, avg_load=0.0, rate=0.0, idle_s=30.0, down_since=0.0)
    assert decide(CONFIG, quiet).replicas == 1  # not idle long enough for zero


def test_idle_for_the_timeout_scales_to_zero() -> None:
    idle = ctx(replicas=2, rate=0.0, idle_s=60.0)
    decision = decide(CONFIG, idle)
    assert decision.replicas == 0 and "idle" in decision.reason
    assert decide(CONFIG, replace(idle, idle_s=59.0)).replicas != 0
    assert decide(CONFIG, replace(idle, rate=0.5)).replicas != 0  # requests still arrive


def test_min_replicas_is_respected_when_idle_and_at_zero() -> None:
    warm = replace(CONFIG, min_replicas=2)
    assert decide(warm, ctx(replicas=3, rate=0.0, idle_s=1e6)).replicas == 2
    assert decide(warm, ctx(replicas=0, rate=0.0, idle_s=1e6)).replicas == 2
    assert decide(warm, ctx(replicas=2, rate=0.0, idle_s=1e6)).replicas == 2


def test_a_request_at_zero_replicas_starts_replicas_at_once() -> None:
    cold = decide(CONFIG, ctx(replicas=0, queue_depth=1, rate=0.0, idle_s=1e6))
    assert cold.replicas == 1 and "cold start" in cold.reason
    many = decide(CONFIG, ctx(replicas=0, queue_depth=7))
    assert many.replicas == 4  # ceil(7 / 2), no delay, within max
    assert decide(CONFIG, ctx(replicas=0, rate=0.0, idle_s=1e6)).replicas == 0


def test_a_count_outside_the_bounds_is_brought_back() -> None:
    assert decide(CONFIG, ctx(replicas=9, avg_load=30.0)).replicas == 4


def test_steady_load_keeps_the_count() -> None:
    steady = decide(CONFIG, ctx(replicas=2, inflight=3, avg_load=3.5))
    assert steady.replicas == 2 and steady.reason == "steady"


# -- memory budget ----------------------------------------------------------------------------

MIB = 1024 * 1024


def resident(name: str, mib: int, last_used: float, evictable: bool = True) -> Resident:
    return Resident(name=name, bytes=mib * MIB, last_used=last_used, evictable=evictable)


def test_no_budget_never_evicts() -> None:
    budget = MemoryBudget(0, 100)
    assert budget.plan("c", 10_000 * MIB, [resident("a", 500, 1.0)]) == []


def test_evicts_the_least_recently_used_idle_models_first() -> None:
    budget = MemoryBudget(300, 100)
    residents = [resident("a", 100, 5.0), resident("b", 100, 2.0), resident("c", 50, 9.0)]
    assert budget.plan("d", 50 * MIB, residents) == []  # 250 + 50 fits
    assert budget.plan("d", 100 * MIB, residents) == ["b"]
    assert budget.plan("d", 200 * MIB, residents) == ["b", "a"]


def test_pinned_or_busy_models_and_the_model_itself_are_never_evicted() -> None:
    budget = MemoryBudget(300, 100)
    residents = [resident("pinned", 100, 0.0, evictable=False), resident("me", 100, 1.0),
                 resident("b", 100, 2.0)]  # fmt: skip
    assert budget.plan("me", 100 * MIB, residents) == ["b"]
    with pytest.raises(Unavailable, match=r"memory budget of 300 MiB") as caught:
        budget.plan("me", 250 * MIB, residents)
    assert "'me'" in caught.value.message


def test_estimates_learn_from_measured_replicas() -> None:
    budget = MemoryBudget(1000, 100)
    assert budget.estimate("sha", 10 * MIB) == 120 * MIB  # overhead + twice the artifact
    budget.learn("sha", 90 * MIB)
    budget.learn("sha", 80 * MIB)
    assert budget.estimate("sha", 10 * MIB) == 90 * MIB
