"""Deployments: a model version running as replicas, behind its own batcher.

The desired state (which version, how many replicas, batching and scaling settings) is
stored through the registry so that deployments come back after a restart; the running
state lives in the backend. This module joins the two and keeps an in-memory table that the
inference hot path reads without touching the database.

Replica counts change through the ``Autoscaler`` (``engine/autoscaler.py``): its policy for
autoscaled deployments, cold starts of deployments at zero, admin scaling and the V2
repository's load/unload, all under the memory budget. Every lease (batchers, LLM
generations) goes through ``backend`` (``engine/activity.py``), which tracks use per
deployment and wakes those at zero.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from modelport.backends.base import Backend, ReplicaSetSpec
from modelport.batching.queue import AdaptiveBatcher
from modelport.engine.activity import TrackedBackend
from modelport.engine.autoscaler import Autoscaler
from modelport.engine.live_deployment import (
    Deployment,
    initial_replicas,
    parse_scaling,
    runtime_options,
    scaling_options,
)
from modelport.engine.models import load_options
from modelport.engine.registry import DeploymentRecord, Registry
from modelport.errors import DeploymentNotFound, ModelportError, NotReady
from modelport.observability.metrics import DeploymentGauges, Metrics
from modelport.runtimes.base import LoadSpec, runtime_class
from modelport.settings import Settings
from modelport.storage.artifacts import ArtifactStore
from modelport.types.admin import (
    DeploymentState,
    DeploymentStatus,
    DeploySpec,
    ReplicaState,
    ReplicaStatus,
    VersionInfo,
)

__all__ = ["Deployment", "DeploymentManager"]


class DeploymentManager:
    """Deploy, scale, undeploy and describe deployments; restore them at start."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        artifacts: ArtifactStore,
        backend: Backend,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._artifacts = artifacts
        self._backend = TrackedBackend(backend)
        self._metrics = metrics
        self._access = registry.access
        self._live: dict[str, Deployment] = {}
        # Stored deployments that could not start (e.g. their version was deleted meanwhile).
        self._failed: dict[str, tuple[DeploymentRecord, str]] = {}
        self._lock = asyncio.Lock()  # one change at a time keeps the table coherent
        self.autoscaler = Autoscaler(settings, self._backend, self._live, self._lock, metrics)
        metrics.track(self._gauges)

    @property
    def backend(self) -> Backend:
        """What to lease replicas from: the backend with activity tracking and cold starts."""
        return self._backend

    # -- hot path -------------------------------------------------------------------------

    def get(self, name: str) -> Deployment:
        """The live deployment serving model ``name`` (no I/O).

        One the caller may not see (engine/access.py) is reported exactly like a missing one.
        """
        live = self._live.get(name)
        if live is None or not self._access.visible(live.record.model):
            raise DeploymentNotFound(f"model {name!r} is not deployed", param="model")
        return live

    def names(self) -> list[str]:
        """Names of the live deployments the caller may see."""
        return self._access.filter(sorted(self._live))

    # -- admin ----------------------------------------------------------------------------

    async def deploy(self, spec: DeploySpec, *, name: str | None = None) -> DeploymentStatus:
        """Start (or replace) the deployment of a model version and persist it.

        ``name`` defaults to the model's name (a version deployment may take another).
        """
        ref: str | int = spec.version or spec.alias or "latest"
        version = await asyncio.to_thread(self._registry.get_version, spec.model, ref)
        now = datetime.now(UTC)
        record = DeploymentRecord(
            name=name or spec.model,
            model=spec.model,
            version=version.version,
            replicas=spec.replicas,
            max_batch_size=spec.max_batch_size,
            max_latency_ms=spec.max_latency_ms,
            options={**spec.options, **scaling_options(spec)},
            created_at=now,
            updated_at=now,
        )
        async with self._lock:
            record = await asyncio.to_thread(self._registry.save_deployment, record)
            await self._start(record, version)
        return self.status(record.name)

    async def scale(self, name: str, replicas: int) -> DeploymentStatus:
        """Set the replica count (an autoscaled deployment starts from it, within its bounds)."""
        async with self._lock:
            live = self.get(name)
            self._access.check_change(live.record.model)
            record = replace(live.record, replicas=replicas, updated_at=datetime.now(UTC))
            live.record = await asyncio.to_thread(self._registry.save_deployment, record)
            live.unloaded = False
            await self.autoscaler.resize(live, replicas, "scaled by an admin", "admin")
        return self.status(name)

    async def load(self, name: str) -> DeploymentStatus:
        """Start a deployment's replicas (V2 repository ``load``) and wait until it serves.

        A model that is registered but not deployed is deployed with the defaults. The wait
        is bounded by ``cold_start_timeout_s`` (``NotReady`` past it).
        """
        live = self._live.get(name)
        if live is None or not self._access.visible(live.record.model):
            await asyncio.to_thread(self._registry.get_model, name)  # 404 like a missing one
            await self.deploy(DeploySpec(model=name))
        else:
            self._access.check_change(live.record.model)
            async with self._lock:
                live.unloaded = False
                if live.replicas == 0:
                    target = max(live.cold_target, 1)
                    await self.autoscaler.resize(live, target, "loaded (repository)", "repository")
        return await self._wait_serving(name)

    async def unload(self, name: str) -> None:
        """Stop a deployment's replicas until ``load`` (V2 repository ``unload``); it stays.

        A registered model that is not deployed is already unloaded: nothing to do.
        """
        live = self._live.get(name)
        if live is None or not self._access.visible(live.record.model):
            await asyncio.to_thread(self._registry.get_model, name)  # 404 like a missing one
            return
        self._access.check_change(live.record.model)
        async with self._lock:
            live.unloaded = True
            await self.autoscaler.resize(live, 0, "unloaded (repository)", "repository")

    async def _wait_serving(self, name: str) -> DeploymentStatus:
        limit = self._settings.cold_start_timeout_s
        status = self.status(name)
        try:
            async with asyncio.timeout(limit):
                # Polled: a deployment's state is derived from its backend (no event).
                while status.state not in (DeploymentState.READY, DeploymentState.FAILED):
                    await asyncio.sleep(0.05)
                    status = self.status(name)
        except TimeoutError:
            raise NotReady(
                f"model {name!r} did not load within {limit:g} s (cold_start_timeout_s): "
                f"{status.state.value}" + (f" ({status.reason})" if status.reason else ""),
                param="model",
            ) from None
        return status

    async def undeploy(self, name: str) -> None:
        # DeploymentNotFound for one the caller may not see, 403 for one it may only use.
        self._access.check_change(self.status(name).model)
        async with self._lock:
            live = self._live.pop(name, None)
            self._failed.pop(name, None)
            await asyncio.to_thread(self._registry.delete_deployment, name)
            if live is not None:
                await live.batcher.close()
                await self._backend.undeploy(name)

    async def restore(self) -> None:
        """Start every stored deployment (server start). A broken one does not stop the rest."""
        records = await asyncio.to_thread(self._registry.list_deployments)
        for record in records:
            try:
                version = await asyncio.to_thread(
                    self._registry.get_version, record.model, record.version
                )
                async with self._lock:
                    await self._start(record, version)
            except ModelportError as exc:
                # The record stays; status shows the reason until the user redeploys or removes it.
                self._failed[record.name] = (record, str(exc))
        self.autoscaler.start()

    async def wait_settled(self) -> None:
        """Wait until no deployment is still loading (server readiness at start).

        Callers bound the wait with ``asyncio.timeout``.
        """
        # Polled: a deployment's state is derived from its backend, which publishes no event.
        while any(s.state == DeploymentState.LOADING for s in self.statuses()):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def shutdown(self) -> None:
        await self.autoscaler.stop()
        for live in self._live.values():
            await live.batcher.close()
        self._live.clear()
        await self._backend.shutdown()

    # -- status ---------------------------------------------------------------------------

    def status(self, name: str) -> DeploymentStatus:
        live = self._live.get(name)
        failed = self._failed.get(name)
        model = live.record.model if live else failed[0].model if failed else name
        if not self._access.visible(model):
            raise DeploymentNotFound(f"model {name!r} is not deployed", param="name")
        if live is None:
            if name in self._failed:
                record, reason = self._failed[name]
                return _failed_status(record, reason)
            raise DeploymentNotFound(f"model {name!r} is not deployed", param="name")
        return self._live_status(live)

    def _live_status(self, live: Deployment) -> DeploymentStatus:
        record, config = live.record, live.config
        replicas = self._backend.replicas(record.name)
        ready = sum(r.state == ReplicaState.READY for r in replicas)
        reasons = [f"{r.id}: {r.reason}" for r in replicas if r.reason]
        if live.unloaded:
            reasons.insert(0, "unloaded through the repository API")
        activity = self._backend.activity(record.name)
        idle_s = max(0.0, time.monotonic() - activity.last_used)
        return DeploymentStatus(
            name=record.name,
            model=record.model,
            version=record.version,
            runtime=live.version.runtime,
            replicas=live.replicas,
            max_batch_size=record.max_batch_size,
            max_latency_ms=record.max_latency_ms,
            options=runtime_options(record.options),
            state=_state(live, replicas, ready),
            reason="; ".join(reasons) or None,
            ready_replicas=ready,
            replica_status=replicas,
            queue_depth=live.batcher.queue_depth,
            autoscaling=config is not None,
            min_replicas=config.min_replicas if config else None,
            max_replicas=config.max_replicas if config else None,
            target_inflight=config.target_inflight if config else None,
            scale_up_delay_s=config.scale_up_delay_s if config else None,
            scale_down_delay_s=config.scale_down_delay_s if config else None,
            idle_timeout_s=config.idle_timeout_s if config else None,
            pinned=live.pinned,
            unloaded=live.unloaded,
            inflight=max(live.batcher.load, activity.held + activity.waiting),
            memory_bytes=self.autoscaler.memory_of(live),
            last_used_at=datetime.now(UTC) - timedelta(seconds=idle_s),
            decisions=list(live.decisions),
        )

    def statuses(self) -> list[DeploymentStatus]:
        names = sorted(set(self._live) | set(self._failed))
        return [self.status(name) for name in self._access.filter(names)]

    # -- internals ------------------------------------------------------------------------

    async def _start(self, record: DeploymentRecord, version: VersionInfo) -> None:
        """Start (or replace) a record's replica set; the caller holds the lock."""
        config, pinned = parse_scaling(record.options)
        replicas = initial_replicas(record, config)
        await self.autoscaler.make_room(
            record.name, replicas * self.autoscaler.estimate(version), replacing=True
        )
        load = LoadSpec(
            runtime=version.runtime,
            artifact_path=self._artifacts.local_path(version.artifact_sha256),
            artifact_name=version.artifact_name,
            sha256=version.artifact_sha256,
            trusted=version.trusted,
            signature=version.signature,
            options=load_options(self._settings, version.metadata, record.options),
        )
        env = runtime_class(version.runtime).worker_env(load.options)
        await self._backend.deploy(
            ReplicaSetSpec(name=record.name, load=load, replicas=replicas, env=env)
        )
        old = self._live.get(record.name)
        live = Deployment(
            record=record,
            version=version,
            batcher=AdaptiveBatcher(
                record.name,
                self._backend,
                max_batch_size=record.max_batch_size,
                max_latency_ms=record.max_latency_ms,
                lease_timeout=self._settings.replica_wait_s,
                on_batch=self._metrics.batch_observer(record.name),
                call_timeout=self._settings.request_timeout_s,
            ),
            config=config,
            pinned=pinned,
            replicas=replicas,
        )
        if old is not None:
            live.decisions.extend(old.decisions)
        live.note(old.replicas if old else 0, replicas, f"deployed version {record.version}")
        self._live[record.name] = live
        self._failed.pop(record.name, None)
        if old is not None:
            await old.batcher.close()

    def _gauges(self) -> list[DeploymentGauges]:
        out = []
        for name, live in list(self._live.items()):
            replicas = self._backend.replicas(name)
            config = live.config
            last = live.decisions[-1].at.timestamp() if live.decisions else None
            out.append(
                DeploymentGauges(
                    name=name,
                    queue_depth=live.batcher.queue_depth,
                    replicas_desired=live.replicas,
                    replicas_ready=sum(r.state == ReplicaState.READY for r in replicas),
                    restarts=sum(r.restarts for r in replicas),
                    inflight=live.batcher.load,
                    memory_bytes=self.autoscaler.memory_of(live),
                    replicas_min=config.min_replicas if config else None,
                    replicas_max=config.max_replicas if config else None,
                    last_scaling=last,
                )
            )
        return out


def _state(live: Deployment, replicas: list[ReplicaStatus], ready: int) -> DeploymentState:
    if ready:
        return DeploymentState.READY
    if replicas and all(r.state == ReplicaState.FAILED for r in replicas):
        return DeploymentState.FAILED
    if live.replicas == 0:
        if live.unloaded or live.cold_target == 0:
            return DeploymentState.STOPPED
        return DeploymentState.IDLE
    return DeploymentState.LOADING


def _failed_status(record: DeploymentRecord, reason: str) -> DeploymentStatus:
    return DeploymentStatus(
        name=record.name,
        model=record.model,
        version=record.version,
        runtime="unknown",
        replicas=record.replicas,
        max_batch_size=record.max_batch_size,
        max_latency_ms=record.max_latency_ms,
        options=runtime_options(record.options),
        state=DeploymentState.FAILED,
        reason=reason,
    )
