"""Prometheus metrics and OpenAPI docs on the running server."""

from __future__ import annotations

import httpx

from tests.integration.helpers import AUTH, iris_rows, metric_value
from tests.integration.server_process import ServerProcess


def test_metrics_cover_requests_latency_batches_queue_replicas(live_server: ServerProcess) -> None:
    url = live_server.url
    rows = iris_rows(3)
    body = {"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32",
                        "data": rows.ravel().tolist()}]}  # fmt: skip
    before = metric_value(url, "modelport_requests_total", model="iris", status="200")
    assert httpx.post(f"{url}/v2/models/iris/infer", json=body, headers=AUTH).status_code == 200
    assert httpx.post(
        f"{url}/v1/models/iris:predict", json={"instances": [[1, 2, 3, 4]]}, headers=AUTH
    ).is_success
    after = metric_value(url, "modelport_requests_total", model="iris", status="200")
    assert after - before == 2
    text = httpx.get(f"{url}/metrics").text
    for name in ("modelport_request_latency_seconds_bucket", "modelport_batch_size_bucket",
                 "modelport_queue_depth", "modelport_replicas_ready",
                 "modelport_replicas_desired", "modelport_replica_restarts_total"):  # fmt: skip
        assert name in text, name
    assert metric_value(url, "modelport_replicas_ready", model="iris") >= 1
    # Unknown model names never become label values (no unbounded cardinality).
    httpx.post(f"{url}/v2/models/bogus-name/infer", json=body, headers=AUTH)
    assert "bogus-name" not in httpx.get(f"{url}/metrics").text


def test_openapi_docs(live_server: ServerProcess) -> None:
    assert httpx.get(f"{live_server.url}/docs").status_code == 200
    spec = httpx.get(f"{live_server.url}/openapi.json").json()
    for path in ("/v2/models/{model}/infer", "/v1/models/{model}:predict", "/api/models",
                 "/api/deployments", "/v2/health/ready"):  # fmt: skip
        assert path in spec["paths"], path
