"""Replica sets, leases and the replica supervisor loop shared by the local and Ray backends.

Both backends run a deployment as a *replica set* of supervised replicas and differ only in
what one replica is (a worker process, a Ray actor). What they share lives here:

- ``ReplicaSetBackend``: the ``Backend`` seam over replica sets. ``deploy`` replaces a set
  while the old one keeps serving until the new one has a ready replica (or cannot get one),
  ``scale`` starts or detaches replicas, leases pick the least loaded ready replica with a
  free slot and wait on a ``Signal`` (no polling). A backend subclass says how to start one
  replica (``_start_replica``) and, if it needs to, what to do before a deploy and at
  shutdown (``_before_deploy``, ``_close``).
- ``ReplicaSet``: the replicas of one deployment (one model version).
- ``SupervisedReplica``: a replica's public fields (state, pid, restarts, reason, in-flight
  count), its status, lease release and the restart loop; a subclass runs one life of its
  replica (``_run_once``) and says how it reads memory.
- ``Lease``: ``async with backend.lease(name, timeout) as replica``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from types import TracebackType
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from modelport.backends.base import Backend, Replica, ReplicaSetSpec
from modelport.errors import DeploymentNotFound, NotReady, Unavailable
from modelport.settings import Settings
from modelport.types.admin import ReplicaState, ReplicaStatus

logger = logging.getLogger(__name__)


class Signal:
    """Wakes every waiter at once; waiters re-check their own condition (no polling)."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:  # nobody waiting: nothing to allocate or set
            self._event.set()
            self._event = None

    async def wait(self, limit_s: float | None) -> None:
        """Return at the next ``notify`` or after ``limit_s`` seconds, whichever is first."""
        if self._event is None:
            self._event = asyncio.Event()
        event = self._event
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s):
                await event.wait()


class ReplicaOwner(Protocol):
    """What a replica reads from the set it belongs to."""

    settings: Settings
    spec: ReplicaSetSpec
    signal: Signal


class SupervisedReplica(Replica, ABC):
    """One replica and the supervisor task that keeps it running::

        STARTING -> READY -> (crash) -> RESTARTING -> READY ...    backoff doubles per crash
            \\-> FAILED (load failed, crashed or timed out while loading: no restart loop)
        any state -> STOPPED (scale down, undeploy, replace, shutdown)

    ``_run_once`` starts, loads and serves one life of the replica and returns True when it
    crashed and should be restarted; it sets ``FAILED`` itself when there is no point.
    """

    # What one life of the replica runs in, for the reason "could not start <unit>: ...".
    unit: ClassVar[str] = "a replica"

    def __init__(self, owner: ReplicaOwner, replica_id: str) -> None:
        self.id = replica_id
        self.number = int(replica_id[1:])
        self.state = ReplicaState.STARTING
        self.pid: int | None = None
        self.restarts = 0
        self.reason: str | None = None
        self.inflight = 0
        self._owner = owner
        self._settings = owner.settings
        self._stopping = asyncio.Event()
        # Starts at the caller's next await, after the subclass has set its own fields.
        self._task = asyncio.create_task(self._supervise(), name=f"replica-{replica_id}")

    @property
    def _label(self) -> str:
        return f"replica {self.id} of deployment {self._owner.spec.name!r}"

    def status(self) -> ReplicaStatus:
        return ReplicaStatus(
            id=self.id,
            state=self.state,
            pid=self.pid,
            restarts=self.restarts,
            reason=self.reason,
            inflight=self.inflight,
            memory_bytes=self._memory_bytes() if self.state is ReplicaState.READY else None,
        )

    def release(self) -> None:
        """End one lease: a slot is free again."""
        self.inflight -= 1
        self._owner.signal.notify()

    async def stop(self) -> None:
        """Let leased calls finish, then end the replica (``_run_once`` drains it)."""
        self._stopping.set()
        await self._task

    def _memory_bytes(self) -> int | None:
        """Resident memory of a ready replica, where the backend can measure it."""
        return None

    def _set_state(self, state: ReplicaState) -> None:
        self.state = state
        self._owner.signal.notify()

    @abstractmethod
    async def _run_once(self) -> bool:
        """Start, load and serve once; True when the replica crashed and should restart."""

    async def _supervise(self) -> None:
        initial = backoff = self._settings.worker_restart_backoff_s
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            started = loop.time()
            try:
                crashed = await self._run_once()
            except Exception as exc:  # could not even start one (fds, disk, cluster...)
                logger.exception("%s could not start", self._label)
                self.reason = f"could not start {self.unit}: {type(exc).__name__}: {exc}"
                self._set_state(ReplicaState.FAILED)
                return
            if not crashed:
                break
            if loop.time() - started > self._settings.worker_restart_backoff_max_s:
                backoff = initial  # it ran a good while: treat this as a fresh failure
            self._set_state(ReplicaState.RESTARTING)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._stopping.wait()
            backoff = min(backoff * 2, self._settings.worker_restart_backoff_max_s)
        if self.state is not ReplicaState.FAILED:
            self._set_state(ReplicaState.STOPPED)


R = TypeVar("R", bound=SupervisedReplica)


class ReplicaSet(Generic[R]):
    """The replicas of one deployment (one model version)."""

    def __init__(
        self,
        settings: Settings,
        spec: ReplicaSetSpec,
        signal_: Signal,
        start: Callable[[ReplicaSet[R], str], R],
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.signal = signal_
        self.members: list[R] = []
        self._start = start
        self._ids = itertools.count(1)
        self._turn = 0

    def resize(self, replicas: int) -> list[R]:
        """Start or detach replicas to reach ``replicas``; returns the detached ones."""
        while len(self.members) < replicas:
            self.members.append(self._start(self, f"r{next(self._ids)}"))
        # Drop the least useful first: not serving, then the newest.
        by_use = sorted(self.members, key=lambda r: (r.state is ReplicaState.READY, -r.number))
        removed = by_use[: len(self.members) - replicas]
        self.members = [r for r in self.members if r not in removed]
        return removed

    def rotation(self) -> list[R]:
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


class ReplicaSetBackend(Backend, Generic[R]):
    """A backend whose deployments are replica sets of ``R`` (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sets: dict[str, ReplicaSet[R]] = {}
        # A replaced set keeps serving until its successor has a ready replica.
        self._previous: dict[str, ReplicaSet[R]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @abstractmethod
    def _start_replica(self, owner: ReplicaSet[R], replica_id: str) -> R:
        """A new replica of ``owner``, starting (its supervisor runs from the next await)."""

    async def _before_deploy(self) -> None:
        """Get ready to start replicas (connect to a cluster...); raise ``Unavailable``."""

    async def _close(self) -> None:
        """Release what the backend holds besides replicas, after they all stopped."""

    async def deploy(self, spec: ReplicaSetSpec) -> None:
        if self._closed:
            raise Unavailable("the server is shutting down")
        await self._before_deploy()
        old = self._sets.get(spec.name)
        new = ReplicaSet(self._settings, spec, old.signal if old else Signal(), self._start_replica)
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

    def lease(self, name: str, timeout: float) -> Lease:
        return Lease(self, name, timeout)

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
        await self._close()

    # -- leases -----------------------------------------------------------------------------

    async def acquire(self, name: str, wait_s: float) -> R:
        """A ready replica of ``name`` with a free slot, its slot taken (``Lease`` uses it)."""
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

    def _try_acquire(self, name: str) -> R | None:
        limit = self._settings.replica_max_inflight
        for replica_set in self._serving(name):
            best: R | None = None
            for r in replica_set.rotation():
                usable = r.state is ReplicaState.READY and r.inflight < limit
                if usable and (best is None or r.inflight < best.inflight):
                    best = r
            if best is not None:
                best.inflight += 1
                return best
        return None

    def _serving(self, name: str) -> list[ReplicaSet[R]]:
        """The set for ``name`` first, then the one it replaces (if still serving)."""
        current = self._get(name)
        previous = self._previous.get(name)
        return [current] if previous is None else [current, previous]

    def _get(self, name: str) -> ReplicaSet[R]:
        try:
            return self._sets[name]
        except KeyError:
            raise DeploymentNotFound(f"deployment {name!r} does not exist", param="name") from None

    # -- replacement ------------------------------------------------------------------------

    async def _retire_when_settled(self, name: str, new: ReplicaSet[R], old: ReplicaSet[R]) -> None:
        """Stop ``old`` once ``new`` serves, has failed, or stopped being the current set."""
        while self._sets.get(name) is new and not new.settled():
            await new.signal.wait(None)
        if self._previous.get(name) is old:
            del self._previous[name]
        await old.stop_all()

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class Lease(AbstractAsyncContextManager[Replica]):
    """``async with backend.lease(name, timeout) as replica``: one slot on one replica."""

    __slots__ = ("_backend", "_name", "_replica", "_timeout")

    def __init__(self, backend: ReplicaSetBackend[Any], name: str, timeout: float) -> None:
        self._backend = backend
        self._name = name
        self._timeout = timeout
        self._replica: SupervisedReplica | None = None

    async def __aenter__(self) -> Replica:
        self._replica = await self._backend.acquire(self._name, self._timeout)
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
