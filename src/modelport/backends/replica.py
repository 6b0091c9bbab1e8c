"""One replica of the local backend: a worker process and the supervisor task that owns it.

The states, the restart loop and lease accounting are ``replica_set.SupervisedReplica``'s;
this module runs one life of a worker: spawn (or take a warm spare from ``spares``), "load",
serve, drain or crash. When a worker dies, every call in flight on it fails at once with
``WorkerCrashed`` (never a hang) and the exit reason plus the last lines of its log stay in
the replica's status. Worker logs go to ``<runtime_dir>/logs/<set>.<replica>.log``. The
process helpers at the end (start command, environment, exit reasons, terminate) are shared
with ``inspection`` and ``spares``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from modelport.backends.base import ReplicaSetSpec
from modelport.backends.protocol import FAILED, READY, WorkerConnection
from modelport.backends.replica_set import ReplicaOwner, SupervisedReplica
from modelport.errors import ModelportError, Unavailable, WorkerCrashed
from modelport.runtimes.base import Tensors
from modelport.types.admin import ReplicaState

logger = logging.getLogger(__name__)

# -P: the server's working directory must not shadow modules in the worker (Python 3.11+).
WORKER = (sys.executable, "-P", "-m", "modelport.backends.worker")
TAIL_LINES = 5
_STOP_GRACE_S = 5.0  # after "shutdown" before SIGTERM
_KILL_GRACE_S = 2.0  # after SIGTERM (or EOF from a live worker) before SIGKILL
_READ_LIMIT = 1 << 22  # stream reader buffer: fewer pause/resume cycles on big tensors


@dataclass(frozen=True)
class WorkerProcess:
    """A started worker and our end of its socket, not yet asked to load anything."""

    process: asyncio.subprocess.Process
    sock: socket.socket


class SpareSource(Protocol):
    """Where a replica may find a warm worker for its spec (``spares.SparePool``)."""

    def take(self, spec: ReplicaSetSpec) -> WorkerProcess | None:
        """A live spare that fits ``spec`` (same runtime and env), now the caller's."""
        ...

    def loaded(self, spec: ReplicaSetSpec) -> None:
        """A replica of ``spec`` has loaded: its CPU is free for starting the next spare."""
        ...

    def ended(self, spec: ReplicaSetSpec) -> None:
        """A ready replica of ``spec`` stops or crashed: another start of its kind will come."""
        ...


class LocalReplica(SupervisedReplica):
    """One worker process and the supervisor task that keeps it running.

    With ``spares``, each life starts from a warm spare worker when one fits (the spare's
    pid becomes the replica's) and tells the pool when it has loaded and when it ends, which
    is when the pool starts the next spare (see ``spares``).
    """

    unit = "a worker"

    def __init__(
        self, owner: ReplicaOwner, replica_id: str, spares: SpareSource | None = None
    ) -> None:
        self._conn: WorkerConnection | None = None
        self._spares = spares
        super().__init__(owner, replica_id)

    async def predict(self, inputs: Tensors, params: dict[str, Any]) -> Tensors:
        if self._conn is None:
            raise WorkerCrashed(f"{self._label} is not running")
        return await self._conn.predict(inputs, params)

    def stream(self, payload: dict[str, Any]) -> AsyncIterator[Any]:
        if self._conn is None:
            raise WorkerCrashed(f"{self._label} is not running")
        return self._conn.stream(payload)

    def _memory_bytes(self) -> int | None:
        return resident_bytes(self.pid)

    # -- supervision ------------------------------------------------------------------------

    async def _run_once(self) -> bool:
        """Start, load and serve once; True when the worker crashed and should restart."""
        process, conn, log_path, log_offset, from_spare = await self._spawn()
        self.pid = process.pid
        exited = asyncio.create_task(process.wait())
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            # A spare logs to the spares' log until its "load" names this replica's log.
            load_error = await self._load(conn, exited, stopping, log_path if from_spare else None)
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
            if self._spares is not None:
                self._spares.loaded(self._owner.spec)
            closed = asyncio.create_task(conn.closed.wait())
            await asyncio.wait({exited, closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
            closed.cancel()
            if self._spares is not None:
                self._spares.ended(self._owner.spec)
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
        self,
        conn: WorkerConnection,
        exited: asyncio.Task[int],
        stopping: asyncio.Task[bool],
        log: Path | None,
    ) -> str | None:
        """Send "load"; None when the worker is ready, else why it is not."""
        handshake = asyncio.create_task(conn.handshake(self._owner.spec.load, log))
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
            await self._owner.signal.wait(deadline - loop.time())
        await conn.send_shutdown()
        try:
            async with asyncio.timeout(_STOP_GRACE_S):
                await process.wait()
        except TimeoutError:
            logger.warning("%s ignored shutdown; terminating it", self._label)

    async def _spawn(
        self,
    ) -> tuple[asyncio.subprocess.Process, WorkerConnection, Path, int, bool]:
        """A worker for this life (a spare if one fits), its log, and whether it was a spare."""
        self._set_state(ReplicaState.STARTING if self.restarts == 0 else ReplicaState.RESTARTING)
        spec = self._owner.spec
        log_path = self._settings.runtime_dir / "logs" / f"{spec.name}.{self.id}.log"
        log, offset = open_log(log_path)
        try:
            worker = self._spares.take(spec) if self._spares is not None else None
            from_spare = worker is not None
            if worker is None:
                worker = await start_worker(spec.env, log)
        finally:
            log.close()
        reader, writer = await asyncio.open_connection(sock=worker.sock, limit=_READ_LIMIT)
        return worker.process, WorkerConnection(reader, writer), log_path, offset, from_spare


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


async def start_worker(env: dict[str, str], log: IO[bytes], *args: str) -> WorkerProcess:
    """Start ``WORKER`` on one end of a new socketpair, output to ``log``, dying with us."""
    ours, theirs = socket.socketpair()
    try:
        process = await asyncio.create_subprocess_exec(
            *WORKER,
            "--fd",
            str(theirs.fileno()),
            "--parent-pid",
            str(os.getpid()),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=(theirs.fileno(),),
            env=worker_env(env),
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return WorkerProcess(process, ours)


def open_log(path: Path) -> tuple[IO[bytes], int]:
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
