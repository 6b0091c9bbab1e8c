"""The stored side of pipelines (``engine/pipelines.py``): rows, owners and shares.

Every function opens its own transaction and is synchronous: ``PipelineService`` runs them
in a worker thread. Ownership comes back as the ``Owner`` models use (``engine/access.py``),
so pipelines and models follow one set of visibility rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select

from modelport.engine.access import Owner
from modelport.engine.registry_rows import tenant_ids
from modelport.storage.db import Database
from modelport.storage.tables import PipelineRow, PipelineShareRow, TenantRow
from modelport.types.traffic import PipelineSpec


@dataclass(frozen=True)
class StoredPipeline:
    """One stored pipeline: its row, who owns it and who may see it."""

    row: PipelineRow
    owner_name: str | None  # the owning tenant's name; None: the platform
    owner: Owner


def load(db: Database) -> list[StoredPipeline]:
    """Every stored pipeline in creation order (a step pipeline comes before its users)."""
    with db.session() as s:
        shares: dict[int, set[int]] = {}
        for pipeline_id, tenant_id in s.execute(
            select(PipelineShareRow.pipeline_id, PipelineShareRow.tenant_id)
        ):
            shares.setdefault(pipeline_id, set()).add(tenant_id)
        rows = s.execute(
            select(PipelineRow, TenantRow.name)
            .outerjoin(TenantRow, PipelineRow.tenant_id == TenantRow.id)
            .order_by(PipelineRow.id)
        ).all()
        return [
            StoredPipeline(row, name, Owner(row.tenant_id, row.visibility,
                                            frozenset(shares.get(row.id, ()))))
            for row, name in rows
        ]  # fmt: skip


def lookup_tenants(db: Database, names: list[str]) -> dict[str, int]:
    """Tenant name → id for ``names`` (400 naming unknown ones)."""
    if not names:
        return {}
    with db.session() as s:
        return tenant_ids(s, names)


def insert(db: Database, spec: PipelineSpec, owner: Owner, now: datetime) -> str | None:
    """Store a new pipeline owned as ``owner``; the owning tenant's name."""
    body = spec.model_dump(mode="json", include={"steps", "outputs"})
    with db.session(write=True) as s:
        row = PipelineRow(name=spec.name, tenant_id=owner.tenant_id, kind=spec.kind.value,
                          spec=body, description=spec.description, created_at=now,
                          visibility=owner.visibility)  # fmt: skip
        s.add(row)
        s.flush()  # the id, for the shares
        for tenant_id in sorted(owner.shared_with):
            s.add(PipelineShareRow(pipeline_id=row.id, tenant_id=tenant_id))
        if owner.tenant_id is None:
            return None
        return s.scalar(select(TenantRow.name).where(TenantRow.id == owner.tenant_id))


def set_visibility(db: Database, name: str, owner: Owner) -> None:
    """Store ``name``'s visibility and shares (replacing the shares it had)."""
    with db.session(write=True) as s:
        row = s.scalar(select(PipelineRow).where(PipelineRow.name == name))
        if row is None:  # deleted meanwhile: the service's lock makes this unreachable
            return
        row.visibility = owner.visibility
        s.execute(delete(PipelineShareRow).where(PipelineShareRow.pipeline_id == row.id))
        for tenant_id in sorted(owner.shared_with):
            s.add(PipelineShareRow(pipeline_id=row.id, tenant_id=tenant_id))


def remove(db: Database, name: str) -> None:
    """Delete a stored pipeline (its shares go with it)."""
    with db.session(write=True) as s:
        row = s.scalar(select(PipelineRow).where(PipelineRow.name == name))
        if row is not None:
            s.execute(delete(PipelineShareRow).where(PipelineShareRow.pipeline_id == row.id))
            s.delete(row)
