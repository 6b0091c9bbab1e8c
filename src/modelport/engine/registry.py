"""The model registry: named models, numbered versions, aliases and persisted deployments.

A version is an immutable record pointing at a content-addressed artifact plus what is
needed to load it (runtime, signature, trust). Versions are numbered 1, 2, 3... per model;
aliases (``production``, ``staging``) are movable names for one version. Deployments are
stored here as *desired state* so the engine can bring them back after a restart.

Every method is synchronous and opens its own transaction, so the API can call them from a
thread pool. Writes that read before they write (next version number, upserts) lock the
model row on PostgreSQL and take the write lock up front on SQLite; a unique-constraint
collision (two first versions of a new model at once) is retried a few times.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelport.errors import (
    Conflict,
    DeploymentNotFound,
    InvalidInput,
    ModelNotFound,
    NotFound,
    VersionNotFound,
)
from modelport.runtimes.base import RUNTIMES
from modelport.storage.artifacts import ArtifactStore
from modelport.storage.db import Database
from modelport.storage.tables import AliasRow, DeploymentRow, ModelRow, VersionRow, utcnow
from modelport.types.admin import (
    NAME_PATTERN,
    CreateVersion,
    ModelDetail,
    ModelInfo,
    Signature,
    VersionInfo,
)

T = TypeVar("T")

LATEST = "latest"
_ATTEMPTS = 5
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class DeploymentRecord:
    """The desired state of one deployment (timestamps are set by the registry)."""

    name: str
    model: str
    version: int
    replicas: int = 1
    max_batch_size: int = 1
    max_latency_ms: float = 5.0
    options: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Registry:
    """Registry operations over a ``Database`` and the ``ArtifactStore`` holding the bytes."""

    def __init__(self, db: Database, artifacts: ArtifactStore) -> None:
        self._db = db
        self._artifacts = artifacts

    # -- models ---------------------------------------------------------------------------

    def count_models(self) -> int:
        """Number of registered models."""
        with self._db.session() as s:
            return s.scalar(select(func.count()).select_from(ModelRow)) or 0

    def list_models(self) -> list[ModelInfo]:
        """Every model with its newest version number and its aliases, sorted by name."""
        with self._db.session() as s:
            models = s.scalars(select(ModelRow).order_by(ModelRow.name)).all()
            latest: dict[int, int] = {
                model_id: number
                for model_id, number in s.execute(
                    select(VersionRow.model_id, func.max(VersionRow.version)).group_by(
                        VersionRow.model_id
                    )
                )
            }
            aliases: dict[int, dict[str, int]] = {}
            for model_id, alias, number in s.execute(
                select(AliasRow.model_id, AliasRow.alias, VersionRow.version).join(
                    VersionRow, AliasRow.version_id == VersionRow.id
                )
            ):
                aliases.setdefault(model_id, {})[alias] = number
            return [
                ModelInfo(
                    name=m.name,
                    description=m.description,
                    created_at=m.created_at,
                    latest_version=latest.get(m.id),
                    aliases=dict(sorted(aliases.get(m.id, {}).items())),
                )
                for m in models
            ]

    def get_model(self, name: str) -> ModelDetail:
        """One model with all its versions, oldest first (``ModelNotFound``)."""
        with self._db.session() as s:
            model = _model(s, name)
            versions = s.scalars(
                select(VersionRow)
                .where(VersionRow.model_id == model.id)
                .order_by(VersionRow.version)
            ).all()
            by_version = _aliases_by_version(s, model.id)
            infos = [_version_info(model.name, v, by_version.get(v.id, [])) for v in versions]
            return ModelDetail(
                name=model.name,
                description=model.description,
                created_at=model.created_at,
                latest_version=infos[-1].version if infos else None,
                aliases={a: v.version for v in infos for a in v.aliases},
                versions=infos,
            )

    def delete_model(self, name: str) -> None:
        """Delete a model, its versions and aliases (``Conflict`` while deployed)."""

        def work(s: Session) -> list[str]:
            model = _model(s, name, lock=True)
            _refuse_if_deployed(s, model, version=None)
            shas = s.scalars(
                select(VersionRow.artifact_sha256).where(VersionRow.model_id == model.id)
            ).all()
            s.execute(delete(ModelRow).where(ModelRow.id == model.id))
            return list(shas)

        self._collect_artifacts(self._transaction(work))

    # -- versions -------------------------------------------------------------------------

    def create_version(self, name: str, body: CreateVersion, signature: Signature) -> VersionInfo:
        """Register a stored artifact as the next version of ``name`` (created if missing).

        Everything (model, version, aliases) is written in one transaction: on any error
        nothing is recorded.
        """
        _check_name(name, "name")
        aliases = list(dict.fromkeys(body.aliases))
        for alias in aliases:
            _check_alias(alias, "aliases")
        if body.runtime not in RUNTIMES:
            known = ", ".join(sorted(RUNTIMES))
            raise InvalidInput(
                f"unknown runtime {body.runtime!r} (known: {known})", param="runtime"
            )
        _check_json(body.metadata, "metadata")
        _check_json(body.lineage, "lineage")
        sha = body.artifact_sha256
        if not self._artifacts.exists(sha):
            raise InvalidInput(
                f"artifact {sha} is not in the store: upload it first", param="artifact_sha256"
            )
        size = self._artifacts.size(sha)

        def work(s: Session) -> VersionInfo:
            model = s.scalar(select(ModelRow).where(ModelRow.name == name).with_for_update())
            if model is None:
                model = ModelRow(name=name, description=body.description or "", created_at=utcnow())
                s.add(model)
                s.flush()
            elif body.description is not None:
                model.description = body.description
            newest = s.scalar(
                select(func.max(VersionRow.version)).where(VersionRow.model_id == model.id)
            )
            row = VersionRow(
                model_id=model.id,
                version=(newest or 0) + 1,
                runtime=body.runtime,
                artifact_sha256=sha,
                artifact_name=body.artifact_name,
                artifact_size=size,
                trusted=body.trusted,
                signature=signature.model_dump(mode="json"),
                meta=body.metadata,
                lineage=body.lineage,
                created_at=utcnow(),
            )
            s.add(row)
            s.flush()
            for alias in aliases:
                _point_alias(s, model.id, alias, row.id)
            return _version_info(model.name, row, sorted(aliases))

        return self._transaction(work)

    def get_version(self, name: str, ref: str | int) -> VersionInfo:
        """Resolve ``ref`` (number, digit string, alias or ``"latest"``) to a version."""
        with self._db.session() as s:
            model = _model(s, name)
            row = _resolve(s, model, ref)
            return _version_info(model.name, row, _aliases_by_version(s, model.id).get(row.id, []))

    def delete_version(self, name: str, version: int) -> None:
        """Delete one version and its aliases (``Conflict`` while deployed)."""

        def work(s: Session) -> str:
            model = _model(s, name, lock=True)
            row = _resolve(s, model, version)
            _refuse_if_deployed(s, model, version=row.version)
            s.execute(delete(VersionRow).where(VersionRow.id == row.id))
            return row.artifact_sha256

        self._collect_artifacts([self._transaction(work)])

    # -- aliases --------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int) -> VersionInfo:
        """Point ``alias`` at ``version`` (moving it if it pointed elsewhere)."""
        _check_alias(alias, "alias")

        def work(s: Session) -> VersionInfo:
            model = _model(s, name, lock=True)
            row = _resolve(s, model, version)
            _point_alias(s, model.id, alias, row.id)
            s.flush()
            return _version_info(model.name, row, _aliases_by_version(s, model.id).get(row.id, []))

        return self._transaction(work)

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias (``NotFound`` if the model has no such alias)."""

        def work(s: Session) -> None:
            model = _model(s, name, lock=True)
            row = s.scalar(
                select(AliasRow).where(AliasRow.model_id == model.id, AliasRow.alias == alias)
            )
            if row is None:
                raise NotFound(f"model {name!r} has no alias {alias!r}", param="alias")
            s.delete(row)

        self._transaction(work)

    # -- deployments ----------------------------------------------------------------------

    def save_deployment(self, rec: DeploymentRecord) -> DeploymentRecord:
        """Create or replace (by name) the desired state of a deployment."""
        _check_name(rec.name, "name")
        _check_json(rec.options, "options")
        if rec.replicas < 0:
            raise InvalidInput(f"replicas must be >= 0, got {rec.replicas}", param="replicas")
        if rec.max_batch_size < 1:
            raise InvalidInput(
                f"max_batch_size must be >= 1, got {rec.max_batch_size}", param="max_batch_size"
            )
        if not (math.isfinite(rec.max_latency_ms) and rec.max_latency_ms >= 0):
            raise InvalidInput(
                f"max_latency_ms must be a finite number >= 0, got {rec.max_latency_ms}",
                param="max_latency_ms",
            )

        def work(s: Session) -> DeploymentRecord:
            model = _model(s, rec.model, lock=True)
            _resolve(s, model, rec.version)
            row = s.scalar(select(DeploymentRow).where(DeploymentRow.name == rec.name))
            now = utcnow()
            if row is None:
                row = DeploymentRow(name=rec.name, created_at=now)
                s.add(row)
            row.model_id = model.id
            row.version = rec.version
            row.replicas = rec.replicas
            row.max_batch_size = rec.max_batch_size
            row.max_latency_ms = float(rec.max_latency_ms)
            row.options = dict(rec.options)
            row.updated_at = now
            s.flush()
            return _deployment_record(row, model.name)

        return self._transaction(work)

    def list_deployments(self) -> list[DeploymentRecord]:
        """Every stored deployment, sorted by name."""
        with self._db.session() as s:
            rows = s.execute(
                select(DeploymentRow, ModelRow.name)
                .join(ModelRow, DeploymentRow.model_id == ModelRow.id)
                .order_by(DeploymentRow.name)
            ).all()
            return [_deployment_record(row, model) for row, model in rows]

    def get_deployment(self, name: str) -> DeploymentRecord:
        """One stored deployment (``DeploymentNotFound``)."""
        with self._db.session() as s:
            found = s.execute(
                select(DeploymentRow, ModelRow.name)
                .join(ModelRow, DeploymentRow.model_id == ModelRow.id)
                .where(DeploymentRow.name == name)
            ).first()
            if found is None:
                raise DeploymentNotFound(f"deployment {name!r} not found", param="name")
            return _deployment_record(found[0], found[1])

    def delete_deployment(self, name: str) -> None:
        """Forget a deployment's desired state (``DeploymentNotFound``)."""

        def work(s: Session) -> None:
            row = s.scalar(select(DeploymentRow).where(DeploymentRow.name == name))
            if row is None:
                raise DeploymentNotFound(f"deployment {name!r} not found", param="name")
            s.delete(row)

        self._transaction(work)

    # -- internals ------------------------------------------------------------------------

    def _transaction(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in a write transaction, retrying unique-constraint races."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with self._db.session(write=True) as s:
                    return work(s)
            except IntegrityError as exc:
                if attempt == _ATTEMPTS:
                    raise Conflict(f"concurrent changes kept colliding: {exc.orig}") from exc
        raise AssertionError("unreachable")

    def _collect_artifacts(self, shas: Iterable[str]) -> None:
        """Delete artifacts no version references any more (after the deleting commit)."""
        for sha in set(shas):
            with self._db.session() as s:
                used = s.scalar(
                    select(func.count())
                    .select_from(VersionRow)
                    .where(VersionRow.artifact_sha256 == sha)
                )
            if not used:
                self._artifacts.delete(sha)


def _check_name(name: str, param: str) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            param=param,
        )


def _check_alias(alias: str, param: str) -> None:
    _check_name(alias, param)
    if alias.isdigit() or alias == LATEST:
        raise InvalidInput(
            f"invalid alias {alias!r}: aliases must not be all digits nor {LATEST!r}",
            param=param,
        )


def _check_json(value: dict[str, Any], param: str) -> None:
    # Both databases store JSON text; NaN/Infinity are not JSON and PostgreSQL rejects them.
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{param} is not JSON-serialisable: {exc}", param=param) from exc


def _model(s: Session, name: str, *, lock: bool = False) -> ModelRow:
    query = select(ModelRow).where(ModelRow.name == name)
    model = s.scalar(query.with_for_update() if lock else query)
    if model is None:
        raise ModelNotFound(f"model {name!r} not found", param="model")
    return model


def _resolve(s: Session, model: ModelRow, ref: str | int) -> VersionRow:
    query = select(VersionRow).where(VersionRow.model_id == model.id)
    if isinstance(ref, int) or (ref.isascii() and ref.isdigit()):
        query = query.where(VersionRow.version == int(ref))
    elif ref == LATEST:
        query = query.order_by(VersionRow.version.desc()).limit(1)
    else:
        query = query.join(AliasRow, AliasRow.version_id == VersionRow.id).where(
            AliasRow.alias == ref
        )
    row = s.scalar(query)
    if row is None:
        raise VersionNotFound(f"model {model.name!r} has no version {ref!r}", param="version")
    return row


def _point_alias(s: Session, model_id: int, alias: str, version_id: int) -> None:
    row = s.scalar(select(AliasRow).where(AliasRow.model_id == model_id, AliasRow.alias == alias))
    if row is None:
        s.add(AliasRow(model_id=model_id, alias=alias, version_id=version_id))
    else:
        row.version_id = version_id


def _aliases_by_version(s: Session, model_id: int) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    rows = s.execute(
        select(AliasRow.version_id, AliasRow.alias)
        .where(AliasRow.model_id == model_id)
        .order_by(AliasRow.alias)
    )
    for version_id, alias in rows:
        found.setdefault(version_id, []).append(alias)
    return found


def _refuse_if_deployed(s: Session, model: ModelRow, *, version: int | None) -> None:
    query = select(DeploymentRow.name).where(DeploymentRow.model_id == model.id)
    if version is not None:
        query = query.where(DeploymentRow.version == version)
    names = s.scalars(query.order_by(DeploymentRow.name)).all()
    if names:
        what = f"version {version} of model" if version is not None else "model"
        raise Conflict(
            f"{what} {model.name!r} is used by deployment(s) {', '.join(names)}: delete them first"
        )


def _version_info(model: str, row: VersionRow, aliases: list[str]) -> VersionInfo:
    return VersionInfo(
        model=model,
        version=row.version,
        runtime=row.runtime,
        artifact_sha256=row.artifact_sha256,
        artifact_name=row.artifact_name,
        artifact_size=row.artifact_size,
        trusted=row.trusted,
        signature=Signature.model_validate(row.signature),
        metadata=row.meta,
        lineage=row.lineage,
        created_at=row.created_at,
        aliases=aliases,
    )


def _deployment_record(row: DeploymentRow, model: str) -> DeploymentRecord:
    return DeploymentRecord(
        name=row.name,
        model=model,
        version=row.version,
        replicas=row.replicas,
        max_batch_size=row.max_batch_size,
        max_latency_ms=row.max_latency_ms,
        options=dict(row.options or {}),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
