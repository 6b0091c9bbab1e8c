"""Seam 3: where training jobs run.

A ``JobRunner`` starts one job for a prepared work folder (``spec.json`` written by the
engine) and hands back a ``JobHandle``: the job's events as dicts (the job worker's JSON
lines, see ``training.job_worker``), ``cancel`` and ``wait``. The local runner starts
``python -m modelport.training.job_worker <workdir>`` as a subprocess; the Ray runner
(``backends.ray.jobs``) starts the same subprocess inside a Ray actor on the cluster and
streams its lines back.

Events are read from the job's stdout as it writes them; the consumer must keep reading
``events()`` until it ends, otherwise the pipe fills and the job blocks. The job's stderr is
its log, appended to ``<workdir>/job.log``.

Warm spare (``prestart``, ``Settings.training_prestart``): the local runner keeps one job
worker started ahead (``job_worker --spare``: the interpreter with torch, scikit-learn,
onnxruntime, the trainers and the data library imported, waiting on stdin) and hands it the
next job, which saves that job the seconds of imports. Each spare takes one job and exits
with it, so every job still has a process of its own. A spare is started when a job ends,
for the next one, not as a job starts: importing torch beside a job that uses every core
(the default) slowed the digits CNN 3-5x on the 2-core machine this was measured on (OpenMP
threads wait on each other whenever one is preempted), and with one job at a time (the
default) the next job cannot start sooner anyway. Nor at server start (unless
``prestart(now=True)``): a server that never trains (tests, serving benchmarks) would pay
seconds of CPU and ~0.5 GB for it, so the first job after a start runs cold. A job that
finds no spare, or one that died, starts a fresh worker as before; one still importing is
used (it is ahead of a fresh one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from modelport.training.job_worker import JOB_LOG as JOB_LOG  # re-exported: the log's name

log = logging.getLogger("modelport.training")

CANCEL_GRACE_S = 10.0
ACCEPT_TIMEOUT_S = 10.0  # a ready spare answers a job in milliseconds
_LINE_LIMIT = 64 * 1024**2  # a result line carries all metrics (confusion matrices...)
_SPARE_TYPES = frozenset({"ready", "accepted"})  # a spare's own lines, not the job's


class JobHandle(Protocol):
    """One running job."""

    def events(self) -> AsyncIterator[dict[str, Any]]:
        """The job's events in order, ending when the job closes its output."""
        ...

    async def cancel(self) -> None:
        """Ask the job to stop (it reports "cancelled"); force it after a grace period."""
        ...

    async def wait(self) -> int:
        """Wait for the job to end; its exit code (0 ok, 1 error, 3 cancelled)."""
        ...


class JobRunner(Protocol):
    """A place where training jobs run."""

    async def start(self, run_id: int, workdir: Path) -> JobHandle:
        """Start the job prepared in ``workdir`` (which holds ``spec.json``)."""
        ...

    async def prestart(self, *, now: bool = False) -> None:
        """From now on keep a worker started ahead for the next job, from when a job ends
        (``now``: from now); a runner may have nothing of the kind to do."""
        ...

    async def close(self) -> None:
        """Stop what the runner keeps besides the jobs (a warm spare); jobs are not touched."""
        ...


class LocalJobRunner:
    """Runs each job as a ``modelport.training.job_worker`` subprocess on this machine.

    Each job gets its own session (process group), so a forced cancel kills anything it
    started too, and Ctrl-C in the server's terminal does not reach it; it still dies with
    the server (the worker sets ``PR_SET_PDEATHSIG``). ``env`` is added to the server's
    environment; ``python`` is the interpreter (a hook for tests and embedders). After
    ``prestart()`` a warm spare is kept (module docstring) until ``close()``.
    """

    def __init__(
        self,
        *,
        python: str = sys.executable,
        grace_s: float = CANCEL_GRACE_S,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._python = python
        self._grace_s = grace_s
        self._env = dict(env or {})
        self._prestart = False
        self._closed = False
        self._spare: _Spare | None = None
        self._spare_lock = asyncio.Lock()  # a job waits for a spare being started
        self._watchers: set[asyncio.Task[None]] = set()

    @property
    def spare_pid(self) -> int | None:
        """The waiting spare's pid (None: none is kept or started yet)."""
        return self._spare.pid if self._spare is not None else None

    async def spare_ready(self) -> bool:
        """Wait until the spare has done its imports; False if there is none or it died."""
        spare = self._spare
        if spare is None:
            return False
        first = await asyncio.shield(spare.first)
        return first is not None and first.get("type") == "ready"

    async def prestart(self, *, now: bool = False) -> None:
        self._prestart = True
        self._closed = False
        if now:
            await self._ensure_spare()

    async def close(self) -> None:
        """Kill the spare (it holds nothing yet) and keep none from now on."""
        async with self._spare_lock:  # a spare being started is finished first
            self._closed = True
            spare, self._spare = self._spare, None
        for task in list(self._watchers):
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        if spare is not None:
            await spare.kill()

    async def start(self, run_id: int, workdir: Path) -> LocalJobHandle:
        async with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            try:
                taken = await spare.hand(workdir)
            except BaseException:  # cancelled (the server stops): the job must not run on
                await asyncio.shield(spare.kill())
                raise
            if taken:
                log.debug("training run %s: the warm job worker %s takes it", run_id, spare.pid)
                handle = LocalJobHandle(run_id, spare.process, self._grace_s, spare)
                self._watch(handle)
                return handle
            await spare.kill()  # it died: start the job the slow way
        handle = await self._start_fresh(run_id, workdir)
        self._watch(handle)
        return handle

    async def _start_fresh(self, run_id: int, workdir: Path) -> LocalJobHandle:
        job_log = await asyncio.to_thread(_open_log, workdir)
        with job_log:
            process = await asyncio.create_subprocess_exec(
                *self._worker_args(str(workdir)),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=job_log,  # the child keeps its own copy of the descriptor
                env={**os.environ, **self._env},
                limit=_LINE_LIMIT,
                start_new_session=True,  # its own process group: a kill reaches helpers too
            )
        return LocalJobHandle(run_id, process, self._grace_s)

    def _worker_args(self, *args: str) -> list[str]:
        return [
            self._python,
            "-m",
            "modelport.training.job_worker",
            *args,
            "--parent-pid",
            str(os.getpid()),
        ]

    # -- the warm spare -------------------------------------------------------------------

    def _watch(self, handle: LocalJobHandle) -> None:
        """When a job ends, start the next spare (module docstring: not while it runs)."""
        if not self._prestart or self._closed:
            return
        task = asyncio.create_task(self._after(handle), name=f"job-{handle.run_id}-ended")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _after(self, handle: LocalJobHandle) -> None:
        await handle.wait()
        await self._ensure_spare()

    async def _ensure_spare(self) -> None:
        """Start a spare unless one is kept already (or the runner is closed)."""
        async with self._spare_lock:
            if self._closed or not self._prestart:
                return
            if self._spare is not None:
                if self._spare.alive():
                    return
                await self._spare.kill()
                self._spare = None
            try:
                process = await asyncio.create_subprocess_exec(
                    *self._worker_args("--spare"),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,  # the job's log once it has one;
                    # what failed before that comes in its "ready" line
                    env={**os.environ, **self._env},
                    limit=_LINE_LIMIT,
                    start_new_session=True,
                )
            except OSError as exc:
                log.warning("could not start a warm job worker: %s", exc)
                return
            self._spare = _Spare(process)


class _Spare:
    """A job worker started with ``--spare``: imports, says "ready", waits for a workdir."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid
        self.pending: list[dict[str, Any]] = []  # job events read while handing it over
        self.first: asyncio.Task[dict[str, Any] | None] = asyncio.create_task(
            self._first_event(), name=f"job-worker-spare-{process.pid}"
        )

    async def _first_event(self) -> dict[str, Any] | None:
        """The spare's first line: "ready" once its imports are done (None: it died)."""
        stdout = self.process.stdout
        assert stdout is not None  # started with stdout=PIPE
        while line := await stdout.readline():
            event = _parse(line)
            if event is None:
                continue
            if event.get("type") == "ready":
                data = event.get("data") or {}
                took = data.get("import_s", 0)
                log.info("warm job worker %s ready (imports, warm-up: %.1f s)", self.pid, took)
                if data.get("failed"):
                    log.warning("warm job worker %s could not import %s", self.pid, data["failed"])
            return event
        return None

    def alive(self) -> bool:
        """Not known to be gone: asyncio has not seen it exit, nor its output end."""
        if self.process.returncode is not None:
            return False
        first = self.first
        return not (first.done() and not first.cancelled() and first.result() is None)

    async def hand(self, workdir: Path) -> bool:
        """Give it the job in ``workdir``; False if it turns out gone (a fresh worker then).

        A spare that is ready answers "accepted" at once; this waits for that, since a
        process being killed can still take a write. One still importing is trusted: it
        reads the job when its imports are done.
        """
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None  # started with PIPEs
        if not self.alive():
            return False
        try:
            stdin.write(json.dumps({"workdir": str(workdir)}).encode() + b"\n")
            await stdin.drain()
            stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            return False
        if not self.first.done():
            return True
        try:
            line = await asyncio.wait_for(stdout.readline(), ACCEPT_TIMEOUT_S)
        except TimeoutError:
            return False
        event = _parse(line)
        if event is None:
            return False  # its output ended: it died before it read the job
        if event["type"] != "accepted":  # pragma: no cover - the worker answers first
            self.pending.append(event)
        return True

    async def kill(self) -> None:
        """SIGKILL it (it holds nothing yet) and close its pipes."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.first.cancel()
        await asyncio.gather(self.first, return_exceptions=True)
        if self.process.stdin is not None:
            self.process.stdin.close()
        if self.process.stdout is not None:  # read to the end, so the pipe is closed now
            with contextlib.suppress(OSError, ValueError):
                await self.process.stdout.read()
        await self.process.wait()


class LocalJobHandle:
    """A job worker subprocess: events from its stdout, signals to stop it."""

    def __init__(
        self,
        run_id: int,
        process: asyncio.subprocess.Process,
        grace_s: float,
        spare: _Spare | None = None,
    ) -> None:
        self.run_id = run_id
        self.pid = process.pid
        self._process = process
        self._grace_s = grace_s
        self._spare = spare  # the warm spare that took the job: its first lines are read

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        stdout = self._process.stdout
        assert stdout is not None  # started with stdout=PIPE
        if self._spare is not None:
            first = await self._spare.first
            if first is None:
                return
            for event in (first, *self._spare.pending):
                if event["type"] not in _SPARE_TYPES:
                    yield event
        while line := await stdout.readline():
            parsed = _parse(line)
            if parsed is not None and (self._spare is None or parsed["type"] not in _SPARE_TYPES):
                yield parsed

    async def cancel(self) -> None:
        """SIGTERM the job; SIGKILL its whole process group after the grace period."""
        if self._process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._process.wait(), self._grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            await self._process.wait()

    async def wait(self) -> int:
        return await self._process.wait()


def _open_log(workdir: Path) -> BinaryIO:
    workdir.mkdir(parents=True, exist_ok=True)
    return (workdir / JOB_LOG).open("ab")


def _parse(line: bytes) -> dict[str, Any] | None:
    """One JSON line → event; anything else (stray output) becomes a "log" event."""
    text = line.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        event = json.loads(text)
    except ValueError:
        event = None
    if isinstance(event, dict) and isinstance(event.get("type"), str):
        return event
    return {"type": "log", "data": {"message": text}}
