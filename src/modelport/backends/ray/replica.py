"""One replica of the Ray backend: a ``ReplicaActor`` and the supervisor task that owns it.

The states, the restart loop and lease accounting are those of the local backend
(``replica_set.SupervisedReplica``: an actor's death counts as a crash). The supervisor, not
Ray, restarts actors (they are created with ``max_restarts=0``): a new actor per restart
keeps the state machine, the backoff and the reasons in one place, and the same on both
backends. It learns of a death from the actor's ``watch`` call, which is pending for the
actor's life and fails the moment Ray sees its process gone; calls in flight fail at the
same moment with ``ActorGone`` and reach callers as ``WorkerCrashed`` (503), never as a
hang.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from modelport.backends.protocol import CHUNK, END, FAILED, READY, RESULT, load_spec_to_dict
from modelport.backends.ray._ray import ActorGone, ActorRef, Cluster, RayCallError
from modelport.backends.ray.actor import ReplicaActor
from modelport.backends.replica_set import ReplicaOwner, SupervisedReplica
from modelport.errors import ModelportError, Unavailable, WorkerCrashed
from modelport.runtimes.base import Tensors
from modelport.types.admin import ReplicaState

logger = logging.getLogger(__name__)

_STOP_GRACE_S = 5.0  # for the actor's "stop" (unload) before it is killed


class RayReplica(SupervisedReplica):
    """One actor and the supervisor task that keeps one running."""

    unit = "an actor"

    def __init__(self, owner: ReplicaOwner, replica_id: str, cluster: Cluster) -> None:
        self._cluster = cluster
        self._actor: ActorRef | None = None
        super().__init__(owner, replica_id)

    async def predict(self, inputs: Tensors, params: dict[str, Any]) -> Tensors:
        actor = self._running()
        try:
            answer = await actor.call("predict", inputs, params)
        except ActorGone as exc:
            raise self._gone(actor, exc) from None
        except RayCallError as exc:
            raise Unavailable(f"{self._label}: Ray failed the call: {exc}") from None
        if answer[0] == RESULT:
            return dict(answer[1])
        raise ModelportError.from_dict(answer[1])

    async def stream(self, payload: dict[str, Any]) -> AsyncIterator[Any]:
        actor = self._running()
        items = actor.stream("stream", payload)
        finished = False
        try:
            async for message in items:
                if message[0] == CHUNK:
                    yield message[1]
                    continue
                finished = True
                if message[0] == END:
                    return
                raise ModelportError.from_dict(message[1])
            finished = True
        except ActorGone as exc:
            finished = True
            raise self._gone(actor, exc) from None
        except RayCallError as exc:
            finished = True
            raise Unavailable(f"{self._label}: Ray failed the stream: {exc}") from None
        finally:
            if not finished:  # the consumer left early: stop the generation in the actor
                items.cancel()

    def _running(self) -> ActorRef:
        if self._actor is None:
            raise WorkerCrashed(f"{self._label} is not running")
        return self._actor

    def _gone(self, actor: ActorRef, exc: ActorGone) -> WorkerCrashed:
        """A call found the actor dead: lease no more calls to it, even before ``watch``
        reports the death to the supervisor (which then restarts it)."""
        if self._actor is actor:
            self._actor = None
            self._set_state(ReplicaState.RESTARTING)
            actor.kill()  # make sure: its ``watch`` then fails and the supervisor restarts it
        return WorkerCrashed(f"{self._label} crashed ({exc.reason}); restarting")

    # -- supervision ------------------------------------------------------------------------

    async def _run_once(self) -> bool:
        """Start, load and serve one actor; True when it died and should be replaced."""
        self._set_state(ReplicaState.STARTING if self.restarts == 0 else ReplicaState.RESTARTING)
        spec = self._owner.spec
        actor = self._cluster.spawn(
            ReplicaActor,
            (load_spec_to_dict(spec.load),),
            env=spec.env,
            num_cpus=self._settings.ray_replica_cpus,
        )
        watch = asyncio.create_task(actor.call("watch"))
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            load_error = await self._load(actor, watch, stopping)
            if load_error is not None:
                if self._stopping.is_set():
                    return False
                self.reason = load_error
                logger.error("%s failed to load: %s", self._label, load_error)
                self._set_state(ReplicaState.FAILED)
                return False
            self._actor = actor
            self._set_state(ReplicaState.READY)
            await asyncio.wait({watch, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if self._stopping.is_set():
                await self._drain(actor)
                return False
            self._actor = None  # before anything else: no new lease reaches it
            self.reason = f"crashed ({_death(watch)})"
            self.restarts += 1
            self.pid = None
            self._set_state(ReplicaState.RESTARTING)
            logger.warning("%s %s; restarting", self._label, self.reason)
            return True
        finally:
            self._actor = None
            for task in (watch, stopping):
                task.cancel()
            await asyncio.gather(watch, stopping, return_exceptions=True)
            actor.kill()

    async def _load(
        self, actor: ActorRef, watch: asyncio.Task[Any], stopping: asyncio.Task[bool]
    ) -> str | None:
        """Ask the actor to load; None when it is ready, else why it is not."""
        loading = asyncio.create_task(actor.call("load"))
        timeout = self._settings.worker_start_timeout_s
        await asyncio.wait(
            {loading, watch, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not loading.done():
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            if stopping.done():
                return "stopped while loading"
            if watch.done():
                return f"crashed while loading ({_death(watch)})"
            return (
                f"did not load within {timeout:g} s (worker_start_timeout_s; on Ray this "
                "includes waiting for the cluster to place the actor)"
            )
        try:
            answer = loading.result()
        except ActorGone as exc:
            return f"crashed while loading ({exc.reason})"
        except RayCallError as exc:
            return f"Ray failed the load: {exc}"
        if answer[0] == READY:
            self.pid = int(answer[2])
            return None
        if answer[0] == FAILED:
            return ModelportError.from_dict(answer[1]).message
        return f"unexpected answer to load: {answer[0]!r}"

    async def _drain(self, actor: ActorRef) -> None:
        self._set_state(ReplicaState.STOPPED)  # no new leases from here on
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.request_timeout_s
        while self.inflight and loop.time() < deadline:
            await self._owner.signal.wait(deadline - loop.time())
        self._actor = None
        try:
            async with asyncio.timeout(_STOP_GRACE_S):
                await actor.call("stop")
        except (TimeoutError, ActorGone, RayCallError):
            logger.warning("%s did not stop cleanly; killing it", self._label)


def _death(watch: asyncio.Task[Any]) -> str:
    """How the actor behind a finished ``watch`` call ended."""
    if watch.cancelled():
        return "watch cancelled"
    exc = watch.exception()
    if isinstance(exc, ActorGone):
        return exc.reason
    if exc is not None:
        return f"{type(exc).__name__}: {exc}"
    return "its watch ended unexpectedly"
