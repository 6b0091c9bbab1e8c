"""Run the server: build services, make the app, hand it to uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from modelport.api.app import create_asgi_app
from modelport.engine.services import build_services
from modelport.settings import Settings


def run(settings: Settings) -> None:
    """Serve until interrupted (what ``modelport serve`` and ``make run`` do)."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    app = create_asgi_app(build_services(settings))
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # per-request logging costs more than the model call for small models
        proxy_headers=False,  # no proxy in front by default; saves work on every request
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=10,
    )
