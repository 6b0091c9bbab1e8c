"""The local backend: every replica is a worker process on this machine.

A deployment is a replica set; ``scale`` starts or stops replicas, and a redeploy keeps the
replaced set serving until its successor has a ready replica (or cannot get one). Leases
pick the least loaded ready replica with a free slot and wait on a signal (no polling) for
readiness or a slot. One replica's process, from spawn through crashes and restarts to
stop, is ``replica.LocalReplica``; ``inspect_signature`` (from ``inspection``, re-exported
here) reads a model's signature in a throw-away worker.

No worker outlives the server: ``shutdown`` stops them all, and each worker asks the kernel
to SIGKILL it when the server process dies (``PR_SET_PDEATHSIG``), even by SIGKILL. The
kernel ties that to the *thread* that forked the worker, so the backend must run on the
event loop of a thread that lives as long as the server (the main thread, with uvicorn).
"""

from __future__ import annotations

import asyncio
import itertools
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from types import TracebackType
from typing import Any

from modelport.backends.base import Backend, Replica, ReplicaSetSpec
from modelport.backends.inspection import inspect_signature
from modelport.backends.replica import LocalReplica, Signal
from modelport.errors import DeploymentNotFound, NotReady, Unavailable
from modelport.settings import Settings
from modelport.types.admin import ReplicaState, ReplicaStatus

__all__ = ["LocalBackend", "inspect_signature"]


class LocalBackend(Backend):
    """Run replica sets as supervised worker processes on this machine."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sets: dict[str, _ReplicaSet] = {}
        # A replaced set keeps serving until its successor has a ready replica.
        self._previous: dict[str, _ReplicaSet] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def deploy(self, spec: ReplicaSetSpec) -> None:
        if self._closed:
            raise Unavailable("the server is shutting down")
        old = self._sets.get(spec.name)
        new = _ReplicaSet(self._settings, spec, old.signal if old else Signal())
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

    # -- leases -----------------------------------------------------------------------------

    async def _acquire(self, name: str, wait_s: float) -> LocalReplica:
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

    def _try_acquire(self, name: str) -> LocalReplica | None:
        limit = self._settings.replica_max_inflight
        for replica_set in self._serving(name):
            best: LocalReplica | None = None
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

    def __init__(self, backend: LocalBackend, name: str, timeout: float) -> None:
        self._backend = backend
        self._name = name
        self._timeout = timeout
        self._replica: LocalReplica | None = None

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

    def __init__(self, settings: Settings, spec: ReplicaSetSpec, signal_: Signal) -> None:
        self.settings = settings
        self.spec = spec
        self.signal = signal_
        self.members: list[LocalReplica] = []
        self._ids = itertools.count(1)
        self._turn = 0

    def resize(self, replicas: int) -> list[LocalReplica]:
        """Start or detach replicas to reach ``replicas``; returns the detached ones."""
        while len(self.members) < replicas:
            self.members.append(LocalReplica(self, f"r{next(self._ids)}"))
        # Drop the least useful first: not serving, then the newest.
        by_use = sorted(self.members, key=lambda r: (r.state is ReplicaState.READY, -r.number))
        removed = by_use[: len(self.members) - replicas]
        self.members = [r for r in self.members if r not in removed]
        return removed

    def rotation(self) -> list[LocalReplica]:
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
