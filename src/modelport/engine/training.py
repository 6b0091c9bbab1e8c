"""The training service: validate and queue runs, read them back, cancel, compare, stream.

``submit`` checks everything a job needs before anything is written — the dataset exists
and is visible, the trainer is known and accepts the dataset's kind and task, the
hyperparameters are valid, the model name is not another tenant's — so a bad request is a
400/404 naming the field and never a run that fails a second later. The queued run is then
picked up by the ``JobScheduler`` (``engine/training_jobs.py``).

Runs belong to the tenant that started them (``engine/run_records.py`` filters every read);
another tenant's run is reported as one that does not exist.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path
from typing import Any

from modelport import __version__
from modelport.engine.datasets import DatasetRef, DatasetService
from modelport.engine.principal import current_principal
from modelport.engine.registry import Registry
from modelport.engine.run_records import RunRecords, parse_run_id
from modelport.engine.training_jobs import EventHub, JobScheduler
from modelport.errors import Conflict, InvalidInput, ModelNotFound
from modelport.settings import Settings
from modelport.storage.tables import utcnow
from modelport.types.training import (
    RunComparison,
    RunDetail,
    RunEvent,
    RunInfo,
    RunStatus,
    TrainerInfo,
    TrainRequest,
)

MAX_COMPARE = 50
_LOG_TAIL_BYTES = 1 << 20
_TEXT_INPUTS = {"tokens": "tokens", "minilm": "embeddings"}


@cache
def code_version() -> str:
    """modelport's version, plus the git commit when the code runs from a checkout."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return __version__
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}" if commit else __version__


class TrainingService:
    """Runs as the API sees them (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        records: RunRecords,
        datasets: DatasetService,
        registry: Registry,
        scheduler: JobScheduler,
        hub: EventHub,
    ) -> None:
        self._settings = settings
        self._records = records
        self._datasets = datasets
        self._registry = registry
        self._scheduler = scheduler
        self._hub = hub

    async def start(self) -> None:
        await self._scheduler.start()

    async def shutdown(self) -> None:
        await self._scheduler.shutdown()

    # -- trainers -------------------------------------------------------------------------

    @staticmethod
    def trainers() -> list[TrainerInfo]:
        from modelport.training.trainers import trainer_infos

        return trainer_infos()

    # -- runs -----------------------------------------------------------------------------

    async def submit(self, request: TrainRequest) -> RunInfo:
        """Validate ``request`` completely, then queue it as a new run."""
        info = await asyncio.to_thread(self._validate_and_insert, request)
        self._scheduler.wake()
        return info

    def _validate_and_insert(self, request: TrainRequest) -> RunInfo:
        ref = self._datasets.resolve(request.dataset, request.dataset_version)
        params = _check_trainer(request, ref)
        if request.register_model:
            self._check_model_name(request.model_name)
        caller = current_principal()
        return self._records.insert(
            tenant_id=caller.tenant_id if caller is not None else None,
            model_name=request.model_name,
            register_model=request.register_model,
            dataset=ref.name,
            dataset_version=ref.version,
            dataset_sha256=ref.sha256,
            trainer=request.trainer,
            params=params,
            preprocessing=request.preprocessing.model_dump(mode="json"),
            split=request.split.model_dump(mode="json"),
            seed=request.seed,
            progress={},
            metrics={},
            artifacts=[],
            lineage={},
            code_version=code_version(),
            description=request.description or "",
        )

    def _check_model_name(self, name: str) -> None:
        """The result may join ``name`` only if the caller may add versions to it."""
        access = self._registry.access
        if access.owner(name) is None:
            return
        if not access.visible(name):
            raise ModelNotFound(f"model {name!r} not found", param="model_name")
        access.check_change(name)

    async def cancel(self, raw_id: str) -> RunInfo:
        """Cancel a queued or running run (a finished one: ``Conflict``)."""
        run_id = parse_run_id(raw_id)
        info = await asyncio.to_thread(self._records.info, run_id)
        if info.status == RunStatus.QUEUED:
            event = await asyncio.to_thread(
                self._records.record,
                run_id,
                "status",
                {"status": "cancelled"},
                only_if=("queued",),
                status="cancelled",
                finished_at=utcnow(),
            )
            if event is not None:
                self._hub.publish(run_id, event)
                return await asyncio.to_thread(self._records.info, run_id)
            info = await asyncio.to_thread(self._records.info, run_id)
        if info.status == RunStatus.RUNNING:
            await self._scheduler.cancel(run_id)
            return info
        if info.status == RunStatus.CANCELLED:
            return info
        raise Conflict(f"run {run_id} already finished ({info.status.value})", param="run")

    def get(self, raw_id: str) -> RunDetail:
        return self._records.detail(parse_run_id(raw_id))

    def list_runs(self, **filters: Any) -> list[RunInfo]:
        return self._records.list_runs(**filters)

    def compare(self, raw_ids: str) -> RunComparison:
        """Runs side by side: each param's and each scalar metric's value per run."""
        parts = [p.strip() for p in raw_ids.split(",") if p.strip()]
        if not parts or len(parts) > MAX_COMPARE:
            raise InvalidInput(
                f"give 1 to {MAX_COMPARE} run ids, comma-separated (ids=1,2)", param="ids"
            )
        runs = [self._records.detail(parse_run_id(p)) for p in parts]
        return RunComparison(runs=runs, params=_columns([r.params for r in runs]),
                             metrics=_columns([_flat_metrics(r) for r in runs]))  # fmt: skip

    def logs(self, raw_id: str) -> str:
        """The job's log (the worker's stderr), or its log events when there is no file."""
        run_id = parse_run_id(raw_id)
        self._records.info(run_id)  # visibility
        path = self._settings.training_dir / str(run_id) / "job.log"
        if path.exists():
            with path.open("rb") as f:
                size = f.seek(0, 2)
                f.seek(max(0, size - _LOG_TAIL_BYTES))
                return f.read().decode("utf-8", errors="replace")
        events = self._records.events(run_id, kinds=("log",))
        return "".join(f"{e.at.isoformat()} {e.data.get('message', '')}\n" for e in events)

    def check_visible(self, raw_id: str) -> int:
        run_id = parse_run_id(raw_id)
        self._records.info(run_id)
        return run_id

    async def events(self, run_id: int) -> AsyncIterator[RunEvent]:
        """Stored events, then live ones, until the run has finished."""
        queue = self._hub.subscribe(run_id)
        try:
            last = 0
            for event in await asyncio.to_thread(self._records.events, run_id):
                last = event.seq
                yield event
            info = await asyncio.to_thread(self._records.info, run_id)
            if info.status.finished:
                for event in await asyncio.to_thread(self._records.events, run_id, last):
                    yield event
                return
            while True:
                event = await queue.get()
                if event.seq <= last:
                    continue
                last = event.seq
                yield event
                if event.type == "status" and RunStatus(event.data["status"]).finished:
                    return
        finally:
            self._hub.unsubscribe(run_id, queue)


def _check_trainer(request: TrainRequest, ref: DatasetRef) -> dict[str, Any]:
    """The validated params (defaults filled in), once the trainer fits the dataset."""
    from modelport.training.trainers import trainer_class, validate_params

    cls = trainer_class(request.trainer)
    params = validate_params(request.trainer, request.params).model_dump(mode="json")
    schema = ref.dataset_schema
    if schema.kind not in cls.kinds:
        accepts = ", ".join(sorted(cls.kinds))
        raise InvalidInput(
            f"trainer {request.trainer!r} does not train on {schema.kind} datasets "
            f"(it accepts: {accepts})",
            param="trainer",
        )
    if schema.task is None:
        raise InvalidInput(f"dataset {ref.name!r} has no target to learn", param="dataset")
    if schema.task not in cls.tasks:
        raise InvalidInput(
            f"trainer {request.trainer!r} does not do {schema.task} "
            f"(it does: {', '.join(sorted(cls.tasks))})",
            param="trainer",
        )
    if schema.kind == "text":
        needed = _TEXT_INPUTS[request.preprocessing.text]
        if needed not in cls.input_kinds:
            raise InvalidInput(
                f"trainer {request.trainer!r} does not take text preprocessed as "
                f"{request.preprocessing.text!r}",
                param="preprocessing.text",
            )
    return params


def _flat_metrics(run: RunDetail) -> dict[str, Any]:
    """``split.metric`` → value for the scalar metrics of a run."""
    flat: dict[str, Any] = {}
    for split, values in run.metrics.items():
        for name, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                flat[f"{split}.{name}"] = value
    return flat


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = sorted({k for row in rows for k in row})
    return {k: [row.get(k) for row in rows] for k in keys}
