"""Seam 3: where training jobs run.

A ``JobRunner`` starts one job for a prepared work folder (``spec.json`` written by the
engine) and hands back a ``JobHandle``: the job's events as dicts (the job worker's JSON
lines, see ``training.job_worker``), ``cancel`` and ``wait``. The local runner starts
``python -m modelport.training.job_worker <workdir>`` as a subprocess; a Ray runner
implements the same two protocols later (events from an actor, cancel via ``ray.cancel``).

Events are read from the job's stdout as it writes them; the consumer must keep reading
``events()`` until it ends, otherwise the pipe fills and the job blocks. The job's stderr is
its log, appended to ``<workdir>/job.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol

JOB_LOG = "job.log"
CANCEL_GRACE_S = 10.0
_LINE_LIMIT = 64 * 1024**2  # a result line carries all metrics (confusion matrices...)


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


class LocalJobRunner:
    """Runs each job as a ``modelport.training.job_worker`` subprocess on this machine.

    Each job gets its own session (process group), so a forced cancel kills anything it
    started too, and Ctrl-C in the server's terminal does not reach it; it still dies with
    the server (the worker sets ``PR_SET_PDEATHSIG``). ``env`` is added to the server's
    environment; ``python`` is the interpreter (a hook for tests and embedders).
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

    async def start(self, run_id: int, workdir: Path) -> LocalJobHandle:
        env = {**os.environ, **self._env}
        log = await asyncio.to_thread(_open_log, workdir)
        with log:
            process = await asyncio.create_subprocess_exec(
                self._python,
                "-m",
                "modelport.training.job_worker",
                str(workdir),
                "--parent-pid",
                str(os.getpid()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,  # the child keeps its own copy of the descriptor
                env=env,
                limit=_LINE_LIMIT,
                start_new_session=True,  # its own process group: a kill reaches helpers too
            )
        return LocalJobHandle(run_id, process, self._grace_s)


class LocalJobHandle:
    """A job worker subprocess: events from its stdout, signals to stop it."""

    def __init__(self, run_id: int, process: asyncio.subprocess.Process, grace_s: float) -> None:
        self.run_id = run_id
        self.pid = process.pid
        self._process = process
        self._grace_s = grace_s

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        stdout = self._process.stdout
        assert stdout is not None  # started with stdout=PIPE
        while line := await stdout.readline():
            event = _parse(line)
            if event is not None:
                yield event

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
