"""The local backend: every replica is a worker process on this machine.

Each replica has one supervisor task that owns its process from spawn to exit::

    STARTING -> READY -> (crash) -> RESTARTING -> READY ...      backoff doubles per crash
        \\-> FAILED (load failed, crashed or timed out while loading: no restart loop)
    any state -> STOPPED (scale down, undeploy, replace, shutdown)

When a worker dies, every call in flight on it fails at once with ``WorkerCrashed`` (never
a hang) and the exit reason plus the last lines of its log stay in the replica's status.
Leases pick the least loaded ready replica with a free slot and wait on a signal (no
polling) for readiness or a slot. Worker logs go to ``<runtime_dir>/logs/<set>.<replica>.log``.

No worker outlives the server: ``shutdown`` stops them all, and each worker asks the kernel
to SIGKILL it when the server process dies (``PR_SET_PDEATHSIG``), even by SIGKILL. The
kernel ties that to the *thread* that forked the worker, so the backend must run on the
event loop of a thread that lives as long as the server (the main thread, with uvicorn).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from modelport.backends.base import Backend, Replica, ReplicaSetSpec
from modelport.backends.protocol import FAILED, READY, WorkerConnection, load_spec_to_dict
from modelport.errors import (
    DeploymentNotFound,
    ModelLoadError,
    ModelportError,
    NotReady,
    Unavailable,
    WorkerCrashed,
)
from modelport.runtimes.base import LoadSpec, Tensors
from modelport.settings import Settings
from modelport.types.admin import ReplicaState, ReplicaStatus, Signature

logger = logging.getLogger(__name__)

# -P: the server's working directory must not shadow modules in the worker (Python 3.11+).
_WORKER = (sys.executable, "-P", "-m", "modelport.backends.worker")
_EXIT_LOAD_FAILED = 3
_STOP_GRACE_S = 5.0  # after "shutdown" before SIGTERM
_KILL_GRACE_S = 2.0  # after SIGTERM (or EOF from a live worker) before SIGKILL
_READ_LIMIT = 1 << 22  # stream reader buffer: fewer pause/resume cycles on big tensors
_TAIL_LINES = 5


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
        new = _ReplicaSet(self._settings, spec, old.signal if old else _Signal())
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

    async def _acquire(self, name: str, wait_s: float) -> _LocalReplica:
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

    def _try_acquire(self, name: str) -> _LocalReplica | None:
        limit = self._settings.replica_max_inflight
        for replica_set in self._serving(name):
            best: _LocalReplica | None = None
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
        self._replica: _LocalReplica | None = None

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


class _Signal:
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
        try:
            async with asyncio.timeout(limit_s):
                await event.wait()
        except TimeoutError:
            pass


class _ReplicaSet:
    """The replicas of one deployment (one model version)."""

    def __init__(self, settings: Settings, spec: ReplicaSetSpec, signal_: _Signal) -> None:
        self.settings = settings
        self.spec = spec
        self.signal = signal_
        self.members: list[_LocalReplica] = []
        self._ids = itertools.count(1)
        self._turn = 0

    def resize(self, replicas: int) -> list[_LocalReplica]:
        """Start or detach replicas to reach ``replicas``; returns the detached ones."""
        while len(self.members) < replicas:
            self.members.append(_LocalReplica(self, f"r{next(self._ids)}"))
        # Drop the least useful first: not serving, then the newest.
        by_use = sorted(self.members, key=lambda r: (r.state is ReplicaState.READY, -r.number))
        removed = by_use[: len(self.members) - replicas]
        self.members = [r for r in self.members if r not in removed]
        return removed

    def rotation(self) -> list[_LocalReplica]:
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


class _LocalReplica(Replica):
    """One worker process and the supervisor task that keeps it running."""

    def __init__(self, replica_set: _ReplicaSet, replica_id: str) -> None:
        self.id = replica_id
        self.number = int(replica_id[1:])
        self.state = ReplicaState.STARTING
        self.pid: int | None = None
        self.restarts = 0
        self.reason: str | None = None
        self.inflight = 0
        self._set = replica_set
        self._settings = replica_set.settings
        self._conn: WorkerConnection | None = None
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._supervise(), name=f"replica-{replica_id}")

    @property
    def _label(self) -> str:
        return f"replica {self.id} of deployment {self._set.spec.name!r}"

    async def predict(self, inputs: Tensors, params: dict[str, Any]) -> Tensors:
        if self._conn is None:
            raise WorkerCrashed(f"{self._label} is not running")
        return await self._conn.predict(inputs, params)

    def stream(self, payload: dict[str, Any]) -> AsyncIterator[Any]:
        if self._conn is None:
            raise WorkerCrashed(f"{self._label} is not running")
        return self._conn.stream(payload)

    def status(self) -> ReplicaStatus:
        return ReplicaStatus(
            id=self.id,
            state=self.state,
            pid=self.pid,
            restarts=self.restarts,
            reason=self.reason,
            inflight=self.inflight,
        )

    def release(self) -> None:
        self.inflight -= 1
        self._set.signal.notify()

    async def stop(self) -> None:
        """Let leased calls finish, then ask the worker to exit; kill it if it will not."""
        self._stopping.set()
        await self._task

    def _set_state(self, state: ReplicaState) -> None:
        self.state = state
        self._set.signal.notify()

    # -- supervision ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        initial = backoff = self._settings.worker_restart_backoff_s
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            started = loop.time()
            try:
                crashed = await self._run_once()
            except Exception as exc:  # could not even start a process (fds, disk, ...)
                logger.exception("%s could not start", self._label)
                self.reason = f"could not start a worker: {type(exc).__name__}: {exc}"
                self._set_state(ReplicaState.FAILED)
                return
            if not crashed:
                break
            if loop.time() - started > self._settings.worker_restart_backoff_max_s:
                backoff = initial  # it ran a good while: treat this as a fresh failure
            self._set_state(ReplicaState.RESTARTING)
            await _wait_event(self._stopping, backoff)
            backoff = min(backoff * 2, self._settings.worker_restart_backoff_max_s)
        if self.state is not ReplicaState.FAILED:
            self._set_state(ReplicaState.STOPPED)

    async def _run_once(self) -> bool:
        """Start, load and serve once; True when the worker crashed and should restart."""
        process, conn, log_path, log_offset = await self._spawn()
        self.pid = process.pid
        exited = asyncio.create_task(process.wait())
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            load_error = await self._load(conn, exited, stopping)
            if load_error is not None:
                await _terminate(process)
                if self._stopping.is_set():
                    return False
                self.reason = load_error + _describe_tail(log_path, log_offset)
                logger.error("%s failed to load: %s", self._label, self.reason)
                self._set_state(ReplicaState.FAILED)
                return False
            self._conn = conn
            conn.start()
            self._set_state(ReplicaState.READY)
            closed = asyncio.create_task(conn.closed.wait())
            await asyncio.wait({exited, closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
            closed.cancel()
            if self._stopping.is_set():
                await self._drain(conn, process)
                return False
            if conn.error is None:  # it died: give the exit status a moment to arrive
                await _wait_task(exited, _KILL_GRACE_S)
            await _terminate(process)
            how = conn.error.message if conn.error else _describe_exit(process.returncode)
            self.reason = f"crashed ({how})" + _describe_tail(log_path, log_offset)
            self.restarts += 1
            self.pid = None
            self._set_state(ReplicaState.RESTARTING)  # before failing calls: no re-lease
            conn.fail(WorkerCrashed(f"{self._label} crashed ({how}); restarting"))
            logger.warning("%s %s; restarting", self._label, self.reason)
            return True
        finally:
            self._conn = None
            stopping.cancel()
            await _terminate(process)
            await conn.aclose(Unavailable(f"{self._label} was stopped"))

    async def _load(
        self, conn: WorkerConnection, exited: asyncio.Task[int], stopping: asyncio.Task[bool]
    ) -> str | None:
        """Send "load"; None when the worker is ready, else why it is not."""
        handshake = asyncio.create_task(conn.handshake(self._set.spec.load))
        timeout = self._settings.worker_start_timeout_s
        await asyncio.wait(
            {handshake, exited, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not handshake.done():
            handshake.cancel()
            if stopping.done():
                return "stopped while loading"
            if exited.done():
                return f"crashed while loading ({_describe_exit(exited.result())})"
            return f"did not load within {timeout:g} s (worker_start_timeout_s)"
        try:
            answer = handshake.result()
        except ConnectionError:
            answer = None
        except WorkerCrashed as exc:  # it answered something that is not a message
            return exc.message
        if answer is not None and answer[0] == READY:
            return None
        if answer is not None and answer[0] == FAILED:
            await _wait_task(exited, _KILL_GRACE_S)  # it exits by itself, with code 3
            return ModelportError.from_dict(answer[1]).message
        code = await _wait_task(exited, _KILL_GRACE_S)
        return f"crashed while loading ({_describe_exit(code)})"

    async def _drain(self, conn: WorkerConnection, process: asyncio.subprocess.Process) -> None:
        self._set_state(ReplicaState.STOPPED)  # no new leases from here on
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.request_timeout_s
        while self.inflight and not conn.closed.is_set() and loop.time() < deadline:
            await self._set.signal.wait(deadline - loop.time())
        await conn.send_shutdown()
        try:
            async with asyncio.timeout(_STOP_GRACE_S):
                await process.wait()
        except TimeoutError:
            logger.warning("%s ignored shutdown; terminating it", self._label)

    async def _spawn(
        self,
    ) -> tuple[asyncio.subprocess.Process, WorkerConnection, Path, int]:
        self._set_state(ReplicaState.STARTING if self.restarts == 0 else ReplicaState.RESTARTING)
        log_path = self._settings.runtime_dir / "logs" / f"{self._set.spec.name}.{self.id}.log"
        log, offset = _open_log(log_path)
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                *_WORKER,
                "--fd",
                str(theirs.fileno()),
                "--parent-pid",
                str(os.getpid()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(theirs.fileno(),),
                env=_worker_env(self._set.spec.env),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            log.close()
        reader, writer = await asyncio.open_connection(sock=ours, limit=_READ_LIMIT)
        return process, WorkerConnection(reader, writer), log_path, offset


async def inspect_signature(
    spec: LoadSpec,
    timeout: float,  # noqa: ASYNC109 - the engine's documented call signature
    env: dict[str, str] | None = None,
) -> Signature:
    """Load ``spec`` in a throw-away worker process and return the model's signature.

    Raises the worker's own error (``ArtifactCorrupted``, ``UnsafeArtifact``,
    ``ModelLoadError``...) or ``ModelLoadError`` when the worker crashes or times out.
    """
    process = await asyncio.create_subprocess_exec(
        *_WORKER,
        "--inspect",
        "--parent-pid",
        str(os.getpid()),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_worker_env(env or {}),
    )
    request = json.dumps(load_spec_to_dict(spec)).encode()
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate(request)
    except TimeoutError:
        raise ModelLoadError(
            f"reading the signature of {spec.artifact_name!r} took longer than {timeout:g} s"
        ) from None
    finally:
        await _terminate(process)
    if process.returncode == 0:
        return Signature.model_validate_json(out)
    if process.returncode == _EXIT_LOAD_FAILED:
        raise ModelportError.from_dict(json.loads(out))
    tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-_TAIL_LINES:])
    raise ModelLoadError(
        f"the worker reading {spec.artifact_name!r} {_describe_exit(process.returncode)}"
        + (f"; last stderr: {tail}" if tail else "")
    )


# -- process helpers ----------------------------------------------------------------------


def _worker_env(extra: dict[str, str]) -> dict[str, str] | None:
    return {**os.environ, **extra} if extra else None


def _open_log(path: Path) -> tuple[IO[bytes], int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.open("ab")
    return log, log.tell()


def _describe_tail(path: Path, offset: int) -> str:
    """The last log lines this run of the worker wrote, for the status reason."""
    try:
        with path.open("rb") as log:
            log.seek(max(offset, log.seek(0, os.SEEK_END) - 8192))
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()][-_TAIL_LINES:]
    return f"; last stderr: {' | '.join(lines)}" if lines else ""


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


async def _terminate(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after a grace period; no-op for an exited process."""
    if process.returncode is not None:
        return
    try:
        process.terminate()
        try:
            async with asyncio.timeout(_KILL_GRACE_S):
                await process.wait()
            return
        except TimeoutError:
            process.kill()
    except ProcessLookupError:
        pass
    await process.wait()


async def _wait_task(task: asyncio.Task[int], limit_s: float) -> int | None:
    done, _ = await asyncio.wait({task}, timeout=limit_s)
    return task.result() if done else None


async def _wait_event(event: asyncio.Event, limit_s: float) -> None:
    try:
        async with asyncio.timeout(limit_s):
            await event.wait()
    except TimeoutError:
        pass
