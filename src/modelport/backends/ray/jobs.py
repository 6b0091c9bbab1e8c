"""Training jobs on the Ray backend: ``RayJobRunner`` implements seam 3 (``backends.jobs``).

Each job is one ``JobActor`` on the cluster. The actor starts the very job worker the local
runner starts, ``python -m modelport.training.job_worker <workdir>``, as a subprocess on its
node, and one streaming actor call (``run``) sends the worker's JSON lines back in order,
then its exit code. Why a subprocess in the actor rather than the job function in the actor
process: the worker protocol stays one for both backends (exit 0/1/3, SIGTERM cancels after
the current batch or epoch, stderr is ``<workdir>/job.log``, ``os._exit`` instead of torch's
slow teardown); the worker points fd 1 elsewhere and installs signal handlers, which code on
a Ray worker's thread must not do to Ray's process; and a forced cancel kills the job's own
process group, whatever the job started, without relying on Ray to clean up after it.

- Events: the first one is a "log" event saying where the job runs (``runner: "ray"``, the
  node, the actor, the actor's process and its title, ``ray::JobActor...``); it is stored with
  the run's events, and the job log starts with the same line. The worker's events follow.
- ``cancel``: ``terminate`` (a control method, so it runs beside the busy ``run``) SIGTERMs
  the worker, which reports "cancelled" and exits 3. After the grace period ``kill_job``
  SIGKILLs its process group and the actor is killed; ``wait`` then answers ``-SIGKILL``, as a
  local job killed after its grace does.
- A dead actor (node lost, OOM kill, ``ray kill``) ends the events with an "error" event
  naming Ray's reason, and ``wait`` answers 1: the run fails and says why. The worker dies with
  the actor (``PR_SET_PDEATHSIG``), the actor (owned by the server, not detached) with the
  server's Ray connection, so jobs stop with the server, as local ones do, and resume from
  their checkpoints at the next start.
- ``prestart`` and ``close`` do nothing: a warm spare on Ray would keep an actor with torch
  imported (~0.5 GB) on some node of a shared cluster for a job that may never come, and the
  cluster, not the runner, picks the node of the next job; each job pays its imports instead.
  Nothing else is kept, so there is nothing to close.

The work folder is read and written by the actor at the server's path, so every node that
may run a job needs the server's data folder at the same path: one node, or a shared file
system, the same assumption as for artifacts (``backend``). The actor reserves ``num_cpus``
in Ray's scheduler (default 0: placed anywhere, like replicas); the job's threads are the
spec's ``threads``, as on local. Ray pins ``OMP_NUM_THREADS`` in its workers (to 1 for an
actor that reserves no CPU); the actor drops it from the job's environment so that a job gets
the threads a local one gets (``training_threads`` sets them for both).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from modelport.backends.jobs import CANCEL_GRACE_S, JOB_LOG
from modelport.backends.jobs import _parse as parse_line
from modelport.backends.ray._ray import ActorGone, ActorRef, Cluster, RayCallError, placement
from modelport.training.job_worker import EXIT_CANCELLED, EXIT_FAILED

__all__ = ["JobActor", "RayJobHandle", "RayJobRunner"]

_KILL_TIMEOUT_S = 5.0  # for the actor's ``kill_job`` before the actor itself is killed
_EVENT, _EXIT = "event", "exit"  # what ``JobActor.run`` yields: (EVENT, dict) ... (EXIT, code)
_RAY_PINNED = ("OMP_NUM_THREADS",)  # set by Ray in its workers, not by the operator


class RayJobRunner:
    """Runs each training job as a ``JobActor`` on a Ray cluster (module docstring).

    ``cluster`` is the backend's own connection when the server runs on Ray (it is joined on
    the first job or deploy, whichever comes first). ``env`` is added to the job's
    environment; ``python`` is the interpreter on the node (None: the actor's own), a hook
    for tests.
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        grace_s: float = CANCEL_GRACE_S,
        env: Mapping[str, str] | None = None,
        num_cpus: float = 0.0,
        python: str | None = None,
    ) -> None:
        self._cluster = cluster
        self._grace_s = grace_s
        self._env = dict(env or {})
        self._num_cpus = num_cpus
        self._python = python

    async def start(self, run_id: int, workdir: Path) -> RayJobHandle:
        args = (run_id, str(workdir), self._env, self._python)
        return RayJobHandle(run_id, self._cluster, args, self._grace_s, self._num_cpus)

    async def prestart(self, *, now: bool = False) -> None:
        """Nothing kept ahead on Ray (module docstring)."""

    async def close(self) -> None:
        """Nothing to stop: the runner keeps nothing besides the jobs."""


class RayJobHandle:
    """One job's actor. A pump task reads the actor's stream from the start, so the job's end
    is known (``wait``) whether or not anyone reads ``events``."""

    def __init__(
        self,
        run_id: int,
        cluster: Cluster,
        actor_args: tuple[Any, ...],
        grace_s: float,
        num_cpus: float,
    ) -> None:
        self.run_id = run_id
        self._cluster = cluster
        self._actor_args = actor_args
        self._grace_s = grace_s
        self._num_cpus = num_cpus
        self._actor: ActorRef | None = None
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._cancel_requested = False
        self._killed = False
        self._pump_task = asyncio.create_task(self._pump(), name=f"ray-job-{run_id}")

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while (event := await self._queue.get()) is not None:
            yield event

    async def cancel(self) -> None:
        """``terminate`` the worker; after the grace, kill its process group and the actor."""
        if self._pump_task.done():
            return
        self._cancel_requested = True  # seen by the pump if the actor is not spawned yet
        try:  # the grace covers the call too: an actor Ray cannot place never answers it
            await asyncio.wait_for(self._terminate_and_wait(), self._grace_s)
        except TimeoutError:
            self._killed = True
            actor = self._actor
            if actor is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._call("kill_job"), _KILL_TIMEOUT_S)
                actor.kill()
            await asyncio.shield(self._pump_task)

    async def wait(self) -> int:
        return await asyncio.shield(self._pump_task)

    async def _terminate_and_wait(self) -> None:
        await self._call("terminate")  # no actor yet: the pump sees ``_cancel_requested``
        await asyncio.shield(self._pump_task)

    async def _pump(self) -> int:
        """Join the cluster, start the actor, forward its events; the job's exit code."""
        try:
            try:
                await self._cluster.connect()
            except ConnectionError as exc:
                self._error(f"the Ray backend cannot reach its cluster: {exc}")
                return EXIT_FAILED
            if self._cancel_requested:  # cancelled while joining: start nothing
                self._queue.put_nowait({"type": "cancelled"})
                return EXIT_CANCELLED
            self._actor = self._cluster.spawn(
                JobActor, self._actor_args, env={}, num_cpus=self._num_cpus
            )
            if self._cancel_requested:
                await self._call("terminate")  # before ``run`` starts the worker, or after
            return await self._forward(self._actor)
        finally:
            if self._actor is not None:
                self._actor.kill()  # one job per actor; its worker has exited (or died)
            self._queue.put_nowait(None)

    async def _forward(self, actor: ActorRef) -> int:
        code = EXIT_FAILED  # a stream that ends without an exit code
        try:
            async for kind, value in actor.stream("run"):
                if kind == _EXIT:
                    code = int(value)
                else:
                    self._queue.put_nowait(value)
        except ActorGone as exc:
            if self._killed:
                return -signal.SIGKILL
            self._error(f"the Ray actor running the job died: {exc.reason}")
            return EXIT_FAILED
        except RayCallError as exc:
            self._error(f"Ray failed the job: {exc}")
            return EXIT_FAILED
        return code

    async def _call(self, method: str) -> None:
        """A control call; an actor already gone or unreachable needs no stopping."""
        if self._actor is not None:
            with contextlib.suppress(ActorGone, RayCallError):
                await self._actor.call(method)

    def _error(self, message: str) -> None:
        error = {"type": "Unavailable", "message": message, "param": None}
        self._queue.put_nowait({"type": "error", "message": message, "error": error})


class JobActor:
    """The Ray actor that runs one job worker (module docstring). Plain class: ``_ray`` wraps
    it with ``ray.remote``, and unit tests run it in-process.

    ``run`` runs on the actor's one default thread (it starts the worker, so the worker's
    ``PR_SET_PDEATHSIG`` is tied to a thread that lives as long as the actor);
    ``CONTROL_METHODS`` run on their own threads beside it.
    """

    CONTROL_METHODS: ClassVar[frozenset[str]] = frozenset({"terminate", "kill_job"})

    def __init__(
        self, run_id: int, workdir: str, env: dict[str, str], python: str | None = None
    ) -> None:
        self._run_id = run_id
        self._workdir = Path(workdir)
        self._env = env
        self._python = python or sys.executable
        self._lock = threading.Lock()  # ``terminate`` vs starting the worker
        self._process: subprocess.Popen[bytes] | None = None
        self._terminated = False

    def run(self) -> Iterator[tuple[str, Any]]:
        """Yields ``(EVENT, dict)`` for each event, then ``(EXIT, code)``."""
        where = self._where()
        yield (_EVENT, {"type": "log", "data": where})
        failure: str | None = None
        with self._lock:  # nothing is yielded while it is held: ``terminate`` waits on it
            process = None
            if not self._terminated:
                try:
                    process = self._process = self._start(str(where["message"]))
                except OSError as exc:
                    failure = f"could not start the job worker on Ray: {exc}"
        if process is None:
            if failure is None:  # cancelled before it started
                yield (_EVENT, {"type": "cancelled"})
                yield (_EXIT, EXIT_CANCELLED)
                return
            error = {"type": "Unavailable", "message": failure, "param": None}
            yield (_EVENT, {"type": "error", "message": failure, "error": error})
            yield (_EXIT, EXIT_FAILED)
            return
        assert process.stdout is not None  # started with stdout=PIPE
        with process.stdout:
            for line in process.stdout:
                event = parse_line(line)
                if event is not None:
                    yield (_EVENT, event)
        yield (_EXIT, process.wait())

    def terminate(self) -> None:
        """SIGTERM the worker (it reports "cancelled"); before it starts: never start it."""
        with self._lock:
            self._terminated = True
            process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)

    def kill_job(self) -> None:
        """SIGKILL the worker's process group (the worker and anything it started)."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def _where(self) -> dict[str, Any]:
        """Where this job runs, for its first event and its log."""
        found = placement()
        pid = os.getpid()
        title = _process_title()
        node = found.get("node_id") or "?"
        message = (
            f"training run {self._run_id} runs on Ray: actor {found.get('actor_id') or '?'} "
            f"on node {node} ({found.get('node_ip') or '?'}), process {pid} ({title})"
        )
        return {"message": message, "runner": "ray", **found, "pid": pid, "process": title}

    def _start(self, first_line: str) -> subprocess.Popen[bytes]:
        """The job worker in its own session, its stderr appended to the job log."""
        self._workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in _RAY_PINNED}
        env.update(self._env)
        args = [self._python, "-m", "modelport.training.job_worker", str(self._workdir)]
        with (self._workdir / JOB_LOG).open("ab") as log:
            log.write(f"{first_line}\n".encode())
            log.flush()
            return subprocess.Popen(
                [*args, "--parent-pid", str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,  # the child keeps its own copy of the descriptor
                env=env,
                start_new_session=True,  # its own process group: a kill reaches helpers too
            )


def _process_title() -> str:
    """This process's title (``ray::JobActor.run`` in a Ray worker), from its command line."""
    try:
        raw = Path("/proc/self/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.split(b"\0", 1)[0].decode(errors="replace").strip()
