"""Multi-model hosting on one memory budget: how big a model is, and whom to unload for it.

Every replica counts with its measured resident memory (backends report it in
``ReplicaStatus.memory_bytes``: the local backend reads the worker's ``/proc/<pid>/statm``, a
Ray backend its actor's), or, while it loads, with an estimate: the largest size measured
for the same artifact, else ``model_memory_estimate_mb`` plus twice the artifact size.
When starting replicas would pass ``memory_budget_mb``, ``plan`` names the least recently
used models to unload first: never a pinned one, one with requests in flight or waiting,
or one whose ``min_replicas`` keeps it warm. If even that cannot make room, the request gets
503 naming the budget. Nothing here knows how replicas run (pure bookkeeping).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from modelport.errors import Unavailable

_MIB = 1024 * 1024


@dataclass(frozen=True)
class Resident:
    """A deployment holding memory, as the planner sees it."""

    name: str
    bytes: int  # resident memory of all its replicas (measured or estimated)
    last_used: float  # monotonic time of its last request
    evictable: bool  # not pinned, idle, not kept warm by min_replicas


class MemoryBudget:
    """The node's budget for model replicas and what is known of each artifact's size."""

    def __init__(self, budget_mb: float, overhead_mb: float) -> None:
        self.budget_bytes: int | None = int(budget_mb * _MIB) if budget_mb > 0 else None
        self._overhead = int(overhead_mb * _MIB)
        self._measured: dict[str, int] = {}  # artifact sha256 -> largest replica size seen

    def learn(self, sha256: str, replica_bytes: int) -> None:
        """Remember a measured replica of this artifact (its next loads are estimated so)."""
        if replica_bytes > self._measured.get(sha256, 0):
            self._measured[sha256] = replica_bytes

    def estimate(self, sha256: str, artifact_size: int) -> int:
        """Expected resident memory of one replica of this artifact, before it loads."""
        return self._measured.get(sha256) or self._overhead + 2 * artifact_size

    def plan(self, name: str, need: int, residents: Iterable[Resident]) -> list[str]:
        """Deployments to unload (least recently used first) so ``need`` more bytes fit.

        ``residents`` is every deployment holding memory, ``name`` included (it is never
        unloaded for itself). Raises ``Unavailable`` (503) naming the budget when the idle,
        unpinned models together cannot make room.
        """
        if self.budget_bytes is None:
            return []
        everyone = list(residents)
        used = sum(r.bytes for r in everyone)
        free = self.budget_bytes - used
        if need <= free:
            return []
        victims: list[str] = []
        candidates = sorted(
            (r for r in everyone if r.evictable and r.name != name and r.bytes > 0),
            key=lambda r: r.last_used,
        )
        for resident in candidates:
            victims.append(resident.name)
            free += resident.bytes
            if need <= free:
                return victims
        idle = sum(r.bytes for r in candidates)
        raise Unavailable(
            f"memory budget of {_mib(self.budget_bytes)} MiB (memory_budget_mb) is full: "
            f"model {name!r} needs ~{_mib(need)} MiB more, {_mib(used)} MiB are in use and "
            f"only {_mib(idle)} MiB of it by idle, unpinned models that could be unloaded",
            param="model",
        )


def _mib(value: int) -> str:
    return f"{value / _MIB:.0f}"
