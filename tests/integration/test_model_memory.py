"""Multi-model hosting under a memory budget that fits two of three models.

A first server measures the three models (its workers' resident memory, from status) and
leaves them deployed to load on first use; a second server on the same data directory gets
a budget between "any two" and "all three". Calling the third model unloads the least
recently used one, a pinned model is never unloaded, a model that cannot fit gets 503
naming the budget, and every answer stays the one the model gave when first loaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import combinations
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.fixtures.models import build_iris_skops
from tests.integration.helpers import AUTH, deploy, push
from tests.integration.server_process import ServerProcess

MIB = 1024 * 1024
MODELS = ("iris", "digits", "iris2")
LAZY = {"replicas": 0, "min_replicas": 0, "max_replicas": 1, "idle_timeout_s": 3600}


def _body(model: str) -> dict[str, Any]:
    width = 64 if model == "digits" else 4
    rows = np.linspace(0, 8, 3 * width, dtype=np.float32).reshape(3, width)
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, width],
                        "data": rows.ravel().tolist()}]}  # fmt: skip


def _call(client: httpx.Client, model: str) -> list[Any]:
    resp = client.post(f"/v2/models/{model}/infer", json=_body(model))
    assert resp.status_code == 200, resp.text
    return [out["data"] for out in resp.json()["outputs"]]


def _replicas(client: httpx.Client) -> dict[str, int]:
    return {d["name"]: d["replicas"] for d in client.get("/api/deployments").json()}


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Measure the three models on a server without a budget; leave them lazily deployed."""
    tmp = tmp_path_factory.mktemp("memory")
    data = tmp / "data"
    env = {"MODELPORT_DEMO_TEXT_MODELS": "false"}
    server = ServerProcess(data, env=env).start()
    try:
        case = build_iris_skops(tmp)
        push(server.url, case.path, "iris2", "sklearn")
        deploy(server.url, "iris2")
        with httpx.Client(base_url=server.url, headers=dict(AUTH), timeout=60) as client:
            answers = {model: _call(client, model) for model in MODELS}
            sizes = {}
            for model in MODELS:
                status = client.get(f"/api/deployments/{model}").json()
                sizes[model] = status["memory_bytes"]
                assert sizes[model] > 10 * MIB, status
                assert client.post("/api/deployments", json={"model": model, **LAZY}).is_success
    finally:
        server.stop()
    yield {"data": data, "sizes": sizes, "answers": answers}


@pytest.fixture(scope="module")
def budget_server(measured: dict[str, Any]) -> Iterator[ServerProcess]:
    sizes = measured["sizes"]
    pairs = max(a + b for a, b in combinations(sizes.values(), 2))
    total = sum(sizes.values())
    budget = (pairs + total) / 2 / MIB  # fits any two, never all three
    env = {
        "MODELPORT_DEMO_TEXT_MODELS": "false",
        "MODELPORT_MEMORY_BUDGET_MB": f"{budget:.1f}",
        "MODELPORT_MODEL_MEMORY_ESTIMATE_MB": f"{max(sizes.values()) / MIB:.1f}",
    }
    server = ServerProcess(Path(measured["data"]), env=env).start()
    try:
        yield server
    finally:
        server.stop()


def test_calling_the_third_model_unloads_the_least_recently_used(
    budget_server: ServerProcess, measured: dict[str, Any]
) -> None:
    answers = measured["answers"]
    with httpx.Client(base_url=budget_server.url, headers=dict(AUTH), timeout=120) as client:
        assert _replicas(client) == {"iris": 0, "digits": 0, "iris2": 0}  # loads on first use
        assert _call(client, "iris") == answers["iris"]
        assert _call(client, "digits") == answers["digits"]
        assert _call(client, "iris") == answers["iris"]  # digits is now least recently used
        assert _replicas(client) == {"iris": 1, "digits": 1, "iris2": 0}

        assert _call(client, "iris2") == answers["iris2"]
        assert _replicas(client) == {"iris": 1, "digits": 0, "iris2": 1}
        evicted = client.get("/api/deployments/digits").json()
        assert evicted["state"] == "idle"
        assert "make room for 'iris2'" in evicted["decisions"][-1]["reason"]

        # Pin iris; then iris2 is used more recently than iris, and digits comes back:
        # the least recently used is iris, but it is pinned, so iris2 goes.
        deploy(budget_server.url, "iris", **{**LAZY, "replicas": 1, "pinned": True})
        assert _call(client, "iris2") == answers["iris2"]
        assert _call(client, "digits") == answers["digits"]
        assert _replicas(client) == {"iris": 1, "digits": 1, "iris2": 0}
        assert client.get("/api/deployments/iris").json()["pinned"] is True
        assert _call(client, "iris") == answers["iris"]
        used = sum(d["memory_bytes"] for d in client.get("/api/deployments").json())
        budget = float(budget_server.env["MODELPORT_MEMORY_BUDGET_MB"]) * MIB
        assert used <= budget


def test_nothing_to_unload_is_503_naming_the_budget(budget_server: ServerProcess) -> None:
    with httpx.Client(base_url=budget_server.url, headers=dict(AUTH), timeout=120) as client:
        # Pin the two loaded models: nothing is left that could make room for the third.
        for model, replicas in _replicas(client).items():
            if replicas:
                deploy(budget_server.url, model, **{**LAZY, "replicas": 1, "pinned": True})
        idle = next(m for m, r in _replicas(client).items() if r == 0)
        resp = client.post(f"/v2/models/{idle}/infer", json=_body(idle))
        assert resp.status_code == 503, resp.text
        assert (
            "memory budget" in resp.json()["error"] and "memory_budget_mb" in resp.json()["error"]
        )
        assert _replicas(client)[idle] == 0
