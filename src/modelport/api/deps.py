"""Annotated dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from modelport.engine.services import Services


def get_services(request: Request) -> Services:
    """The server's services, built once by ``create_app``."""
    return cast(Services, request.app.state.services)


ServicesDep = Annotated[Services, Depends(get_services)]
