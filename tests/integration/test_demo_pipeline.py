"""The demo pipeline shipped with ``make run``: review text → ``minilm`` → ``sentiment-head``.

One real server with the text demos and ``MODELPORT_DEMO_PIPELINE=true`` (the other test
servers turn it off). At first start it embeds the bundled reviews with ``minilm``, trains
``sentiment-head`` through the training service and creates ``review-sentiment``; these
tests wait for that, then check the answer through V2 (tritonclient, binary tensors) and
``:predict`` equals calling the two steps by hand, that obvious sentences get the right
label, what the run recorded, that the pipeline is public (a tenant's key may call it, not
change it), and that a restart neither retrains nor loses the pipeline — and makes a private
one left by an older version public, once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.http import InferenceServerClientPlugin

from modelport.engine.demo_pipeline import PUBLISHED
from tests.integration.helpers import AUTH
from tests.integration.server_process import ServerProcess

PIPELINE, HEAD, EMBEDDER = "review-sentiment", "sentiment-head", "minilm"
# Not in the training set (engine/data/reviews.jsonl): obvious to a person, new to the head.
POSITIVE = [
    "Absolutely wonderful, I loved it and would recommend it to everyone.",
    "The staff were kind and the food was delicious.",
    "Great quality, fast delivery, very happy with it.",
]
NEGATIVE = [
    "Terrible quality, it broke on the first day and support was useless.",
    "The food was cold and the waiter was rude.",
    "A boring, badly written film; I want my money back.",
]
_BUILD_TIMEOUT_S = 600.0


class _Bearer(InferenceServerClientPlugin):
    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = headers

    def __call__(self, request: Any) -> None:
        request.headers.update(self.headers)


def _wait_for_pipeline(server: ServerProcess) -> dict[str, Any]:
    deadline = time.monotonic() + _BUILD_TIMEOUT_S
    while time.monotonic() < deadline:
        resp = httpx.get(f"{server.url}/api/pipelines/{PIPELINE}", headers=AUTH, timeout=10)
        if resp.status_code == 200:
            return dict(resp.json())
        assert resp.status_code == 404, resp.text
        time.sleep(0.5)
    raise AssertionError(f"no pipeline {PIPELINE!r} after {_BUILD_TIMEOUT_S}s:\n{server.log()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("demo-pipeline") / "data"
    srv = ServerProcess(data, env={"MODELPORT_DEMO_PIPELINE": "true"}).start(timeout=300)
    try:
        _wait_for_pipeline(srv)
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server: ServerProcess) -> triton.InferenceServerClient:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    client.register_plugin(_Bearer(AUTH))
    return client


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=dict(AUTH), timeout=60) as c:
        yield c


def _infer(client: triton.InferenceServerClient, model: str, name: str, data: np.ndarray,
           outputs: list[str]) -> dict[str, np.ndarray]:  # fmt: skip
    datatype = "BYTES" if data.dtype == object else "FP32"
    inp = triton.InferInput(name, list(data.shape), datatype)
    inp.set_data_from_numpy(data, binary_data=True)
    wanted = [triton.InferRequestedOutput(o, binary_data=True) for o in outputs]
    answer = client.infer(model, [inp], outputs=wanted)
    return {o: answer.as_numpy(o) for o in outputs}


def _texts(sentences: list[str]) -> np.ndarray:
    return np.array([s.encode() for s in sentences], dtype=object)


def test_the_pipeline_is_text_in_label_out(http: httpx.Client) -> None:
    info = http.get(f"/api/pipelines/{PIPELINE}").json()
    assert [s["deployment"] for s in info["steps"]] == [EMBEDDER, HEAD]
    assert info["steps"][1]["inputs"] == {"input": "embedding"}
    assert [(t["name"], t["datatype"]) for t in info["inputs_signature"]] == [("text", "BYTES")]
    assert {t["name"] for t in info["outputs_signature"]} == {"label", "probabilities"}
    metadata = http.get(f"/v2/models/{PIPELINE}").json()
    assert metadata["inputs"][0]["name"] == "text"


def test_v2_answer_equals_the_steps_called_by_hand(client: triton.InferenceServerClient) -> None:
    texts = _texts(POSITIVE + NEGATIVE)
    piped = _infer(client, PIPELINE, "text", texts, ["label", "probabilities"])
    embedded = _infer(client, EMBEDDER, "text", texts, ["embedding"])["embedding"]
    assert embedded.shape == (len(texts), 384) and embedded.dtype == np.float32
    by_hand = _infer(client, HEAD, "input", embedded, ["label", "probabilities"])
    np.testing.assert_array_equal(piped["probabilities"], by_hand["probabilities"])
    np.testing.assert_array_equal(piped["label"], by_hand["label"])
    labels = [v.decode() for v in piped["label"]]
    assert labels == ["positive"] * len(POSITIVE) + ["negative"] * len(NEGATIVE)
    np.testing.assert_allclose(piped["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    positive = piped["probabilities"][:, 1]  # columns: [negative, positive]
    assert (positive[: len(POSITIVE)] > 0.5).all() and (positive[len(POSITIVE) :] < 0.5).all()


def test_predict_route_gives_the_same_answer(
    http: httpx.Client, client: triton.InferenceServerClient
) -> None:
    sentences = [POSITIVE[0], NEGATIVE[0]]
    resp = http.post(f"/v1/models/{PIPELINE}:predict", json={"instances": sentences})
    assert resp.status_code == 200, resp.text
    predictions = resp.json()["predictions"]
    assert [p["label"] for p in predictions] == ["positive", "negative"]
    v2 = _infer(client, PIPELINE, "text", _texts(sentences), ["probabilities"])
    np.testing.assert_allclose(
        [p["probabilities"] for p in predictions], v2["probabilities"], rtol=1e-6
    )


def test_the_head_is_a_recorded_training_run(http: httpx.Client) -> None:
    runs = http.get("/api/runs", params={"model": HEAD}).json()
    assert len(runs) == 1
    run = runs[0]
    assert run["status"] == "succeeded" and run["trainer"] == "logistic_regression"
    assert run["dataset"] == "demo-review-embeddings"
    assert run["metrics"]["validation"]["accuracy"] >= 0.8, run["metrics"]
    model = http.get(f"/api/models/{HEAD}").json()
    assert model["visibility"] == "public" and model["aliases"]["production"] == 1
    assert "MiniLM" in model["description"] and "reviews" in model["description"]
    version = model["versions"][0]
    assert version["runtime"] == "trained"
    assert version["lineage"]["run_id"] == run["id"]
    assert version["lineage"]["dataset"] == "demo-review-embeddings"
    dataset = http.get("/api/datasets/demo-review-embeddings").json()
    assert dataset["rows"] == 160  # the bundled reviews, one embedding each


def test_bad_input_is_a_400_naming_the_tensor(http: httpx.Client) -> None:
    body = {"inputs": [{"name": "text", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    resp = http.post(f"/v2/models/{PIPELINE}/infer", json=body)
    assert resp.status_code == 400, resp.text
    assert "text" in resp.json()["error"]


def test_a_tenant_may_call_the_public_pipeline_but_not_change_it(
    server: ServerProcess, http: httpx.Client
) -> None:
    assert http.post("/api/tenants", json={"name": "reviewer"}).status_code == 201
    made = http.post("/api/keys", json={"tenant": "reviewer", "name": "k",
                                        "scopes": ["inference", "deploy"]})  # fmt: skip
    assert made.status_code == 201, made.text
    headers = {"Authorization": f"Bearer {made.json()['key']}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as tenant:
        info = tenant.get(f"/api/pipelines/{PIPELINE}").json()
        assert info["visibility"] == "public" and info["owner"] is None
        assert PIPELINE in [p["name"] for p in tenant.get("/api/pipelines").json()]
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                            "data": [POSITIVE[0]]}]}  # fmt: skip
        answer = tenant.post(f"/v2/models/{PIPELINE}/infer", json=body)
        assert answer.status_code == 200, answer.text
        label = next(o for o in answer.json()["outputs"] if o["name"] == "label")
        assert label["data"] == ["positive"]
        predicted = tenant.post(f"/v1/models/{PIPELINE}:predict", json={"instances": NEGATIVE})
        assert [p["label"] for p in predicted.json()["predictions"]] == ["negative"] * 3
        for method, path, json in [
            ("PUT", f"/api/pipelines/{PIPELINE}/visibility", {"visibility": "private"}),
            ("DELETE", f"/api/pipelines/{PIPELINE}", None),
        ]:
            assert tenant.request(method, path, json=json).status_code == 403


def test_a_restart_keeps_the_pipeline_and_does_not_retrain(server: ServerProcess) -> None:
    before = _v2_probabilities(server)
    # As an older modelport left it: private (platform pipelines had no visibility then).
    private = httpx.put(f"{server.url}/api/pipelines/{PIPELINE}/visibility", headers=AUTH,
                        json={"visibility": "private"}, timeout=10)  # fmt: skip
    assert private.status_code == 200 and private.json()["visibility"] == "private"
    (server.data_dir / PUBLISHED).unlink()
    server.stop()
    server.start(timeout=300)
    info = _wait_for_pipeline(server)  # restored with the deployments, not rebuilt
    assert info["steps"][1]["deployment"] == HEAD
    deadline = time.monotonic() + 120
    while (state := _state(server, HEAD)) != "ready" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state == "ready"
    np.testing.assert_array_equal(_v2_probabilities(server), before)
    runs = httpx.get(f"{server.url}/api/runs", params={"model": HEAD}, headers=AUTH).json()
    assert len(runs) == 1
    # made public once, in the background after the text demos
    deadline = time.monotonic() + 120
    while info["visibility"] != "public" and time.monotonic() < deadline:
        time.sleep(0.2)
        info = _wait_for_pipeline(server)
    assert info["visibility"] == "public"
    assert (server.data_dir / PUBLISHED).exists()


def _state(server: ServerProcess, name: str) -> str:
    resp = httpx.get(f"{server.url}/api/deployments/{name}", headers=AUTH, timeout=10)
    return str(resp.json().get("state"))


def _v2_probabilities(server: ServerProcess) -> np.ndarray:
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [POSITIVE[1]]}]}
    resp = httpx.post(
        f"{server.url}/v2/models/{PIPELINE}/infer", json=body, headers=AUTH, timeout=60
    )
    assert resp.status_code == 200, resp.text
    out = next(o for o in resp.json()["outputs"] if o["name"] == "probabilities")
    return np.asarray(out["data"], dtype=np.float32)
