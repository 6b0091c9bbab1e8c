"""``GET /api/audit``: the audit log of admin actions, newest first (platform admin only).

The auth middleware already refuses keys without the ``admin`` scope on this path.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from modelport.api.deps import ServicesDep
from modelport.engine.audit import MAX_LIMIT
from modelport.types.accounts import TENANT_NAME_PATTERN, AuditEntry

router = APIRouter(prefix="/api", tags=["audit"])


@router.get("/audit", response_model=list[AuditEntry], summary="Query the audit log")
async def query_audit(
    services: ServicesDep,
    tenant: str | None = Query(default=None, pattern=TENANT_NAME_PATTERN),
    action: str | None = Query(
        default=None,
        max_length=160,
        description='An action ("POST /api/keys"), or a prefix ending in * ("DELETE *").',
    ),
    since: datetime | None = Query(default=None, description="From this time (inclusive)."),
    until: datetime | None = Query(default=None, description="Before this time."),
    limit: int = Query(default=100, ge=1, le=MAX_LIMIT),
) -> list[AuditEntry]:
    return await run_in_threadpool(
        lambda: services.audit.query(
            tenant=tenant, action=action, since=since, until=until, limit=limit
        )
    )
