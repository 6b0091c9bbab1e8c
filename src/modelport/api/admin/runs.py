"""Training run routes: start, list, compare, show, follow (SSE), logs, cancel.

Run ids are path strings parsed by the engine, so a malformed id is a run that does not
exist (404) like any other, not a validation error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from starlette.responses import PlainTextResponse

from modelport.api.deps import ServicesDep
from modelport.api.openai.sse import EventStreamResponse
from modelport.engine.run_records import MAX_LIST
from modelport.types.training import (
    RunComparison,
    RunDetail,
    RunEvent,
    RunInfo,
    RunStatus,
    TrainRequest,
)

router = APIRouter(prefix="/api", tags=["training"])

_SSE = {"content": {"text/event-stream": {"schema": {"type": "string"}}}}


@router.post(
    "/runs",
    status_code=201,
    response_model=RunInfo,
    summary="Start a training run (validated completely first; queued)",
)
async def create_run(services: ServicesDep, body: TrainRequest) -> RunInfo:
    return await services.training.submit(body)


@router.get("/runs", response_model=list[RunInfo], summary="List runs, newest first")
def list_runs(
    services: ServicesDep,
    model: str | None = None,
    dataset: str | None = None,
    trainer: str | None = None,
    status: RunStatus | None = None,
    limit: int = Query(default=100, ge=1, le=MAX_LIST),
) -> list[RunInfo]:
    return services.training.list_runs(
        model=model,
        dataset=dataset,
        trainer=trainer,
        status=status.value if status is not None else None,
        limit=limit,
    )


@router.get(
    "/runs/compare", response_model=RunComparison, summary="Compare runs' params and metrics"
)
def compare_runs(
    services: ServicesDep, ids: str = Query(description="Run ids, comma-separated: 1,2")
) -> RunComparison:
    return services.training.compare(ids)


@router.get("/runs/{run_id}", response_model=RunDetail, summary="A run with per-epoch metrics")
def get_run(services: ServicesDep, run_id: str) -> RunDetail:
    return services.training.get(run_id)


@router.get(
    "/runs/{run_id}/events",
    status_code=200,
    response_class=EventStreamResponse,
    responses={200: _SSE},
    summary="Stored, then live progress events (server-sent events) until the run ends",
)
async def run_events(services: ServicesDep, run_id: str) -> EventStreamResponse:
    numeric = await run_in_threadpool(services.training.check_visible, run_id)
    return EventStreamResponse(_sse(services.training.events(numeric)))


async def _sse(events: AsyncIterator[RunEvent]) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            body = event.model_dump_json()
            yield f"id: {event.seq}\nevent: {event.type}\ndata: {body}\n\n".encode()
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


@router.get("/runs/{run_id}/logs", response_class=PlainTextResponse, summary="The run's job log")
def run_logs(services: ServicesDep, run_id: str) -> PlainTextResponse:
    return PlainTextResponse(services.training.logs(run_id))


@router.post("/runs/{run_id}/cancel", response_model=RunInfo, summary="Cancel a run")
async def cancel_run(services: ServicesDep, run_id: str) -> RunInfo:
    return await services.training.cancel(run_id)
