"""One live deployment as the hot path, the autoscaler and the memory budget see it.

``Deployment`` is re-exported by ``engine/deployments.py`` (its usual import path). Besides
the stored record and the batcher it carries the scaling state: the replica count asked of
the backend now (which the autoscaler, cold starts and evictions change without touching
the stored record), the autoscaling config, the delay timers and the last decisions.

The autoscaling fields of a ``DeploySpec`` are stored in the deployment's options JSON under
the reserved key ``scaling`` (never passed to a runtime), so they need no new columns.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelport.batching.queue import AdaptiveBatcher
from modelport.engine.autoscale import AutoscaleConfig
from modelport.engine.registry import DeploymentRecord
from modelport.types.admin import DeploySpec, ScalingDecision, VersionInfo

SCALING_KEY = "scaling"
_DECISIONS_KEPT = 10


@dataclass
class Deployment:
    """A running deployment as the hot path sees it."""

    record: DeploymentRecord
    version: VersionInfo
    batcher: AdaptiveBatcher
    config: AutoscaleConfig | None = None  # None: a fixed replica count
    pinned: bool = False
    replicas: int = 0  # asked of the backend now
    unloaded: bool = False  # by the V2 repository API: no cold start until loaded again
    woke_at: float | None = None  # monotonic time of a cold start not yet served
    idle_from: float = field(default_factory=time.monotonic)  # last change or end of loading
    up_since: float | None = None
    down_since: float | None = None
    decisions: deque[ScalingDecision] = field(default_factory=lambda: deque(maxlen=_DECISIONS_KEPT))
    samples: deque[tuple[float, int, int]] = field(default_factory=deque)  # (t, load, arrivals)

    def note(self, replicas_from: int, replicas_to: int, reason: str) -> None:
        """Remember one decision for ``status``."""
        self.decisions.append(
            ScalingDecision(
                at=datetime.now(UTC),
                replicas_from=replicas_from,
                replicas_to=replicas_to,
                reason=reason,
            )
        )

    @property
    def cold_target(self) -> int:
        """Replicas a request at zero starts: one when autoscaled, else the stored count."""
        return 1 if self.config is not None else self.record.replicas

    @property
    def keep_warm(self) -> bool:
        """Pinned, or autoscaled with a floor above zero: never unloaded for memory."""
        return self.pinned or (self.config is not None and self.config.min_replicas > 0)


def scaling_options(spec: DeploySpec) -> dict[str, Any]:
    """The ``scaling`` entry to store in the deployment's options (empty when not used)."""
    if not spec.autoscaled and not spec.pinned:
        return {}
    entry: dict[str, Any] = {"pinned": spec.pinned}
    if spec.autoscaled:
        low = spec.min_replicas if spec.min_replicas is not None else 1
        high = spec.max_replicas if spec.max_replicas is not None else max(low, spec.replicas, 1)
        entry.update(
            min_replicas=low,
            max_replicas=high,
            target_inflight=spec.target_inflight,
            scale_up_delay_s=spec.scale_up_delay_s,
            scale_down_delay_s=spec.scale_down_delay_s,
            idle_timeout_s=spec.idle_timeout_s,
        )
    return {SCALING_KEY: entry}


def parse_scaling(options: dict[str, Any]) -> tuple[AutoscaleConfig | None, bool]:
    """The autoscaling config and the pinned flag stored in a record's options."""
    entry = options.get(SCALING_KEY)
    if not isinstance(entry, dict):
        return None, False
    pinned = bool(entry.get("pinned", False))
    if "max_replicas" not in entry:
        return None, pinned
    config = AutoscaleConfig(
        min_replicas=int(entry["min_replicas"]),
        max_replicas=int(entry["max_replicas"]),
        target_inflight=float(entry["target_inflight"]),
        scale_up_delay_s=float(entry["scale_up_delay_s"]),
        scale_down_delay_s=float(entry["scale_down_delay_s"]),
        idle_timeout_s=float(entry["idle_timeout_s"]),
    )
    return config, pinned


def runtime_options(options: dict[str, Any]) -> dict[str, Any]:
    """A record's options without the scaling entry (what status shows as ``options``)."""
    return {k: v for k, v in options.items() if k != SCALING_KEY}


def initial_replicas(record: DeploymentRecord, config: AutoscaleConfig | None) -> int:
    """Replicas to start with: the stored count, within the autoscaling bounds."""
    if config is None:
        return record.replicas
    return max(config.min_replicas, min(config.max_replicas, record.replicas))
