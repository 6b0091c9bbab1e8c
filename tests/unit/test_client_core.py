"""The client's sans-IO core: requests it builds, responses and errors it parses."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import orjson
import pytest

from modelport import errors
from modelport.client import AsyncClient, Client
from modelport.client.auth import admin_key_path, resolve_api_key
from modelport.client.calls import Call
from modelport.client.core import (
    ClientCore,
    decode_v2_response,
    encode_v2_request,
    is_ready,
    not_ready_in_time,
)
from modelport.client.files import CHUNK_SIZE, ArtifactFile, check_uploaded, iter_file
from modelport.client.responses import error_from_response, transport_error
from modelport.types.admin import ArtifactInfo, DeploymentState, DeploymentStatus

NOW = "2025-01-02T03:04:05Z"


def _version_json(**extra: object) -> bytes:
    body = {
        "model": "iris",
        "version": 2,
        "runtime": "onnx",
        "artifact_sha256": "a" * 64,
        "artifact_name": "iris.onnx",
        "artifact_size": 10,
        "signature": {"inputs": [], "outputs": []},
        "created_at": NOW,
        **extra,
    }
    return orjson.dumps(body)


def _status(state: DeploymentState, reason: str | None = None) -> DeploymentStatus:
    return DeploymentStatus(
        name="iris",
        model="iris",
        version=1,
        runtime="onnx",
        replicas=2,
        max_batch_size=8,
        max_latency_ms=5,
        state=state,
        reason=reason,
        ready_replicas=1,
    )


@pytest.fixture
def core() -> ClientCore:
    return ClientCore("http://example.test:9000/", api_key="sk-123")


@pytest.fixture
def artifact(tmp_path: Path) -> ArtifactFile:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x" * (2 * CHUNK_SIZE + 5))
    return ArtifactFile.measure(path)


# --- requests -----------------------------------------------------------------------------


def test_core_sends_bearer_key_and_strips_trailing_slash(core: ClientCore) -> None:
    assert core.base_url == "http://example.test:9000"
    assert core.headers["Authorization"] == "Bearer sk-123"
    assert "Authorization" not in ClientCore("http://x").headers


def test_core_refuses_url_without_scheme() -> None:
    with pytest.raises(errors.InvalidInput, match="must start with http"):
        ClientCore("localhost:8000")


def test_upload_request_names_digest_and_length(core: ClientCore, artifact: ArtifactFile) -> None:
    request = core.upload_artifact(artifact).request
    assert (request.method, request.path) == ("POST", "/api/artifacts")
    assert request.params == {"sha256": artifact.sha256}
    assert request.headers["Content-Length"] == str(2 * CHUNK_SIZE + 5)
    assert request.headers["Content-Type"] == "application/octet-stream"
    assert request.content is None  # the IO layer streams the file


def test_create_version_body(core: ClientCore, artifact: ArtifactFile) -> None:
    call = core.create_version(
        "iris",
        artifact,
        "onnx",
        signature={"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]},
        metadata={"team": "a"},
        aliases=["prod"],
    )
    assert call.request.path == "/api/models/iris/versions"
    assert call.request.content is not None
    body = orjson.loads(call.request.content)
    assert body["artifact_sha256"] == artifact.sha256
    assert body["artifact_name"] == "model.onnx"
    assert body["signature"]["inputs"][0]["shape"] == [-1, 4]
    assert body["aliases"] == ["prod"]
    assert body["metadata"] == {"team": "a"}
    assert "description" not in body  # unset fields are left to the server's defaults


def test_create_version_rejects_bad_signature(core: ClientCore, artifact: ArtifactFile) -> None:
    with pytest.raises(errors.InvalidInput, match="invalid model version"):
        core.create_version("iris", artifact, "onnx", signature={"inputs": [{"name": "x"}]})


def test_paths_quote_names(core: ClientCore) -> None:
    assert core.get_version("a/b", "latest").request.path == "/api/models/a%2Fb/versions/latest"
    assert core.predict("iris", [[1]]).request.path == "/v1/models/iris:predict"
    assert core.infer("iris", {"x": [1]}, 3).request.path == "/v2/models/iris/versions/3/infer"
    assert core.set_alias("iris", "prod", 2).request.method == "PUT"


def test_deploy_validates_before_sending(core: ClientCore) -> None:
    body = core.deploy("iris", replicas=2, max_batch_size=16).request.content
    assert body is not None
    assert orjson.loads(body) == {
        "model": "iris",
        "replicas": 2,
        "max_batch_size": 16,
        "max_latency_ms": 5.0,
    }
    with pytest.raises(errors.InvalidInput, match="replicas") as info:
        core.deploy("iris", replicas=-1)
    assert info.value.param == "replicas"
    with pytest.raises(errors.InvalidInput, match="replicas"):
        core.scale("iris", 65)


def test_predict_serializes_numpy_and_refuses_non_lists(core: ClientCore) -> None:
    body = core.predict("iris", np.array([[1.5, 2.0]], dtype=np.float32)).request.content
    assert body is not None
    assert orjson.loads(body) == {"instances": [[1.5, 2.0]]}
    with pytest.raises(errors.InvalidInput, match="instances must be a list"):
        core.predict("iris", "1,2,3")


# --- responses ----------------------------------------------------------------------------


def test_success_parses_into_wire_models(core: ClientCore) -> None:
    version = core.get_version("iris", 2).handle(200, _version_json(aliases=["prod"]))
    assert (version.version, version.aliases) == (2, ["prod"])
    listing = core.list_models().handle(200, orjson.dumps([{"name": "a", "created_at": NOW}]))
    assert [m.name for m in listing] == ["a"]
    assert core.delete_model("a").handle(204, b"") is None
    assert core.predict("a", [[1]]).handle(200, b'{"predictions": [0, 1]}') == [0, 1]


def test_unexpected_success_body_is_a_clear_error(core: ClientCore) -> None:
    with pytest.raises(errors.ModelportError, match="expected VersionInfo"):
        core.get_version("iris").handle(200, b'{"model": "iris"}')
    with pytest.raises(errors.ModelportError, match="no 'predictions' list"):
        core.predict("iris", [[1]]).handle(200, b'{"outputs": []}')
    with pytest.raises(errors.ModelportError, match="invalid JSON"):
        core.predict("iris", [[1]]).handle(200, b"<html>")


def test_admin_error_becomes_the_same_class() -> None:
    body = b'{"error": {"code": "model_not_found", "message": "no model \'x\'", "param": "x"}}'
    exc = error_from_response(404, body)
    assert type(exc) is errors.ModelNotFound
    assert (exc.message, exc.param) == ("no model 'x'", "x")
    shape = b'{"error": {"code": "shape_mismatch", "message": "bad", "param": null}}'
    assert type(error_from_response(400, shape)) is errors.ShapeMismatch


def test_error_code_falls_back_to_status() -> None:
    # V2 bodies carry only a message: the header names the code when the server sends it.
    assert type(error_from_response(404, b'{"error": "gone"}')) is errors.NotFound
    exc = error_from_response(404, b'{"error": "gone"}', "deployment_not_found")
    assert type(exc) is errors.DeploymentNotFound
    assert exc.message == "gone"
    newer = b'{"error": {"code": "brand_new", "message": "m"}}'
    assert type(error_from_response(503, newer)) is errors.Unavailable
    assert type(error_from_response(418, newer)) is errors.ModelportError


def test_non_json_error_keeps_status_and_text() -> None:
    exc = error_from_response(502, b"<html>Bad Gateway</html>")
    assert type(exc) is errors.ModelportError
    assert exc.message == "HTTP 502: <html>Bad Gateway</html>"
    detail = error_from_response(422, b'{"detail": [{"msg": "field required"}]}')
    assert "field required" in detail.message


def test_call_handle_uses_error_header(core: ClientCore) -> None:
    call = core.predict("nope", [[1]])
    headers = httpx.Headers({"x-modelport-error": "model_not_found"})
    with pytest.raises(errors.ModelNotFound, match="no such model"):
        call.handle(404, b'{"error": "no such model"}', headers)


def test_transport_errors_map_to_unavailable_and_deadline() -> None:
    refused = transport_error(httpx.ConnectError("refused"), "http://h:1")
    assert type(refused) is errors.Unavailable
    assert "cannot connect to the modelport server at http://h:1" in refused.message
    assert type(transport_error(httpx.ReadTimeout("slow"), "http://h:1")) is (
        errors.DeadlineExceeded
    )


def test_unreachable_server_raises_unavailable() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        Client(f"http://127.0.0.1:{port}", timeout=5) as client,
        pytest.raises(errors.Unavailable, match="cannot connect"),
    ):
        client.list_models()


# --- V2 tensors ---------------------------------------------------------------------------


def test_v2_round_trip_keeps_dtype_shape_and_values() -> None:
    inputs = {
        "f": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "i": np.array([[1], [-2]], dtype=np.int64),
        "b": np.array([True, False]),
        "s": np.array(["ab", "ü"], dtype=object),
        "h": np.arange(4, dtype=np.float16)[::2],  # non-contiguous view
    }
    wire = orjson.loads(orjson.dumps(encode_v2_request(inputs), option=orjson.OPT_SERIALIZE_NUMPY))
    by_name = {t["name"]: t for t in wire["inputs"]}
    assert by_name["f"]["datatype"] == "FP32" and by_name["f"]["shape"] == [2, 3]
    assert by_name["s"] == {"name": "s", "shape": [2], "datatype": "BYTES", "data": ["ab", "ü"]}
    assert by_name["h"]["data"] == [0.0, 2.0]
    decoded = decode_v2_response({"outputs": wire["inputs"]})
    for name, array in inputs.items():
        assert decoded[name].dtype == array.dtype
        np.testing.assert_array_equal(decoded[name], array)


def test_v2_bytes_must_be_utf8() -> None:
    with pytest.raises(errors.InvalidInput, match="UTF-8"):
        encode_v2_request({"s": np.array([b"\xff"], dtype=object)})


def test_v2_bad_response_is_an_error() -> None:
    with pytest.raises(errors.ModelportError, match="no 'outputs' list"):
        decode_v2_response({"error": "x"})
    bad = {"outputs": [{"name": "y", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}
    with pytest.raises(errors.ModelportError, match="unexpected V2 output tensor"):
        decode_v2_response(bad)
    with pytest.raises(errors.DtypeMismatch):
        decode_v2_response({"outputs": [{"name": "y", "shape": [1], "datatype": "X", "data": [1]}]})


# --- files and readiness ------------------------------------------------------------------


def test_measure_and_iter_file_stream_in_chunks(artifact: ArtifactFile) -> None:
    data = artifact.path.read_bytes()
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert artifact.size == len(data)
    seen: list[int] = []
    chunks = list(iter_file(artifact.path, seen.append))
    assert [len(c) for c in chunks] == [CHUNK_SIZE, CHUNK_SIZE, 5]
    assert b"".join(chunks) == data
    assert seen == [CHUNK_SIZE, 2 * CHUNK_SIZE, 2 * CHUNK_SIZE + 5]


def test_measure_refuses_missing_file(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidInput, match="is not a file"):
        ArtifactFile.measure(tmp_path / "missing.onnx")
    with pytest.raises(errors.InvalidInput, match="is not a file"):
        ArtifactFile.measure(tmp_path)


def test_uploaded_digest_must_match(core: ClientCore, artifact: ArtifactFile) -> None:
    check_uploaded(artifact, ArtifactInfo(sha256=artifact.sha256, size=artifact.size))
    with pytest.raises(errors.ArtifactCorrupted, match="expected"):
        check_uploaded(artifact, ArtifactInfo(sha256="0" * 64, size=artifact.size))


def test_readiness_states() -> None:
    serving = _status(DeploymentState.READY)  # 1 of 2 replicas ready
    assert is_ready(serving, all_replicas=False)
    assert not is_ready(serving)
    assert is_ready(serving.model_copy(update={"ready_replicas": 2}))
    assert not is_ready(_status(DeploymentState.LOADING), all_replicas=False)
    with pytest.raises(errors.ModelLoadError, match="failed: bad onnx file"):
        is_ready(_status(DeploymentState.FAILED, "bad onnx file"))
    with pytest.raises(errors.NotReady, match="stopped"):
        is_ready(_status(DeploymentState.STOPPED))
    late = not_ready_in_time(_status(DeploymentState.LOADING), 1.5)
    assert "not ready after 1.5s" in late.message and "1/2 replica(s)" in late.message


# --- API key pickup -----------------------------------------------------------------------


def _env(
    tmp_path: Path, key_in_env: str | None = None, key_file: str | None = None
) -> dict[str, str]:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    if key_file is not None:
        (data_dir / "admin.key").write_text(key_file + "\n")
    env = {"MODELPORT_DATA_DIR": str(data_dir)}
    if key_in_env is not None:
        env["MODELPORT_API_KEY"] = key_in_env
    return env


def test_api_key_precedence_explicit_then_env_then_file(tmp_path: Path) -> None:
    env = _env(tmp_path, key_in_env="mp-env", key_file="mp-file")
    assert resolve_api_key("mp-explicit", env) == "mp-explicit"
    assert resolve_api_key(None, env) == "mp-env"
    assert resolve_api_key(None, {**env, "MODELPORT_API_KEY": ""}) == "mp-file"
    assert resolve_api_key(None, _env(tmp_path, key_file="mp-file")) == "mp-file"
    assert resolve_api_key("", env) is None  # explicitly none
    # No file: no key (the server's 401 explains), also for an unreadable path.
    assert resolve_api_key(None, {"MODELPORT_DATA_DIR": str(tmp_path / "nowhere")}) is None
    assert (
        resolve_api_key(None, {"MODELPORT_DATA_DIR": str(tmp_path / "data" / "admin.key")}) is None
    )


def test_admin_key_file_defaults_to_dot_modelport() -> None:
    assert admin_key_path({}) == Path(".modelport") / "admin.key"
    assert admin_key_path({"MODELPORT_DATA_DIR": "/srv/mp"}) == Path("/srv/mp/admin.key")


class _HeaderRecorder(http.server.BaseHTTPRequestHandler):
    """A real HTTP server that answers every GET with an empty model list, noting headers."""

    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Authorization"))
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HeaderRecorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _HeaderRecorder.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_clients_send_the_picked_up_key_as_bearer(
    recorder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(tmp_path, key_file="mp-fromfile_secret")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MODELPORT_API_KEY", raising=False)
    with Client(recorder, timeout=5) as client:
        client.list_models()
    monkeypatch.setenv("MODELPORT_API_KEY", "mp-fromenv_secret")

    async def use_async() -> None:
        async with AsyncClient(recorder, timeout=5) as client:
            await client.list_models()

    asyncio.run(use_async())
    with Client(recorder, api_key="mp-given_secret", timeout=5) as client:
        client.list_models()
    with Client(recorder, api_key="", timeout=5) as client:
        client.list_models()
    assert _HeaderRecorder.seen == [
        "Bearer mp-fromfile_secret",
        "Bearer mp-fromenv_secret",
        "Bearer mp-given_secret",
        None,
    ]


# --- accounts and billing calls -----------------------------------------------------------


def _body(call: Call[Any]) -> Any:
    assert call.request.content is not None
    return orjson.loads(call.request.content)


def test_account_calls_send_only_given_fields_and_money_as_strings(core: ClientCore) -> None:
    call = core.create_tenant("acme", rpm=600, monthly_budget=Decimal("50.10"))
    assert (call.request.method, call.request.path) == ("POST", "/api/tenants")
    assert _body(call) == {"name": "acme", "rpm": 600, "monthly_budget": "50.10"}
    assert _body(core.update_tenant("acme", monthly_budget="7")) == {"monthly_budget": "7"}
    key = core.create_key(
        "ci-bot", ["inference"], tenant="acme", monthly_budget="0.5", expires_at=date(2027, 1, 1)
    )
    assert _body(key) == {
        "tenant": "acme",
        "name": "ci-bot",
        "scopes": ["inference"],
        "monthly_budget": "0.5",
        "expires_at": "2027-01-01T00:00:00Z",
    }
    assert core.list_keys("acme").request.params == {"tenant": "acme"}
    assert core.list_keys().request.params == {}
    assert core.revoke_key("0123abcd").request.method == "DELETE"
    assert core.list_users("a b").request.path == "/api/tenants/a%20b/users"
    audit = core.audit(since=date(2026, 11, 1), limit=5).request
    assert audit.params == {"since": "2026-11-01", "limit": "5"}
    share = core.set_visibility("iris", "shared", ["acme"])
    assert _body(share) == {"visibility": "shared", "tenants": ["acme"]}


def test_account_calls_refuse_bad_values_before_sending(core: ClientCore) -> None:
    with pytest.raises(errors.InvalidInput, match="monthly_budget"):
        core.create_tenant("acme", monthly_budget="lots")
    with pytest.raises(errors.InvalidInput, match="role"):
        core.create_user("acme", "ann", "emperor")
    with pytest.raises(errors.InvalidInput, match="scopes"):
        core.create_key("bot", [])
    with pytest.raises(errors.InvalidInput, match="visibility"):
        core.set_visibility("iris", "everyone")


def test_billing_calls(core: ClientCore) -> None:
    price = core.set_price("gemma-3-270m", per_1k_input_tokens=Decimal("0.0002"))
    assert (price.request.method, price.request.path) == ("PUT", "/api/prices/gemma-3-270m")
    assert _body(price) == {"per_1k_input_tokens": "0.0002"}
    usage = core.usage(tenant="acme", since="2026-11-01", group_by=["day", "model"]).request
    assert usage.params == {"tenant": "acme", "since": "2026-11-01", "group_by": "day,model"}
    with pytest.raises(errors.InvalidInput, match="cannot group usage by week"):
        core.usage(group_by=["week"])
    csv_call = core.invoice_csv("acme", "2026-11")
    assert csv_call.request.path == "/api/invoices/acme/2026-11"
    assert csv_call.request.params == {"format": "csv"}
    assert csv_call.handle(200, b"model,unit\r\n") == "model,unit\r\n"
    with pytest.raises(errors.InvalidInput, match="YYYY-MM"):
        core.invoice("acme", "2026-13")
    report = core.usage().handle(
        200,
        b'{"groups": [], "total": {"requests": 2, "cost": "0.0000000002"}, "budget": null}',
    )
    assert report.total.cost == Decimal("0.0000000002")  # exact, not a float


def test_auth_errors_map_to_their_classes(core: ClientCore) -> None:
    body = b'{"error": {"code": "unauthenticated", "message": "invalid API key"}}'
    with pytest.raises(errors.Unauthenticated, match="invalid API key"):
        core.whoami().handle(401, body)
    with pytest.raises(errors.PermissionDenied):
        core.list_tenants().handle(403, b'{"error": {"code": "permission_denied", "message": "m"}}')
    quota = b'{"error": {"code": "insufficient_quota", "message": "budget spent"}}'
    with pytest.raises(errors.QuotaExceeded):
        core.usage().handle(429, quota)
