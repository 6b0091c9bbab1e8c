"""State survives a restart; a corrupted artifact is refused at load."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.helpers import AUTH, deploy, iris_rows, push, wait_state
from tests.integration.server_process import ServerProcess


def _build_iris_skops(path: Path) -> None:
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    sio.dump(LogisticRegression(C=0.5, max_iter=1000).fit(x, y), path)


def _infer(url: str, model: str, rows: np.ndarray) -> list[int]:
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "data": rows.ravel().tolist(),
            }
        ]
    }
    resp = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return next(o for o in resp.json()["outputs"] if o["name"] == "label")["data"]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Server environment for each database: SQLite in the data dir, or a fresh PostgreSQL DB."""
    if request.param == "sqlite":
        return {}
    url = request.getfixturevalue("fresh_postgres_url")
    return {"MODELPORT_DATABASE_URL": url}


def test_state_survives_restart(tmp_path: Path, database_env: dict[str, str]) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, demo=False, env=database_env).start()
    try:
        _build_iris_skops(tmp_path / "tree.skops")
        push(server.url, tmp_path / "tree.skops", "tree", "sklearn", metadata={"team": "a"})
        push(
            server.url,
            tmp_path / "tree.skops",
            "tree",
            "sklearn",
            aliases=["production"],
            lineage={"dataset": "iris"},
        )
        deploy(server.url, "tree", version=2, replicas=2, max_batch_size=8)
        rows = iris_rows(5)
        before = _infer(server.url, "tree", rows)
        models_before = httpx.get(f"{server.url}/api/models/tree", headers=AUTH).json()
    finally:
        server.stop()

    server = ServerProcess(data, demo=False, env=database_env).start()
    try:
        status = httpx.get(f"{server.url}/api/status", headers=AUTH).json()
        assert status["database"] == ("postgresql" if database_env else "sqlite")
        detail = httpx.get(f"{server.url}/api/models/tree", headers=AUTH).json()
        assert detail == models_before
        assert [v["version"] for v in detail["versions"]] == [1, 2]
        assert detail["aliases"] == {"production": 2}
        assert detail["versions"][1]["lineage"] == {"dataset": "iris"}
        status = wait_state(server.url, "tree", "ready")
        assert (status["version"], status["replicas"], status["max_batch_size"]) == (2, 2, 8)
        assert _infer(server.url, "tree", rows) == before
    finally:
        server.stop()


def test_corrupted_artifact_refused_at_load(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", demo=False).start()
    try:
        _build_iris_skops(tmp_path / "tree.skops")
        info = push(server.url, tmp_path / "tree.skops", "tree", "sklearn")
        sha = info["artifact_sha256"]
        blob = tmp_path / "data" / "artifacts" / "sha256" / sha[:2] / sha
        raw = bytearray(blob.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        blob.chmod(0o644)
        blob.write_bytes(bytes(raw))

        resp = httpx.post(
            f"{server.url}/api/deployments", json={"model": "tree"}, timeout=30, headers=AUTH
        )
        assert resp.status_code == 201
        status = wait_state(server.url, "tree", "failed", timeout=60)
        assert "corrupt" in status["reason"].lower() or "sha256" in status["reason"].lower()
        body = {
            "inputs": [
                {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}
            ]
        }
        resp = httpx.post(f"{server.url}/v2/models/tree/infer", json=body, timeout=60, headers=AUTH)
        assert resp.status_code == 503
        assert "sha256" in resp.json()["error"] or "corrupt" in resp.json()["error"].lower()
    finally:
        server.stop()
