"""The local backend: every replica is a worker process on this machine.

Replica sets, leases and replacement are ``replica_set.ReplicaSetBackend``'s (shared with the
Ray backend); one replica's process, from spawn through crashes and restarts to stop, is
``replica.LocalReplica``; the warm spare workers replicas start from are ``spares.SparePool``
(one pool per backend, stopped at shutdown); ``inspect_signature`` (from ``inspection``,
re-exported here) reads a model's signature in a throw-away worker.

No worker outlives the server: ``shutdown`` stops them all, and each worker asks the kernel
to SIGKILL it when the server process dies (``PR_SET_PDEATHSIG``), even by SIGKILL. The
kernel ties that to the *thread* that forked the worker, so the backend must run on the
event loop of a thread that lives as long as the server (the main thread, with uvicorn).
"""

from __future__ import annotations

from modelport.backends.inspection import inspect_signature
from modelport.backends.replica import LocalReplica
from modelport.backends.replica_set import ReplicaSet, ReplicaSetBackend
from modelport.backends.spares import SparePool
from modelport.settings import Settings

__all__ = ["LocalBackend", "inspect_signature"]


class LocalBackend(ReplicaSetBackend[LocalReplica]):
    """Run replica sets as supervised worker processes on this machine."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._spares = SparePool(settings)

    @property
    def spares(self) -> SparePool:
        """The warm spare workers kept for this backend's replicas."""
        return self._spares

    def _start_replica(self, owner: ReplicaSet[LocalReplica], replica_id: str) -> LocalReplica:
        return LocalReplica(owner, replica_id, self._spares)

    async def shutdown(self) -> None:
        await self._spares.close()  # first: the replicas stopping now want no new spares
        await super().shutdown()
