"""The training service over real HTTP: datasets, validation, train → deploy → predict, runs.

One server (SQLite, no demo models) for the module; tenants are created through the API.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.integration.helpers import served_runtime, wait_state
from tests.integration.server_process import TEST_ADMIN_KEY, ServerProcess
from tests.integration.training_helpers import (
    churn_csv,
    churn_rows,
    create_dataset,
    sse_events,
    start_run,
    wait_epoch,
    wait_run,
)

SCOPES = ["inference", "models:write", "deploy"]


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server; tenant A owns the dataset ``churn``; tenant B is a stranger."""
    tmp = tmp_path_factory.mktemp("training")
    server = ServerProcess(tmp / "data", demo=False).start()
    with contextlib.ExitStack() as stack:
        stack.callback(server.stop)
        admin = stack.enter_context(_client(server.url, TEST_ADMIN_KEY))
        keys = {}
        for tenant in ("tenant-a", "tenant-b"):
            assert admin.post("/api/tenants", json={"name": tenant}).status_code == 201
            resp = admin.post("/api/keys", json={"tenant": tenant, "name": "k", "scopes": SCOPES})
            keys[tenant] = resp.json()["key"]
        a = stack.enter_context(_client(server.url, keys["tenant-a"]))
        b = stack.enter_context(_client(server.url, keys["tenant-b"]))
        resp = create_dataset(a, churn_csv(), filename="churn.csv", name="churn", target="churned")
        assert resp.status_code == 201, resp.text
        yield {"server": server, "admin": admin, "a": a, "b": b}


def test_builtin_datasets_are_listed_for_every_tenant(world: dict[str, Any]) -> None:
    b: httpx.Client = world["b"]
    listed = {d["name"]: d for d in b.get("/api/datasets").json()}
    assert {"iris", "digits", "breast_cancer", "wine", "diabetes"} <= set(listed)
    assert "churn" not in listed  # tenant A's
    digits = listed["digits"]
    assert (digits["builtin"], digits["owner"], digits["format"]) == (True, None, "builtin")
    assert digits["schema"]["kind"] == "image" and digits["rows"] == 1797
    assert listed["diabetes"]["schema"]["task"] == "regression"
    preview = b.get("/api/datasets/iris/preview", params={"rows": 3}).json()
    assert len(preview["rows"]) == 3 and "sepal length (cm)" in preview["columns"]
    assert b.delete("/api/datasets/iris").status_code == 403


def test_upload_infers_schema_and_versions(world: dict[str, Any]) -> None:
    a: httpx.Client = world["a"]
    detail = a.get("/api/datasets/churn").json()
    schema = detail["schema"]
    assert (schema["kind"], schema["task"], schema["target"]) == (
        "tabular",
        "classification",
        "churned",
    )
    assert schema["classes"] == ["no", "yes"]
    columns = {c["name"]: c for c in schema["columns"]}
    assert columns["a"]["dtype"] == "numeric" and columns["a"]["missing"] == 13
    assert columns["color"]["dtype"] == "categorical" and columns["color"]["distinct"] == 3
    assert detail["owner"] == "tenant-a" and detail["rows"] == 300 and len(detail["sha256"]) == 64
    resp = create_dataset(a, churn_csv(120, seed=1), filename="churn-v2.csv", name="churn2",
                          target="churned")  # fmt: skip
    assert resp.status_code == 201, resp.text
    again = create_dataset(a, churn_csv(150, seed=2), filename="x.csv", name="churn2",
                           target="churned")  # fmt: skip
    assert again.json()["version"] == 2
    versions = a.get("/api/datasets/churn2").json()["versions"]
    assert [(v["version"], v["rows"]) for v in versions] == [(1, 120), (2, 150)]
    preview = a.get("/api/datasets/churn2/preview", params={"version": 1, "rows": 2}).json()
    assert preview["version"] == 1 and preview["columns"][:3] == ["a", "b", "color"]
    # Another tenant: exactly a dataset that does not exist.
    b: httpx.Client = world["b"]
    hidden, ghost = b.get("/api/datasets/churn2"), b.get("/api/datasets/nope")
    assert hidden.status_code == ghost.status_code == 404
    assert hidden.text == ghost.text.replace("nope", "churn2")
    assert b.delete("/api/datasets/churn2").status_code == 404
    assert a.delete("/api/datasets/churn2").status_code == 204
    assert a.get("/api/datasets/churn2").status_code == 404


@pytest.mark.parametrize(
    ("data", "body", "needle"),
    [
        (b"a,b,y\n1,2,x\n3,4\n" + b"5,6,z\n" * 20, {"target": "y"}, "line"),
        (churn_csv(50), {"target": "missing"}, "churned"),  # lists the columns there are
        (churn_csv(50), {"target": "churned", "task": "regression"}, "churned"),
        (b"", {"target": "y"}, ""),
    ],
    ids=["ragged", "missing-target", "wrong-label-type", "empty"],
)
def test_malformed_datasets_are_refused_and_nothing_is_recorded(
    world: dict[str, Any], data: bytes, body: dict[str, Any], needle: str
) -> None:
    a: httpx.Client = world["a"]
    before = a.get("/api/datasets").json()
    if data:
        resp = create_dataset(a, data, filename="bad.csv", name="bad", **body)
    else:  # an empty upload is refused by the artifact store already
        resp = a.post("/api/artifacts", content=data)
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]["message"]
    assert a.get("/api/datasets/bad").status_code == 404
    assert a.get("/api/datasets").json() == before


def test_runs_are_validated_before_anything_is_written(world: dict[str, Any]) -> None:
    a, b = world["a"], world["b"]
    ok = {"dataset": "churn", "trainer": "logistic_regression", "model_name": "v-model"}
    cases: list[tuple[dict[str, Any], int, str | None, str]] = [
        ({"dataset": "nope"}, 404, "dataset", "nope"),
        ({"dataset_version": 9}, 404, "dataset_version", "version 9"),
        ({"trainer": "telepathy"}, 400, "trainer", "telepathy"),
        ({"trainer": "mlp", "params": {"lr": -1}}, 400, None, "params.lr"),
        ({"params": {"bogus": 1}}, 400, None, "bogus"),
        ({"trainer": "cnn"}, 400, "trainer", "tabular"),
        ({"trainer": "linear_regression"}, 400, "trainer", "classification"),
    ]
    for change, status, param, needle in cases:
        resp = a.post("/api/runs", json={**ok, **change})
        assert resp.status_code == status, (change, resp.text)
        error = resp.json()["error"]
        assert needle in error["message"], (change, error)
        if param is not None:
            assert error["param"] == param, (change, error)
    # Bad body shapes are refused by the wire model, also naming the field.
    bad_split = a.post("/api/runs", json={**ok, "split": {"validation": 0.5, "test": 0.5}})
    assert bad_split.status_code == 400 and "split" in bad_split.text
    # B may neither train on A's dataset nor add versions to A's model.
    assert b.post("/api/runs", json=ok).status_code == 404
    assert a.get("/api/runs").json() == []


@pytest.mark.slow
def test_train_deploy_predict_equals_in_process_model(world: dict[str, Any]) -> None:
    a: httpx.Client = world["a"]
    server: ServerProcess = world["server"]
    params = {"epochs": 15, "hidden": [16], "lr": 0.01}
    run = start_run(a, dataset="churn", trainer="mlp", params=params, model_name="churn-mlp",
                    seed=3, split={"validation": 0.2, "test": 0.2, "seed": 1})  # fmt: skip
    assert run["status"] == "queued" and run["params"]["epochs"] == 15
    assert run["params"]["batch_size"] == 64  # defaults filled in
    done = wait_run(a, run["id"])
    assert done["status"] == "succeeded", done
    assert done["model_version"] == 1 and done["owner"] == "tenant-a"
    assert done["metrics"]["test"]["accuracy"] > 0.7
    detail = a.get(f"/api/runs/{run['id']}").json()
    assert [e["epoch"] for e in detail["epochs"]] == list(range(1, 16))
    assert detail["lineage"]["dataset"] == "churn" and detail["lineage"]["run_id"] == run["id"]
    assert detail["artifacts"][0]["sha256"]
    version = a.get("/api/models/churn-mlp/versions/1").json()
    assert version["runtime"] == "trained"
    assert version["lineage"]["dataset_version"] == 1
    assert version["metadata"]["task"] == "classification"
    assert world["b"].get("/api/models/churn-mlp").status_code == 404  # A's model

    assert a.post("/api/deployments", json={"model": "churn-mlp"}).status_code == 201
    wait_state(server.url, "churn-mlp", "ready")
    rows = [*churn_rows(40, seed=9), (0.3, -1.2, "purple", "no"), (None, 0.0, None, "no")]
    inputs = {
        "a": np.array([np.nan if r[0] is None else r[0] for r in rows], dtype=np.float32),
        "b": np.array([r[1] for r in rows], dtype=np.float32),
        "color": np.array([(r[2] or "").encode() for r in rows], dtype=object),
    }
    specs = {s["name"]: s for s in version["signature"]["inputs"]}
    assert set(specs) == set(inputs)
    key = a.headers["Authorization"]
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        tensors = []
        for name, values in inputs.items():
            tensor = triton.InferInput(name, [len(rows)], specs[name]["datatype"])
            tensor.set_data_from_numpy(values)
            tensors.append(tensor)
        result = client.infer("churn-mlp", tensors, headers={"Authorization": key})
    finally:
        client.close()
    proba = result.as_numpy("probabilities")
    labels = [x.decode() for x in result.as_numpy("label")]
    runtime = served_runtime(server.data_dir, server.url, "churn-mlp")
    try:
        expected = runtime.predict(inputs)
    finally:
        runtime.unload()
    np.testing.assert_allclose(proba, expected["probabilities"], atol=1e-5)
    assert labels == [str(x.decode() if isinstance(x, bytes) else x) for x in expected["label"]]
    truth = [r[3] for r in rows[:40]]
    assert np.mean([p == t for p, t in zip(labels[:40], truth, strict=True)]) > 0.7


@pytest.mark.slow
def test_events_stream_lists_and_compare(world: dict[str, Any]) -> None:
    a: httpx.Client = world["a"]
    first = start_run(a, dataset="churn", trainer="logistic_regression", model_name="cmp")
    second = start_run(a, dataset="churn", trainer="logistic_regression", model_name="cmp",
                       params={"C": 0.05})  # fmt: skip
    events = sse_events(a, second["id"])  # live: the run was queued when the stream began
    kinds = [e["type"] for e in events]
    assert kinds[0] == "status" and events[0]["data"]["status"] == "queued"
    assert {"started", "metrics", "done"} <= set(kinds)
    assert events[-1]["type"] == "status" and events[-1]["data"]["status"] == "succeeded"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert wait_run(a, first["id"])["status"] == "succeeded"
    assert sse_events(a, first["id"])[-1]["data"]["model_version"] == 1
    listed = a.get("/api/runs", params={"model": "cmp"}).json()
    assert [r["id"] for r in listed] == [second["id"], first["id"]]
    assert a.get("/api/runs", params={"model": "cmp", "status": "failed"}).json() == []
    assert world["b"].get("/api/runs", params={"model": "cmp"}).json() == []
    cmp = a.get("/api/runs/compare", params={"ids": f"{first['id']},{second['id']}"}).json()
    assert cmp["params"]["C"] == [1.0, 0.05]
    assert len(cmp["metrics"]["test.accuracy"]) == 2
    assert all(isinstance(v, float) for v in cmp["metrics"]["validation.f1_macro"])
    logs = a.get(f"/api/runs/{first['id']}/logs")
    assert logs.status_code == 200 and logs.headers["content-type"].startswith("text/plain")
    hidden, ghost = world["b"].get(f"/api/runs/{first['id']}"), world["b"].get("/api/runs/99999")
    assert hidden.status_code == ghost.status_code == 404
    assert hidden.text == ghost.text.replace("99999", str(first["id"]))
    assert world["b"].get(f"/api/runs/{first['id']}/events").status_code == 404


@pytest.mark.slow
def test_cancel_running_and_queued_runs(world: dict[str, Any]) -> None:
    a: httpx.Client = world["a"]
    long = start_run(a, dataset="digits", trainer="cnn", params={"epochs": 200},
                     model_name="never")  # fmt: skip
    queued = start_run(a, dataset="digits", trainer="cnn", params={"epochs": 1},
                       model_name="never")  # fmt: skip
    wait_run(a, long["id"], until={"running"})
    # training_max_jobs = 1: the second waits, and cancelling it is immediate.
    assert a.get(f"/api/runs/{queued['id']}").json()["status"] == "queued"
    assert a.post(f"/api/runs/{queued['id']}/cancel").json()["status"] == "cancelled"
    wait_epoch(a, long["id"], 1)
    assert a.post(f"/api/runs/{long['id']}/cancel").status_code == 200
    done = wait_run(a, long["id"], timeout=60)
    assert done["status"] == "cancelled" and done["model_version"] is None
    assert done["progress"]["epoch"] < 200
    assert a.get("/api/models/never").status_code == 404  # nothing registered
    assert a.post(f"/api/runs/{long['id']}/cancel").json()["status"] == "cancelled"
    assert a.get("/api/runs/not-a-number").status_code == 404
    # The platform admin sees every tenant's runs.
    ids = {r["id"] for r in world["admin"].get("/api/runs").json()}
    assert {long["id"], queued["id"]} <= ids
