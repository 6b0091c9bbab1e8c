"""The Ray backend: every replica is a Ray actor hosting one ``Runtime``.

Why actors and not Ray Serve deployments: modelport already has what Serve adds on top of
actors — the HTTP/gRPC front (``api/``), request batching (``batching/``, above the
backend) and routing to the least loaded replica through leases. What it needs from a
cluster is "run this model somewhere and let me call it", which is exactly an actor. With
plain actors a batch is one actor call (no second router or second queue in between),
leases keep working as on the local backend (a replica's in-flight limit is ours), and
streams, cancels and crash detection map onto actor calls one to one.

The replica-set and lease logic is the local backend's (``replica_set.ReplicaSetBackend``):
``deploy`` replaces a set while the old one keeps serving until the new one has a ready
replica, ``scale`` starts or stops actors, leases pick the least loaded ready replica with a
free slot. Supervision lives in ``replica.RayReplica``; every Ray call goes through ``_ray``.

Artifacts are read by path inside the actor, so every Ray node that may host a replica
needs the server's artifact folder at the same path (one node, or a shared file system).
"""

from __future__ import annotations

from modelport.backends.ray._ray import Cluster, RayCluster
from modelport.backends.ray.replica import RayReplica
from modelport.backends.replica_set import ReplicaSet, ReplicaSetBackend
from modelport.errors import Unavailable
from modelport.settings import Settings

__all__ = ["RayBackend"]


class RayBackend(ReplicaSetBackend[RayReplica]):
    """Run replica sets as supervised actors on a Ray cluster."""

    name = "ray"

    def __init__(self, settings: Settings, cluster: Cluster | None = None) -> None:
        super().__init__(settings)
        self._cluster: Cluster = cluster or RayCluster(
            settings.ray_address, settings.ray_namespace, settings.ray_connect_timeout_s
        )

    def _start_replica(self, owner: ReplicaSet[RayReplica], replica_id: str) -> RayReplica:
        return RayReplica(owner, replica_id, self._cluster)

    async def _before_deploy(self) -> None:
        try:
            await self._cluster.connect()
        except ConnectionError as exc:
            raise Unavailable(f"the Ray backend cannot reach its cluster: {exc}") from None

    async def _close(self) -> None:
        await self._cluster.disconnect()
