"""One replica of the local backend: a worker process and the supervisor task that owns it.

Each replica has one supervisor task that owns its process from spawn to exit::

    STARTING -> READY -> (crash) -> RESTARTING -> READY ...      backoff doubles per crash
        \\-> FAILED (load failed, crashed or timed out while loading: no restart loop)
    any state -> STOPPED (scale down, undeploy, replace, shutdown)

When a worker dies, every call in flight on it fails at once with ``WorkerCrashed`` (never
a hang) and the exit reason plus the last lines of its log stay in the replica's status.
State changes wake the set's ``Signal``, which leases wait on. Worker logs go to
``<runtime_dir>/logs/<set>.<replica>.log``. The process helpers at the end (start command,
environment, exit reasons, terminate) are shared with ``inspection``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any, Protocol

from modelport.backends.base import Replica, ReplicaSetSpec
from modelport.backends.protocol import FAILED, READY, WorkerConnection
from modelport.errors import ModelportError, Unavailable, WorkerCrashed
from modelport.runtimes.base import Tensors
from modelport.settings import Settings
from modelport.types.admin import ReplicaState, ReplicaStatus

logger = logging.getLogger(__name__)

# -P: the server's working directory must not shadow modules in the worker (Python 3.11+).
WORKER = (sys.executable, "-P", "-m", "modelport.backends.worker")
TAIL_LINES = 5
_STOP_GRACE_S = 5.0  # after "shutdown" before SIGTERM
_KILL_GRACE_S = 2.0  # after SIGTERM (or EOF from a live worker) before SIGKILL
_READ_LIMIT = 1 << 22  # stream reader buffer: fewer pause/resume cycles on big tensors


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
        try:
            async with asyncio.timeout(limit_s):
                await event.wait()
        except TimeoutError:
            pass


class ReplicaOwner(Protocol):
    """What a replica reads from the set it belongs to."""

    settings: Settings
    spec: ReplicaSetSpec
    signal: Signal


class LocalReplica(Replica):
    """One worker process and the supervisor task that keeps it running."""

    def __init__(self, replica_set: ReplicaOwner, replica_id: str) -> None:
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
            memory_bytes=resident_bytes(self.pid) if self.state is ReplicaState.READY else None,
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
                await terminate(process)
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
            await terminate(process)
            how = conn.error.message if conn.error else describe_exit(process.returncode)
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
            await terminate(process)
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
                return f"crashed while loading ({describe_exit(exited.result())})"
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
        return f"crashed while loading ({describe_exit(code)})"

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
                *WORKER,
                "--fd",
                str(theirs.fileno()),
                "--parent-pid",
                str(os.getpid()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(theirs.fileno(),),
                env=worker_env(self._set.spec.env),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            log.close()
        reader, writer = await asyncio.open_connection(sock=ours, limit=_READ_LIMIT)
        return process, WorkerConnection(reader, writer), log_path, offset


# -- process helpers ----------------------------------------------------------------------


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(pid: int | None) -> int | None:
    """Resident memory (RSS) of process ``pid`` from ``/proc/<pid>/statm``; None if unknown."""
    if pid is None:
        return None
    try:
        statm = Path(f"/proc/{pid}/statm").read_bytes()
        return int(statm.split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):  # gone meanwhile, or no /proc (not Linux)
        return None


def worker_env(extra: dict[str, str]) -> dict[str, str] | None:
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
    lines = [line.strip() for line in text.splitlines() if line.strip()][-TAIL_LINES:]
    return f"; last stderr: {' | '.join(lines)}" if lines else ""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


async def terminate(process: asyncio.subprocess.Process) -> None:
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
