"""Tenants, users and API keys: create, list, change, revoke — and authenticate a key.

``AccountService`` is the one owner of the ``tenants``, ``users`` and ``api_keys`` tables.
Its CRUD methods are synchronous (the API calls them from a thread pool) and take the
``caller`` (a ``Principal``; ``None`` for the server itself) so the rules hold wherever they
are called from:

- only the platform admin creates tenants, changes a tenant's limits and sees every tenant;
- a ``keys:write`` key manages the users and keys of its own tenant only; another tenant's
  objects answer 404, exactly as if they did not exist;
- a key never grants scopes its creator lacks, a user's key stays within the user's role
  (``principal.ROLES``), and ``admin`` belongs to keys of the system tenant only.

``authenticate`` runs on every request and never touches the database for a key it has
seen (``engine.apikeys.KeyTable``); ``load`` fills the table at start. ``ensure_admin_key``
makes sure the platform can be administered at all (``engine.admin_key``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from modelport.engine import account_rules as rules
from modelport.engine.admin_key import ensure_admin_key
from modelport.engine.apikeys import (
    CachedKey,
    KeyTable,
    epoch,
    from_epoch,
    generate_key,
    hash_key,
    key_id_of,
)
from modelport.engine.principal import Principal
from modelport.errors import Conflict, InvalidInput, NotFound, PermissionDenied, Unauthenticated
from modelport.settings import Settings
from modelport.storage.db import Database
from modelport.storage.tables import ApiKeyRow, TenantRow, UserRow, utcnow
from modelport.types.accounts import (
    KeyCreate,
    KeyCreated,
    KeyInfo,
    KeyPatch,
    TenantCreate,
    TenantInfo,
    TenantPatch,
    UserCreate,
    UserInfo,
    WhoAmI,
)

log = logging.getLogger("modelport.accounts")

_FLUSH_EVERY_S = 5.0


@dataclass(frozen=True)
class TenantLimits:
    """A tenant's limits and budget, kept in memory for the rate limiter and the meter."""

    tenant_id: int
    name: str
    rpm: int | None
    tpm: int | None
    monthly_budget: Decimal | None
    soft_budget_ratio: Decimal


class AccountService:
    """Tenants, users and keys in the database; keys also in memory for authentication."""

    def __init__(self, database: Database, touch_interval_s: float = 30.0) -> None:
        self._db = database
        self.keys = KeyTable(touch_interval_s)
        self._tenants: dict[int, TenantLimits] = {}
        self._flusher: asyncio.Task[None] | None = None

    # --- start-up and background --------------------------------------------------------

    def load(self) -> None:
        """Read every tenant and key into memory (at start, after the migrations)."""
        with self._db.session() as session:
            for tenant in session.scalars(select(TenantRow)):
                self._remember_tenant(tenant)
            for row, tenant_name in session.execute(rules.KEYS_WITH_TENANT):
                self.keys.put(rules.cached(row, tenant_name))

    def ensure_admin_key(self, settings: Settings) -> Path | None:
        """Make sure the platform admin key exists (``engine.admin_key``); returns the key
        file if one was written."""
        return ensure_admin_key(self._db, settings)

    async def start(self) -> None:
        """Start writing ``last_used_at`` in the background."""
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever(), name="key-last-used")

    async def stop(self) -> None:
        """Stop the background writer and write what it still holds."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await asyncio.to_thread(self.flush_last_used)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_EVERY_S)
            try:
                await asyncio.to_thread(self.flush_last_used)
            except Exception:  # the next round retries; auth itself never depends on it
                log.exception("could not record API keys' last use")

    def flush_last_used(self) -> None:
        """Write the queued ``last_used_at`` times (one UPDATE batch)."""
        dirty = self.keys.drain()
        if dirty:
            rows = [{"id": pk, "last_used_at": from_epoch(at)} for pk, at in dirty.items()]
            with self._db.session() as session:
                session.execute(update(ApiKeyRow), rows)

    # --- authentication -----------------------------------------------------------------

    def knows(self, raw: str) -> bool:
        """Whether ``authenticate(raw)`` will answer from memory (no database query)."""
        return self.keys.knows(raw)

    def authenticate(self, raw: str) -> Principal:
        """The principal of a presented key; ``Unauthenticated`` if unknown, revoked or
        expired. Queries the database only for a key id it has never seen."""
        found = self.keys.find(raw)
        if found is None:
            with self._db.session() as session:
                hit = session.execute(
                    rules.KEYS_WITH_TENANT.where(ApiKeyRow.key_id == key_id_of(raw))
                ).first()
            if hit is None:
                self.keys.missing(raw)
                found = False
            else:
                self.keys.put(rules.cached(hit[0], hit[1]))
                found = self.keys.find(raw)
        if not found:
            raise Unauthenticated("invalid API key", headers={"WWW-Authenticate": "Bearer"})
        assert isinstance(found, CachedKey)
        return self.keys.admit(found)

    def whoami(self, principal: Principal) -> WhoAmI:
        entry = self.keys.by_pk(principal.key_id)
        return WhoAmI(
            tenant=principal.tenant,
            key_id="" if entry is None else entry.key_id,
            name=principal.key_name,
            scopes=sorted(principal.scopes),
        )

    def tenant_limits(self, tenant_id: int) -> TenantLimits | None:
        """A tenant's limits and budget from memory (no SQL)."""
        return self._tenants.get(tenant_id)

    # --- tenants ------------------------------------------------------------------------

    def create_tenant(self, caller: Principal | None, body: TenantCreate) -> TenantInfo:
        if caller is not None and not caller.is_admin:
            raise PermissionDenied("only the platform admin creates tenants")
        try:
            with self._db.session(write=True) as session:
                row = TenantRow(**body.model_dump())
                session.add(row)
                session.flush()
                info = rules.tenant_info(row)
        except IntegrityError:
            raise Conflict(f"tenant {body.name!r} already exists", param="name") from None
        self._remember_tenant(row)
        return info

    def list_tenants(self, caller: Principal | None) -> list[TenantInfo]:
        query = select(TenantRow).order_by(TenantRow.name)
        if caller is not None and not caller.is_admin:
            query = query.where(TenantRow.id == caller.tenant_id)
        with self._db.session() as session:
            return [rules.tenant_info(row) for row in session.scalars(query)]

    def get_tenant(self, caller: Principal | None, name: str) -> TenantInfo:
        with self._db.session() as session:
            return rules.tenant_info(rules.visible_tenant(session, caller, name))

    def patch_tenant(self, caller: Principal | None, name: str, body: TenantPatch) -> TenantInfo:
        with self._db.session(write=True) as session:
            row = rules.visible_tenant(session, caller, name)
            if caller is not None and not caller.is_admin:
                raise PermissionDenied("only the platform admin changes a tenant's limits")
            for field in body.model_fields_set:
                value = getattr(body, field)
                if field == "soft_budget_ratio" and value is None:
                    raise InvalidInput("soft_budget_ratio cannot be null", param=field)
                setattr(row, field, value)
            session.flush()
            info = rules.tenant_info(row)
        self._remember_tenant(row)
        return info

    def _remember_tenant(self, row: TenantRow) -> None:
        self._tenants[row.id] = TenantLimits(
            row.id, row.name, row.rpm, row.tpm, row.monthly_budget, row.soft_budget_ratio
        )

    # --- users --------------------------------------------------------------------------

    def create_user(self, caller: Principal | None, tenant: str, body: UserCreate) -> UserInfo:
        try:
            with self._db.session(write=True) as session:
                owner = rules.managed_tenant(session, caller, tenant)
                row = UserRow(tenant_id=owner.id, name=body.name, role=body.role)
                session.add(row)
                session.flush()
                return rules.user_info(row, owner.name)
        except IntegrityError:
            raise Conflict(
                f"user {body.name!r} already exists in {tenant!r}", param="name"
            ) from None

    def list_users(self, caller: Principal | None, tenant: str) -> list[UserInfo]:
        with self._db.session() as session:
            owner = rules.managed_tenant(session, caller, tenant)
            rows = session.scalars(
                select(UserRow).where(UserRow.tenant_id == owner.id).order_by(UserRow.name)
            )
            return [rules.user_info(row, owner.name) for row in rows]

    # --- keys ---------------------------------------------------------------------------

    def create_key(self, caller: Principal | None, body: KeyCreate) -> KeyCreated:
        """A new key; the returned ``key`` is the only time its secret exists in clear."""
        if body.tenant is None and caller is None:
            raise InvalidInput("tenant is required", param="tenant")
        expires_at = rules.in_future(body.expires_at, "expires_at")
        key_id, raw = generate_key()
        with self._db.session(write=True) as session:
            owner = rules.managed_tenant(session, caller, body.tenant or rules.own(caller))
            user = None
            if body.user is not None:
                user = session.scalar(
                    select(UserRow).where(UserRow.tenant_id == owner.id, UserRow.name == body.user)
                )
                if user is None:
                    raise NotFound(f"user {body.user!r} not found in {owner.name!r}", param="user")
            scopes = rules.checked_scopes(caller, owner, user, body.scopes)
            row = ApiKeyRow(
                key_id=key_id,
                secret_hash=hash_key(raw),
                tenant_id=owner.id,
                user_id=None if user is None else user.id,
                name=body.name,
                scopes=scopes,
                rpm=body.rpm,
                tpm=body.tpm,
                monthly_budget=body.monthly_budget,
                expires_at=expires_at,
            )
            session.add(row)
            session.flush()
            info = rules.key_info(row, owner.name, body.user, None)
        self.keys.put(rules.cached(row, owner.name))
        return KeyCreated(**info.model_dump(), key=raw)

    def list_keys(self, caller: Principal | None, tenant: str | None) -> list[KeyInfo]:
        query = rules.KEY_LISTING.order_by(ApiKeyRow.id)
        with self._db.session() as session:
            if tenant is not None or (caller is not None and not caller.is_admin):
                owner = rules.managed_tenant(session, caller, tenant or rules.own(caller))
                query = query.where(ApiKeyRow.tenant_id == owner.id)
            return [self._info(row, name, user) for row, name, user in session.execute(query)]

    def get_key(self, caller: Principal | None, key_id: str) -> KeyInfo:
        with self._db.session() as session:
            return self._info(*rules.managed_key(session, caller, key_id))

    def patch_key(self, caller: Principal | None, key_id: str, body: KeyPatch) -> KeyInfo:
        with self._db.session(write=True) as session:
            row, tenant, user = rules.managed_key(session, caller, key_id)
            for field in body.model_fields_set:
                value = getattr(body, field)
                if field == "name" and value is None:
                    raise InvalidInput("name cannot be null", param="name")
                if field == "expires_at":
                    value = rules.in_future(value, "expires_at")
                setattr(row, field, value)
            session.flush()
            info = self._info(row, tenant, user)
        self.keys.put(rules.cached(row, tenant))
        return info

    def revoke_key(self, caller: Principal | None, key_id: str) -> None:
        """Revoke a key: it fails from the very next request on (idempotent)."""
        with self._db.session(write=True) as session:
            row, _tenant, _user = rules.managed_key(session, caller, key_id)
            if row.revoked_at is None:
                row.revoked_at = utcnow()
        self.keys.revoke(key_id)

    def _info(self, row: ApiKeyRow, tenant: str, user: str | None) -> KeyInfo:
        seen = self.keys.last_used(row.id)
        stored = epoch(row.last_used_at)
        newest = max((t for t in (seen, stored) if t is not None), default=None)
        return rules.key_info(row, tenant, user, from_epoch(newest))
