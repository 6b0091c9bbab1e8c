"""Every lease goes through here: per-deployment activity, and cold starts from zero.

``TrackedBackend`` wraps any ``Backend`` (local processes, Ray) and is what the batchers and
the LLM service lease from. Per deployment it keeps an ``Activity``: leases held and
waiting, requests seen, when it was last used. The autoscaler reads it to size deployments,
the memory budget to pick the least recently used idle model. When a lease finds no replica
with a free slot, it asks ``wake`` whether the deployment is at zero (scaled to zero or
unloaded to make room): ``wake`` starts replicas and says how long to wait for them, so the
request waits for a cold start (``cold_start_timeout_s``) instead of failing.

It costs a dictionary lookup and a clock read per lease; nothing here depends on how
replicas run, which is why it wraps the backend rather than living in one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType

from modelport.backends.base import Backend, Replica, ReplicaSetSpec
from modelport.errors import NotReady
from modelport.types.admin import ReplicaStatus

# ``wake(name)``: start a deployment at zero; the lease wait to use then, or None.
Wake = Callable[[str], Awaitable[float | None]]


class Activity:
    """Lease counts and use times of one deployment (read by the autoscaler and the budget)."""

    __slots__ = ("arrivals", "held", "last_used", "waiting")

    def __init__(self) -> None:
        self.held = 0  # leases granted and not yet released
        self.waiting = 0  # leases asked for and not yet granted
        self.arrivals = 0  # leases ever asked for (the autoscaler turns this into a rate)
        self.last_used = time.monotonic()

    @property
    def busy(self) -> bool:
        return self.held > 0 or self.waiting > 0


class TrackedBackend(Backend):
    """``inner`` with per-deployment activity and cold starts (see the module doc)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.wake: Wake | None = None
        self._activity: dict[str, Activity] = {}

    def activity(self, name: str) -> Activity:
        found = self._activity.get(name)
        if found is None:
            found = self._activity[name] = Activity()
        return found

    async def deploy(self, spec: ReplicaSetSpec) -> None:
        await self.inner.deploy(spec)

    async def scale(self, name: str, replicas: int) -> None:
        await self.inner.scale(name, replicas)

    async def undeploy(self, name: str) -> None:
        self._activity.pop(name, None)
        await self.inner.undeploy(name)

    def lease(self, name: str, timeout: float) -> AbstractAsyncContextManager[Replica]:
        return _TrackedLease(self, name, timeout)

    def replicas(self, name: str) -> list[ReplicaStatus]:
        return self.inner.replicas(name)

    def free_slots(self, name: str) -> int:
        return self.inner.free_slots(name)

    async def shutdown(self) -> None:
        await self.inner.shutdown()


class _TrackedLease(AbstractAsyncContextManager[Replica]):
    __slots__ = ("_activity", "_backend", "_lease", "_name", "_timeout")

    def __init__(self, backend: TrackedBackend, name: str, timeout: float) -> None:
        self._backend = backend
        self._name = name
        self._timeout = timeout
        self._activity = backend.activity(name)
        self._lease: AbstractAsyncContextManager[Replica] | None = None

    async def __aenter__(self) -> Replica:
        backend, activity = self._backend, self._activity
        activity.arrivals += 1
        activity.last_used = time.monotonic()
        activity.waiting += 1
        try:
            timeout, cold = self._timeout, None
            if backend.wake is not None and backend.inner.free_slots(self._name) == 0:
                cold = await backend.wake(self._name)
                timeout = timeout if cold is None else cold
            lease = backend.inner.lease(self._name, timeout)
            try:
                replica = await lease.__aenter__()
            except NotReady as exc:
                if cold is None:
                    raise
                raise NotReady(
                    f"model {self._name!r} was at zero replicas and none became ready within "
                    f"{cold:g} s (cold_start_timeout_s): {exc.message}",
                    param="model",
                ) from None
        finally:
            activity.waiting -= 1
        self._lease = lease
        activity.held += 1
        return replica

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            self._activity.held -= 1
            self._activity.last_used = time.monotonic()
            await lease.__aexit__(exc_type, exc, tb)
