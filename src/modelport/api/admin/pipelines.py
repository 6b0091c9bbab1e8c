"""Pipelines: graphs of deployed models served as one model (``engine/pipelines.py``)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from modelport.api.deps import ServicesDep
from modelport.types.admin import SetVisibility
from modelport.types.traffic import PipelineInfo, PipelineSpec

router = APIRouter(prefix="/api", tags=["pipelines"])


@router.get("/pipelines", response_model=list[PipelineInfo], summary="List pipelines")
async def list_pipelines(services: ServicesDep) -> list[PipelineInfo]:
    return services.pipelines.list_pipelines()


@router.post(
    "/pipelines",
    status_code=201,
    response_model=PipelineInfo,
    summary="Create a pipeline (validated against its steps' deployments)",
)
async def create_pipeline(services: ServicesDep, body: PipelineSpec) -> PipelineInfo:
    return await services.pipelines.create(body)


@router.get("/pipelines/{name}", response_model=PipelineInfo, summary="A pipeline")
async def get_pipeline(services: ServicesDep, name: str) -> PipelineInfo:
    return services.pipelines.get(name)


@router.put(
    "/pipelines/{name}/visibility",
    response_model=PipelineInfo,
    summary="Make a pipeline private, public, or shared with named tenants (owner or admin)",
)
async def set_visibility(services: ServicesDep, name: str, body: SetVisibility) -> PipelineInfo:
    return await services.pipelines.set_visibility(name, body.visibility, body.tenants)


@router.delete("/pipelines/{name}", status_code=204, summary="Delete a pipeline")
async def delete_pipeline(services: ServicesDep, name: str) -> Response:
    await services.pipelines.delete(name)
    return Response(status_code=204)
