"""The autoscaling policy: a pure function of a context to a desired replica count.

It knows nothing of processes, Ray or time sources: ``engine/autoscaler.py`` samples a
deployment into a ``ScalingContext`` (its clock, load and idle time) and applies the
``Decision``. So the same policy serves every backend and is unit-tested without one.

The rules, in order:

* **Cold start**: at zero replicas with requests waiting → at once, enough replicas for them.
* **Idle**: no request for ``idle_timeout_s`` → ``min_replicas`` (zero if allowed).
* **Load**: wanted = ceil(average requests in flight / ``target_inflight``), within
  [max(min_replicas, 1), max_replicas]. More than now must be wanted for ``scale_up_delay_s``
  and fewer for ``scale_down_delay_s`` before the count changes (the context carries since
  when; the decision hands the updated times back), so short bursts and lulls do not flap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class AutoscaleConfig:
    """A deployment's scaling bounds and pace (``DeploySpec`` fields)."""

    min_replicas: int
    max_replicas: int
    target_inflight: float = 4.0
    scale_up_delay_s: float = 1.0
    scale_down_delay_s: float = 30.0
    idle_timeout_s: float = 300.0


@dataclass(frozen=True)
class ScalingContext:
    """What the policy sees of one deployment at one moment."""

    now: float  # seconds on any monotonic clock
    replicas: int  # the count asked for now (running or starting)
    inflight: int  # requests being computed or holding a replica now
    queue_depth: int  # requests waiting for a replica or a batch now
    avg_load: float  # mean of inflight + queue_depth over the look-back window
    rate: float  # requests per second arriving over the look-back window
    idle_s: float  # seconds since the last request arrived
    up_since: float | None = None  # since when more replicas are wanted
    down_since: float | None = None  # since when fewer replicas are wanted


@dataclass(frozen=True)
class Decision:
    """The replica count to run, why, and the delay timers to carry to the next call."""

    replicas: int
    reason: str
    up_since: float | None = None
    down_since: float | None = None


def decide(config: AutoscaleConfig, ctx: ScalingContext) -> Decision:
    """The replica count ``config`` asks for in ``ctx`` (see the module doc for the rules)."""
    load_now = ctx.inflight + ctx.queue_depth
    floor = max(config.min_replicas, 1)
    if ctx.replicas == 0:
        if load_now > 0:
            wanted = _clamp(_for_load(load_now, config), floor, config.max_replicas)
            return Decision(wanted, f"cold start: {load_now} request(s) waiting at zero replicas")
        if config.min_replicas > 0:
            return Decision(config.min_replicas, f"min_replicas is {config.min_replicas}")
        return Decision(0, "idle at zero replicas")
    idle = load_now == 0 and ctx.rate == 0 and ctx.idle_s >= config.idle_timeout_s
    if idle and ctx.replicas != config.min_replicas:
        return Decision(
            config.min_replicas,
            f"idle for {ctx.idle_s:.0f} s (idle_timeout_s {config.idle_timeout_s:g})",
        )
    load = max(ctx.avg_load, float(load_now))
    wanted = _clamp(_for_load(load, config), floor, config.max_replicas)
    if ctx.replicas < config.min_replicas or ctx.replicas > config.max_replicas:
        bounded = _clamp(ctx.replicas, config.min_replicas, config.max_replicas)
        return Decision(bounded, f"kept within [{config.min_replicas}, {config.max_replicas}]")
    if wanted > ctx.replicas:
        since = ctx.now if ctx.up_since is None else ctx.up_since
        if ctx.now - since >= config.scale_up_delay_s:
            return Decision(wanted, _load_reason("up", load, config))
        return Decision(ctx.replicas, "waiting for scale_up_delay_s", up_since=since)
    if wanted < ctx.replicas:
        since = ctx.now if ctx.down_since is None else ctx.down_since
        if ctx.now - since >= config.scale_down_delay_s:
            return Decision(wanted, _load_reason("down", load, config))
        return Decision(ctx.replicas, "waiting for scale_down_delay_s", down_since=since)
    return Decision(ctx.replicas, "steady")


def _for_load(load: float, config: AutoscaleConfig) -> int:
    return max(1, math.ceil(load / config.target_inflight - 1e-9))


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _load_reason(direction: str, load: float, config: AutoscaleConfig) -> str:
    return (
        f"scale {direction}: {load:.1f} request(s) in flight on average, "
        f"target {config.target_inflight:g} per replica"
    )
