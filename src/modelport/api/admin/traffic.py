"""Traffic routes of a model: canary split, shadow, promote, rollback (``engine/traffic.py``)."""

from __future__ import annotations

from fastapi import APIRouter, Body

from modelport.api.deps import ServicesDep
from modelport.types.traffic import PromoteSpec, TrafficSpec, TrafficStatus

router = APIRouter(prefix="/api", tags=["traffic"])


@router.get("/models/{name}/traffic", response_model=TrafficStatus, summary="A model's traffic")
async def get_traffic(services: ServicesDep, name: str) -> TrafficStatus:
    return await services.traffic.status(name)


@router.put(
    "/models/{name}/traffic",
    response_model=TrafficStatus,
    summary="Split traffic between versions (canary) and shadow one",
)
async def set_traffic(services: ServicesDep, name: str, body: TrafficSpec) -> TrafficStatus:
    return await services.traffic.set(name, body)


@router.post(
    "/models/{name}/promote",
    response_model=TrafficStatus,
    summary="Send all traffic to a version (default: the canary); the old one is kept",
)
async def promote(
    services: ServicesDep, name: str, body: PromoteSpec | None = Body(default=None)
) -> TrafficStatus:
    return await services.traffic.promote(name, body.version if body is not None else None)


@router.post(
    "/models/{name}/rollback",
    response_model=TrafficStatus,
    summary="Cancel the canary and shadow, or return to the version before the promotion",
)
async def rollback(services: ServicesDep, name: str) -> TrafficStatus:
    return await services.traffic.rollback(name)
