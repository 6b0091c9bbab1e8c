"""Traffic management and pipelines against a real server: canary share, promote under load,
rollback, shadow copies, pipelines equal to their steps called by hand, graph validation and
tenant isolation.

Models are made here with scikit-learn + skl2onnx: a scaler, classifiers on scaled and raw
iris rows. A classifier is registered twice (versions 1 and 2) as ``flower`` for the traffic
tests; ``model_version`` in each V2 answer says which deployment answered.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from tests.integration.helpers import AUTH, deploy, iris_rows, metric_value, push
from tests.integration.server_process import TEST_ADMIN_KEY, ServerProcess


def _onnx(model: Any, path: Path) -> Path:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(model): {"zipmap": False}} if hasattr(model, "classes_") else None
    onx = convert_sklearn(
        model, initial_types=[("input", FloatTensorType([None, 4]))], options=options
    )
    path.write_bytes(onx.SerializeToString())
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("traffic")
    srv = ServerProcess(
        tmp / "data", demo=False, env={"MODELPORT_DEMO_TEXT_MODELS": "false"}
    ).start()
    try:
        x, y = load_iris(return_X_y=True)
        x = x.astype(np.float32)
        scaler = StandardScaler().fit(x)
        scaled = scaler.transform(x).astype(np.float32)
        files = {
            "scaler": _onnx(scaler, tmp / "scaler.onnx"),
            "scaled-clf": _onnx(LogisticRegression(max_iter=500).fit(scaled, y), tmp / "sc.onnx"),
            "clf-a": _onnx(LogisticRegression(max_iter=500).fit(x, y), tmp / "a.onnx"),
            "clf-b": _onnx(
                DecisionTreeClassifier(max_depth=2, random_state=0).fit(x, y), tmp / "b.onnx"
            ),
            "clf-c": _onnx(LogisticRegression(C=0.01, max_iter=500).fit(x, y), tmp / "c.onnx"),
        }
        for name, path in files.items():
            push(srv.url, path, name, "onnx")
            deploy(srv.url, name)
        push(srv.url, files["clf-a"], "flower", "onnx")
        push(srv.url, files["clf-b"], "flower", "onnx")
        deploy(srv.url, "flower", version=1)
        yield srv
    finally:
        srv.stop()


def _v2(rows: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(rows.shape),
                "data": rows.ravel().tolist(),
            }
        ]
    }


def _infer(http: httpx.Client, model: str, rows: np.ndarray, **params: Any) -> dict[str, Any]:
    body = _v2(rows)
    if params:
        body["parameters"] = params
    resp = http.post(f"/v2/models/{model}/infer", json=body)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _out(answer: dict[str, Any], name: str) -> np.ndarray:
    out = next(o for o in answer["outputs"] if o["name"] == name)
    return np.asarray(out["data"]).reshape(out["shape"])


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=dict(AUTH), timeout=60) as client:
        yield client


# --- traffic ------------------------------------------------------------------------------


def _versions(http: httpx.Client, n: int, threads: int = 4) -> Counter[str]:
    row = iris_rows(1)

    def one(_: int) -> str:
        return str(_infer(http, "flower", row)["model_version"])

    with ThreadPoolExecutor(threads) as pool:
        return Counter(pool.map(one, range(n)))


def test_canary_promote_rollback_and_shadow(server: ServerProcess, http: httpx.Client) -> None:
    # canary: 10 % to version 2 (deployed as flower.v2 on the way)
    resp = http.put("/api/models/flower/traffic", json={"weights": {"2": 10}})
    assert resp.status_code == 200, resp.text
    routes = {r["deployment"]: r["weight"] for r in resp.json()["routes"]}
    assert routes == {"flower": 90, "flower.v2": 10}
    counts = _versions(http, 2000)
    assert sum(counts.values()) == 2000
    assert 140 <= counts["2"] <= 260, counts  # 7-13 %
    # a path naming the version reaches it whatever the weights
    assert _infer(http, "flower", iris_rows(1))["model_version"] in ("1", "2")
    pinned = http.post("/v2/models/flower/versions/2/infer", json=_v2(iris_rows(1)))
    assert pinned.json()["model_version"] == "2"

    # promote while client threads keep calling: no request fails, then all go to v2
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=server.url, headers=dict(AUTH), timeout=60) as mine:
            while not stop.is_set():
                r = mine.post("/v2/models/flower/infer", json=_v2(iris_rows(2)))
                if r.status_code != 200:
                    failures.append(r.text)

    workers = [threading.Thread(target=hammer) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        promoted = http.post("/api/models/flower/promote", json={})
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["stable"] == "flower.v2"
    assert promoted.json()["previous"] == "flower"
    assert failures == []
    assert _versions(http, 200) == {"2": 200}
    aliases = http.get("/api/models/flower").json()["aliases"]
    assert aliases["production"] == 2 and aliases["previous"] == 1

    # rollback: back to version 1, aliases follow
    back = http.post("/api/models/flower/rollback")
    assert back.status_code == 200, back.text
    assert back.json()["stable"] == "flower"
    assert _versions(http, 100) == {"1": 100}
    assert http.get("/api/models/flower").json()["aliases"]["production"] == 1
    assert http.post("/api/models/flower/rollback").status_code == 409  # nothing left

    # shadow: version 2 receives copies, answers come from version 1
    before = metric_value(
        server.url, "modelport_requests_total", model="flower.v2", protocol="shadow", status="200"
    )
    shadowed = http.put("/api/models/flower/traffic", json={"shadow": 2})
    assert shadowed.status_code == 200, shadowed.text
    assert shadowed.json()["shadow"]["deployment"] == "flower.v2"
    assert _versions(http, 50, threads=1) == {"1": 50}
    for _ in range(100):
        after = metric_value(
            server.url,
            "modelport_requests_total",
            model="flower.v2",
            protocol="shadow",
            status="200",
        )
        if after - before >= 50:
            break
        threading.Event().wait(0.05)
    assert after - before == 50
    # cleared: no route left, the model is served as before
    assert http.put("/api/models/flower/traffic", json={}).json()["shadow"] is None


def test_traffic_refuses_bad_input(http: httpx.Client) -> None:
    too_much = http.put("/api/models/flower/traffic", json={"weights": {"2": 60, "3": 50}})
    assert too_much.status_code == 400 and "weights" in too_much.text
    missing = http.put("/api/models/flower/traffic", json={"weights": {"9": 10}})
    assert missing.status_code == 404 and "9" in missing.text
    ghost = http.get("/api/models/no-such-model/traffic")
    assert ghost.status_code == 404
    assert http.post("/api/models/clf-a/promote", json={}).status_code == 409  # no canary


# --- pipelines ----------------------------------------------------------------------------


def _create(http: httpx.Client, **spec: Any) -> httpx.Response:
    return http.post("/api/pipelines", json=spec)


def test_sequence_equals_its_steps_by_hand(http: httpx.Client) -> None:
    resp = _create(
        http,
        name="scaled-iris",
        steps=[
            {"deployment": "scaler"},
            {"deployment": "scaled-clf", "inputs": {"input": "variable"}},
        ],
    )
    assert resp.status_code == 201, resp.text
    assert [t["name"] for t in resp.json()["inputs_signature"]] == ["input"]
    rows = iris_rows(7, seed=3)
    got = _infer(http, "scaled-iris", rows)
    scaled = _out(_infer(http, "scaler", rows), "variable").astype(np.float32)
    by_hand = _infer(http, "scaled-clf", scaled)
    for name in ("label", "probabilities"):
        np.testing.assert_array_equal(_out(got, name), _out(by_hand, name))
    assert got["model_name"] == "scaled-iris"
    meta = http.get("/v2/models/scaled-iris").json()
    assert [t["name"] for t in meta["inputs"]] == ["input"]
    assert {t["name"] for t in meta["outputs"]} == {"label", "probabilities"}
    assert http.get("/v2/models/scaled-iris/ready").status_code == 200
    # V1 :predict through the same pipeline
    pred = http.post("/v1/models/scaled-iris:predict", json={"instances": rows.tolist()})
    assert pred.status_code == 200, pred.text
    labels = [p["label"] for p in pred.json()["predictions"]]
    assert labels == _out(by_hand, "label").tolist()
    assert http.get("/api/pipelines/scaled-iris").json()["kind"] == "sequence"
    assert "scaled-iris" in [p["name"] for p in http.get("/api/pipelines").json()]


def test_ensembles_and_switch_equal_their_steps_by_hand(http: httpx.Client) -> None:
    rows = iris_rows(40, seed=5)
    probs = {m: _out(_infer(http, m, rows), "probabilities") for m in ("clf-a", "clf-b", "clf-c")}
    labels = {m: _out(_infer(http, m, rows), "label") for m in ("clf-a", "clf-b", "clf-c")}

    assert (
        _create(
            http,
            name="avg",
            kind="ensemble-average",
            steps=[{"deployment": "clf-a"}, {"deployment": "clf-b"}],
        ).status_code
        == 201
    )
    avg = _out(_infer(http, "avg", rows), "probabilities")
    np.testing.assert_allclose(avg, (probs["clf-a"] + probs["clf-b"]) / 2, rtol=1e-6)

    assert (
        _create(
            http,
            name="vote",
            kind="ensemble-vote",
            steps=[{"deployment": "clf-a"}, {"deployment": "clf-b"}, {"deployment": "clf-c"}],
        ).status_code
        == 201
    )
    stacked = np.stack([labels["clf-a"], labels["clf-b"], labels["clf-c"]])
    majority = [
        Counter(col).most_common(1)[0][0] if Counter(col).most_common(1)[0][1] > 1 else col[0]
        for col in stacked.T.tolist()
    ]
    assert _out(_infer(http, "vote", rows), "label").tolist() == majority

    resp = _create(
        http,
        name="petal-switch",
        kind="switch",
        steps=[
            {
                "deployment": "clf-a",
                "when": {"input": "input", "index": 2, "op": ">", "value": 4.0},
            },
            {"deployment": "clf-b"},
        ],
    )
    assert resp.status_code == 201, resp.text
    expected = np.where(rows[:, 2] > 4.0, labels["clf-a"], labels["clf-b"])
    assert _out(_infer(http, "petal-switch", rows), "label").tolist() == expected.tolist()

    assert (
        _create(
            http,
            name="tier-switch",
            kind="switch",
            steps=[
                {"deployment": "clf-b", "when": {"parameter": "tier", "value": "cheap"}},
                {"deployment": "clf-a"},
            ],
        ).status_code
        == 201
    )
    cheap = _infer(http, "tier-switch", rows, tier="cheap")
    assert _out(cheap, "label").tolist() == labels["clf-b"].tolist()
    assert _out(_infer(http, "tier-switch", rows), "label").tolist() == labels["clf-a"].tolist()


def test_pipeline_graphs_are_validated(http: httpx.Client) -> None:
    unknown = _create(
        http, name="p-unknown", steps=[{"deployment": "scaler"}, {"deployment": "nope"}]
    )
    assert unknown.status_code == 400 and "step 1 (nope)" in unknown.text
    # clf-a answers label and probabilities: which one feeds scaled-clf's input is unclear
    unmapped = _create(
        http, name="p-names", steps=[{"deployment": "clf-a"}, {"deployment": "scaled-clf"}]
    )
    assert unmapped.status_code == 400 and "step 1 (scaled-clf)" in unmapped.text
    assert "'input'" in unmapped.text
    # one output into one input links by itself (the names differ: variable → input)
    piped = _create(
        http, name="p-piped", steps=[{"deployment": "scaler"}, {"deployment": "scaled-clf"}]
    )
    assert piped.status_code == 201, piped.text
    assert piped.json()["steps"][1]["inputs"] == {"input": "variable"}
    rows = iris_rows(5, seed=11)
    scaled = _out(_infer(http, "scaler", rows), "variable").astype(np.float32)
    expected = _out(_infer(http, "scaled-clf", scaled), "probabilities")
    np.testing.assert_array_equal(_out(_infer(http, "p-piped", rows), "probabilities"), expected)
    assert http.delete("/api/pipelines/p-piped").status_code == 204
    cycle = _create(http, name="p-self", steps=[{"deployment": "p-self"}])
    assert cycle.status_code == 400 and "step 0" in cycle.text
    taken = _create(http, name="clf-a", steps=[{"deployment": "clf-b"}])
    assert taken.status_code == 409
    bad_switch = _create(
        http,
        name="p-switch",
        kind="switch",
        steps=[{"deployment": "clf-a"}, {"deployment": "clf-b"}],
    )
    assert bad_switch.status_code == 400 and "step 0 (clf-a)" in bad_switch.text
    assert http.get("/api/pipelines/p-unknown").status_code == 404
    # a pipeline used by another cannot go; the user can
    assert _create(http, name="inner", steps=[{"deployment": "clf-a"}]).status_code == 201
    assert _create(http, name="outer", steps=[{"deployment": "inner"}]).status_code == 201
    assert http.delete("/api/pipelines/inner").status_code == 409
    assert http.delete("/api/pipelines/outer").status_code == 204
    assert http.delete("/api/pipelines/inner").status_code == 204
    assert http.post("/v2/models/inner/infer", json=_v2(iris_rows(1))).status_code == 404


# --- isolation ----------------------------------------------------------------------------


def _tenant(admin: httpx.Client, url: str, name: str) -> httpx.Client:
    assert admin.post("/api/tenants", json={"name": name}).status_code == 201
    scopes = ["inference", "models:write", "deploy"]
    key = admin.post("/api/keys", json={"tenant": name, "name": "k", "scopes": scopes}).json()
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key['key']}"}, timeout=60)


@contextlib.contextmanager
def _tenants(server: ServerProcess, *names: str) -> Iterator[tuple[httpx.Client, ...]]:
    """An admin client, then a client for each new tenant of ``names``; closed on exit."""
    with contextlib.ExitStack() as stack:
        auth = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
        admin = stack.enter_context(httpx.Client(base_url=server.url, headers=auth, timeout=60))
        tenants = [stack.enter_context(_tenant(admin, server.url, name)) for name in names]
        yield (admin, *tenants)


def _own_model(http: httpx.Client, name: str, tmp_path: Path, versions: int = 1) -> None:
    """Register an iris classifier as ``name`` (as ``http``'s tenant) and deploy version 1."""
    x, y = load_iris(return_X_y=True)
    path = _onnx(
        LogisticRegression(max_iter=500).fit(x.astype(np.float32), y), tmp_path / f"{name}.onnx"
    )
    sha = http.post("/api/artifacts", content=path.read_bytes()).json()["sha256"]
    body = {"artifact_sha256": sha, "artifact_name": path.name, "runtime": "onnx"}
    for _ in range(versions):
        assert http.post(f"/api/models/{name}/versions", json=body).status_code == 201
    assert http.post("/api/deployments", json={"model": name, "version": 1}).status_code == 201
    for _ in range(600):
        if http.get(f"/api/deployments/{name}").json().get("state") == "ready":
            break
        threading.Event().wait(0.1)


def test_other_tenants_get_404_for_pipelines_and_traffic(
    server: ServerProcess, tmp_path: Path
) -> None:
    with _tenants(server, "t-a", "t-b") as (_, a, b):
        _own_model(a, "a-model", tmp_path, versions=2)
        made = a.post(
            "/api/pipelines", json={"name": "a-pipe", "steps": [{"deployment": "a-model"}]}
        )
        assert made.status_code == 201, made.text
        assert made.json()["owner"] == "t-a"
        assert a.put("/api/models/a-model/traffic", json={"weights": {"2": 50}}).status_code == 200
        # B cannot use A's model as a step either
        steal = b.post(
            "/api/pipelines", json={"name": "b-pipe", "steps": [{"deployment": "a-model"}]}
        )
        assert steal.status_code == 400

        calls = [
            ("GET", "/api/pipelines/{p}", None),
            ("DELETE", "/api/pipelines/{p}", None),
            ("PUT", "/api/pipelines/{p}/visibility", {"visibility": "public"}),
            ("POST", "/v2/models/{p}/infer", _v2(iris_rows(1))),
            ("POST", "/v1/models/{p}:predict", {"instances": iris_rows(1).tolist()}),
            ("GET", "/v2/models/{p}/ready", None),
            ("GET", "/api/models/{m}/traffic", None),
            ("PUT", "/api/models/{m}/traffic", {}),
            ("POST", "/api/models/{m}/promote", {}),
            ("POST", "/api/models/{m}/rollback", None),
            ("POST", "/v2/models/{m}/infer", _v2(iris_rows(1))),
        ]
        for method, template, json in calls:
            hit = b.request(method, template.format(p="a-pipe", m="a-model"), json=json)
            miss = b.request(method, template.format(p="ghost-p", m="ghost-m"), json=json)
            assert hit.status_code == 404, (method, template, hit.text)
            assert miss.status_code == 404, (method, template, miss.text)
            expected = miss.text.replace("ghost-p", "a-pipe").replace("ghost-m", "a-model")
            assert hit.text == expected, (method, template)
        assert "a-pipe" not in b.get("/api/pipelines").text
        # A still has both
        assert a.post("/v2/models/a-pipe/infer", json=_v2(iris_rows(1))).status_code == 200
        assert a.get("/api/models/a-model/traffic").json()["routes"][1]["weight"] == 50


def test_shared_and_public_pipelines(server: ServerProcess, tmp_path: Path) -> None:
    """As for models: shared → the named tenants may call (not change); public → everyone;
    publishing refused (400 naming the step) while a step is hidden from that audience."""
    from modelport.client import Client

    with _tenants(server, "t-c", "t-d", "t-e") as (admin, c, d, e):
        _own_model(c, "c-model", tmp_path)
        assert c.post("/api/pipelines", json={"name": "c-pipe",
                                              "steps": [{"deployment": "c-model"}]}
                      ).status_code == 201  # fmt: skip
        row = iris_rows(2)
        v2, predict = _v2(row), {"instances": row.tolist()}

        def calls(http: httpx.Client) -> tuple[int, int, int, bool]:
            listed = "c-pipe" in [p["name"] for p in http.get("/api/pipelines").json()]
            return (http.get("/api/pipelines/c-pipe").status_code,
                    http.post("/v2/models/c-pipe/infer", json=v2).status_code,
                    http.post("/v1/models/c-pipe:predict", json=predict).status_code,
                    listed)  # fmt: skip

        assert calls(d) == (404, 404, 404, False)
        # shared with D over C's private model: refused, naming the step; nothing changes
        share_d = {"visibility": "shared", "tenants": ["t-d"]}
        refused = c.put("/api/pipelines/c-pipe/visibility", json=share_d)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "visibility"
        assert (
            "step 0 (c-model) is not visible to tenant(s) t-d" in refused.json()["error"]["message"]
        )
        assert c.get("/api/pipelines/c-pipe").json()["visibility"] == "private"
        assert c.put("/api/models/c-model/visibility", json=share_d).status_code == 200
        shared = c.put("/api/pipelines/c-pipe/visibility", json=share_d)
        assert shared.status_code == 200, shared.text
        assert shared.json()["visibility"] == "shared"
        assert calls(d) == (200, 200, 200, True)
        assert calls(e) == (404, 404, 404, False)
        for method, path, body in [
            ("PUT", "/api/pipelines/c-pipe/visibility", {"visibility": "public"}),
            ("DELETE", "/api/pipelines/c-pipe", None),
        ]:
            denied = d.request(method, path, json=body)
            assert denied.status_code == 403, denied.text
            assert "belongs to another tenant" in denied.text
        # public: refused while the step is only shared, then callable by everyone
        refused = c.put("/api/pipelines/c-pipe/visibility", json={"visibility": "public"})
        assert refused.status_code == 400
        assert "step 0 (c-model) is not public" in refused.json()["error"]["message"]
        assert c.put("/api/models/c-model/visibility",
                     json={"visibility": "public"}).status_code == 200  # fmt: skip
        with Client(server.url, api_key=c.headers["Authorization"].split()[1]) as sdk:
            assert sdk.set_pipeline_visibility("c-pipe", "public").visibility == "public"
        assert calls(e) == (200, 200, 200, True)
        assert calls(admin) == (200, 200, 200, True)
        # steps still resolve with the caller's rights: a step made private fails the call,
        # naming the step, for those who may not see it
        assert c.put("/api/models/c-model/visibility",
                     json={"visibility": "private"}).status_code == 200  # fmt: skip
        hidden = e.post("/v2/models/c-pipe/infer", json=v2)
        assert hidden.status_code == 503 and "step 0 (c-model)" in hidden.text
        assert c.post("/v2/models/c-pipe/infer", json=v2).status_code == 200
        # at creation: the same check; public over public steps works
        bad = c.post("/api/pipelines", json={"name": "c-bad", "visibility": "public",
                                             "steps": [{"deployment": "c-model"}]})  # fmt: skip
        assert bad.status_code == 400 and "step 0 (c-model)" in bad.text
        assert c.get("/api/pipelines/c-bad").status_code == 404
        assert admin.put("/api/models/clf-b/visibility",
                         json={"visibility": "public"}).status_code == 200  # fmt: skip
        opened = c.post("/api/pipelines", json={"name": "c-open", "visibility": "public",
                                                "steps": [{"deployment": "clf-b"}]})  # fmt: skip
        assert opened.status_code == 201, opened.text
        assert opened.json()["visibility"] == "public" and opened.json()["owner"] == "t-c"
        assert e.post("/v2/models/c-open/infer", json=v2).status_code == 200
        # back to private: others lose it again; the audit log has the change
        assert c.put("/api/pipelines/c-pipe/visibility",
                     json={"visibility": "private"}).status_code == 200  # fmt: skip
        assert calls(d) == (404, 404, 404, False)
        query = {"tenant": "t-c", "action": "PUT /api/pipelines/{name}/visibility"}
        audit = admin.get("/api/audit", params=query).json()  # written before the answer
        assert sorted(entry["status"] for entry in audit) == [200] * 3 + [400] * 2, audit
        assert {entry["target"] for entry in audit} == {"/api/pipelines/c-pipe/visibility"}
        denied = admin.get("/api/audit", params={**query, "tenant": "t-d"}).json()
        assert [entry["status"] for entry in denied] == [403]


# --- CLI ----------------------------------------------------------------------------------


def _cli(server: ServerProcess, *args: str) -> Any:
    import json

    from typer.testing import CliRunner

    from modelport.cli.main import app

    result = CliRunner().invoke(app, ["--url", server.url, "--api-key", TEST_ADMIN_KEY, *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in args else result.stdout


def test_cli_traffic_and_pipelines(server: ServerProcess, http: httpx.Client) -> None:
    status = _cli(server, "canary", "flower", "2", "--weight", "20", "--json")
    assert {r["deployment"]: r["weight"] for r in status["routes"]} == {
        "flower": 80,
        "flower.v2": 20,
    }
    status = _cli(server, "shadow", "flower", "2", "--json")
    assert status["shadow"]["version"] == 2 and len(status["routes"]) == 2  # weights kept
    assert _cli(server, "rollback", "flower", "--json")["shadow"] is None
    assert _cli(server, "promote", "flower", "2", "--json")["stable"] == "flower.v2"
    assert "flower.v2" in _cli(server, "traffic", "flower")
    assert _cli(server, "rollback", "flower", "--json")["stable"] == "flower"
    # the issue's form: deploy --version N --canary P is the same split
    status = _cli(server, "deploy", "flower", "--version", "2", "--canary", "10", "--json")
    assert {r["deployment"]: r["weight"] for r in status["routes"]} == {
        "flower": 90,
        "flower.v2": 10,
    }
    assert _cli(server, "rollback", "flower", "--json")["stable"] == "flower"

    info = _cli(
        server,
        "pipelines",
        "create",
        "cli-seq",
        "--step",
        "scaler",
        "--step",
        "scaled-clf",
        "--map",
        "1:input=variable",
        "--json",
    )
    assert info["steps"][1]["inputs"] == {"input": "variable"}
    info = _cli(
        server,
        "pipelines",
        "create",
        "cli-switch",
        "--kind",
        "switch",
        "--step",
        "clf-a",
        "--step",
        "clf-b",
        "--when",
        "input:input[2]>4",
        "--json",
    )
    assert info["steps"][0]["when"]["op"] == ">"
    names = [p["name"] for p in _cli(server, "pipelines", "list", "--json")]
    assert {"cli-seq", "cli-switch"} <= set(names)
    assert _cli(server, "pipelines", "show", "cli-seq", "--json")["kind"] == "sequence"
    rows = iris_rows(3)
    assert _infer(http, "cli-seq", rows)["model_name"] == "cli-seq"
    _cli(server, "pipelines", "delete", "cli-seq", "--json")
    assert http.get("/api/pipelines/cli-seq").status_code == 404

    # visibility, as `models share`: at creation and later
    assert _cli(server, "models", "share", "clf-b", "--visibility", "public", "--json")
    info = _cli(server, "pipelines", "create", "cli-pub", "--step", "clf-b",
                "--visibility", "public", "--json")  # fmt: skip
    assert info["visibility"] == "public" and info["owner"] is None
    info = _cli(server, "pipelines", "share", "cli-pub", "--visibility", "shared",
                "--tenant", "system", "--json")  # fmt: skip
    assert info["visibility"] == "shared"
    _cli(server, "pipelines", "share", "cli-pub", "--visibility", "private")  # says so on stderr
    listed = {p["name"]: p["visibility"] for p in _cli(server, "pipelines", "list", "--json")}
    assert listed["cli-pub"] == "private"


def test_routes_and_pipelines_survive_a_restart(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, headers=dict(AUTH), timeout=60) as http:
        assert (
            http.put("/api/models/flower/traffic", json={"weights": {"2": 30}}).status_code == 200
        )
        made = _create(http, name="kept", steps=[{"deployment": "clf-a"}])
        assert made.status_code == 201, made.text
        before = _infer(http, "kept", iris_rows(4))
    server.stop()
    server.start()
    with httpx.Client(base_url=server.url, headers=dict(AUTH), timeout=60) as http:
        routes = http.get("/api/models/flower/traffic").json()["routes"]
        assert {r["deployment"]: r["weight"] for r in routes} == {"flower": 70, "flower.v2": 30}
        assert _versions(http, 100).keys() == {"1", "2"}
        after = _infer(http, "kept", iris_rows(4))
        assert _out(after, "label").tolist() == _out(before, "label").tolist()
