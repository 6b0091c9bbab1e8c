"""The platform admin key: there is always a way to administer a modelport server.

At every start, after the migrations: with ``MODELPORT_ADMIN_KEY`` set
(``Settings.admin_key``), that key is stored — hashed — as the admin key of the system
tenant, and an earlier key set this way is revoked (so changing the variable rotates the
key). Without it, if the system tenant has no working admin key, one is generated and
written to ``<data_dir>/admin.key`` with mode 0600 (created with that mode, never readable by
others even for an instant), and the log says where. The CLI and client read that file.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelport.engine.apikeys import generate_key, hash_key, key_id_of
from modelport.engine.principal import ADMIN, SYSTEM_TENANT
from modelport.errors import InvalidInput
from modelport.settings import Settings
from modelport.storage.db import Database
from modelport.storage.tables import ApiKeyRow, TenantRow, utcnow

log = logging.getLogger("modelport.accounts")

ADMIN_KEY_FILE = "admin.key"
_GENERATED_ADMIN = "admin"
_ENV_ADMIN = "admin (MODELPORT_ADMIN_KEY)"


def ensure_admin_key(database: Database, settings: Settings) -> Path | None:
    """Make sure the platform admin key exists; returns the key file if one was written."""
    now = utcnow()
    with database.session(write=True) as session:
        system = session.scalar(select(TenantRow).where(TenantRow.name == SYSTEM_TENANT))
        if system is None:
            system = TenantRow(name=SYSTEM_TENANT, soft_budget_ratio=Decimal("0.8"))
            session.add(system)
            session.flush()
        if settings.admin_key is not None:
            _store_env_admin_key(session, system, settings.admin_key.get_secret_value(), now)
            return None
        for row in session.scalars(select(ApiKeyRow).where(ApiKeyRow.tenant_id == system.id)):
            if ADMIN in row.scopes and row.revoked_at is None and not _expired(row, now):
                return None
        key_id, raw = generate_key()
        session.add(_admin_row(system.id, key_id, raw, _GENERATED_ADMIN))
        path = settings.data_dir / ADMIN_KEY_FILE
        _write_private(path, raw)  # before the commit: no key stored that nobody holds
    log.warning("generated the platform admin key; it is in %s (mode 0600)", path.resolve())
    return path


def _expired(row: ApiKeyRow, now: datetime) -> bool:
    return row.expires_at is not None and row.expires_at <= now


def _admin_row(tenant_id: int, key_id: str, raw: str, name: str) -> ApiKeyRow:
    return ApiKeyRow(
        key_id=key_id, secret_hash=hash_key(raw), tenant_id=tenant_id, name=name, scopes=[ADMIN]
    )


def _store_env_admin_key(session: Session, system: TenantRow, raw: str, now: datetime) -> None:
    key_id = key_id_of(raw)
    row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_id == key_id))
    if row is None:
        session.add(_admin_row(system.id, key_id, raw, _ENV_ADMIN))
    elif row.tenant_id != system.id:
        raise InvalidInput(
            "MODELPORT_ADMIN_KEY has the id of an existing tenant key: choose another key",
            param="admin_key",
        )
    else:
        row.secret_hash, row.scopes, row.name = hash_key(raw), [ADMIN], _ENV_ADMIN
        row.revoked_at = row.expires_at = None
    rotated = select(ApiKeyRow).where(
        ApiKeyRow.tenant_id == system.id,
        ApiKeyRow.name == _ENV_ADMIN,
        ApiKeyRow.key_id != key_id,
        ApiKeyRow.revoked_at.is_(None),
    )
    for old in session.scalars(rotated):
        old.revoked_at = now


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by its owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT
        fh.write(text + "\n")
