"""Who may manage which tenant, user and key, and how rows become wire models.

The helpers ``AccountService`` applies inside its transactions (``engine.accounts``): the
visibility rules (another tenant's objects are reported as missing, never as forbidden, so
no name leaks), the scope rules for new keys, and the row → ``types.accounts`` conversions.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelport.engine.apikeys import CachedKey, epoch, prefix_of
from modelport.engine.principal import ADMIN, KEYS_WRITE, ROLES, SCOPES, SYSTEM_TENANT, Principal
from modelport.errors import InvalidInput, NotFound, PermissionDenied
from modelport.storage.tables import ApiKeyRow, TenantRow, UserRow, utcnow
from modelport.types.accounts import KeyInfo, TenantInfo, UserInfo

KEYS_WITH_TENANT = select(ApiKeyRow, TenantRow.name).join(
    TenantRow, TenantRow.id == ApiKeyRow.tenant_id
)
KEY_LISTING = (
    select(ApiKeyRow, TenantRow.name, UserRow.name)
    .join(TenantRow, TenantRow.id == ApiKeyRow.tenant_id)
    .outerjoin(UserRow, UserRow.id == ApiKeyRow.user_id)
)


def own(caller: Principal | None) -> str:
    assert caller is not None
    return caller.tenant


def visible_tenant(session: Session, caller: Principal | None, name: str) -> TenantRow:
    """The tenant ``name`` if the caller may see it (admin: all; others: their own)."""
    row = session.scalar(select(TenantRow).where(TenantRow.name == name))
    hidden = (
        caller is not None and not caller.is_admin and (row is None or row.id != caller.tenant_id)
    )
    if row is None or hidden:
        raise NotFound(f"tenant {name!r} not found", param="tenant")
    return row


def managed_tenant(session: Session, caller: Principal | None, name: str) -> TenantRow:
    """The tenant ``name`` if the caller may manage its users and keys."""
    row = visible_tenant(session, caller, name)
    if caller is not None and not caller.allows(KEYS_WRITE):
        raise PermissionDenied(f"managing users and keys needs the {KEYS_WRITE!r} scope")
    return row


def managed_key(
    session: Session, caller: Principal | None, key_id: str
) -> tuple[ApiKeyRow, str, str | None]:
    hit = session.execute(KEY_LISTING.where(ApiKeyRow.key_id == key_id)).first()
    if hit is None or (
        caller is not None and not caller.is_admin and hit[0].tenant_id != caller.tenant_id
    ):
        raise NotFound(f"API key {key_id!r} not found", param="key_id")
    managed_tenant(session, caller, hit[1])
    return hit[0], hit[1], hit[2]


def checked_scopes(
    caller: Principal | None, tenant: TenantRow, user: UserRow | None, scopes: Iterable[str]
) -> list[str]:
    wanted = set(scopes)
    unknown = sorted(wanted - SCOPES)
    if unknown:
        raise InvalidInput(
            f"unknown scopes {unknown}: choose from {sorted(SCOPES)}", param="scopes"
        )
    if ADMIN in wanted and tenant.name != SYSTEM_TENANT:
        raise InvalidInput(
            f"the {ADMIN!r} scope is only for keys of the {SYSTEM_TENANT!r} tenant", param="scopes"
        )
    if user is not None and not wanted <= ROLES[user.role]:
        allowed = sorted(ROLES[user.role])
        raise InvalidInput(
            f"user {user.name!r} has role {user.role!r}, which allows only {allowed}",
            param="scopes",
        )
    if caller is not None and not caller.is_admin and not wanted <= caller.scopes:
        extra = sorted(wanted - caller.scopes)
        raise PermissionDenied(
            f"a key cannot grant scopes it does not hold: {extra}", param="scopes"
        )
    return sorted(wanted)


def in_future(when: datetime | None, param: str) -> datetime | None:
    if when is None:
        return None
    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    if when <= utcnow():
        raise InvalidInput(f"{param} must be in the future", param=param)
    return when


def cached(row: ApiKeyRow, tenant: str) -> CachedKey:
    principal = Principal(
        tenant_id=row.tenant_id,
        tenant=tenant,
        key_id=row.id,
        key_name=row.name,
        scopes=frozenset(row.scopes),
        rpm=row.rpm,
        tpm=row.tpm,
        monthly_budget=row.monthly_budget,
    )
    return CachedKey(
        pk=row.id,
        key_id=row.key_id,
        digest=row.secret_hash,
        principal=principal,
        expires_at=epoch(row.expires_at),
        revoked=row.revoked_at is not None,
        last_used=epoch(row.last_used_at),
    )


def plain(amount: Decimal | None) -> Decimal | None:
    """``amount`` without the padding zeros of its column's scale (12.5000000000 → 12.5)."""
    if amount is None:
        return None
    normal = amount.normalize()
    exponent = normal.as_tuple().exponent
    # normalize() writes whole numbers with a positive exponent (1E+2): give them back digits.
    return normal.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else normal


def tenant_info(row: TenantRow) -> TenantInfo:
    return TenantInfo(
        id=row.id,
        name=row.name,
        rpm=row.rpm,
        tpm=row.tpm,
        monthly_budget=plain(row.monthly_budget),
        soft_budget_ratio=plain(row.soft_budget_ratio),
        created_at=row.created_at,
    )


def user_info(row: UserRow, tenant: str) -> UserInfo:
    return UserInfo(
        id=row.id, tenant=tenant, name=row.name, role=row.role, created_at=row.created_at
    )


def key_info(row: ApiKeyRow, tenant: str, user: str | None, last_used: datetime | None) -> KeyInfo:
    fields: dict[str, Any] = {
        "id": row.id,
        "key_id": row.key_id,
        "prefix": prefix_of(row.key_id),
        "tenant": tenant,
        "name": row.name,
        "scopes": list(row.scopes),
        "user": user,
        "rpm": row.rpm,
        "tpm": row.tpm,
        "monthly_budget": plain(row.monthly_budget),
        "expires_at": row.expires_at,
        "revoked_at": row.revoked_at,
        "last_used_at": last_used,
        "created_at": row.created_at,
    }
    return KeyInfo(**fields)
