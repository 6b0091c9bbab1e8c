"""The autoscaler: feeds the policy, applies its decisions, wakes deployments at zero.

Every ``autoscale_tick_s`` it samples each live deployment (requests queued and in flight
from the batcher, leases held and waiting and requests seen from ``TrackedBackend``), asks
``autoscale.decide`` for the replica count and applies a change through ``resize``. Every
replica count change goes through ``resize`` — autoscaling, cold starts, admin scaling,
evictions, the repository API — so each one passes the memory budget
(``model_memory.MemoryBudget``: least recently used idle models are unloaded first) and is
counted in ``/metrics`` and kept in the deployment's status.

It drives any ``Backend`` through ``scale`` and reads only ``ReplicaStatus``: nothing here
depends on how replicas run. Callers of ``resize`` hold the deployment table's lock.
"""

from __future__ import annotations

import asyncio
import logging
import time

from modelport.engine.activity import TrackedBackend
from modelport.engine.autoscale import ScalingContext, decide
from modelport.engine.live_deployment import Deployment
from modelport.engine.model_memory import MemoryBudget, Resident
from modelport.errors import ModelportError, NotReady
from modelport.observability.metrics import Metrics
from modelport.settings import Settings
from modelport.types.admin import ReplicaState, VersionInfo

logger = logging.getLogger(__name__)
_STARTING = (ReplicaState.STARTING, ReplicaState.RESTARTING)


class Autoscaler:
    """Size live deployments to their load and their memory budget (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        backend: TrackedBackend,
        live: dict[str, Deployment],
        lock: asyncio.Lock,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._live = live
        self._lock = lock
        self._metrics = metrics
        self.budget = MemoryBudget(settings.memory_budget_mb, settings.model_memory_estimate_mb)
        metrics.set_memory_budget(self.budget.budget_bytes)
        self._task: asyncio.Task[None] | None = None
        backend.wake = self.wake

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="autoscaler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- changing replica counts --------------------------------------------------------------

    async def resize(self, live: Deployment, replicas: int, reason: str, cause: str) -> None:
        """Ask the backend for ``replicas``, unloading LRU idle models first if memory needs it.

        Raises ``Unavailable`` naming the budget when no room can be made (nothing changes).
        """
        if replicas > live.replicas:
            await self.make_room(
                live.record.name, (replicas - live.replicas) * self.estimate(live.version)
            )
        await self._apply(live, replicas, reason, cause)

    async def make_room(self, name: str, need: int, *, replacing: bool = False) -> None:
        """Unload least recently used idle models until ``need`` more bytes fit the budget.

        ``replacing``: ``name`` is being redeployed, so its current replicas do not count.
        """
        residents = [r for r in self._residents() if not (replacing and r.name == name)]
        for victim in self.budget.plan(name, need, residents):
            evicted = self._live[victim]
            reason = f"unloaded (least recently used) to make room for {name!r} in memory"
            await self._apply(evicted, 0, reason, "eviction")
            logger.info("deployment %r %s", victim, reason)

    def estimate(self, version: VersionInfo) -> int:
        """Expected memory of one replica of ``version`` before it is measured."""
        return self.budget.estimate(version.artifact_sha256, version.artifact_size)

    async def _apply(self, live: Deployment, replicas: int, reason: str, cause: str) -> None:
        before = live.replicas
        if replicas == before:
            return
        await self._backend.scale(live.record.name, replicas)
        live.replicas = replicas
        live.idle_from = time.monotonic()
        live.up_since = live.down_since = None
        live.note(before, replicas, reason)
        direction = "up" if replicas > before else "down"
        self._metrics.scaling_decision(live.record.name, direction, cause)

    # -- cold starts -------------------------------------------------------------------------

    async def wake(self, name: str) -> float | None:
        """Called by a lease that found no free slot: start a deployment at zero replicas.

        Returns how long the lease may wait for the cold start (``cold_start_timeout_s``), or
        None when the deployment is not cold (the lease keeps its own limit).
        """
        live = self._live.get(name)
        if live is None:
            return None
        if live.unloaded:
            raise NotReady(
                f"model {name!r} is unloaded: load it with POST /v2/repository/models/{name}/load",
                param="model",
            )
        if live.replicas == 0 and live.cold_target > 0:
            async with self._lock:
                if self._live.get(name) is live and live.replicas == 0 and not live.unloaded:
                    live.woke_at = time.monotonic()
                    reason = "cold start: a request arrived at zero replicas"
                    await self.resize(live, live.cold_target, reason, "cold_start")
        if live.woke_at is None:
            return None
        if any(r.state is ReplicaState.READY for r in self._backend.replicas(name)):
            live.woke_at = None
            return None
        return self._settings.cold_start_timeout_s

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.autoscale_tick_s)
            try:
                await self.tick()
            except Exception:  # one bad tick must not end autoscaling for good
                logger.exception("autoscaler tick failed")

    async def tick(self) -> None:
        """Sample every live deployment once and apply what the policy decides."""
        now = time.monotonic()
        for name, live in list(self._live.items()):
            self._learn(live)
            ctx = self._sample(live, now)
            if live.config is None or live.unloaded:
                continue
            decision = decide(live.config, ctx)
            live.up_since, live.down_since = decision.up_since, decision.down_since
            if decision.replicas == live.replicas:
                continue
            async with self._lock:
                if self._live.get(name) is not live or live.unloaded:
                    continue
                try:
                    await self.resize(live, decision.replicas, decision.reason, "autoscale")
                except ModelportError as exc:  # the memory budget: try again next tick
                    blocked = f"scale to {decision.replicas} blocked: {exc.message}"
                    if not live.decisions or live.decisions[-1].reason != blocked:
                        live.note(live.replicas, live.replicas, blocked)
                    self._metrics.scaling_decision(name, "blocked", "autoscale")

    def _sample(self, live: Deployment, now: float) -> ScalingContext:
        activity = self._backend.activity(live.record.name)
        inflight = max(live.batcher.load - live.batcher.queue_depth, activity.held)
        queued = max(live.batcher.queue_depth, activity.waiting)
        samples = live.samples
        samples.append((now, inflight + queued, activity.arrivals))
        window = self._settings.autoscale_window_s
        while len(samples) > 1 and now - samples[0][0] > window:
            samples.popleft()
        span = now - samples[0][0]
        # Idle counts from the last request or the last change, and not while loading.
        starting = any(r.state in _STARTING for r in self._backend.replicas(live.record.name))
        if starting:
            live.idle_from = now
        last_used = activity.last_used
        arrived = activity.arrivals - samples[0][2]
        return ScalingContext(
            now=now,
            replicas=live.replicas,
            inflight=inflight,
            queue_depth=queued,
            avg_load=sum(s[1] for s in samples) / len(samples),
            rate=arrived / span if span > 0 else float(arrived),
            idle_s=0.0 if activity.busy or starting else now - max(last_used, live.idle_from),
            up_since=live.up_since,
            down_since=live.down_since,
        )

    # -- memory ------------------------------------------------------------------------------

    def _learn(self, live: Deployment) -> None:
        for replica in self._backend.replicas(live.record.name):
            if replica.memory_bytes:
                self.budget.learn(live.version.artifact_sha256, replica.memory_bytes)

    def memory_of(self, live: Deployment) -> int:
        """Resident memory of a deployment's replicas: measured, or estimated while loading."""
        estimate = self.estimate(live.version)
        return sum(
            r.memory_bytes or estimate
            for r in self._backend.replicas(live.record.name)
            if r.state is not ReplicaState.FAILED and r.state is not ReplicaState.STOPPED
        )

    def busy(self, live: Deployment) -> bool:
        """Requests queued, in flight or waiting for a replica."""
        return live.batcher.load > 0 or self._backend.activity(live.record.name).busy

    def _residents(self) -> list[Resident]:
        return [
            Resident(
                name=name,
                bytes=self.memory_of(live),
                last_used=self._backend.activity(name).last_used,
                evictable=not live.keep_warm and not self.busy(live) and live.replicas > 0,
            )
            for name, live in list(self._live.items())
        ]
