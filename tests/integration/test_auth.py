"""API keys end to end against a real server, on SQLite and on PostgreSQL.

Key lifecycle (create, use with either header, scope refusal, expiry, revocation on the very
next call, last use), the 401/403 shape of every route family, the tenant walls around keys,
the audit log, the generated admin key file, and a grep of the whole database for secrets.
"""

from __future__ import annotations

import hashlib
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, create_engine, inspect, make_url, text

from tests.integration.helpers import TEST_ADMIN_KEY
from tests.integration.server_process import ServerProcess

IRIS_V2 = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                       "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip
IRIS_V1 = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
SERVER_ENV = {"MODELPORT_DEMO_TEXT_MODELS": "false"}  # iris and digits only: a quick start


@contextmanager
def _database(postgres_url: str) -> Iterator[str]:
    """A new PostgreSQL database on the session's server, dropped afterwards."""
    name = f"modelport_auth_{uuid.uuid4().hex[:12]}"
    admin = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server per database for this module, with the demo models iris and digits."""
    data = tmp_path_factory.mktemp(f"auth-{request.param}") / "data"
    if request.param == "sqlite":
        with _serving(data, {}) as running:
            yield running
        return
    with (
        _database(request.getfixturevalue("postgres_url")) as url,
        _serving(data, {"MODELPORT_DATABASE_URL": url}) as running,
    ):
        yield running


@contextmanager
def _serving(data: Path, env: dict[str, str], demo: bool = True) -> Iterator[ServerProcess]:
    server = ServerProcess(data, demo=demo, env={**SERVER_ENV, **env}).start()
    try:
        yield server
    finally:
        server.stop()


def _client(server: ServerProcess, key: str = TEST_ADMIN_KEY) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _tenant(admin: httpx.Client, **fields: Any) -> str:
    name = _name("t")
    resp = admin.post("/api/tenants", json={"name": name, **fields})
    assert resp.status_code == 201, resp.text
    return name


def _key(admin: httpx.Client, tenant: str, scopes: list[str], **fields: Any) -> dict[str, Any]:
    body = {"tenant": tenant, "name": _name("k"), "scopes": scopes, **fields}
    resp = admin.post("/api/keys", json=body)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def _error(resp: httpx.Response) -> dict[str, Any]:
    """The admin error object of ``resp``."""
    return dict(resp.json()["error"])


def test_key_lifecycle(server: ServerProcess) -> None:
    with _client(server) as admin:
        tenant = _tenant(admin)
        created = _key(admin, tenant, ["inference"])
        unused = _key(admin, tenant, ["inference"])
        raw, key_id = created["key"], created["key_id"]
        assert created["prefix"] == f"mp-{key_id}" and raw.startswith(f"mp-{key_id}_")
        assert len(key_id) == 12 and "key" not in admin.get(f"/api/keys/{key_id}").json()

        with _client(server, raw) as caller:
            assert caller.get("/api/whoami").json() == {
                "tenant": tenant, "key_id": key_id, "name": created["name"],
                "scopes": ["inference"],
            }  # fmt: skip
            assert caller.post("/v2/models/iris/infer", json=IRIS_V2).status_code == 200
            by_header = httpx.post(
                f"{server.url}/v1/models/iris:predict", json=IRIS_V1, headers={"x-api-key": raw}
            )
            assert by_header.status_code == 200, by_header.text

            refused = caller.post("/api/deployments", json={"model": "iris"})
            assert refused.status_code == 403
            assert _error(refused)["code"] == "permission_denied"
            assert "deploy" in _error(refused)["message"]

            keys = {
                k["key_id"]: k for k in admin.get("/api/keys", params={"tenant": tenant}).json()
            }
            assert keys[key_id]["last_used_at"] is not None
            assert keys[unused["key_id"]]["last_used_at"] is None

            assert caller.get("/api/whoami").status_code == 200
            assert admin.delete(f"/api/keys/{key_id}").status_code == 204
            revoked = caller.get("/api/whoami")  # the very next call
            assert revoked.status_code == 401 and "revoked" in _error(revoked)["message"]
            assert caller.post("/v2/models/iris/infer", json=IRIS_V2).status_code == 401
        assert admin.get(f"/api/keys/{key_id}").json()["revoked_at"] is not None
        assert admin.delete(f"/api/keys/{key_id}").status_code == 204  # idempotent


def test_expiry(server: ServerProcess) -> None:
    with _client(server) as admin:
        tenant = _tenant(admin)
        past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        stale = admin.post(
            "/api/keys", json={"tenant": tenant, "name": "x", "scopes": [], "expires_at": past}
        )
        assert stale.status_code == 400
        expires = datetime.now(UTC) + timedelta(seconds=1)
        key = _key(admin, tenant, ["inference"], expires_at=expires.isoformat())
        with _client(server, key["key"]) as caller:
            assert caller.get("/api/whoami").status_code == 200
            time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)
            expired = caller.get("/api/whoami")
            assert expired.status_code == 401 and "expired" in _error(expired)["message"]
            v2 = caller.post("/v2/models/iris/infer", json=IRIS_V2)
            assert v2.status_code == 401 and "expired" in v2.json()["error"]


def test_401_and_403_in_each_route_familys_shape(server: ServerProcess) -> None:
    unknown = "mp-000000000000_" + "x" * 43
    refused: list[dict[str, str]] = [
        {},
        {"Authorization": f"Bearer {unknown}"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"x-api-key": "nonsense"},
    ]
    for headers in refused:
        v2 = httpx.post(f"{server.url}/v2/models/iris/infer", json=IRIS_V2, headers=headers)
        assert v2.status_code == 401 and isinstance(v2.json()["error"], str)
        assert v2.headers["www-authenticate"] == "Bearer"
        assert v2.headers["x-modelport-error"] == "unauthenticated"
        v1 = httpx.post(f"{server.url}/v1/models/iris:predict", json=IRIS_V1, headers=headers)
        assert v1.status_code == 401 and isinstance(v1.json()["error"], str)
        admin = httpx.get(f"{server.url}/api/models", headers=headers)
        assert admin.status_code == 401 and _error(admin)["code"] == "unauthenticated"
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200  # open
    assert httpx.get(f"{server.url}/metrics").status_code == 200  # metrics_public

    with _openai(server, "mp-000000000000_" + "y" * 43) as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            bad.models.list()
        assert info.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    with _client(server) as admin:
        reader = _key(admin, _tenant(admin), ["billing:read"])["key"]
    with _openai(server, reader) as oai:
        assert "iris" in {m.id for m in oai.models.list()}  # reads need no scope
        with pytest.raises(openai.PermissionDeniedError):
            oai.embeddings.create(model="iris", input=["x"])
    v2 = httpx.post(
        f"{server.url}/v2/models/iris/infer", json=IRIS_V2, headers={"x-api-key": reader}
    )
    assert v2.status_code == 403 and "inference" in v2.json()["error"]


def _openai(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def test_keys_write_key_manages_only_its_own_tenant(server: ServerProcess) -> None:
    with _client(server) as admin:
        acme, bravo = _tenant(admin), _tenant(admin)
        manager = _key(admin, acme, ["keys:write", "inference"])["key"]
        theirs = _key(admin, bravo, ["inference"])["key_id"]
    with _client(server, manager) as mgr:
        own = mgr.post("/api/keys", json={"name": "bot", "scopes": ["inference"]})
        assert own.status_code == 201 and own.json()["tenant"] == acme
        assert {k["tenant"] for k in mgr.get("/api/keys").json()} == {acme}
        assert [t["name"] for t in mgr.get("/api/tenants").json()] == [acme]
        for resp in (
            mgr.get("/api/keys", params={"tenant": bravo}),
            mgr.get(f"/api/keys/{theirs}"),
            mgr.delete(f"/api/keys/{theirs}"),
            mgr.get(f"/api/tenants/{bravo}"),
            mgr.get(f"/api/tenants/{bravo}/users"),
            mgr.post("/api/keys", json={"tenant": bravo, "name": "x", "scopes": ["inference"]}),
            mgr.post(f"/api/tenants/{bravo}/users", json={"name": "eve", "role": "owner"}),
        ):
            assert resp.status_code == 404, resp.text
        # A missing tenant and another tenant's answer alike: no name leaks.
        assert _error(mgr.get(f"/api/tenants/{bravo}")) == {
            **_error(mgr.get("/api/tenants/no-such-tenant")),
            "message": f"tenant {bravo!r} not found",
        }
        assert mgr.post("/api/tenants", json={"name": _name("t")}).status_code == 403
        assert mgr.patch(f"/api/tenants/{acme}", json={"rpm": 10}).status_code == 403
        escalate = mgr.post("/api/keys", json={"name": "x", "scopes": ["deploy"]})
        assert escalate.status_code == 403 and _error(escalate)["param"] == "scopes"


def test_scope_and_role_rules(server: ServerProcess) -> None:
    with _client(server) as admin:
        tenant = _tenant(admin, rpm=100, monthly_budget="12.50")
        for scopes, needle in ((["fly"], "unknown scopes"), (["admin"], "system"), ([], "")):
            resp = admin.post("/api/keys", json={"tenant": tenant, "name": "x", "scopes": scopes})
            assert resp.status_code == 400, resp.text
            assert _error(resp)["param"] == "scopes" and needle in _error(resp)["message"]
        user = admin.post(f"/api/tenants/{tenant}/users", json={"name": "vic", "role": "viewer"})
        assert user.status_code == 201 and user.json()["role"] == "viewer"
        assert (
            admin.post(
                f"/api/tenants/{tenant}/users", json={"name": "vic", "role": "viewer"}
            ).status_code
            == 409
        )
        assert (
            admin.post(
                f"/api/tenants/{tenant}/users", json={"name": "bob", "role": "king"}
            ).status_code
            == 400
        )
        body = {"tenant": tenant, "name": "v", "user": "vic", "scopes": ["deploy"]}
        too_much = admin.post("/api/keys", json=body)
        assert too_much.status_code == 400 and "viewer" in _error(too_much)["message"]
        fits = _key(admin, tenant, ["inference", "billing:read"], user="vic")
        assert fits["user"] == "vic"
        info = admin.get(f"/api/tenants/{tenant}").json()
        money = (info["rpm"], info["monthly_budget"], info["soft_budget_ratio"])
        assert money == (100, "12.5", "0.8")
        patched = admin.patch(f"/api/tenants/{tenant}", json={"rpm": None, "tpm": 5000})
        assert (patched.json()["rpm"], patched.json()["tpm"]) == (None, 5000)
        assert admin.post("/api/tenants", json={"name": tenant}).status_code == 409
        assert admin.post("/api/tenants", json={"name": "bad name!"}).status_code == 400


def test_audit_log_records_admin_actions(server: ServerProcess) -> None:
    before = datetime.now(UTC)
    with _client(server) as admin:
        tenant = _tenant(admin)
        key = _key(admin, tenant, ["keys:write"])
        assert admin.delete(f"/api/keys/{key['key_id']}").status_code == 204
        assert admin.patch(f"/api/tenants/{tenant}", json={"tpm": 10}).status_code == 200
        manager = _key(admin, tenant, ["keys:write"])
        with _client(server, manager["key"]) as mgr:
            assert mgr.post("/api/tenants", json={"name": _name("t")}).status_code == 403
            assert mgr.get("/api/audit").status_code == 403
        reader = _key(admin, tenant, ["inference"])
        with _client(server, reader["key"]) as caller:  # refused before routing
            assert caller.delete(f"/api/keys/{manager['key_id']}").status_code == 403
        after = datetime.now(UTC)

        def audit(**params: Any) -> list[dict[str, Any]]:
            resp = admin.get("/api/audit", params={"since": before.isoformat(), **params})
            assert resp.status_code == 200, resp.text
            return list(resp.json())

        created = [
            e for e in audit(action="POST /api/keys") if e["detail"]["key_id"] == key["key_id"]
        ]
        assert len(created) == 1
        entry = created[0]
        assert (entry["tenant"], entry["actor"], entry["status"], entry["target"]) == (
            "system", "system/admin (MODELPORT_ADMIN_KEY)", 201, "/api/keys"
        )  # fmt: skip
        assert entry["remote"].startswith("127.0.0.1:") and entry["key_id"]
        assert before <= datetime.fromisoformat(entry["at"]) <= after
        revoked = audit(action="DELETE /api/keys/{key_id}")
        assert f"/api/keys/{key['key_id']}" in {e["target"] for e in revoked}
        assert {e["action"] for e in audit(action="PATCH *")} == {"PATCH /api/tenants/{name}"}
        refused = audit(tenant=tenant)
        assert [(e["action"], e["status"], e["actor"]) for e in refused] == [
            ("DELETE /api/keys/{key_id}", 403, f"{tenant}/{reader['name']}"),
            ("POST /api/tenants", 403, f"{tenant}/{manager['name']}"),
        ]
        earlier = audit(since=(before - timedelta(days=1)).isoformat(), until=before.isoformat())
        assert all(datetime.fromisoformat(e["at"]) < before for e in earlier)
        assert not [e for e in earlier if e["detail"].get("key_id") == key["key_id"]]
        assert len(audit(limit=2)) == 2
        assert admin.get("/api/audit", params={"limit": 0}).status_code == 400
        late = {"since": after.isoformat(), "until": before.isoformat()}
        assert admin.get("/api/audit", params=late).status_code == 400


def test_database_never_holds_a_secret(server: ServerProcess) -> None:
    with _client(server) as admin:
        tenant = _tenant(admin)
        keys = [_key(admin, tenant, ["inference"])["key"] for _ in range(3)]
        for raw in keys:  # used, so last_used_at and the audit log have had their chance
            with _client(server, raw) as caller:
                assert caller.post("/v2/models/iris/infer", json=IRIS_V2).status_code == 200
    secrets = [raw[len("mp-") + 13 :] for raw in [*keys, TEST_ADMIN_KEY]]
    hashes = [hashlib.sha256(raw.encode()).hexdigest() for raw in keys]
    stored = _every_value(server)
    assert all(h in stored for h in hashes)  # we are looking at the right database
    assert not [s for s in secrets if s in stored]
    sqlite_files = sorted(server.data_dir.glob("modelport.db*"))
    for path in sqlite_files:
        raw_bytes = path.read_bytes()
        assert not [s for s in secrets if s.encode() in raw_bytes], path


@contextmanager
def _engine(server: ServerProcess) -> Iterator[Engine]:
    """An SQLAlchemy engine on the database ``server`` uses."""
    url = server.env.get("MODELPORT_DATABASE_URL") or f"sqlite:///{server.data_dir}/modelport.db"
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _every_value(server: ServerProcess) -> str:
    """Every value of every column of every table, as one string."""
    parts: list[str] = []
    with _engine(server) as engine, engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                parts.extend(str(value) for value in row)
    return "\n".join(parts)


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_generated_admin_key_file(
    tmp_path: Path, request: pytest.FixtureRequest, database: str
) -> None:
    env = {"MODELPORT_ADMIN_KEY": ""}  # unset: the first start generates the key
    if database == "postgres":
        env["MODELPORT_DATABASE_URL"] = request.getfixturevalue("fresh_postgres_url")
    data = tmp_path / "data"
    with _serving(data, env, demo=False) as first:
        path = data / "admin.key"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        generated = path.read_text().strip()
        assert generated.startswith("mp-") and str(path.resolve()) in first.log()
        with _client(first, generated) as admin:
            assert admin.get("/api/whoami").json()["scopes"] == ["admin"]
            assert admin.post("/api/tenants", json={"name": "acme"}).status_code == 201
        with _client(first) as fixed:
            assert fixed.get("/api/whoami").status_code == 401  # the test key is not set
    # The last use reached the database (written in the background and at shutdown).
    with _engine(first) as engine, engine.connect() as conn:
        used = conn.execute(
            text("SELECT last_used_at FROM api_keys WHERE key_id = :k"), {"k": generated[3:15]}
        ).scalar_one()
    assert used is not None
    with _serving(data, env, demo=False) as second:  # a restart keeps the key and the file
        assert path.read_text().strip() == generated
        with _client(second, generated) as admin:
            assert admin.get("/api/tenants/acme").status_code == 200
    rotated = {**env, "MODELPORT_ADMIN_KEY": TEST_ADMIN_KEY}
    with _serving(data, rotated, demo=False) as third, _client(third) as fixed:
        assert fixed.get("/api/whoami").json()["tenant"] == "system"
