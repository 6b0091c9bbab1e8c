"""Deployment routes: deploy, scale, undeploy, status."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from modelport import __version__
from modelport.api.deps import ServicesDep
from modelport.types.admin import DeploymentStatus, DeploySpec, ScaleSpec, ServerStatus

router = APIRouter(prefix="/api", tags=["deployments"])


@router.get("/deployments", response_model=list[DeploymentStatus], summary="List deployments")
async def list_deployments(services: ServicesDep) -> list[DeploymentStatus]:
    return services.deployments.statuses()


@router.post(
    "/deployments",
    status_code=201,
    response_model=DeploymentStatus,
    summary="Deploy a model version (replaces an existing deployment of the model)",
)
async def deploy(services: ServicesDep, body: DeploySpec) -> DeploymentStatus:
    return await services.deployments.deploy(body)


@router.get("/deployments/{name}", response_model=DeploymentStatus, summary="Deployment status")
async def get_deployment(services: ServicesDep, name: str) -> DeploymentStatus:
    return services.deployments.status(name)


@router.patch("/deployments/{name}", response_model=DeploymentStatus, summary="Scale")
async def scale(services: ServicesDep, name: str, body: ScaleSpec) -> DeploymentStatus:
    return await services.deployments.scale(name, body.replicas)


@router.delete("/deployments/{name}", status_code=204, summary="Undeploy")
async def undeploy(services: ServicesDep, name: str) -> Response:
    await services.deployments.undeploy(name)
    return Response(status_code=204)


@router.get("/status", response_model=ServerStatus, summary="Server status")
async def status(services: ServicesDep) -> ServerStatus:
    count = await run_in_threadpool(services.registry.count_models)
    return ServerStatus(
        version=__version__,
        database=services.database.dialect_name,
        backend=services.backend.name,
        models=count,
        deployments=services.deployments.statuses(),
    )
