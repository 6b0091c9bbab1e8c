"""A model that kills its worker: the caller gets a clear 503, the replica comes back."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import joblib

from tests.fixtures.crashy import CrashyClassifier
from tests.integration.helpers import AUTH, deploy, push, wait_state
from tests.integration.server_process import ServerProcess


def _infer(url: str, first: float) -> httpx.Response:
    body = {
        "inputs": [
            {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [first, 0.0, 0.0, 0.0]}
        ]
    }
    return httpx.post(f"{url}/v2/models/crashy/infer", json=body, timeout=30, headers=AUTH)


def test_segfaulting_model_does_not_take_the_server_down(
    live_server: ServerProcess, tmp_path: Path
) -> None:
    url = live_server.url
    path = tmp_path / "crashy.joblib"
    joblib.dump(CrashyClassifier(), path)
    push(url, path, "crashy", "sklearn", trusted=True)
    deploy(url, "crashy", replicas=1)
    assert _infer(url, 1.0).status_code == 200

    started = time.monotonic()
    resp = _infer(url, -999.0)
    assert resp.status_code == 503, resp.text
    assert "crash" in resp.json()["error"].lower()
    assert time.monotonic() - started < 20  # a clear answer, not a hang

    status = httpx.get(f"{url}/api/deployments/crashy", headers=AUTH).json()
    replica = status["replica_status"][0]
    assert replica["restarts"] >= 1
    assert "SIGSEGV" in (replica["reason"] or status["reason"] or "")

    wait_state(url, "crashy", "ready", timeout=60)
    assert _infer(url, 2.0).status_code == 200
    # Other models never noticed.
    assert httpx.get(f"{url}/v2/models/iris/ready", headers=AUTH).status_code == 200
    assert httpx.delete(f"{url}/api/deployments/crashy", headers=AUTH).status_code == 204


def test_pickle_refused_without_trusted(live_server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    joblib.dump(CrashyClassifier(), path)
    with path.open("rb") as fh:
        sha = httpx.post(
            f"{live_server.url}/api/artifacts", content=fh.read(), headers=AUTH
        ).json()["sha256"]
    resp = httpx.post(
        f"{live_server.url}/api/models/unsafe/versions",
        json={"artifact_sha256": sha, "artifact_name": path.name, "runtime": "sklearn"},
        headers=AUTH,
    )
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["code"] == "unsafe_artifact" and "trusted" in err["message"]
    assert httpx.get(f"{live_server.url}/api/models/unsafe", headers=AUTH).status_code == 404
