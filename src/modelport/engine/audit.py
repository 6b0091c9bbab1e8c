"""The audit log: who did what to the platform, when, from where, and how it ended.

The auth middleware records every write to the admin API (``POST``/``PUT``/``PATCH``/
``DELETE`` under ``/api``) as one ``audit_log`` row — the caller's tenant and key, the action
as ``"METHOD /route/template"``, the concrete path as target, the HTTP status, the client
address — before the response's last bytes leave, so a client that has its answer can
already find the entry. Routes may add a small ``detail`` (e.g. the id of a created key;
never a secret). ``query`` serves ``GET /api/audit`` (platform admin only).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import aliased

from modelport.engine.principal import Principal
from modelport.errors import InvalidInput
from modelport.storage.db import Database
from modelport.storage.tables import ApiKeyRow, AuditRow, TenantRow, utcnow
from modelport.types.accounts import AuditEntry

MAX_LIMIT = 10_000


def _aware(when: datetime | None) -> datetime | None:
    """A query bound as given, with a naive time read as UTC."""
    return when if when is None or when.tzinfo is not None else when.replace(tzinfo=UTC)


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


class AuditLog:
    """Writes and reads ``audit_log`` rows (synchronous: call from a thread pool)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def record(
        self,
        principal: Principal | None,
        action: str,
        target: str,
        status: int,
        remote: str = "",
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one entry (the caller's identity comes from ``principal``)."""
        row = AuditRow(
            at=utcnow(),
            tenant_id=None if principal is None else principal.tenant_id,
            key_id=None if principal is None else principal.key_id,
            actor=_clip("anonymous" if principal is None else principal.actor, 160),
            action=_clip(action, 160),
            target=_clip(target, 255),
            status=status,
            remote=_clip(remote, 64),
            detail=detail or {},
        )
        with self._db.session() as session:
            session.add(row)

    def query(
        self,
        *,
        tenant: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Entries matching every filter given, newest first.

        ``action`` is an exact action (``"POST /api/keys"``) or, ending in ``*``, a prefix
        (``"DELETE *"``); ``since`` is inclusive, ``until`` exclusive.
        """
        since, until = _aware(since), _aware(until)
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}", param="limit")
        if since is not None and until is not None and since >= until:
            raise InvalidInput("since must be before until", param="since")
        key = aliased(ApiKeyRow)
        query = (
            select(AuditRow, TenantRow.name, key.key_id)
            .outerjoin(TenantRow, TenantRow.id == AuditRow.tenant_id)
            .outerjoin(key, key.id == AuditRow.key_id)
            .order_by(AuditRow.id.desc())
            .limit(limit)
        )
        if tenant is not None:
            query = query.where(TenantRow.name == tenant)
        if action is not None:
            if action.endswith("*"):
                query = query.where(AuditRow.action.startswith(action[:-1], autoescape=True))
            else:
                query = query.where(AuditRow.action == action)
        if since is not None:
            query = query.where(AuditRow.at >= since)
        if until is not None:
            query = query.where(AuditRow.at < until)
        with self._db.session() as session:
            return [
                AuditEntry(
                    id=row.id,
                    at=row.at,
                    tenant=tenant_name,
                    key_id=key_id,
                    actor=row.actor,
                    action=row.action,
                    target=row.target,
                    status=row.status,
                    remote=row.remote,
                    detail=row.detail,
                )
                for row, tenant_name, key_id in session.execute(query)
            ]
