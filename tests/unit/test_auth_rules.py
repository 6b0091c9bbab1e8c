"""The pure parts of authentication: key format, the in-memory key table, route scopes."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from modelport.api.auth import api_key_of, required_scope
from modelport.engine.account_rules import plain
from modelport.engine.apikeys import CachedKey, KeyTable, generate_key, hash_key, key_id_of
from modelport.engine.principal import Principal
from modelport.errors import Unauthenticated


def _entry(raw: str, pk: int = 1, expires_at: float | None = None) -> CachedKey:
    principal = Principal(tenant_id=1, tenant="acme", key_id=pk, key_name="k", scopes=frozenset())
    return CachedKey(pk, key_id_of(raw), hash_key(raw), principal, expires_at=expires_at)


def test_generated_keys_carry_their_public_id() -> None:
    key_id, raw = generate_key()
    assert len(key_id) == 12 and raw.startswith(f"mp-{key_id}_") and len(raw) >= 3 + 13 + 43
    assert key_id_of(raw) == key_id
    assert generate_key()[1] != raw
    # A free-form key (MODELPORT_ADMIN_KEY) gets an id no generated key can have.
    assert key_id_of("some operator chosen secret").startswith("h")
    assert key_id_of("mp-XYZ_short") != "XYZ"


def test_key_table_verifies_revokes_and_expires() -> None:
    table = KeyTable()
    _, raw = generate_key()
    table.put(_entry(raw))
    found = table.find(raw)
    assert isinstance(found, CachedKey) and table.admit(found).tenant == "acme"
    assert table.find(raw[:-1] + ("a" if raw[-1] != "a" else "b")) is False  # wrong secret
    _, stranger = generate_key()
    assert table.find(stranger) is None and not table.knows(stranger)
    table.missing(stranger)
    assert table.find(stranger) is False and table.knows(stranger)

    table.revoke(key_id_of(raw))
    with pytest.raises(Unauthenticated, match="revoked") as info:
        table.admit(found)
    assert info.value.headers == {"WWW-Authenticate": "Bearer"}

    _, soon = generate_key()
    table.put(_entry(soon, pk=2, expires_at=time.time() - 0.001))
    expiring = table.find(soon)
    assert isinstance(expiring, CachedKey)
    with pytest.raises(Unauthenticated, match="expired"):
        table.admit(expiring)


def test_last_use_is_queued_at_most_once_per_interval() -> None:
    table = KeyTable(touch_interval_s=3600)
    _, raw = generate_key()
    table.put(_entry(raw, pk=7))
    entry = table.find(raw)
    assert isinstance(entry, CachedKey)
    for _ in range(5):
        table.admit(entry)
    queued = table.drain()
    assert list(queued) == [7] and table.drain() == {}
    table.admit(entry)
    assert table.drain() == {}  # within the interval: memory only
    assert table.last_used(7) is not None


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("POST", "/v2/models/iris/infer", "inference"),
        ("POST", "/v2/models/iris/versions/2/infer", "inference"),
        ("POST", "/v1/models/iris:predict", "inference"),
        ("POST", "/v1/chat/completions", "inference"),
        ("POST", "/v1/embeddings", "inference"),
        ("GET", "/v2/models/iris", None),
        ("GET", "/v1/models", None),
        ("GET", "/api/models", None),
        ("GET", "/api/keys", None),
        ("POST", "/api/artifacts", "models:write"),
        ("DELETE", "/api/models/iris/aliases/prod", "models:write"),
        ("PATCH", "/api/deployments/iris", "deploy"),
        ("POST", "/api/keys", "keys:write"),
        ("PATCH", "/api/tenants/acme", "keys:write"),
        ("PUT", "/api/prices/iris", "admin"),
        ("POST", "/api/something-new", "admin"),
        ("POST", "/v1/models/iris", "admin"),
        ("GET", "/api/usage", "billing:read"),
        ("GET", "/api/invoices/acme/2026-11", "billing:read"),
        ("GET", "/api/usage/recent", "admin"),
        ("GET", "/api/audit", "admin"),
        ("GET", "/api/modelsx", None),
    ],
)
def test_required_scope(method: str, path: str, scope: str | None) -> None:
    assert required_scope(method, path) == scope


def test_api_key_of_headers() -> None:
    assert api_key_of([(b"authorization", b"Bearer abc")]) == "abc"
    assert api_key_of([(b"authorization", b"bearer   abc ")]) == "abc"
    assert api_key_of([(b"x-api-key", b"xyz")]) == "xyz"
    assert api_key_of([(b"x-api-key", b"xyz"), (b"authorization", b"Bearer abc")]) == "abc"
    assert api_key_of([(b"authorization", b"Basic abc"), (b"x-api-key", b"xyz")]) == "xyz"
    assert api_key_of([(b"authorization", b"Bearer "), (b"host", b"h")]) is None
    assert api_key_of([]) is None


def test_money_loses_only_padding_zeros() -> None:
    assert [str(plain(Decimal(v))) for v in ("12.5000000000", "100.0000000000", "0.800")] == [
        "12.5",
        "100",
        "0.8",
    ]
    assert plain(None) is None
