"""Account routes: tenants, their users, API keys, and ``whoami``.

Transport only: each route hands the caller (``PrincipalDep``) and the body to
``AccountService``, which applies the rules (admin-only tenants, a ``keys:write`` key
managing its own tenant only, 404 for another tenant's objects).
"""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from modelport.api.auth import PrincipalDep, add_audit_detail
from modelport.api.deps import ServicesDep
from modelport.types.accounts import (
    TENANT_NAME_PATTERN,
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

router = APIRouter(prefix="/api", tags=["accounts"])


@router.post("/tenants", status_code=201, response_model=TenantInfo, summary="Create a tenant")
async def create_tenant(
    services: ServicesDep, caller: PrincipalDep, body: TenantCreate
) -> TenantInfo:
    tenant = await run_in_threadpool(services.accounts.create_tenant, caller, body)
    add_audit_detail(tenant=tenant.name)
    return tenant


@router.get(
    "/tenants", response_model=list[TenantInfo], summary="List tenants (admin: all; else own)"
)
async def list_tenants(services: ServicesDep, caller: PrincipalDep) -> list[TenantInfo]:
    return await run_in_threadpool(services.accounts.list_tenants, caller)


@router.get("/tenants/{name}", response_model=TenantInfo, summary="Get a tenant")
async def get_tenant(services: ServicesDep, caller: PrincipalDep, name: str) -> TenantInfo:
    return await run_in_threadpool(services.accounts.get_tenant, caller, name)


@router.patch(
    "/tenants/{name}", response_model=TenantInfo, summary="Change a tenant's limits or budget"
)
async def patch_tenant(
    services: ServicesDep, caller: PrincipalDep, name: str, body: TenantPatch
) -> TenantInfo:
    add_audit_detail(changed=sorted(body.model_fields_set))
    return await run_in_threadpool(services.accounts.patch_tenant, caller, name, body)


@router.post(
    "/tenants/{tenant}/users", status_code=201, response_model=UserInfo, summary="Add a user"
)
async def create_user(
    services: ServicesDep, caller: PrincipalDep, tenant: str, body: UserCreate
) -> UserInfo:
    user = await run_in_threadpool(services.accounts.create_user, caller, tenant, body)
    add_audit_detail(user=user.name, role=user.role)
    return user


@router.get("/tenants/{tenant}/users", response_model=list[UserInfo], summary="List users")
async def list_users(services: ServicesDep, caller: PrincipalDep, tenant: str) -> list[UserInfo]:
    return await run_in_threadpool(services.accounts.list_users, caller, tenant)


@router.post(
    "/keys",
    status_code=201,
    response_model=KeyCreated,
    summary="Create an API key (its secret is shown in this response only)",
)
async def create_key(services: ServicesDep, caller: PrincipalDep, body: KeyCreate) -> KeyCreated:
    key = await run_in_threadpool(services.accounts.create_key, caller, body)
    add_audit_detail(key_id=key.key_id, tenant=key.tenant, scopes=key.scopes)
    return key


@router.get("/keys", response_model=list[KeyInfo], summary="List API keys (no secrets)")
async def list_keys(
    services: ServicesDep,
    caller: PrincipalDep,
    tenant: str | None = Query(default=None, pattern=TENANT_NAME_PATTERN),
) -> list[KeyInfo]:
    return await run_in_threadpool(services.accounts.list_keys, caller, tenant)


@router.get("/keys/{key_id}", response_model=KeyInfo, summary="Get an API key (no secret)")
async def get_key(services: ServicesDep, caller: PrincipalDep, key_id: str) -> KeyInfo:
    return await run_in_threadpool(services.accounts.get_key, caller, key_id)


@router.patch("/keys/{key_id}", response_model=KeyInfo, summary="Change a key's limits or expiry")
async def patch_key(
    services: ServicesDep, caller: PrincipalDep, key_id: str, body: KeyPatch
) -> KeyInfo:
    add_audit_detail(changed=sorted(body.model_fields_set))
    return await run_in_threadpool(services.accounts.patch_key, caller, key_id, body)


@router.delete("/keys/{key_id}", status_code=204, summary="Revoke an API key (immediately)")
async def revoke_key(services: ServicesDep, caller: PrincipalDep, key_id: str) -> Response:
    await run_in_threadpool(services.accounts.revoke_key, caller, key_id)
    return Response(status_code=204)


@router.get("/whoami", response_model=WhoAmI, summary="The caller's tenant, key and scopes")
async def whoami(services: ServicesDep, caller: PrincipalDep) -> WhoAmI:
    return services.accounts.whoami(caller)
