"""``GET /api/usage/recent``: the newest usage events kept in memory (read-only).

The ring holds ``usage_recent_events`` events and is lost at restart: it is for operators
and tests; billing subscribes its own writer to the ``UsageHub``.
"""

from __future__ import annotations

from fastapi import APIRouter, Query

from modelport.api.deps import ServicesDep
from modelport.types.admin import UsageRecord

router = APIRouter(prefix="/api", tags=["usage"])


@router.get(
    "/usage/recent", response_model=list[UsageRecord], summary="Recent usage events, oldest first"
)
async def recent_usage(
    services: ServicesDep, limit: int = Query(default=100, ge=1, le=100_000)
) -> list[UsageRecord]:
    return [UsageRecord.model_validate(e.to_dict()) for e in services.usage.recent(limit)]
