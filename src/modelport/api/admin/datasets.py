"""Dataset routes: register an uploaded file as a dataset version, list, show, preview, delete.

The file itself is uploaded first with ``POST /api/artifacts``; reading and checking it is
file parsing, so every route runs in the thread pool.
"""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from modelport.api.deps import ServicesDep
from modelport.engine.datasets import MAX_PREVIEW_ROWS
from modelport.types.training import (
    CreateDataset,
    DatasetDetail,
    DatasetInfo,
    DatasetPreview,
    TrainerInfo,
)

router = APIRouter(prefix="/api", tags=["training"])


@router.post(
    "/datasets",
    status_code=201,
    response_model=DatasetInfo,
    summary="Register an uploaded file as a new dataset version (schema inferred, checked)",
)
async def create_dataset(services: ServicesDep, body: CreateDataset) -> DatasetInfo:
    return await run_in_threadpool(services.datasets.create, body)


@router.get(
    "/datasets",
    response_model=list[DatasetInfo],
    summary="List datasets (newest version of each, built-ins included)",
)
def list_datasets(services: ServicesDep) -> list[DatasetInfo]:
    return services.datasets.list_datasets()


@router.get("/datasets/{name}", response_model=DatasetDetail, summary="A dataset and its versions")
def get_dataset(services: ServicesDep, name: str) -> DatasetDetail:
    return services.datasets.get(name)


@router.get(
    "/datasets/{name}/preview", response_model=DatasetPreview, summary="First rows of a dataset"
)
def preview_dataset(
    services: ServicesDep,
    name: str,
    version: int | None = Query(default=None, ge=1),
    rows: int = Query(default=10, ge=1, le=MAX_PREVIEW_ROWS),
) -> DatasetPreview:
    return services.datasets.preview(name, version, rows)


@router.delete("/datasets/{name}", status_code=204, summary="Delete a dataset (all versions)")
def delete_dataset(services: ServicesDep, name: str) -> Response:
    services.datasets.delete(name)
    return Response(status_code=204)


@router.get("/trainers", response_model=list[TrainerInfo], summary="Available trainers")
def list_trainers(services: ServicesDep) -> list[TrainerInfo]:
    return services.training.trainers()
