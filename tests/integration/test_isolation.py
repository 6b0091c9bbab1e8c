"""Tenant isolation: a second tenant walks every route of the OpenAPI spec against the first
tenant's private objects and gets exactly what a name that never existed gets: 404.

Also: listings hide other tenants' objects; sharing and publishing make a model callable
(but not changeable: 403) by others; the platform's public demo models are callable by all.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.models import build_iris_skops
from tests.integration.helpers import TEST_ADMIN_KEY
from tests.integration.server_process import ServerProcess

ALL_SCOPES = ["inference", "models:write", "deploy", "billing:read", "keys:write"]
ROW = [[5.1, 3.5, 1.4, 0.2]]
V2_BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ROW[0]}]}


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _tenant_key(admin: httpx.Client, tenant: str) -> dict[str, Any]:
    assert admin.post("/api/tenants", json={"name": tenant}).status_code == 201
    resp = admin.post("/api/keys", json={"tenant": tenant, "name": "dev", "scopes": ALL_SCOPES})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A server where tenant A owns a deployed private model ``a-secret``, on each database."""
    tmp = tmp_path_factory.mktemp("isolation")
    env = {"MODELPORT_DEMO_TEXT_MODELS": "false"}
    if request.param == "postgres":
        env["MODELPORT_DATABASE_URL"] = request.getfixturevalue("module_postgres_url")
    server = ServerProcess(tmp / "data", env=env).start()
    with contextlib.ExitStack() as clients:
        clients.callback(server.stop)
        admin = clients.enter_context(_client(server.url, TEST_ADMIN_KEY))
        key_a, key_b = _tenant_key(admin, "tenant-a"), _tenant_key(admin, "tenant-b")
        a = clients.enter_context(_client(server.url, key_a["key"]))
        b = clients.enter_context(_client(server.url, key_b["key"]))
        case = build_iris_skops(tmp)
        sha = a.post("/api/artifacts", content=case.path.read_bytes()).json()["sha256"]
        body = {"artifact_sha256": sha, "artifact_name": case.path.name, "runtime": "sklearn"}
        resp = a.post("/api/models/a-secret/versions", json={**body, "aliases": ["production"]})
        assert resp.status_code == 201, resp.text
        assert a.post("/api/deployments", json={"model": "a-secret"}).status_code == 201
        for _ in range(600):
            if a.get("/api/deployments/a-secret").json().get("state") == "ready":
                break
            time.sleep(0.1)
        yield {"server": server, "admin": admin, "a": a, "b": b,
               "key_a": key_a, "key_b": key_b, "artifact": body}  # fmt: skip


def _body(method: str, template: str, world: dict[str, Any], name: str) -> Any:
    """A valid body for the operation, so that only the object reference can fail."""
    if method == "get" or method == "delete":
        return None
    bodies: dict[str, Any] = {
        "/api/models/{name}/versions": world["artifact"],
        "/api/models/{name}/aliases/{alias}": {"version": 1},
        "/api/models/{name}/visibility": {"visibility": "public"},
        "/api/pipelines/{name}/visibility": {"visibility": "public"},
        "/api/tenants/{tenant}/users": {"name": "mallory", "role": "viewer"},
        "/api/tenants/{name}": {"rpm": 1},
        "/api/keys/{key_id}": {"name": "stolen"},
        "/api/deployments/{name}": {"replicas": 2},
        "/api/deployments": {"model": name},
        "/v1/embeddings": {"model": name, "input": "hi"},
        "/v1/chat/completions": {"model": name, "messages": [{"role": "user", "content": "x"}]},
        "/v1/completions": {"model": name, "prompt": "x", "max_tokens": 1},
    }
    if template.endswith("/infer"):
        return V2_BODY
    if template.endswith(":predict"):
        return {"instances": ROW}
    return bodies.get(template, {})


def _fill(template: str, world: dict[str, Any], name: str) -> str:
    values = {"version": "1", "ref": "1", "alias": "production", "period": "2026-11",
              "key_id": world["key_a"]["key_id"], "tenant": "tenant-a"}  # fmt: skip
    if template.startswith("/api/tenants/{name}"):
        name = "tenant-a"  # here {name} is a tenant
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), name), template)


def _ghost_fill(template: str, ghost: str) -> str:
    values = {"version": "1", "ref": "1", "alias": "production", "period": "2026-11",
              "key_id": "0123456789ab", "tenant": "tenant-ghost"}  # fmt: skip
    if template.startswith("/api/tenants/{name}"):
        ghost = "tenant-ghost"
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), ghost), template)


def _operations(world: dict[str, Any]) -> list[tuple[str, str]]:
    spec = world["b"].get("/openapi.json").json()
    return [(method, path) for path, ops in spec["paths"].items() for method in ops]


_BODY_REF = {"/v1/embeddings", "/v1/chat/completions", "/v1/completions", "/api/deployments"}


def test_a_second_tenant_gets_404_on_every_route_that_names_the_first_tenants_objects(
    world: dict[str, Any],
) -> None:
    b: httpx.Client = world["b"]
    walked = 0
    for method, template in _operations(world):
        if "{" not in template and not (method == "post" and template in _BODY_REF):
            continue
        if template == "/api/artifacts":
            continue  # names no object
        target = _fill(template, world, "a-secret")
        # A fresh never-used name per route: an earlier call may have created the last one.
        name = f"ghost-{walked}"
        ghost = _ghost_fill(template, name)
        hit = b.request(method, target, json=_body(method, template, world, "a-secret"))
        miss = b.request(method, ghost, json=_body(method, template, world, name))
        walked += 1
        # Platform-admin routes refuse B by scope alike for every name (403, no leak).
        expected_status = 403 if template.startswith("/api/prices/") else 404
        assert hit.status_code == expected_status, (method, template, hit.status_code, hit.text)
        if miss.status_code == hit.status_code:  # the answer for a name that never existed
            expected = miss.text.replace(name, "a-secret").replace("tenant-ghost", "tenant-a")
            expected = expected.replace("0123456789ab", world["key_a"]["key_id"])
            assert hit.text == expected, (method, template)
        else:
            assert template == "/api/models/{name}/versions", (method, template, miss.text)
    assert walked >= 15  # the spec really was walked
    # A's objects still work for A: the walk changed nothing.
    assert world["a"].post("/v2/models/a-secret/infer", json=V2_BODY).status_code == 200
    assert world["a"].get("/api/deployments/a-secret").json()["replicas"] == 1


def test_listings_show_only_what_the_caller_may_see(world: dict[str, Any]) -> None:
    b: httpx.Client = world["b"]
    for method, template in _operations(world):
        if method != "get" or "{" in template:
            continue
        resp = b.get(template)
        assert "a-secret" not in resp.text, template
        assert world["key_a"]["key_id"] not in resp.text, template
    models = [m["name"] for m in b.get("/api/models").json()]
    assert "iris" in models and "a-secret" not in models  # the public demo is listed
    assert b.post("/v2/models/iris/infer", json=V2_BODY).status_code == 200
    assert "a-secret" in [m["name"] for m in world["a"].get("/api/models").json()]
    assert "a-secret" in [m["name"] for m in world["admin"].get("/api/models").json()]


def test_sharing_lets_named_tenants_call_but_not_change(
    world: dict[str, Any], tmp_path: Path
) -> None:
    a, b = world["a"], world["b"]
    resp = a.put("/api/models/a-secret/visibility",
                 json={"visibility": "shared", "tenants": ["tenant-b"]})  # fmt: skip
    assert resp.status_code == 200, resp.text
    try:
        assert b.post("/v2/models/a-secret/infer", json=V2_BODY).status_code == 200
        assert b.get("/api/models/a-secret").status_code == 200
        assert b.delete("/api/models/a-secret").status_code == 403
        assert b.patch("/api/deployments/a-secret", json={"replicas": 0}).status_code == 403
        assert b.delete("/api/deployments/a-secret").status_code == 403
        assert (
            b.put("/api/models/iris/visibility", json={"visibility": "private"}).status_code == 403
        )
    finally:
        assert a.put("/api/models/a-secret/visibility",
                     json={"visibility": "private"}).status_code == 200  # fmt: skip
    assert b.post("/v2/models/a-secret/infer", json=V2_BODY).status_code == 404
