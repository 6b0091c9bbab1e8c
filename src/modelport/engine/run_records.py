"""Training runs in the database: the run rows, their numbered events, and the wire models.

``RunRecords`` is the only code that reads or writes ``training_runs`` and ``run_events``.
An event and the run fields it changes (status, progress...) are written in one transaction,
so a stored event never disagrees with the run it belongs to. Event numbers (``seq``) count
1, 2, 3... per run and keep counting across server restarts.

A tenant sees its own runs only; platform admins and callers outside a request see all.
Every method is synchronous: the engine calls them from a thread pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelport.engine.principal import current_principal
from modelport.errors import Conflict, InvalidInput, NotFound
from modelport.storage.db import Database
from modelport.storage.tables import RunEventRow, RunRow, TenantRow, utcnow
from modelport.types.training import (
    EpochMetrics,
    PreprocessSpec,
    RunArtifact,
    RunDetail,
    RunEvent,
    RunInfo,
    RunProgress,
    RunStatus,
    SplitSpec,
)

T = TypeVar("T")

MAX_LIST = 1000


def parse_run_id(raw: str | int) -> int:
    """A run id from a path segment; anything else is a run that does not exist."""
    text = str(raw)
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise run_not_found(text)
    return int(text)


def run_not_found(run_id: int | str) -> NotFound:
    return NotFound(f"run {str(run_id)!r} not found", param="run")


def _visible(row: RunRow) -> bool:
    who = current_principal()
    return who is None or who.is_admin or row.tenant_id == who.tenant_id


def _event(row: RunEventRow) -> RunEvent:
    return RunEvent(seq=row.seq, type=row.type, at=row.at, data=row.data)


class RunRecords:
    """Reads and writes of runs and run events (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- writes ---------------------------------------------------------------------------

    def insert(self, **fields: Any) -> RunInfo:
        """A new queued run (and its first ``status`` event)."""

        def work(s: Session) -> RunInfo:
            row = RunRow(**fields, status=RunStatus.QUEUED.value, created_at=utcnow())
            s.add(row)
            s.flush()
            self._append(s, row, "status", {"status": RunStatus.QUEUED.value})
            return self._info(s, row)

        return self._transaction(work)

    def record(
        self,
        run_id: int,
        kind: str,
        data: dict[str, Any],
        *,
        only_if: Sequence[str] | None = None,
        **changes: Any,
    ) -> RunEvent | None:
        """Append an event and apply ``changes`` to the run, in one transaction.

        With ``only_if``, nothing happens (None) unless the run's status is one of those:
        status transitions are compare-and-set, so a cancel and a job start cannot both win.
        """

        def work(s: Session) -> RunEvent | None:
            row = s.scalar(select(RunRow).where(RunRow.id == run_id).with_for_update())
            if row is None or (only_if is not None and row.status not in only_if):
                return None
            for key, value in changes.items():
                setattr(row, key, value)
            return self._append(s, row, kind, data)

        return self._transaction(work)

    def requeue_unfinished(self) -> list[int]:
        """Runs a stopped server left ``running``: back to ``queued`` (they resume)."""
        with self._db.session() as s:
            running = list(s.scalars(select(RunRow.id).where(RunRow.status == "running")))
        for run_id in running:
            self.record(
                run_id,
                "status",
                {"status": "queued", "reason": "server restarted"},
                only_if=("running",),
                status="queued",
            )
        return running

    # -- reads ----------------------------------------------------------------------------

    def row(self, run_id: int) -> RunRow:
        """A visible run's row, detached (``NotFound``)."""
        with self._db.session() as s:
            row = s.get(RunRow, run_id)
            if row is None or not _visible(row):
                raise run_not_found(run_id)
            return row

    def info(self, run_id: int) -> RunInfo:
        with self._db.session() as s:
            return self._info(s, self._visible_row(s, run_id))

    def detail(self, run_id: int) -> RunDetail:
        """A run with its per-epoch metrics (the newest value of each epoch), artifacts, lineage."""
        with self._db.session() as s:
            row = self._visible_row(s, run_id)
            by_epoch: dict[int, EpochMetrics] = {}
            for event in s.scalars(
                select(RunEventRow)
                .where(RunEventRow.run_id == run_id, RunEventRow.type == "epoch")
                .order_by(RunEventRow.seq)
            ):
                epoch = event.data.get("epoch")
                metrics = event.data.get("metrics")
                if isinstance(epoch, int) and isinstance(metrics, dict):
                    by_epoch[epoch] = EpochMetrics(epoch=epoch, metrics=metrics, at=event.at)
            return RunDetail(
                **self._info(s, row).model_dump(),
                epochs=[by_epoch[e] for e in sorted(by_epoch)],
                artifacts=[RunArtifact.model_validate(a) for a in row.artifacts],
                lineage=row.lineage,
            )

    def list_runs(
        self,
        *,
        model: str | None = None,
        dataset: str | None = None,
        trainer: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[RunInfo]:
        """Runs matching every filter given, newest first."""
        if not 1 <= limit <= MAX_LIST:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIST}", param="limit")
        if status is not None and status not in {s.value for s in RunStatus}:
            known = ", ".join(s.value for s in RunStatus)
            raise InvalidInput(f"unknown status {status!r} (known: {known})", param="status")
        query = select(RunRow).order_by(RunRow.id.desc()).limit(limit)
        who = current_principal()
        if who is not None and not who.is_admin:
            query = query.where(RunRow.tenant_id == who.tenant_id)
        for column, value in (
            (RunRow.model_name, model),
            (RunRow.dataset, dataset),
            (RunRow.trainer, trainer),
            (RunRow.status, status),
        ):
            if value is not None:
                query = query.where(column == value)
        with self._db.session() as s:
            return [self._info(s, row) for row in s.scalars(query)]

    def events(self, run_id: int, after: int = 0, kinds: Iterable[str] = ()) -> list[RunEvent]:
        """A run's stored events with ``seq > after`` (of the given types, if any), in order."""
        query = (
            select(RunEventRow)
            .where(RunEventRow.run_id == run_id, RunEventRow.seq > after)
            .order_by(RunEventRow.seq)
        )
        wanted = list(kinds)
        if wanted:
            query = query.where(RunEventRow.type.in_(wanted))
        with self._db.session() as s:
            return [_event(e) for e in s.scalars(query)]

    def next_queued(self, exclude: Iterable[int]) -> int | None:
        """The oldest queued run not in ``exclude``."""
        query = select(RunRow.id).where(RunRow.status == "queued").order_by(RunRow.id).limit(1)
        skip = list(exclude)
        if skip:
            query = query.where(RunRow.id.not_in(skip))
        with self._db.session() as s:
            return s.scalar(query)

    def tenant_name(self, tenant_id: int) -> str:
        with self._db.session() as s:
            return s.scalar(select(TenantRow.name).where(TenantRow.id == tenant_id)) or ""

    # -- internals ------------------------------------------------------------------------

    def _visible_row(self, s: Session, run_id: int) -> RunRow:
        row = s.get(RunRow, run_id)
        if row is None or not _visible(row):
            raise run_not_found(run_id)
        return row

    @staticmethod
    def _append(s: Session, row: RunRow, kind: str, data: dict[str, Any]) -> RunEvent:
        newest = s.scalar(select(func.max(RunEventRow.seq)).where(RunEventRow.run_id == row.id))
        event = RunEventRow(run_id=row.id, seq=(newest or 0) + 1, type=kind, at=utcnow(), data=data)
        s.add(event)
        s.flush()
        return _event(event)

    @staticmethod
    def _info(s: Session, row: RunRow) -> RunInfo:
        owner = None
        if row.tenant_id is not None:
            owner = s.scalar(select(TenantRow.name).where(TenantRow.id == row.tenant_id))
        return RunInfo(
            id=row.id,
            status=RunStatus(row.status),
            model_name=row.model_name,
            dataset=row.dataset,
            dataset_version=row.dataset_version,
            trainer=row.trainer,
            params=row.params,
            preprocessing=PreprocessSpec.model_validate(row.preprocessing),
            split=SplitSpec.model_validate(row.split),
            seed=row.seed,
            owner=owner,
            progress=RunProgress.model_validate(row.progress or {}),
            metrics=row.metrics,
            error=row.error,
            model_version=row.model_version,
            code_version=row.code_version,
            description=row.description,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )

    def _transaction(self, work: Callable[[Session], T]) -> T:
        for attempt in range(1, 6):
            try:
                with self._db.session(write=True) as s:
                    return work(s)
            except IntegrityError as exc:
                if attempt == 5:
                    raise Conflict(f"concurrent changes kept colliding: {exc.orig}") from exc
        raise AssertionError("unreachable")
