"""``create_app``: the FastAPI application over a set of built services.

The lifespan migrates the database, restores stored deployments, registers the built-in
datasets and installs the demo models on first start (then, in the background, trains the
demo pipeline's head: ``engine/demo_pipeline.py``), starts the training scheduler (which
re-queues interrupted runs), and stops every worker and job on shutdown. No module-level
app or globals: tests and the server each build their own.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response
from starlette.types import ASGIApp

from modelport import __version__
from modelport.api.admin import accounts as admin_accounts
from modelport.api.admin import audit as admin_audit
from modelport.api.admin import billing as admin_billing
from modelport.api.admin import datasets as admin_datasets
from modelport.api.admin import deployments as admin_deployments
from modelport.api.admin import models as admin_models
from modelport.api.admin import pipelines as admin_pipelines
from modelport.api.admin import runs as admin_runs
from modelport.api.admin import traffic as admin_traffic
from modelport.api.admin import usage as admin_usage
from modelport.api.auth import AuthMiddleware
from modelport.api.errors import install_error_handlers
from modelport.api.fastpath import InferenceFastPath
from modelport.api.limits import LimitsMiddleware
from modelport.api.metering import MeteringMiddleware
from modelport.api.openai import router as openai_router
from modelport.api.v1 import routes as v1
from modelport.api.v2 import repository as v2_repository
from modelport.api.v2 import routes as v2
from modelport.engine.bootstrap import (
    install_builtin_datasets,
    install_demo_models,
    install_text_demos,
)
from modelport.engine.demo_pipeline import start_demo_pipeline
from modelport.engine.services import Services

log = logging.getLogger("modelport")


async def _become_ready(
    app: FastAPI, services: Services, installing: asyncio.Task[list[str]] | None
) -> None:
    try:
        async with asyncio.timeout(services.settings.worker_start_timeout_s):
            if installing is not None:  # first start: the text demos are being registered
                await asyncio.wait({installing})
            await services.deployments.wait_settled()
    except TimeoutError:
        log.warning("some deployments are still loading; reporting ready anyway")
    # Move everything built at start-up out of the garbage collector's view: a full
    # collection over those objects otherwise stalls the event loop for ~100 ms under load.
    gc.freeze()
    app.state.ready = True
    log.info("modelport ready (data dir %s)", services.settings.data_dir)


def create_app(services: Services) -> FastAPI:
    """Build the ASGI app serving ``services``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(services.database.migrate)
        await run_in_threadpool(services.accounts.ensure_admin_key, services.settings)
        await run_in_threadpool(services.accounts.load)
        await services.accounts.start()
        # Before serving: bill what a crash left in the usage journal, load prices and
        # month-to-date spend, start the usage writer.
        await run_in_threadpool(services.meter.start)
        await services.deployments.restore()
        await services.traffic.restore()  # routes and pipelines over the restored deployments
        await services.pipelines.restore()
        # The built-in datasets (first start only) load scikit-learn: serve meanwhile (a
        # lookup of one waits for them); runs a stop interrupted are queued again.
        builtins = install_builtin_datasets(services)
        await services.training.start()
        installing: asyncio.Task[list[str]] | None = None
        pipeline: asyncio.Task[bool] | None = None
        if services.settings.demo_models:
            await install_demo_models(services)
            if services.settings.demo_text_models:
                # Loading language models takes a while: serve meanwhile (live, not ready).
                installing = asyncio.create_task(install_text_demos(services))
                # Then, not holding up readiness: train the head of the demo pipeline.
                pipeline = start_demo_pipeline(services, installing)
        # Live at once; ready (V2 health) once the deployments have finished loading.
        settle = asyncio.create_task(_become_ready(app, services, installing))
        try:
            yield
        finally:
            settle.cancel()
            builtins.cancel()
            started = [t for t in (installing, pipeline) if t is not None]
            for task in started:
                task.cancel()
            await asyncio.gather(builtins, *started, return_exceptions=True)
            app.state.ready = False
            await services.training.shutdown()  # stops job workers; their runs resume later
            await services.deployments.shutdown()
            await run_in_threadpool(services.meter.stop)  # commits every journaled record
            await services.accounts.stop()
            services.close()

    app = FastAPI(
        title="modelport",
        version=__version__,
        summary="Models as a service: registry, deployments, Open Inference Protocol V2.",
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.ready = False
    install_error_handlers(app)
    app.include_router(v2.router)
    app.include_router(v2_repository.router)
    app.include_router(v1.router)
    app.include_router(admin_models.router)
    app.include_router(admin_deployments.router)
    app.include_router(admin_usage.router)
    app.include_router(admin_accounts.router)
    app.include_router(admin_audit.router)
    app.include_router(admin_billing.router)
    app.include_router(admin_datasets.router)
    app.include_router(admin_runs.router)
    app.include_router(admin_traffic.router)
    app.include_router(admin_pipelines.router)
    app.include_router(openai_router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def create_asgi_app(services: Services) -> ASGIApp:
    """What the server runs: the app behind the inference fast path (``api/fastpath.py``)."""
    api = create_app(services)
    app: ASGIApp = InferenceFastPath(api)
    if not services.settings.auth:
        log.warning("auth is off (MODELPORT_AUTH=false): no keys, no limits, no metering")
        return app
    if services.settings.metering:
        app = MeteringMiddleware(app, services.meter)
    # Outermost first: Auth(Limits(Metering(fast path))). Metering (H2) goes inside limits,
    # auth (H1) outside: limits read the caller that auth puts in ``CURRENT``.
    if services.settings.rate_limits:
        app = LimitsMiddleware(app, services.limits, services.settings.max_request_bytes)
    # Auth stays outermost (add new middlewares above this line, inside it): every layer
    # inside reads the caller it puts in ``CURRENT``; the schema names refused audit actions.
    return AuthMiddleware(app, services, api.openapi)
