"""Warm spare workers: a worker started ahead, its runtime's libraries already imported.

Most of a local cold start (scale from zero, scale-up, restart after a crash) is the fresh
worker importing its runtime's libraries, not loading the model: for ``iris``, ``skops.io``
imports all of scikit-learn, scipy and (through scikit-learn's array-API shim) torch, seconds
of CPU. So the local backend keeps spares: a spare is a worker started with ``worker
--preload RUNTIME``, which imports the runtime and its libraries (``worker.PRELOAD``) and
then waits for its "load". A replica that starts takes the spare of its kind if one is alive;
the spare's pid becomes the replica's.

- When: a kind gets spares once one of its ready replicas has ended (scaled down or to zero,
  replaced, crashed), the sign that it starts and stops on this server; a model deployed
  once and left running costs nothing. From then on one spare of that kind is kept: started
  at that end, and again each time a replica of the kind has loaded (not sooner: the imports
  would share the CPU with its load).
- Kind (``spare_key``): the runtime (or the ``runtime_class`` override) and the replica env.
  Libraries read env vars such as thread counts when they are imported, so a spare is only
  handed to specs with exactly the env it was started with.
- Log: a spare writes to ``<runtime_dir>/logs/spares.log`` until its "load" names the
  replica's log, where the rest of its output goes.
- Cost: one idle process per kind (~450 MB for scikit-learn with skops, as it imports
  torch; ~70 MB for onnxruntime). ``Settings.worker_spares = False`` turns spares off.
- Lifetime: a spare is a worker like any other: it dies with the server (``PR_SET_PDEATHSIG``;
  the pool starts spares on the backend's event loop, as the replicas are), and ``close``
  stops every spare at shutdown. A spare found dead when taken is dropped for a fresh worker.
"""

from __future__ import annotations

import asyncio
import logging
import select
from collections.abc import Coroutine
from typing import Any

from modelport.backends.base import ReplicaSetSpec
from modelport.backends.replica import WorkerProcess, open_log, start_worker, terminate
from modelport.settings import Settings

logger = logging.getLogger(__name__)

# (what the spare preloads: a runtime name or "module:Class", the replica env's items)
SpareKey = tuple[str, tuple[tuple[str, str], ...]]


def spare_key(spec: ReplicaSetSpec) -> SpareKey:
    """The kind of worker ``spec`` needs: spares serve only specs of their own kind."""
    override = spec.load.options.get("runtime_class")
    runtime = str(override) if override else spec.load.runtime
    return runtime, tuple(sorted(spec.env.items()))


class SparePool:
    """At most one warm spare per kind of worker (module docstring); ``SpareSource`` for
    ``LocalReplica``."""

    def __init__(self, settings: Settings) -> None:
        self._enabled = settings.worker_spares
        self._log_path = settings.runtime_dir / "logs" / "spares.log"
        self._spares: dict[SpareKey, WorkerProcess] = {}
        self._starting: set[SpareKey] = set()
        self._wanted: set[SpareKey] = set()  # kinds whose replicas come and go
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def pids(self) -> dict[SpareKey, int]:
        """The pid of each kept spare, by kind."""
        return {key: spare.process.pid for key, spare in self._spares.items()}

    def take(self, spec: ReplicaSetSpec) -> WorkerProcess | None:
        """The spare of ``spec``'s kind if one is alive, now the caller's; else None."""
        spare = self._spares.pop(spare_key(spec), None)
        if spare is None:
            return None
        if _alive(spare):
            return spare
        logger.warning("spare worker %d had died; starting a fresh one", spare.process.pid)
        self._background(_stop(spare))
        return None

    def loaded(self, spec: ReplicaSetSpec) -> None:
        """A replica of ``spec``'s kind has loaded: keep a spare if the kind wants one."""
        if spare_key(spec) in self._wanted:
            self._replenish(spec)

    def ended(self, spec: ReplicaSetSpec) -> None:
        """A ready replica of ``spec``'s kind ends: from now on the kind keeps a spare."""
        if self._enabled and not self._closed:
            self._wanted.add(spare_key(spec))
            self._replenish(spec)

    async def close(self) -> None:
        """Stop every spare (and any still being started); keep none from now on."""
        self._closed = True
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        spares, self._spares = list(self._spares.values()), {}
        await asyncio.gather(*(_stop(spare) for spare in spares))

    def _replenish(self, spec: ReplicaSetSpec) -> None:
        """Start a spare of ``spec``'s kind in the background, unless one is kept or coming."""
        key = spare_key(spec)
        if not self._enabled or self._closed or key in self._starting:
            return
        kept = self._spares.get(key)
        if kept is not None:
            if _alive(kept):
                return
            self._background(_stop(self._spares.pop(key)))
        self._starting.add(key)
        self._background(self._start(key, spec.env))

    async def _start(self, key: SpareKey, env: dict[str, str]) -> None:
        try:
            log, _ = open_log(self._log_path)
            try:
                spare = await start_worker(env, log, "--preload", key[0])
            finally:
                log.close()
        except Exception:  # no spare is only slower: replicas start fresh workers
            logger.exception("could not start a spare worker for %s", key[0])
            return
        finally:
            self._starting.discard(key)
        if self._closed:
            await _stop(spare)
        else:
            self._spares[key] = spare

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _alive(spare: WorkerProcess) -> bool:
    """A spare writes nothing before its "load": a readable socket means it has gone (EOF)."""
    if spare.process.returncode is not None:
        return False
    poll = select.poll()  # not select(): descriptors past 1024 are fine here
    poll.register(spare.sock, select.POLLIN)
    return not poll.poll(0)


async def _stop(spare: WorkerProcess) -> None:
    spare.sock.close()  # a spare still importing ends at SIGTERM; one waiting, at EOF too
    await terminate(spare.process)
