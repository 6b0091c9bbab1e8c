"""Where replicas run: the ``Backend`` seam and its implementations.

``base`` holds the seam; ``local`` runs replicas as worker processes on this machine
(import it from ``modelport.backends.local``: it is kept out of this package's namespace so
that a worker process, which imports this package first, loads no server code).
"""

from modelport.backends.base import Backend, Replica, ReplicaSetSpec

__all__ = ["Backend", "Replica", "ReplicaSetSpec"]
