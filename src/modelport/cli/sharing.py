"""Who may see a model or a pipeline: the options and output ``models share``,
``pipelines share`` and ``pipelines create`` have in common."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Protocol

import typer

from modelport.cli import csv_arg, output


class Visibility(StrEnum):
    PRIVATE = "private"
    SHARED = "shared"
    PUBLIC = "public"


VisibilityOption = Annotated[
    Visibility,
    typer.Option("--visibility", help="private: owner only; shared: named tenants; public."),
]
TenantOption = Annotated[
    list[str] | None,
    typer.Option("--tenant", "-t", help="Tenant to share with (repeatable, or a,b)."),
]


class Shared(Protocol):
    """What the server answers after a visibility change (a model's or a pipeline's)."""

    @property
    def name(self) -> str: ...

    @property
    def visibility(self) -> str: ...


def tenant_list(tenant: list[str] | None) -> list[str]:
    """The ``--tenant`` values, each of which may itself be a comma-separated list."""
    return [each for item in tenant or [] for each in csv_arg(item)]


def report(info: Shared, tenants: list[str], *, as_json: bool) -> None:
    """Print the new visibility: the server's answer as JSON, or one line."""
    if as_json:
        output.print_json(info)
        return
    with_whom = f" with {', '.join(tenants)}" if info.visibility == Visibility.SHARED else ""
    output.success(f"{info.name} is now {info.visibility}{with_whom}.")
