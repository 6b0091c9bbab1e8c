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

from collections.abc import Callable, Iterable
from typing import TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelport.engine.access import AccessIndex, Owner
from modelport.engine.deployment_records import DeploymentRecord, DeploymentRecords
from modelport.engine.principal import current_principal
from modelport.engine.registry_rows import (
    LATEST,
    aliases_by_version,
    check_alias,
    check_json,
    check_name,
    check_visibility,
    model_row,
    point_alias,
    refuse_if_deployed,
    resolve,
    tenant_ids,
    version_info,
)
from modelport.errors import Conflict, InvalidInput, ModelNotFound, NotFound
from modelport.runtimes.base import RUNTIMES
from modelport.storage.artifacts import ArtifactStore
from modelport.storage.db import Database
from modelport.storage.tables import (
    AliasRow,
    ModelRow,
    ModelShareRow,
    TenantRow,
    VersionRow,
    utcnow,
)
from modelport.types.admin import CreateVersion, ModelDetail, ModelInfo, Signature, VersionInfo

__all__ = ["LATEST", "DeploymentRecord", "Registry"]

T = TypeVar("T")

_ATTEMPTS = 5


class Registry(DeploymentRecords):
    """Registry operations over a ``Database`` and the ``ArtifactStore`` holding the bytes."""

    def __init__(self, db: Database, artifacts: ArtifactStore) -> None:
        self._db = db
        self._artifacts = artifacts
        # Who owns and may see each model (engine/access.py); every read and change of a
        # model or deployment goes through ``_require`` so all routes apply the same rules.
        self.access = AccessIndex(self._load_owners)

    def _load_owners(self) -> dict[str, Owner]:
        with self._db.session() as s:
            shares: dict[int, set[int]] = {}
            for model_id, tenant_id in s.execute(
                select(ModelShareRow.model_id, ModelShareRow.tenant_id)
            ):
                shares.setdefault(model_id, set()).add(tenant_id)
            return {
                name: Owner(tenant_id, visibility, frozenset(shares.get(model_id, ())))
                for model_id, name, tenant_id, visibility in s.execute(
                    select(ModelRow.id, ModelRow.name, ModelRow.tenant_id, ModelRow.visibility)
                )
            }

    def _require(self, name: str, *, change: bool = False) -> None:
        """``ModelNotFound`` if the caller may not see ``name``; 403 if it may not change it."""
        if not self.access.visible(name):
            raise ModelNotFound(f"model {name!r} not found", param="model")
        if change:
            self.access.check_change(name)

    # -- models ---------------------------------------------------------------------------

    def count_models(self) -> int:
        """Number of registered models."""
        with self._db.session() as s:
            return s.scalar(select(func.count()).select_from(ModelRow)) or 0

    def list_models(self) -> list[ModelInfo]:
        """Every model with its newest version number and its aliases, sorted by name."""
        with self._db.session() as s:
            models = s.scalars(select(ModelRow).order_by(ModelRow.name)).all()
            visible = set(self.access.filter(m.name for m in models))
            models = [m for m in models if m.name in visible]
            tenants: dict[int, str] = {
                i: n for i, n in s.execute(select(TenantRow.id, TenantRow.name))
            }
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
                    owner=tenants.get(m.tenant_id) if m.tenant_id is not None else None,
                    visibility=m.visibility,
                )
                for m in models
            ]

    def get_model(self, name: str) -> ModelDetail:
        """One model with all its versions, oldest first (``ModelNotFound``)."""
        self._require(name)
        with self._db.session() as s:
            model = model_row(s, name)
            versions = s.scalars(
                select(VersionRow)
                .where(VersionRow.model_id == model.id)
                .order_by(VersionRow.version)
            ).all()
            by_version = aliases_by_version(s, model.id)
            infos = [version_info(model.name, v, by_version.get(v.id, [])) for v in versions]
            owner = s.scalar(select(TenantRow.name).where(TenantRow.id == model.tenant_id))
            return ModelDetail(
                owner=owner,
                visibility=model.visibility,
                name=model.name,
                description=model.description,
                created_at=model.created_at,
                latest_version=infos[-1].version if infos else None,
                aliases={a: v.version for v in infos for a in v.aliases},
                versions=infos,
            )

    def delete_model(self, name: str) -> None:
        """Delete a model, its versions and aliases (``Conflict`` while deployed)."""
        self._require(name, change=True)

        def work(s: Session) -> list[str]:
            model = model_row(s, name, lock=True)
            refuse_if_deployed(s, model, version=None)
            shas = s.scalars(
                select(VersionRow.artifact_sha256).where(VersionRow.model_id == model.id)
            ).all()
            s.execute(delete(ModelRow).where(ModelRow.id == model.id))
            return list(shas)

        self._collect_artifacts(self._transaction(work))
        self.access.forget(name)

    def set_visibility(self, name: str, visibility: str, tenants: Iterable[str]) -> ModelInfo:
        """Make ``name`` private, public, or shared with the named tenants (replacing shares)."""
        self._require(name, change=True)
        names = check_visibility(visibility, tenants)

        def work(s: Session) -> Owner:
            model = model_row(s, name, lock=True)
            ids = tenant_ids(s, names)
            model.visibility = visibility
            s.execute(delete(ModelShareRow).where(ModelShareRow.model_id == model.id))
            for tenant_id in ids.values():
                s.add(ModelShareRow(model_id=model.id, tenant_id=tenant_id))
            return Owner(model.tenant_id, visibility, frozenset(ids.values()))

        self.access.set(name, self._transaction(work))
        return next(m for m in self.list_models() if m.name == name)

    # -- versions -------------------------------------------------------------------------

    def create_version(self, name: str, body: CreateVersion, signature: Signature) -> VersionInfo:
        """Register a stored artifact as the next version of ``name`` (created if missing).

        Everything (model, version, aliases) is written in one transaction: on any error
        nothing is recorded.
        """
        check_name(name, "name")
        aliases = list(dict.fromkeys(body.aliases))
        for alias in aliases:
            check_alias(alias, "aliases")
        if body.runtime not in RUNTIMES:
            known = ", ".join(sorted(RUNTIMES))
            raise InvalidInput(
                f"unknown runtime {body.runtime!r} (known: {known})", param="runtime"
            )
        check_json(body.metadata, "metadata")
        check_json(body.lineage, "lineage")
        sha = body.artifact_sha256
        if not self._artifacts.exists(sha):
            raise InvalidInput(
                f"artifact {sha} is not in the store: upload it first", param="artifact_sha256"
            )
        size = self._artifacts.size(sha)
        if self.access.owner(name) is not None:
            self._require(name, change=True)
        caller = current_principal()
        created: list[Owner] = []

        def work(s: Session) -> VersionInfo:
            created.clear()
            model = s.scalar(select(ModelRow).where(ModelRow.name == name).with_for_update())
            if model is None:
                model = ModelRow(
                    name=name,
                    description=body.description or "",
                    tenant_id=caller.tenant_id if caller is not None else None,
                    visibility="private",
                    created_at=utcnow(),
                )
                s.add(model)
                s.flush()
                created.append(Owner(model.tenant_id, model.visibility))
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
                point_alias(s, model.id, alias, row.id)
            return version_info(model.name, row, sorted(aliases))

        info = self._transaction(work)
        if created:
            self.access.set(name, created[0])
        return info

    def get_version(self, name: str, ref: str | int) -> VersionInfo:
        """Resolve ``ref`` (number, digit string, alias or ``"latest"``) to a version."""
        self._require(name)
        with self._db.session() as s:
            model = model_row(s, name)
            row = resolve(s, model, ref)
            return version_info(model.name, row, aliases_by_version(s, model.id).get(row.id, []))

    def delete_version(self, name: str, version: int) -> None:
        """Delete one version and its aliases (``Conflict`` while deployed)."""
        self._require(name, change=True)

        def work(s: Session) -> str:
            model = model_row(s, name, lock=True)
            row = resolve(s, model, version)
            refuse_if_deployed(s, model, version=row.version)
            s.execute(delete(VersionRow).where(VersionRow.id == row.id))
            return row.artifact_sha256

        self._collect_artifacts([self._transaction(work)])

    # -- aliases --------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int) -> VersionInfo:
        """Point ``alias`` at ``version`` (moving it if it pointed elsewhere)."""
        self._require(name, change=True)
        check_alias(alias, "alias")

        def work(s: Session) -> VersionInfo:
            model = model_row(s, name, lock=True)
            row = resolve(s, model, version)
            point_alias(s, model.id, alias, row.id)
            s.flush()
            return version_info(model.name, row, aliases_by_version(s, model.id).get(row.id, []))

        return self._transaction(work)

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias (``NotFound`` if the model has no such alias)."""
        self._require(name, change=True)

        def work(s: Session) -> None:
            model = model_row(s, name, lock=True)
            row = s.scalar(
                select(AliasRow).where(AliasRow.model_id == model.id, AliasRow.alias == alias)
            )
            if row is None:
                raise NotFound(f"model {name!r} has no alias {alias!r}", param="alias")
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
