"""Running training jobs: a scheduler over the ``JobRunner``, and what a job's end records.

The scheduler starts queued runs, oldest first, at most ``Settings.training_max_jobs`` at
once. For each it writes ``<training_dir>/<run_id>/spec.json`` and starts a job worker via
the runner (``backends.jobs``: a local subprocess, or ``backends.ray.jobs`` on the Ray
backend); every event the worker reports is stored (``run_events``), folded into the run's
progress and published to SSE subscribers. On success the bundle goes into the artifact
store and is registered as a new version of the run's model (runtime "trained") on behalf
of the run's tenant.

Stopping the server stops the workers but leaves their runs ``running``; the next start puts
them back in the queue and the worker resumes from ``<workdir>/checkpoints``.

With ``Settings.training_prestart`` the runner keeps a warm job worker for the next run
(``backends/jobs.py``: started as a job ends); the scheduler turns it on at start and off at
shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelport.backends.jobs import JobHandle, JobRunner
from modelport.engine.datasets import DatasetService
from modelport.engine.models import ModelService
from modelport.engine.principal import CURRENT, MODELS_WRITE, Principal, RequestContext
from modelport.engine.run_records import RunRecords
from modelport.settings import Settings
from modelport.storage.artifacts import ArtifactStore
from modelport.storage.tables import RunRow, utcnow
from modelport.types.admin import CreateVersion
from modelport.types.training import RunEvent

log = logging.getLogger("modelport.training")

SPEC_FILE = "spec.json"
BUNDLE_FILE = "model.mpbundle"
_PROGRESS_TYPES = frozenset({"started", "epoch", "log", "metrics", "done"})


class EventHub:
    """Live run events for SSE subscribers: one queue per subscriber, per run."""

    def __init__(self) -> None:
        self._subscribers: dict[int, set[asyncio.Queue[RunEvent]]] = {}

    def subscribe(self, run_id: int) -> asyncio.Queue[RunEvent]:
        queue: asyncio.Queue[RunEvent] = asyncio.Queue()
        self._subscribers.setdefault(run_id, set()).add(queue)
        return queue

    def unsubscribe(self, run_id: int, queue: asyncio.Queue[RunEvent]) -> None:
        queues = self._subscribers.get(run_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._subscribers[run_id]

    def publish(self, run_id: int, event: RunEvent) -> None:
        for queue in self._subscribers.get(run_id, ()):
            queue.put_nowait(event)


@dataclass
class _Job:
    """What the scheduler knows of one started run."""

    task: asyncio.Task[None]
    handle: JobHandle | None = None
    cancel_requested: bool = False
    outcome: dict[str, Any] | None = None
    error: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)


class JobScheduler:
    """Starts queued runs through a ``JobRunner`` and records how they go."""

    def __init__(
        self,
        settings: Settings,
        records: RunRecords,
        datasets: DatasetService,
        models: ModelService,
        artifacts: ArtifactStore,
        runner: JobRunner,
        hub: EventHub,
    ) -> None:
        self._settings = settings
        self._records = records
        self._datasets = datasets
        self._models = models
        self._artifacts = artifacts
        self._runner = runner
        self._hub = hub
        self._jobs: dict[int, _Job] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Re-queue runs a stopped server left running, then start scheduling."""
        requeued = await asyncio.to_thread(self._records.requeue_unfinished)
        if requeued:
            log.info("training runs %s queued again after a restart", requeued)
        if self._settings.training_prestart:
            await self._runner.prestart()  # a spare from the first job's end on
        self._loop_task = asyncio.create_task(self._schedule(), name="training-scheduler")
        self.wake()

    async def shutdown(self) -> None:
        """Stop scheduling and stop every job worker; their runs stay ``running``."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await self._runner.close()  # the spare first: no new one as the jobs end
        tasks = [job.task for job in self._jobs.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self) -> None:
        """Look at the queue again (a run was queued or a job ended)."""
        self._wake.set()

    # -- cancel ---------------------------------------------------------------------------

    async def cancel(self, run_id: int) -> bool:
        """Stop a started run's worker (it ends ``cancelled``); False if none is started."""
        job = self._jobs.get(run_id)
        if job is None:
            return False
        job.cancel_requested = True
        if job.handle is not None:
            asyncio.create_task(job.handle.cancel())  # noqa: RUF006 - the job task awaits the end
        return True

    # -- scheduling -----------------------------------------------------------------------

    async def _schedule(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while len(self._jobs) < self._settings.training_max_jobs:
                run_id = await asyncio.to_thread(self._records.next_queued, list(self._jobs))
                if run_id is None:
                    break
                task = asyncio.create_task(self._run(run_id), name=f"training-run-{run_id}")
                self._jobs[run_id] = _Job(task)
                task.add_done_callback(self._ended(run_id))

    def _ended(self, run_id: int) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._jobs.pop(run_id, None)
            self.wake()

        return done

    async def _run(self, run_id: int) -> None:
        job = self._jobs[run_id]
        try:
            row = await asyncio.to_thread(self._records.row, run_id)
            workdir = self._settings.training_dir / str(run_id)
            await asyncio.to_thread(self._write_spec, row, workdir)
            started = await self._event(
                run_id,
                "status",
                {"status": "running"},
                only_if=("queued",),
                status="running",
                started_at=row.started_at or utcnow(),
                error=None,
            )
            if started is None:
                return  # cancelled while it waited
            handle = await self._supervise(job, run_id, workdir)
            await self._conclude(job, row, workdir)
            await handle.wait()  # gone before the slot is given to the next run
        except asyncio.CancelledError:
            raise  # the server is stopping: the run stays "running" and resumes later
        except Exception as exc:
            log.exception("training run %s failed in the server", run_id)
            await self._fail(run_id, f"internal error: {type(exc).__name__}: {exc}")

    async def _supervise(self, job: _Job, run_id: int, workdir: Path) -> JobHandle:
        """Start the worker and consume its events until its output ends.

        A worker that said how it ended (result, error, cancelled) is not waited for here:
        the exit of a process that has torch loaded takes ~0.1 s, and the run's outcome is
        already known; the caller reaps it after recording that.
        """
        handle = await self._runner.start(run_id, workdir)
        job.handle = handle
        try:
            if job.cancel_requested:
                asyncio.create_task(handle.cancel())  # noqa: RUF006
            async for message in handle.events():
                await self._on_message(job, run_id, message)
            if job.outcome is None and job.error is None and not job.cancel_requested:
                code = await handle.wait()
                if code != 0:
                    job.error = f"the job worker exited with code {code} (see the run's logs)"
        except asyncio.CancelledError:
            await asyncio.shield(handle.cancel())
            raise
        return handle

    async def _on_message(self, job: _Job, run_id: int, message: dict[str, Any]) -> None:
        kind = message.get("type")
        raw = message.get("data")
        data: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if kind == "result":
            job.outcome = message
        elif kind == "error":
            job.error = str(message.get("message") or "training failed")
        elif kind == "cancelled":
            job.cancel_requested = True
        elif kind in _PROGRESS_TYPES:
            changes: dict[str, Any] = {}
            if kind == "started":
                resumed = data.get("resumed_from_epoch")
                job.progress["resumed_from_epoch"] = resumed if resumed else None
                changes["progress"] = dict(job.progress)
            elif kind == "epoch":
                job.progress.update(
                    epoch=data.get("epoch", 0),
                    epochs=data.get("epochs"),
                    metrics=data.get("metrics") or {},
                )
                changes["progress"] = dict(job.progress)
            await self._event(run_id, str(kind), data, **changes)

    async def _conclude(self, job: _Job, row: RunRow, workdir: Path) -> None:
        if job.outcome is not None and not job.cancel_requested:
            try:
                await self._succeed(row, workdir, job.outcome)
            except Exception as exc:  # registration refused: the run failed, say why
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                await self._fail(row.id, f"registering the model failed: {message}")
        elif job.cancel_requested:
            await self._event(
                row.id,
                "status",
                {"status": "cancelled"},
                only_if=("running",),
                status="cancelled",
                finished_at=utcnow(),
            )
        else:
            await self._fail(row.id, job.error or "training failed")

    async def _succeed(self, row: RunRow, workdir: Path, outcome: dict[str, Any]) -> None:
        bundle = Path(str(outcome.get("bundle_path") or workdir / BUNDLE_FILE))
        stored = await asyncio.to_thread(self._artifacts.put_file, bundle)
        metrics = outcome.get("metrics") or {}
        lineage = {
            "dataset": row.dataset,
            "dataset_version": row.dataset_version,
            "dataset_sha256": row.dataset_sha256,
            "run_id": row.id,
            "code_version": row.code_version,
        }
        version = None
        if row.register_model:
            version = await self._register(row, stored.sha256, outcome, lineage)
        artifact = {"name": "model bundle", "sha256": stored.sha256, "size": stored.size}
        await self._event(
            row.id,
            "status",
            {"status": "succeeded", "model_name": row.model_name, "model_version": version},
            only_if=("running",),
            status="succeeded",
            metrics=metrics,
            model_version=version,
            artifacts=[artifact],
            lineage=lineage,
            finished_at=utcnow(),
        )

    async def _register(
        self, row: RunRow, sha: str, outcome: dict[str, Any], lineage: dict[str, Any]
    ) -> int:
        """Register the bundle as the next version of the run's model, as the run's tenant."""
        metadata = dict(outcome.get("metadata") or {})
        metadata.update(metrics=outcome.get("metrics") or {}, trainer=row.trainer)
        body = CreateVersion(
            artifact_sha256=sha,
            artifact_name=f"{row.model_name}.mpbundle",
            runtime="trained",
            metadata=metadata,
            lineage=lineage,
            description=row.description or None,
        )
        principal = None
        if row.tenant_id is not None:
            tenant = await asyncio.to_thread(self._records.tenant_name, row.tenant_id)
            principal = Principal(
                tenant_id=row.tenant_id,
                tenant=tenant,
                key_id=0,
                key_name=f"training-run-{row.id}",
                scopes=frozenset({MODELS_WRITE}),
            )
        token = CURRENT.set(RequestContext(principal, request_id=f"run-{row.id}"))
        try:
            info = await self._models.register(row.model_name, body)
        finally:
            CURRENT.reset(token)
        return info.version

    async def _fail(self, run_id: int, message: str) -> None:
        await self._event(
            run_id,
            "status",
            {"status": "failed", "error": message},
            only_if=("queued", "running"),
            status="failed",
            error=message,
            finished_at=utcnow(),
        )

    async def _event(
        self, run_id: int, kind: str, data: dict[str, Any], **changes: Any
    ) -> RunEvent | None:
        """Store an event (with the run changes it implies) and publish it."""
        event = await asyncio.to_thread(self._records.record, run_id, kind, data, **changes)
        if event is not None:
            self._hub.publish(run_id, event)
        return event

    def _write_spec(self, row: RunRow, workdir: Path) -> None:
        """``spec.json`` for the worker (rewritten identically when a run resumes)."""
        from modelport.training.run import RunSpec

        ref = self._datasets.resolve(row.dataset, row.dataset_version)
        spec = RunSpec(
            run_id=row.id,
            dataset_path=ref.path,
            dataset_format=ref.format,
            dataset_name=ref.name,
            dataset_version=ref.version,
            target=ref.target,
            task=ref.task,
            text_column=ref.text_column,
            trainer=row.trainer,
            params=row.params,
            preprocessing=row.preprocessing,
            split=row.split,
            seed=row.seed,
            threads=self._settings.training_threads,
        )
        (workdir / "checkpoints").mkdir(parents=True, exist_ok=True)
        tmp = workdir / (SPEC_FILE + ".tmp")
        tmp.write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
        tmp.replace(workdir / SPEC_FILE)
