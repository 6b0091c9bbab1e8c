"""Row-level helpers of the registry: name checks, lookups and conversions to wire models.

Shared by ``registry.py`` (models, versions, aliases), ``deployment_records.py`` and, for
visibility, ``pipeline_rows.py``; each function works inside a session the caller opened.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelport.engine.access import VISIBILITIES
from modelport.errors import Conflict, InvalidInput, ModelNotFound, VersionNotFound
from modelport.storage.tables import AliasRow, DeploymentRow, ModelRow, TenantRow, VersionRow
from modelport.types.admin import NAME_PATTERN, Signature, VersionInfo

LATEST = "latest"
_NAME = re.compile(NAME_PATTERN)


def check_name(name: str, param: str) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            param=param,
        )


def check_alias(alias: str, param: str) -> None:
    check_name(alias, param)
    if alias.isdigit() or alias == LATEST:
        raise InvalidInput(
            f"invalid alias {alias!r}: aliases must not be all digits nor {LATEST!r}",
            param=param,
        )


def check_json(value: dict[str, Any], param: str) -> None:
    # Both databases store JSON text; NaN/Infinity are not JSON and PostgreSQL rejects them.
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{param} is not JSON-serialisable: {exc}", param=param) from exc


def check_visibility(visibility: str, tenants: Iterable[str]) -> list[str]:
    """The sorted tenant names of a visibility change (400 if they do not go together)."""
    if visibility not in VISIBILITIES:
        raise InvalidInput(
            f"visibility must be one of {', '.join(VISIBILITIES)}, got {visibility!r}",
            param="visibility",
        )
    names = sorted(set(tenants))
    if names and visibility != "shared":
        raise InvalidInput("tenants can only be given with visibility 'shared'", param="tenants")
    return names


def tenant_ids(s: Session, names: list[str]) -> dict[str, int]:
    """Tenant name → id for ``names`` (400 naming the unknown ones)."""
    ids: dict[str, int] = {
        n: i
        for n, i in s.execute(select(TenantRow.name, TenantRow.id).where(TenantRow.name.in_(names)))
    }
    missing = [n for n in names if n not in ids]
    if missing:
        raise InvalidInput(f"unknown tenant(s): {', '.join(missing)}", param="tenants")
    return ids


def model_row(s: Session, name: str, *, lock: bool = False) -> ModelRow:
    query = select(ModelRow).where(ModelRow.name == name)
    model = s.scalar(query.with_for_update() if lock else query)
    if model is None:
        raise ModelNotFound(f"model {name!r} not found", param="model")
    return model


def resolve(s: Session, model: ModelRow, ref: str | int) -> VersionRow:
    query = select(VersionRow).where(VersionRow.model_id == model.id)
    if isinstance(ref, int) or (ref.isascii() and ref.isdigit()):
        query = query.where(VersionRow.version == int(ref))
    elif ref == LATEST:
        query = query.order_by(VersionRow.version.desc()).limit(1)
    else:
        query = query.join(AliasRow, AliasRow.version_id == VersionRow.id).where(
            AliasRow.alias == ref
        )
    row = s.scalar(query)
    if row is None:
        raise VersionNotFound(f"model {model.name!r} has no version {ref!r}", param="version")
    return row


def point_alias(s: Session, model_id: int, alias: str, version_id: int) -> None:
    row = s.scalar(select(AliasRow).where(AliasRow.model_id == model_id, AliasRow.alias == alias))
    if row is None:
        s.add(AliasRow(model_id=model_id, alias=alias, version_id=version_id))
    else:
        row.version_id = version_id


def aliases_by_version(s: Session, model_id: int) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    rows = s.execute(
        select(AliasRow.version_id, AliasRow.alias)
        .where(AliasRow.model_id == model_id)
        .order_by(AliasRow.alias)
    )
    for version_id, alias in rows:
        found.setdefault(version_id, []).append(alias)
    return found


def refuse_if_deployed(s: Session, model: ModelRow, *, version: int | None) -> None:
    query = select(DeploymentRow.name).where(DeploymentRow.model_id == model.id)
    if version is not None:
        query = query.where(DeploymentRow.version == version)
    names = s.scalars(query.order_by(DeploymentRow.name)).all()
    if names:
        what = f"version {version} of model" if version is not None else "model"
        raise Conflict(
            f"{what} {model.name!r} is used by deployment(s) {', '.join(names)}: delete them first"
        )


def version_info(model: str, row: VersionRow, aliases: list[str]) -> VersionInfo:
    return VersionInfo(
        model=model,
        version=row.version,
        runtime=row.runtime,
        artifact_sha256=row.artifact_sha256,
        artifact_name=row.artifact_name,
        artifact_size=row.artifact_size,
        trusted=row.trusted,
        signature=Signature.model_validate(row.signature),
        metadata=row.meta,
        lineage=row.lineage,
        created_at=row.created_at,
        aliases=aliases,
    )
