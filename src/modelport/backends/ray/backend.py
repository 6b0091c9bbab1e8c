"""The Ray backend: every replica is a Ray actor hosting one ``Runtime``.

Why actors and not Ray Serve deployments: modelport already has what Serve adds on top of
actors — the HTTP/gRPC front (``api/``), request batching (``batching/``, above the
backend) and routing to the least loaded replica through leases. What it needs from a
cluster is "run this model somewhere and let me call it", which is exactly an actor. With
plain actors a batch is one actor call (no second router or second queue in between),
leases keep working as on the local backend (a replica's in-flight limit is ours), and
streams, cancels and crash detection map onto actor calls one to one.

The replica-set and lease logic mirrors ``backends.local``: ``deploy`` replaces a set while
the old one keeps serving until the new one has a ready replica, ``scale`` starts or stops
actors, leases pick the least loaded ready replica with a free slot and wait on a signal.
Supervision lives in ``replica.RayReplica``; every Ray call goes through ``_ray``.

Artifacts are read by path inside the actor, so every Ray node that may host a replica
needs the server's artifact folder at the same path (one node, or a shared file system).
"""

from __future__ import annotations

import asyncio
import itertools
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from types import TracebackType
from typing import Any

from modelport.backends.base import Backend, Replica, ReplicaSetSpec
from modelport.backends.ray._ray import Cluster, RayCluster
from modelport.backends.ray.replica import RayReplica
from modelport.backends.replica import Signal
from modelport.errors import DeploymentNotFound, NotReady, Unavailable
from modelport.settings import Settings
from modelport.types.admin import ReplicaState, ReplicaStatus

__all__ = ["RayBackend"]


class RayBackend(Backend):
    """Run replica sets as supervised actors on a Ray cluster."""

    name = "ray"

    def __init__(self, settings: Settings, cluster: Cluster | None = None) -> None:
        self._settings = settings
        self._cluster: Cluster = cluster or RayCluster(
            settings.ray_address, settings.ray_namespace, settings.ray_connect_timeout_s
        )
        self._sets: dict[str, _ReplicaSet] = {}
        self._previous: dict[str, _ReplicaSet] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def deploy(self, spec: ReplicaSetSpec) -> None:
        if self._closed:
            raise Unavailable("the server is shutting down")
        try:
            await self._cluster.connect()
        except ConnectionError as exc:
            raise Unavailable(f"the Ray backend cannot reach its cluster: {exc}") from None
        old = self._sets.get(spec.name)
        new = _ReplicaSet(self._settings, self._cluster, spec, old.signal if old else Signal())
        self._sets[spec.name] = new
        new.resize(spec.replicas)
        if old is not None:
            stale = self._previous.pop(spec.name, None)
            if stale is not None:  # replaced again before the last switch finished
                self._background(stale.stop_all())
            self._previous[spec.name] = old
            self._background(self._retire_when_settled(spec.name, new, old))

    async def scale(self, name: str, replicas: int) -> None:
        replica_set = self._get(name)
        replica_set.spec = replace(replica_set.spec, replicas=replicas)
        for removed in replica_set.resize(replicas):
            self._background(removed.stop())

    async def undeploy(self, name: str) -> None:
        replica_set = self._get(name)
        del self._sets[name]
        previous = self._previous.pop(name, None)
        replica_set.signal.notify()  # waiting leases re-check and see the set is gone
        await replica_set.stop_all()
        if previous is not None:
            await previous.stop_all()

    def lease(self, name: str, timeout: float) -> _Lease:
        return _Lease(self, name, timeout)

    def replicas(self, name: str) -> list[ReplicaStatus]:
        replica_set = self._sets.get(name)
        return [r.status() for r in replica_set.members] if replica_set else []

    def free_slots(self, name: str) -> int:
        if name not in self._sets:
            return 0
        limit = self._settings.replica_max_inflight
        return sum(
            limit - r.inflight
            for replica_set in self._serving(name)
            for r in replica_set.members
            if r.state is ReplicaState.READY
        )

    async def shutdown(self) -> None:
        self._closed = True
        for name in list(self._sets):
            await self.undeploy(name)
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._cluster.disconnect()

    # -- leases -----------------------------------------------------------------------------

    async def _acquire(self, name: str, wait_s: float) -> RayReplica:
        replica = self._try_acquire(name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while replica is None:
            sets = self._serving(name)
            remaining = deadline - loop.time()
            if all(s.all_failed() for s in sets) or remaining <= 0:
                raise NotReady(
                    f"deployment {name!r} has no ready replica: {sets[0].describe()}",
                    param="model",
                )
            await sets[0].signal.wait(remaining)
            replica = self._try_acquire(name)
        return replica

    def _try_acquire(self, name: str) -> RayReplica | None:
        limit = self._settings.replica_max_inflight
        for replica_set in self._serving(name):
            best: RayReplica | None = None
            for r in replica_set.rotation():
                usable = r.state is ReplicaState.READY and r.inflight < limit
                if usable and (best is None or r.inflight < best.inflight):
                    best = r
            if best is not None:
                best.inflight += 1
                return best
        return None

    def _serving(self, name: str) -> list[_ReplicaSet]:
        """The set for ``name`` first, then the one it replaces (if still serving)."""
        current = self._get(name)
        previous = self._previous.get(name)
        return [current] if previous is None else [current, previous]

    def _get(self, name: str) -> _ReplicaSet:
        try:
            return self._sets[name]
        except KeyError:
            raise DeploymentNotFound(f"deployment {name!r} does not exist", param="name") from None

    # -- replacement ------------------------------------------------------------------------

    async def _retire_when_settled(self, name: str, new: _ReplicaSet, old: _ReplicaSet) -> None:
        """Stop ``old`` once ``new`` serves, has failed, or stopped being the current set."""
        while self._sets.get(name) is new and not new.settled():
            await new.signal.wait(None)
        if self._previous.get(name) is old:
            del self._previous[name]
        await old.stop_all()

    def _background(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Lease(AbstractAsyncContextManager[Replica]):
    """``async with backend.lease(name, timeout) as replica``: one slot on one replica."""

    __slots__ = ("_backend", "_name", "_replica", "_timeout")

    def __init__(self, backend: RayBackend, name: str, timeout: float) -> None:
        self._backend = backend
        self._name = name
        self._timeout = timeout
        self._replica: RayReplica | None = None

    async def __aenter__(self) -> Replica:
        self._replica = await self._backend._acquire(self._name, self._timeout)
        return self._replica

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._replica is not None:
            self._replica.release()
            self._replica = None


class _ReplicaSet:
    """The replicas of one deployment (one model version)."""

    def __init__(
        self, settings: Settings, cluster: Cluster, spec: ReplicaSetSpec, signal_: Signal
    ) -> None:
        self.settings = settings
        self.cluster = cluster
        self.spec = spec
        self.signal = signal_
        self.members: list[RayReplica] = []
        self._ids = itertools.count(1)
        self._turn = 0

    def resize(self, replicas: int) -> list[RayReplica]:
        """Start or detach replicas to reach ``replicas``; returns the detached ones."""
        while len(self.members) < replicas:
            self.members.append(RayReplica(self, f"r{next(self._ids)}"))
        # Drop the least useful first: not serving, then the newest.
        by_use = sorted(self.members, key=lambda r: (r.state is ReplicaState.READY, -r.number))
        removed = by_use[: len(self.members) - replicas]
        self.members = [r for r in self.members if r not in removed]
        return removed

    def rotation(self) -> list[RayReplica]:
        """Members starting at a moving offset, so ties in load spread over replicas."""
        self._turn = (self._turn + 1) % max(len(self.members), 1)
        return self.members[self._turn :] + self.members[: self._turn]

    def all_failed(self) -> bool:
        return bool(self.members) and all(r.state is ReplicaState.FAILED for r in self.members)

    def settled(self) -> bool:
        """True once the set serves or cannot (all failed, or scaled to zero)."""
        return (
            self.all_failed()
            or not self.members
            or any(r.state is ReplicaState.READY for r in self.members)
        )

    def describe(self) -> str:
        if not self.members:
            return "it has 0 replicas"
        return "; ".join(
            f"{r.id} {r.state.value}" + (f": {r.reason}" if r.reason else "") for r in self.members
        )

    async def stop_all(self) -> None:
        members, self.members = self.members, []
        await asyncio.gather(*(r.stop() for r in members))
