"""The one module that calls Ray.

Everything else in ``backends.ray`` talks to the small protocols below (``Cluster``,
``ActorRef``, ``ActorStream``), so the backend's logic (leases, supervision, restarts,
streams) is tested with an in-process fake cluster, and only this file needs a real one.
Ray is imported lazily, on ``connect``: importing modelport never imports Ray, and a server
on the local backend runs without it installed.

Errors leave this module as two classes: ``ActorGone`` when the actor's process is gone
(crash, OOM kill, ``ray.kill``, node lost) and ``RayCallError`` for anything else Ray
raises. Actor methods answer with plain values (see ``actor``), never exceptions, so a
model's own errors never travel as Ray exceptions.

Code running *inside* an actor asks where it runs with ``placement`` (node, actor, node IP):
training jobs report it (``jobs``), so a run's events say which Ray node ran it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import re
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any, Protocol

_PROBE_TIMEOUT_S = 3.0
# An actor class may name methods (``CONTROL_METHODS``) that run in this concurrency group,
# on their own threads, beside the default group (one thread for a threaded actor).
_CONTROL = "control"
_CONTROL_THREADS = 2
_EXIT_DETAIL = re.compile(r"Worker exit detail: (.+?)(?:\. Some common causes|$)", re.S)


class ActorGone(Exception):
    """The actor's process is gone; ``reason`` says how, as far as Ray knows."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RayCallError(Exception):
    """Ray failed a call for another reason than a dead actor (lost object, system error)."""


class ActorStream(Protocol):
    """The items an actor's generator method yields, in order."""

    def __aiter__(self) -> AsyncIterator[Any]: ...

    def cancel(self) -> None:
        """Stop the generator in the actor (it sees ``CancelledError`` at its next await)."""
        ...


class ActorRef(Protocol):
    """A handle on one running actor."""

    async def call(self, method: str, *args: Any) -> Any:
        """Call ``method`` and return its answer; ``ActorGone`` if the actor dies first."""
        ...

    def stream(self, method: str, *args: Any) -> ActorStream:
        """Call the generator ``method``; its items arrive as the actor yields them."""
        ...

    def kill(self) -> None:
        """End the actor's process now (no-op when it is already gone)."""
        ...


class Cluster(Protocol):
    """Where actors run."""

    async def connect(self) -> None:
        """Join the cluster (idempotent); raises ``ConnectionError`` naming the address."""
        ...

    def spawn(
        self, cls: type, args: tuple[Any, ...], *, env: dict[str, str], num_cpus: float
    ) -> ActorRef:
        """Start an actor of ``cls(*args)``; returns at once, the actor starts meanwhile.

        Methods named in ``cls.CONTROL_METHODS`` run concurrently with the others.
        """
        ...

    async def disconnect(self) -> None:
        """Leave the cluster; actors this process owns end with it."""
        ...


class RayCluster:
    """A real Ray cluster, joined with ``ray.init(address=...)`` from the server process.

    Actors are owned by the server (not detached): Ray ends them when the server's
    connection ends, even when the server is killed, like ``PR_SET_PDEATHSIG`` does for
    local workers.
    """

    def __init__(self, address: str | None, namespace: str, connect_timeout_s: float) -> None:
        self.address = address
        self._namespace = namespace
        self._timeout = connect_timeout_s
        self._ray: Any = None
        self._classes: dict[type, Any] = {}
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        async with self._lock:
            if self._ray is not None:
                return
            ray = importlib.import_module("ray")  # the `ray` extra; see pyproject.toml
            if self.address not in (None, "auto"):
                # ray.init waits minutes for a head that is not there: fail fast instead.
                await asyncio.to_thread(_probe, self.address)
            try:
                async with asyncio.timeout(self._timeout):
                    await asyncio.to_thread(
                        ray.init,
                        address=self.address,
                        namespace=self._namespace,
                        log_to_driver=False,  # actor logs stay in the Ray session's log dir
                        ignore_reinit_error=True,
                    )
            except TimeoutError:
                raise ConnectionError(
                    f"could not join the Ray cluster at {self.address or 'auto'} "
                    f"within {self._timeout:g} s (ray_connect_timeout_s)"
                ) from None
            self._ray = ray

    def spawn(
        self, cls: type, args: tuple[Any, ...], *, env: dict[str, str], num_cpus: float
    ) -> _RayActor:
        ray = self._require()
        control = frozenset(getattr(cls, "CONTROL_METHODS", ()))
        remote = self._classes.get(cls)
        if remote is None:
            wrap = (
                ray.remote(concurrency_groups={_CONTROL: _CONTROL_THREADS})
                if control
                else ray.remote
            )
            remote = self._classes[cls] = wrap(cls)
        options: dict[str, Any] = {"num_cpus": num_cpus, "max_restarts": 0, "max_task_retries": 0}
        if env:
            options["runtime_env"] = {"env_vars": dict(env)}
        return _RayActor(ray, remote.options(**options).remote(*args), control)

    async def disconnect(self) -> None:
        ray, self._ray = self._ray, None
        self._classes.clear()
        if ray is not None:
            await asyncio.to_thread(ray.shutdown)

    def _require(self) -> Any:
        if self._ray is None:
            raise ConnectionError("not connected to a Ray cluster")
        return self._ray


class _RayActor:
    def __init__(self, ray: Any, handle: Any, control: frozenset[str]) -> None:
        self._ray = ray
        self._handle = handle
        self._control = control

    async def call(self, method: str, *args: Any) -> Any:
        try:
            bound = getattr(self._handle, method)
            if method in self._control:
                bound = bound.options(concurrency_group=_CONTROL)
            return await bound.remote(*args)
        except Exception as exc:
            raise _translate(self._ray, exc) from None

    def stream(self, method: str, *args: Any) -> _RayStream:
        generator = getattr(self._handle, method).options(num_returns="streaming").remote(*args)
        return _RayStream(self._ray, generator)

    def kill(self) -> None:
        with contextlib.suppress(ValueError, self._ray.exceptions.RayError):  # already gone
            self._ray.kill(self._handle, no_restart=True)


class _RayStream:
    def __init__(self, ray: Any, generator: Any) -> None:
        self._ray = ray
        self._generator = generator

    async def __aiter__(self) -> AsyncIterator[Any]:
        try:
            async for ref in self._generator:
                yield await ref
        except Exception as exc:
            raise _translate(self._ray, exc) from None

    def cancel(self) -> None:
        # Raises when the stream finished or its actor is gone meanwhile: nothing to stop.
        with contextlib.suppress(ValueError, TypeError, self._ray.exceptions.RayError):
            self._ray.cancel(self._generator)


def _translate(ray: Any, exc: Exception) -> Exception:
    """Ray's exception → ``ActorGone`` (process gone) or ``RayCallError``; others as they are.

    ``ActorUnavailableError`` (the actor may be alive, e.g. a network blip) is a call error:
    only a death makes the backend replace the actor.
    """
    errors = ray.exceptions
    if isinstance(exc, errors.ActorUnavailableError):
        return RayCallError(f"the actor is unreachable for now: {exc}")
    if isinstance(exc, errors.RayActorError):
        return ActorGone(describe_death(exc))
    if isinstance(exc, errors.RayError):
        return RayCallError(f"{type(exc).__name__}: {exc}")
    return exc


def describe_death(exc: BaseException) -> str:
    """A one-line reason from Ray's (long, multi-line) actor death message."""
    text = str(exc)
    found = _EXIT_DETAIL.search(text)
    detail = found.group(1) if found else text.strip().splitlines()[0] if text.strip() else ""
    detail = " ".join(detail.split())
    return f"actor process died: {detail[:240]}" if detail else "actor process died"


def placement() -> dict[str, str]:
    """Inside a Ray actor: its ``node_id``, ``actor_id`` and ``node_ip``; ``{}`` elsewhere.

    Never imports Ray: an actor's process has it imported already, and a process without it
    (a unit test running an actor class in-process) is simply not on Ray.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return {}
    context = ray.get_runtime_context()
    node_id = str(context.get_node_id())
    # The address the node joined with (``ray.util.get_node_ip_address`` guesses from routes).
    node_ip = next(
        (str(n["NodeManagerAddress"]) for n in ray.nodes() if n.get("NodeID") == node_id), ""
    )
    return {"node_id": node_id, "actor_id": str(context.get_actor_id() or ""), "node_ip": node_ip}


def _probe(address: str) -> None:
    """Fail fast with ``ConnectionError`` when nothing listens at ``host:port``."""
    host, _, port = address.rpartition(":")
    host = host.removeprefix("ray://").strip("[]") or "127.0.0.1"
    try:
        port_number = int(port)
    except ValueError:
        raise ConnectionError(f"ray_address {address!r} is not host:port or 'auto'") from None
    try:
        with socket.create_connection((host, port_number), timeout=_PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConnectionError(f"no Ray cluster answers at {address}: {exc}") from None
