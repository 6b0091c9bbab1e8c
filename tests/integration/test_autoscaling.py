"""Autoscaling end to end on a real server: a load step scales a deployment up, idle takes it
to zero, the next request waits for a cold start and is answered; all of it in ``status``
and ``/metrics``. Plus the V2 repository extension (load/unload/index), over plain HTTP and
through tritonclient.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.integration.helpers import AUTH, deploy, iris_rows, metric_value, wait_state
from tests.integration.server_process import ServerProcess
from tests.integration.test_v2_tritonclient import BearerAuth

ROW = [5.1, 3.5, 1.4, 0.2]  # a setosa: label 0


def _v2(rows: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.ravel().tolist()}]}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "MODELPORT_DEMO_TEXT_MODELS": "false",
        "MODELPORT_AUTOSCALE_TICK_S": "0.2",
        "MODELPORT_AUTOSCALE_WINDOW_S": "1.0",
    }
    proc = ServerProcess(tmp_path_factory.mktemp("autoscale") / "data", env=env).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=dict(AUTH), timeout=60) as client:
        yield client


def _status(http: httpx.Client, name: str) -> dict[str, Any]:
    resp = http.get(f"/api/deployments/{name}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _wait(http: httpx.Client, name: str, check: Any, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status = _status(http, name)
    while not check(status):
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: condition not met in {timeout}s: {status}")
        time.sleep(0.1)
        status = _status(http, name)
    return status


def test_load_step_scales_up_idle_scales_to_zero_and_a_cold_start_answers(
    server: ServerProcess, http: httpx.Client
) -> None:
    http.delete("/api/deployments/iris")
    status = deploy(server.url, "iris", min_replicas=0, max_replicas=2, target_inflight=1,
                    scale_up_delay_s=0.2, scale_down_delay_s=1, idle_timeout_s=3)  # fmt: skip
    assert status["autoscaling"] and status["min_replicas"] == 0 and status["max_replicas"] == 2
    assert status["replicas"] == 1

    # The load step: 8 clients sending back to back until two replicas serve.
    stop = threading.Event()
    answers: list[int] = []

    def client() -> None:
        with httpx.Client(base_url=server.url, headers=dict(AUTH), timeout=60) as own:
            while not stop.is_set():
                resp = own.post("/v2/models/iris/infer", json=_v2(np.array([ROW], np.float32)))
                answers.append(resp.status_code)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client) for _ in range(8)]
        try:
            scaled = _wait(http, "iris", lambda s: s["ready_replicas"] == 2, timeout=60)
        finally:
            stop.set()
        for future in futures:
            future.result()
    assert answers and set(answers) == {200}
    assert scaled["replicas"] == 2
    assert any("scale up" in d["reason"] for d in scaled["decisions"]), scaled["decisions"]
    assert metric_value(server.url, "modelport_scaling_decisions_total", model="iris",
                        direction="up", cause="autoscale") >= 1  # fmt: skip

    # Idle: after idle_timeout_s, down to zero replicas (state idle, not stopped).
    idle = _wait(http, "iris", lambda s: s["replicas"] == 0 and not s["replica_status"])
    assert idle["state"] == "idle"
    assert any("idle" in d["reason"] for d in idle["decisions"])
    assert metric_value(server.url, "modelport_replicas_desired", model="iris") == 0

    # The next request waits for a cold start and is answered correctly.
    resp = http.post("/v2/models/iris/infer", json=_v2(np.array([ROW], np.float32)))
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"][0]["data"] == [0]
    woke = _status(http, "iris")
    assert woke["replicas"] == 1 and woke["state"] == "ready"
    assert "cold start" in woke["decisions"][-1]["reason"]
    assert metric_value(server.url, "modelport_scaling_decisions_total", model="iris",
                        cause="cold_start") >= 1  # fmt: skip
    assert metric_value(server.url, "modelport_replicas_max", model="iris") == 2


def test_fixed_deployments_keep_todays_behaviour(http: httpx.Client) -> None:
    status = _status(http, "digits")
    assert status["autoscaling"] is False and status["min_replicas"] is None
    assert status["replicas"] == 1 and status["state"] == "ready"
    assert status["memory_bytes"] > 10 * 1024 * 1024  # the worker's measured RSS
    assert status["replica_status"][0]["memory_bytes"] == status["memory_bytes"]


def test_bad_autoscaling_specs_are_refused(http: httpx.Client) -> None:
    resp = http.post("/api/deployments", json={"model": "iris", "min_replicas": 3,
                                               "max_replicas": 2})  # fmt: skip
    assert resp.status_code in (400, 422) and "min_replicas" in resp.text
    resp = http.post("/api/deployments", json={"model": "iris", "target_inflight": 0})
    assert resp.status_code in (400, 422) and "target_inflight" in resp.text
    resp = http.post("/api/deployments", json={"model": "iris", "options": {"scaling": 1}})
    assert resp.status_code in (400, 422) and "scaling" in resp.text


# -- the V2 repository extension --------------------------------------------------------------


def _index(http: httpx.Client, **body: Any) -> dict[str, dict[str, Any]]:
    resp = (
        http.post("/v2/repository/index", json=body) if body else http.get("/v2/repository/index")
    )
    assert resp.status_code == 200, resp.text
    return {entry["name"]: entry for entry in resp.json()}


def test_repository_index_unload_and_load_over_http(http: httpx.Client) -> None:
    wait_state(str(http.base_url), "digits", "ready")
    index = _index(http)
    assert index["digits"]["state"] == "READY" and index["digits"]["version"] == "1"
    assert set(_index(http, ready=True)) >= {"digits"}

    resp = http.post("/v2/repository/models/digits/unload")
    assert resp.status_code == 200, resp.text
    index = _index(http)
    assert index["digits"] == {"name": "digits", "version": "1", "state": "UNAVAILABLE",
                               "reason": "unloaded"}  # fmt: skip
    assert "digits" not in _index(http, ready=True)
    rows = np.zeros((1, 64), np.float32)
    refused = http.post("/v2/models/digits/infer", json=_v2(rows))
    assert refused.status_code == 503 and "unloaded" in refused.json()["error"]
    assert _status(http, "digits")["unloaded"] is True

    resp = http.post("/v2/repository/models/digits/load", json={})
    assert resp.status_code == 200, resp.text
    assert _index(http)["digits"]["state"] == "READY"
    assert http.post("/v2/models/digits/infer", json=_v2(rows)).status_code == 200


def test_repository_bad_input_is_4xx_naming_the_problem(http: httpx.Client) -> None:
    resp = http.post("/v2/repository/models/digits/load",
                     json={"parameters": {"config": "{}"}})  # fmt: skip
    assert resp.status_code == 400 and "config" in resp.json()["error"]
    resp = http.post("/v2/repository/index", json={"ready": "yes"})
    assert resp.status_code == 400 and "ready" in resp.json()["error"]
    resp = http.post("/v2/repository/index", content=b"{nope")
    assert resp.status_code == 400 and "JSON" in resp.json()["error"]
    resp = http.post("/v2/repository/models/no-such-model/load")
    assert resp.status_code == 404 and "no-such-model" in resp.json()["error"]
    assert http.post("/v2/repository/models/no-such-model/unload").status_code == 404


def test_repository_through_tritonclient(server: ServerProcess, http: httpx.Client) -> None:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    client.register_plugin(BearerAuth(AUTH))
    names = {entry["name"]: entry for entry in client.get_model_repository_index()}
    assert names["digits"]["state"] == "READY"
    client.unload_model("digits")
    assert not client.is_model_ready("digits")
    assert {e["name"]: e for e in client.get_model_repository_index()}["digits"]["state"] == (
        "UNAVAILABLE"
    )
    inp = triton.InferInput("input", [2, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((2, 64), np.float32))
    with pytest.raises(InferenceServerException, match="unloaded"):
        client.infer("digits", [inp])
    client.load_model("digits")
    assert client.is_model_ready("digits")
    assert client.infer("digits", [inp]).as_numpy("label").shape == (2,)
    with pytest.raises(InferenceServerException, match="config"):
        client.load_model("digits", config='{"max_batch_size": 8}')
    # A registered model that is not deployed loads by being deployed with the defaults.
    http.delete("/api/deployments/iris")
    assert {e["name"]: e for e in client.get_model_repository_index()}["iris"] == {
        "name": "iris", "state": "UNAVAILABLE", "reason": "not deployed"}  # fmt: skip
    client.load_model("iris")
    assert client.is_model_ready("iris")
    iris = triton.InferInput("input", [3, 4], "FP32")
    iris.set_data_from_numpy(iris_rows(3))
    assert client.infer("iris", [iris]).as_numpy("label").shape == (3,)
