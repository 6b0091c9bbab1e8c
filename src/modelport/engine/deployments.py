"""Deployments: a model version running as replicas, behind its own batcher.

The desired state (which version, how many replicas, batching settings) is stored through
the registry so that deployments come back after a restart; the running state lives in the
backend. This module joins the two and keeps an in-memory table that the inference hot
path reads without touching the database.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from modelport.backends.base import Backend, ReplicaSetSpec
from modelport.batching.queue import AdaptiveBatcher
from modelport.engine.models import load_options
from modelport.engine.registry import DeploymentRecord, Registry
from modelport.errors import DeploymentNotFound, ModelportError
from modelport.observability.metrics import DeploymentGauges, Metrics
from modelport.runtimes.base import LoadSpec
from modelport.settings import Settings
from modelport.storage.artifacts import ArtifactStore
from modelport.types.admin import (
    DeploymentState,
    DeploymentStatus,
    DeploySpec,
    ReplicaState,
    VersionInfo,
)


@dataclass
class Deployment:
    """A running deployment as the hot path sees it."""

    record: DeploymentRecord
    version: VersionInfo
    batcher: AdaptiveBatcher


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
        self._backend = backend
        self._metrics = metrics
        self._access = registry.access
        self._live: dict[str, Deployment] = {}
        # Stored deployments that could not start (e.g. their version was deleted meanwhile).
        self._failed: dict[str, tuple[DeploymentRecord, str]] = {}
        self._lock = asyncio.Lock()  # one admin change at a time keeps the table coherent
        metrics.track(self._gauges)

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

    async def deploy(self, spec: DeploySpec) -> DeploymentStatus:
        """Start (or replace) the deployment of a model version and persist it."""
        ref: str | int = spec.version or spec.alias or "latest"
        version = await asyncio.to_thread(self._registry.get_version, spec.model, ref)
        now = datetime.now(UTC)
        record = DeploymentRecord(
            name=spec.model,
            model=spec.model,
            version=version.version,
            replicas=spec.replicas,
            max_batch_size=spec.max_batch_size,
            max_latency_ms=spec.max_latency_ms,
            options=dict(spec.options),
            created_at=now,
            updated_at=now,
        )
        async with self._lock:
            record = await asyncio.to_thread(self._registry.save_deployment, record)
            await self._start(record, version)
        return self.status(spec.model)

    async def scale(self, name: str, replicas: int) -> DeploymentStatus:
        async with self._lock:
            live = self.get(name)
            self._access.check_change(live.record.model)
            record = replace(live.record, replicas=replicas, updated_at=datetime.now(UTC))
            live.record = await asyncio.to_thread(self._registry.save_deployment, record)
            await self._backend.scale(name, replicas)
        return self.status(name)

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

    async def wait_settled(self) -> None:
        """Wait until no deployment is still loading (server readiness at start).

        Callers bound the wait with ``asyncio.timeout``.
        """
        # Polled: a deployment's state is derived from its backend, which publishes no event.
        while any(s.state == DeploymentState.LOADING for s in self.statuses()):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def shutdown(self) -> None:
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
        record = live.record
        replicas = self._backend.replicas(name)
        ready = sum(r.state == ReplicaState.READY for r in replicas)
        reasons = [f"{r.id}: {r.reason}" for r in replicas if r.reason]
        if ready:
            state = DeploymentState.READY
        elif replicas and all(r.state == ReplicaState.FAILED for r in replicas):
            state = DeploymentState.FAILED
        elif record.replicas == 0:
            state = DeploymentState.STOPPED
        else:
            state = DeploymentState.LOADING
        return DeploymentStatus(
            name=name,
            model=record.model,
            version=record.version,
            runtime=live.version.runtime,
            replicas=record.replicas,
            max_batch_size=record.max_batch_size,
            max_latency_ms=record.max_latency_ms,
            options=record.options,
            state=state,
            reason="; ".join(reasons) or None,
            ready_replicas=ready,
            replica_status=replicas,
            queue_depth=live.batcher.queue_depth,
        )

    def statuses(self) -> list[DeploymentStatus]:
        names = sorted(set(self._live) | set(self._failed))
        return [self.status(name) for name in self._access.filter(names)]

    # -- internals ------------------------------------------------------------------------

    async def _start(self, record: DeploymentRecord, version: VersionInfo) -> None:
        load = LoadSpec(
            runtime=version.runtime,
            artifact_path=self._artifacts.local_path(version.artifact_sha256),
            artifact_name=version.artifact_name,
            sha256=version.artifact_sha256,
            trusted=version.trusted,
            signature=version.signature,
            options=load_options(self._settings, version.metadata, record.options),
        )
        await self._backend.deploy(
            ReplicaSetSpec(name=record.name, load=load, replicas=record.replicas)
        )
        old = self._live.get(record.name)
        self._live[record.name] = Deployment(
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
        )
        self._failed.pop(record.name, None)
        if old is not None:
            await old.batcher.close()

    def _gauges(self) -> list[DeploymentGauges]:
        out = []
        for name, live in list(self._live.items()):
            replicas = self._backend.replicas(name)
            out.append(
                DeploymentGauges(
                    name=name,
                    queue_depth=live.batcher.queue_depth,
                    replicas_desired=live.record.replicas,
                    replicas_ready=sum(r.state == ReplicaState.READY for r in replicas),
                    restarts=sum(r.restarts for r in replicas),
                )
            )
        return out


def _failed_status(record: DeploymentRecord, reason: str) -> DeploymentStatus:
    return DeploymentStatus(
        name=record.name,
        model=record.model,
        version=record.version,
        runtime="unknown",
        replicas=record.replicas,
        max_batch_size=record.max_batch_size,
        max_latency_ms=record.max_latency_ms,
        options=record.options,
        state=DeploymentState.FAILED,
        reason=reason,
    )
