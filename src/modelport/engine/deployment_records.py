"""Deployments' desired state in the registry database, so they come back after a restart.

A mixin of ``Registry`` (it shares the registry's session handling, retries and access
rules): a deployment is visible to whoever may see its model, and changed only by whoever
may change the model (``engine/access.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelport.engine.access import AccessIndex
from modelport.engine.principal import current_principal
from modelport.engine.registry_rows import check_json, check_name, model_row, resolve
from modelport.errors import DeploymentNotFound, InvalidInput
from modelport.storage.db import Database
from modelport.storage.tables import DeploymentRow, ModelRow, utcnow

T = TypeVar("T")


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


class DeploymentRecords:
    """Save, list, get and delete stored deployments (mixed into ``Registry``)."""

    _db: Database
    access: AccessIndex

    def _require(self, name: str, *, change: bool = False) -> None:
        raise NotImplementedError

    def _transaction(self, work: Callable[[Session], T]) -> T:
        raise NotImplementedError

    def save_deployment(self, rec: DeploymentRecord) -> DeploymentRecord:
        """Create or replace (by name) the desired state of a deployment."""
        self._require(rec.model, change=True)
        caller = current_principal()
        check_name(rec.name, "name")
        check_json(rec.options, "options")
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
            model = model_row(s, rec.model, lock=True)
            resolve(s, model, rec.version)
            row = s.scalar(select(DeploymentRow).where(DeploymentRow.name == rec.name))
            now = utcnow()
            if row is None:
                row = DeploymentRow(
                    name=rec.name,
                    tenant_id=caller.tenant_id if caller is not None else None,
                    created_at=now,
                )
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
            visible = set(self.access.filter(model for _, model in rows))
            return [_deployment_record(row, model) for row, model in rows if model in visible]

    def get_deployment(self, name: str) -> DeploymentRecord:
        """One stored deployment (``DeploymentNotFound``)."""
        with self._db.session() as s:
            found = s.execute(
                select(DeploymentRow, ModelRow.name)
                .join(ModelRow, DeploymentRow.model_id == ModelRow.id)
                .where(DeploymentRow.name == name)
            ).first()
            if found is None or not self.access.visible(found[1]):
                raise DeploymentNotFound(f"deployment {name!r} not found", param="name")
            return _deployment_record(found[0], found[1])

    def delete_deployment(self, name: str) -> None:
        """Forget a deployment's desired state (``DeploymentNotFound``)."""

        def work(s: Session) -> None:
            found = s.execute(
                select(DeploymentRow, ModelRow.name)
                .join(ModelRow, DeploymentRow.model_id == ModelRow.id)
                .where(DeploymentRow.name == name)
            ).first()
            if found is None or not self.access.visible(found[1]):
                raise DeploymentNotFound(f"deployment {name!r} not found", param="name")
            self.access.check_change(found[1])
            s.delete(found[0])

        self._transaction(work)


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
