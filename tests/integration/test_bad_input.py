"""Bad input gets the right 4xx with a clear JSON message, and the server keeps serving."""

from __future__ import annotations

import json
import struct

import httpx
import pytest

from tests.integration.helpers import AUTH
from tests.integration.server_process import ServerProcess

GOOD = {
    "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]
}


def _infer(
    url: str, content: bytes, headers: dict[str, str] | None = None, model: str = "iris"
) -> httpx.Response:
    return httpx.post(
        f"{url}/v2/models/{model}/infer",
        content=content,
        headers={**AUTH, **(headers or {})},
        timeout=30,
    )


def _with(**changes: object) -> bytes:
    inp = {**GOOD["inputs"][0], **changes}
    return json.dumps({"inputs": [inp]}).encode()


def _binary_request(data: bytes, declared: int) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": declared},
                }
            ]
        }
    ).encode()
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


CASES = {
    "wrong dtype": (_with(datatype="FP64"), None, 400, "datatype"),
    "unknown dtype": (_with(datatype="FLOAT"), None, 400, "datatype"),
    "strings for FP32": (_with(data=["a", "b", "c", "d"]), None, 400, "input"),
    "wrong shape": (_with(shape=[1, 3], data=[1.0, 2.0, 3.0]), None, 400, "shape"),
    "count mismatch": (_with(shape=[2, 4]), None, 400, "input"),
    "empty batch": (_with(shape=[0, 4], data=[]), None, 400, "rows"),
    "unknown input": (_with(name="x"), None, 400, "input"),
    "malformed JSON": (b'{"inputs": [', None, 400, "JSON"),
    "not an object": (b"[1, 2, 3]", None, 400, ""),
    "missing inputs": (b'{"id": "1"}', None, 400, "inputs"),
    "non-UTF-8 bytes": (b'{"inputs": "\xff\xfe"}', None, 400, ""),
    "truncated binary": (*_binary_request(struct.pack("<3f", 1, 2, 3), 16), 400, ""),
    "binary size lies": (*_binary_request(struct.pack("<4f", 1, 2, 3, 4), 12), 400, ""),
    "header length past body": (
        GOOD_BYTES := json.dumps(GOOD).encode(),
        {"Inference-Header-Content-Length": "99999"},
        400,
        "",
    ),
    "header length not a number": (GOOD_BYTES, {"Inference-Header-Content-Length": "x"}, 400, ""),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_infer_requests(live_server: ServerProcess, case: str) -> None:
    content, headers, status, needle = CASES[case]
    resp = _infer(live_server.url, content, headers)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert isinstance(body["error"], str) and body["error"]
    assert needle.lower() in body["error"].lower()
    # ... and the server still answers correctly.
    ok = _infer(live_server.url, GOOD_BYTES)
    assert ok.status_code == 200, ok.text


def test_unknown_model_and_version(live_server: ServerProcess) -> None:
    resp = _infer(live_server.url, GOOD_BYTES, model="nope")
    assert resp.status_code == 404 and "nope" in resp.json()["error"]
    resp = httpx.post(
        f"{live_server.url}/v2/models/iris/versions/999/infer", content=GOOD_BYTES, headers=AUTH
    )
    assert resp.status_code == 404 and "999" in resp.json()["error"]
    assert httpx.get(f"{live_server.url}/v2/models/nope", headers=AUTH).status_code == 404
    assert httpx.get(f"{live_server.url}/v2/models/nope/ready", headers=AUTH).status_code == 404


def test_oversized_body(live_server: ServerProcess) -> None:
    big = b'{"inputs": [' + b" " * (2 * 1024 * 1024) + b"]}"
    resp = _infer(live_server.url, big)
    assert resp.status_code == 413, resp.text
    assert "limit" in resp.json()["error"]

    def chunks():  # no Content-Length: the limit must hold while streaming too
        for _ in range(40):
            yield b" " * 65536

    resp = httpx.post(
        f"{live_server.url}/v2/models/iris/infer", content=chunks(), timeout=30, headers=AUTH
    )
    assert resp.status_code == 413
    assert _infer(live_server.url, GOOD_BYTES).status_code == 200


def test_v1_predict_and_its_errors(live_server: ServerProcess) -> None:
    url = f"{live_server.url}/v1/models/iris:predict"
    resp = httpx.post(
        url, json={"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}, headers=AUTH
    )
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert [p["label"] for p in preds] == [0, 2]
    assert len(preds[0]["probabilities"]) == 3
    for bad, needle in [
        ({"instances": [[1, 2, 3]]}, "shape"),
        ({"instances": [[1, 2], [1, 2, 3, 4]]}, "ragged"),
        ({"instances": [["a", "b", "c", "d"]]}, "number"),
        ({"rows": []}, "instances"),
        ({"instances": []}, "instances"),
    ]:
        resp = httpx.post(url, json=bad, headers=AUTH)
        assert resp.status_code == 400, (bad, resp.text)
        assert needle in resp.json()["error"], resp.text
    assert httpx.post(url, content=b"{nope", headers=AUTH).status_code == 400
    assert (
        httpx.post(f"{live_server.url}/v1/models/nope:predict", json={}, headers=AUTH).status_code
        == 404
    )


def test_admin_errors_have_codes(live_server: ServerProcess) -> None:
    resp = httpx.get(f"{live_server.url}/api/models/nope", headers=AUTH)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "model_not_found"
    resp = httpx.post(
        f"{live_server.url}/api/deployments", json={"model": "iris", "replicas": -1}, headers=AUTH
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "replicas"
    resp = httpx.post(
        f"{live_server.url}/api/models/x/versions",
        json={"artifact_sha256": "0" * 64, "artifact_name": "a.onnx", "runtime": "onnx"},
        headers=AUTH,
    )
    assert resp.status_code == 400, resp.text
    resp = httpx.post(
        f"{live_server.url}/api/models/x/versions",
        json={"artifact_sha256": "0" * 64, "artifact_name": "a", "runtime": "nope"},
        headers=AUTH,
    )
    assert resp.status_code == 400 and "runtime" in resp.json()["error"]["message"]
    assert (
        httpx.get(f"{live_server.url}/api/models/x", headers=AUTH).status_code == 404
    )  # nothing half-made
