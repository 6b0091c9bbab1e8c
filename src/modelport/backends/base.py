"""Seam 2: where replicas run.

A backend starts, stops and scales the replicas of named replica sets and hands out
*leases*: the right to send one batch to one ready replica. The engine's batcher takes a
lease before it closes a batch, so while every replica is busy requests keep queueing and
the next batch grows (that is what makes batching adaptive). The local backend runs
replicas as worker processes on this machine; a Ray backend implements the same class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from modelport.runtimes.base import LoadSpec, Tensors
from modelport.types.admin import ReplicaStatus


@dataclass(frozen=True)
class ReplicaSetSpec:
    """What to run: ``replicas`` copies of one model version."""

    name: str
    load: LoadSpec
    replicas: int
    env: dict[str, str] = field(default_factory=dict)


class Replica(ABC):
    """A handle on one ready replica, valid for the duration of a lease."""

    id: str

    @abstractmethod
    async def predict(self, inputs: Tensors, params: dict[str, Any]) -> Tensors:
        """Run one batch; raises ``WorkerCrashed`` if the replica dies meanwhile."""

    def stream(self, payload: dict[str, Any]) -> AsyncIterator[Any]:
        """Stream results for one request (LLM generation). Not every backend supports it."""
        raise NotImplementedError


# Called by backends whenever a replica changes state (ready, crashed, restarted...).
StateListener = Callable[[str], None]


class Backend(ABC):
    """A place where replica sets run."""

    name: str

    @abstractmethod
    async def deploy(self, spec: ReplicaSetSpec) -> None:
        """Start (or replace) a replica set; returns once replicas are starting."""

    @abstractmethod
    async def scale(self, name: str, replicas: int) -> None:
        """Change the replica count of a running set."""

    @abstractmethod
    async def undeploy(self, name: str) -> None:
        """Stop every replica of a set and forget it."""

    @abstractmethod
    def lease(self, name: str, timeout: float) -> AbstractAsyncContextManager[Replica]:
        """Wait (at most ``timeout`` seconds) for a ready replica with a free slot.

        Raises ``NotReady`` (with the set's failure reason, if any) on timeout and
        ``DeploymentNotFound`` for an unknown set.
        """

    @abstractmethod
    def replicas(self, name: str) -> list[ReplicaStatus]:
        """Current status of each replica of a set (empty for an unknown set)."""

    @abstractmethod
    def free_slots(self, name: str) -> int:
        """How many leases could be granted right now without waiting."""

    @abstractmethod
    async def shutdown(self) -> None:
        """Stop everything; called once when the server stops."""
