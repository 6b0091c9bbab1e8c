"""Datasets: uploaded files registered as numbered, checksummed versions with their schema.

An upload goes to the artifact store first (``POST /api/artifacts``); ``create`` then reads
the file with the training library's reader, which is also what a training job will use, so
a file that cannot be trained on (ragged CSV, missing target, wrong label type...) is refused
here with a 400 naming the problem and no row is written. The schema inferred at upload is
stored with the version and shown by the API.

Visibility follows models: a tenant sees its own datasets plus the built-in ones (owned by
the platform, ``tenant_id`` NULL, ``builtin``); another tenant's dataset is reported exactly
as one that does not exist. Platform admins and callers outside a request see everything.

Every method is synchronous (file parsing, SQL): the API calls them from a thread pool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelport.engine.principal import current_principal
from modelport.engine.registry_rows import check_name
from modelport.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from modelport.storage.artifacts import ArtifactStore
from modelport.storage.db import Database
from modelport.storage.tables import DatasetRow, RunRow, TenantRow, VersionRow, utcnow
from modelport.types.training import (
    CreateDataset,
    DatasetDetail,
    DatasetInfo,
    DatasetPreview,
    DatasetSchema,
)

if TYPE_CHECKING:
    from modelport.training.table import Table

T = TypeVar("T")

MAX_PREVIEW_ROWS = 100
_BUILTIN_WAIT_S = 120.0
# A busy start (demo models registering, a loaded machine) can fail one attempt transiently
# (a database lock held past the busy timeout); each attempt skips the sets already there.
_BUILTIN_ATTEMPTS = 3
_BUILTIN_RETRY_S = 2.0

log = logging.getLogger("modelport.training")
_UNFINISHED = ("queued", "running")


@dataclass(frozen=True)
class DatasetRef:
    """One dataset version as a training job needs it (what ``RunSpec`` is built from)."""

    name: str
    version: int
    format: str
    path: str | None  # the artifact file; None for a built-in
    sha256: str | None
    builtin: bool
    dataset_schema: DatasetSchema
    target: str | None
    task: str | None
    text_column: str | None


def _not_found(name: str) -> NotFound:
    return NotFound(f"dataset {name!r} not found", param="dataset")


def _visible(row: DatasetRow) -> bool:
    who = current_principal()
    if who is None or who.is_admin or row.builtin:
        return True
    return row.tenant_id == who.tenant_id


class DatasetService:
    """Create, list, read, preview and delete dataset versions (see the module docstring)."""

    def __init__(self, db: Database, artifacts: ArtifactStore) -> None:
        self._db = db
        self._artifacts = artifacts
        # Cleared while the built-ins are being registered (``expect_builtins``): a listing or
        # a lookup of a built-in name that comes first (a server just started) waits for
        # them instead of reporting them missing.
        self._builtins_checked = threading.Event()
        self._builtins_checked.set()

    # -- writes ---------------------------------------------------------------------------

    def create(self, body: CreateDataset) -> DatasetInfo:
        """Read and check the uploaded file, then record it as the next version of its name."""
        name = body.name or PurePath(body.filename).stem
        check_name(name, "name")
        if body.format == "builtin":
            raise InvalidInput("'builtin' is not an upload format", param="format")
        sha = body.artifact_sha256
        if not self._artifacts.exists(sha):
            raise InvalidInput(
                f"artifact {sha} is not in the store: upload it first", param="artifact_sha256"
            )
        self._check_may_add(name)
        from modelport.training.formats import detect_format, read_dataset
        from modelport.training.schema import infer_schema

        fmt = body.format or detect_format(body.filename)
        path = self._artifacts.local_path(sha)
        table = read_dataset(
            path, fmt, target=body.target, task=body.task, text_column=body.text_column
        )
        schema = infer_schema(table)
        caller = current_principal()
        return self._insert(
            name=name,
            tenant_id=caller.tenant_id if caller is not None else None,
            builtin=False,
            format=fmt,
            filename=body.filename,
            artifact_sha256=sha,
            size=self._artifacts.size(sha),
            rows=len(table),
            target=table.target_name,
            task=table.task,
            text_column=body.text_column,
            dataset_schema=schema.model_dump(mode="json"),
            description=body.description or "",
        )

    def delete(self, name: str) -> None:
        """Delete every version of ``name`` (refused for built-ins and while runs use it)."""

        def work(s: Session) -> list[str]:
            rows = self._rows(s, name)
            if rows[0].builtin:
                raise PermissionDenied(
                    f"dataset {name!r} is built in and cannot be deleted", param="dataset"
                )
            self._check_owner(rows[0])
            busy = s.scalar(
                select(func.count())
                .select_from(RunRow)
                .where(RunRow.dataset == name, RunRow.status.in_(_UNFINISHED))
            )
            if busy:
                raise Conflict(f"dataset {name!r} is in use by {busy} unfinished run(s)")
            s.execute(delete(DatasetRow).where(DatasetRow.name == name))
            return [r.artifact_sha256 for r in rows if r.artifact_sha256]

        self._collect(self._transaction(work))

    def expect_builtins(self) -> None:
        """Make reads wait for ``install_builtins``, about to run in the background."""
        self._builtins_checked.clear()

    def install_builtins(self) -> list[str]:
        """Register scikit-learn's bundled sets as platform-owned datasets (once per name)."""
        try:
            for attempt in range(1, _BUILTIN_ATTEMPTS + 1):
                try:
                    return self._install_builtins()
                except Exception as exc:
                    if attempt == _BUILTIN_ATTEMPTS:
                        raise
                    log.warning("registering the built-in datasets failed (attempt %d of %d: "
                                "%s: %s); trying again", attempt, _BUILTIN_ATTEMPTS,
                                type(exc).__name__, exc)  # fmt: skip
                    time.sleep(_BUILTIN_RETRY_S * attempt)
            raise AssertionError("unreachable")
        finally:
            self._builtins_checked.set()

    def _install_builtins(self) -> list[str]:
        from modelport.training.builtin import BUILTIN_DATASETS, load_builtin
        from modelport.training.schema import infer_schema

        with self._db.session() as s:
            present = set(s.scalars(select(DatasetRow.name).where(DatasetRow.version == 1)))
        installed: list[str] = []
        for name in BUILTIN_DATASETS:
            if name in present:
                continue
            table = load_builtin(name)
            self._insert(
                name=name,
                tenant_id=None,
                builtin=True,
                format="builtin",
                filename=name,
                artifact_sha256=None,
                size=0,
                rows=len(table),
                target=table.target_name,
                task=table.task,
                text_column=None,
                dataset_schema=infer_schema(table).model_dump(mode="json"),
                description=f"scikit-learn's bundled {name} dataset",
            )
            installed.append(name)
        return installed

    # -- reads ----------------------------------------------------------------------------

    def list_datasets(self) -> list[DatasetInfo]:
        """The newest version of every dataset the caller may see, sorted by name."""
        self._builtins_checked.wait(_BUILTIN_WAIT_S)
        with self._db.session() as s:
            newest = (
                select(DatasetRow.name, func.max(DatasetRow.version).label("v"))
                .group_by(DatasetRow.name)
                .subquery()
            )
            rows = s.scalars(
                select(DatasetRow)
                .join(
                    newest,
                    (DatasetRow.name == newest.c.name) & (DatasetRow.version == newest.c.v),
                )
                .order_by(DatasetRow.name)
            ).all()
            tenants = self._tenants(s)
            return [self._info(r, tenants) for r in rows if _visible(r)]

    def get(self, name: str) -> DatasetDetail:
        """The newest version of ``name`` with every version, oldest first."""
        self._wait_builtin(name)
        with self._db.session() as s:
            rows = self._rows(s, name)
            tenants = self._tenants(s)
            versions = [self._info(r, tenants) for r in rows]
            return DatasetDetail(**versions[-1].model_dump(by_alias=False), versions=versions)

    def resolve(self, name: str, version: int | None = None) -> DatasetRef:
        """A visible dataset version (newest by default) as a job needs it (``NotFound``)."""
        self._wait_builtin(name)
        with self._db.session() as s:
            rows = self._rows(s, name)
        row = rows[-1] if version is None else next((r for r in rows if r.version == version), None)
        if row is None:
            raise NotFound(f"dataset {name!r} has no version {version}", param="dataset_version")
        path = None
        if row.artifact_sha256 is not None:
            path = str(self._artifacts.local_path(row.artifact_sha256))
        return DatasetRef(
            name=row.name,
            version=row.version,
            format=row.format,
            path=path,
            sha256=row.artifact_sha256,
            builtin=row.builtin,
            dataset_schema=DatasetSchema.model_validate(row.dataset_schema),
            target=row.target,
            task=row.task,
            text_column=row.text_column,
        )

    def preview(self, name: str, version: int | None = None, rows: int = 10) -> DatasetPreview:
        """The first ``rows`` rows of a dataset version, as JSON values."""
        if not 1 <= rows <= MAX_PREVIEW_ROWS:
            raise InvalidInput(f"rows must be between 1 and {MAX_PREVIEW_ROWS}", param="rows")
        ref = self.resolve(name, version)
        from modelport.training.schema import preview_rows

        columns, values = preview_rows(load_table(ref), rows)
        return DatasetPreview(name=ref.name, version=ref.version, columns=columns, rows=values)

    # -- internals ------------------------------------------------------------------------

    def _rows(self, s: Session, name: str) -> list[DatasetRow]:
        """Every version of a visible dataset, oldest first (``NotFound`` otherwise)."""
        query = select(DatasetRow).where(DatasetRow.name == name).order_by(DatasetRow.version)
        rows = list(s.scalars(query))
        if not rows or not _visible(rows[0]):
            raise _not_found(name)
        return rows

    def _wait_builtin(self, name: str) -> None:
        """Wait for the built-ins' registration when ``name`` is one of them."""
        if not self._builtins_checked.is_set():
            from modelport.training.builtin import BUILTIN_DATASETS

            if name in BUILTIN_DATASETS:
                self._builtins_checked.wait(_BUILTIN_WAIT_S)

    def _check_may_add(self, name: str) -> None:
        """A new version of an existing name: only its owner (or an admin) may add one."""
        self._wait_builtin(name)
        with self._db.session() as s:
            first = s.scalar(select(DatasetRow).where(DatasetRow.name == name).limit(1))
        if first is None:
            return
        if not _visible(first):
            raise _not_found(name)
        if first.builtin:
            raise PermissionDenied(f"dataset {name!r} is built in", param="name")
        self._check_owner(first)

    @staticmethod
    def _check_owner(row: DatasetRow) -> None:
        who = current_principal()
        if who is not None and not who.is_admin and row.tenant_id != who.tenant_id:
            raise PermissionDenied(f"dataset {row.name!r} belongs to another tenant")

    def _insert(self, **fields: Any) -> DatasetInfo:
        """Write the next version of ``fields["name"]`` (a fresh row per attempt)."""

        def work(s: Session) -> DatasetInfo:
            newest = s.scalar(
                select(func.max(DatasetRow.version)).where(DatasetRow.name == fields["name"])
            )
            row = DatasetRow(**fields, version=(newest or 0) + 1, created_at=utcnow())
            s.add(row)
            s.flush()
            return self._info(row, self._tenants(s))

        return self._transaction(work)

    @staticmethod
    def _tenants(s: Session) -> dict[int, str]:
        return {i: n for i, n in s.execute(select(TenantRow.id, TenantRow.name))}

    @staticmethod
    def _info(row: DatasetRow, tenants: dict[int, str]) -> DatasetInfo:
        return DatasetInfo(
            name=row.name,
            version=row.version,
            format=row.format,
            filename=row.filename,
            sha256=row.artifact_sha256,
            size=row.size,
            rows=row.rows,
            dataset_schema=DatasetSchema.model_validate(row.dataset_schema),
            description=row.description,
            owner=tenants.get(row.tenant_id) if row.tenant_id is not None else None,
            builtin=row.builtin,
            created_at=row.created_at,
        )

    def _transaction(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in a write transaction; a concurrent same-name insert is retried."""
        for attempt in range(1, 6):
            try:
                with self._db.session(write=True) as s:
                    return work(s)
            except IntegrityError as exc:
                if attempt == 5:
                    raise Conflict(f"concurrent changes kept colliding: {exc.orig}") from exc
        raise AssertionError("unreachable")

    def _collect(self, shas: list[str]) -> None:
        """Delete artifacts no dataset version nor model version references any more."""
        for sha in set(shas):
            with self._db.session() as s:
                used = s.scalar(
                    select(func.count())
                    .select_from(DatasetRow)
                    .where(DatasetRow.artifact_sha256 == sha)
                ) or s.scalar(
                    select(func.count())
                    .select_from(VersionRow)
                    .where(VersionRow.artifact_sha256 == sha)
                )
            if not used:
                self._artifacts.delete(sha)


def load_table(ref: DatasetRef) -> Table:
    """Read a dataset version the way a training job reads it."""
    if ref.builtin:
        from modelport.training.builtin import load_builtin

        return load_builtin(ref.name)
    from modelport.training.formats import read_dataset

    assert ref.path is not None  # uploads always have an artifact
    return read_dataset(
        Path(ref.path),
        ref.format,
        target=ref.target,
        task=ref.task,  # type: ignore[arg-type]  # stored from a Task
        text_column=ref.text_column,
    )
