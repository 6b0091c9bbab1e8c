"""The Python clients and the CLI against a real server (``live_server``).

Predictions are compared with the same artifact loaded in this process, so a client that
mangled tensors on the way (dtype, order, shape) would fail here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from modelport import errors
from modelport.cli.main import app
from modelport.client import AsyncClient, Client
from modelport.client.files import CHUNK_SIZE
from modelport.types.admin import DeploymentState
from tests.integration.helpers import TEST_ADMIN_KEY, iris_rows, served_runtime
from tests.integration.server_process import ServerProcess, free_port

runner = CliRunner()


@pytest.fixture(scope="module")
def client(live_server: ServerProcess) -> Iterator[Client]:
    with Client(live_server.url, api_key=TEST_ADMIN_KEY, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small logistic regression exported to ONNX (input ``input`` FP32 [-1, 4])."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    model = LogisticRegression().fit(x, (x[:, 0] + x[:, 2] > 0).astype(np.int64))
    onx = to_onnx(
        model,
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    path = tmp_path_factory.mktemp("models") / "logreg.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


def cli(server: ServerProcess, *args: str, stdin: str | None = None) -> Result:
    return runner.invoke(
        app, ["--url", server.url, "--api-key", TEST_ADMIN_KEY, *args], input=stdin
    )


def ok_json(server: ServerProcess, *args: str, stdin: str | None = None) -> Any:
    """Run a command with ``--json``; it must succeed and print JSON only."""
    result = cli(server, *args, "--json", stdin=stdin)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _as_v1(outputs: dict[str, np.ndarray]) -> list[Any]:
    """What V1 ``predictions`` look like for these outputs (TF-Serving row format)."""
    if len(outputs) == 1:
        return next(iter(outputs.values())).tolist()
    lists = {name: array.tolist() for name, array in outputs.items()}
    rows = len(next(iter(lists.values())))
    return [{name: values[i] for name, values in lists.items()} for i in range(rows)]


def _assert_same(got: Any, want: Any) -> None:
    """Equal structure; floats equal up to float32 rounding through JSON."""
    if isinstance(want, dict):
        assert set(got) == set(want)
        for key in want:
            _assert_same(got[key], want[key])
    elif isinstance(want, list):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _assert_same(g, w)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
    else:
        assert got == want


def _artifact_files(server: ServerProcess) -> list[Path]:
    return sorted(p for p in (server.data_dir / "artifacts").rglob("*") if p.is_file())


# --- push ---------------------------------------------------------------------------------


def test_upload_streams_in_chunks_reports_progress_and_dedupes(
    live_server: ServerProcess, client: Client, tmp_path: Path
) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(np.random.default_rng(1).bytes(2 * CHUNK_SIZE + 123))
    sent: list[int] = []
    info = client.upload_artifact(blob, progress=sent.append)
    assert info.sha256 == hashlib.sha256(blob.read_bytes()).hexdigest()
    assert info.size == blob.stat().st_size
    assert sent == [CHUNK_SIZE, 2 * CHUNK_SIZE, 2 * CHUNK_SIZE + 123]

    files = _artifact_files(live_server)
    again = client.upload_artifact(blob)
    assert again == info
    assert _artifact_files(live_server) == files  # same bytes are stored once


def test_push_model_registers_versions_of_one_artifact(
    live_server: ServerProcess, client: Client, onnx_model: Path
) -> None:
    calls: list[int] = []
    first = client.push_model(
        onnx_model,
        "client-push",
        "onnx",
        metadata={"team": "a"},
        description="logreg",
        aliases=["staging"],
        progress=calls.append,
    )
    assert calls == [onnx_model.stat().st_size]
    assert (first.model, first.version, first.runtime) == ("client-push", 1, "onnx")
    assert first.artifact_sha256 == hashlib.sha256(onnx_model.read_bytes()).hexdigest()
    assert first.aliases == ["staging"] and first.metadata == {"team": "a"}
    assert [t.name for t in first.signature.inputs] == ["input"]

    files = _artifact_files(live_server)
    second = client.push_model(onnx_model, "client-push", "onnx")
    assert second.version == 2 and second.artifact_sha256 == first.artifact_sha256
    assert _artifact_files(live_server) == files

    assert client.get_version("client-push", "staging").version == 1
    assert client.set_alias("client-push", "staging", 2).version == 2
    assert client.get_version("client-push", "latest").version == 2
    client.delete_alias("client-push", "staging")
    with pytest.raises(errors.NotFound):
        client.get_version("client-push", "staging")
    client.delete_version("client-push", 1)
    assert [v.version for v in client.get_model("client-push").versions] == [2]
    client.delete_model("client-push")
    with pytest.raises(errors.ModelNotFound, match="client-push"):
        client.get_model("client-push")


# --- registry through the CLI -------------------------------------------------------------


def test_cli_registry_commands(live_server: ServerProcess, onnx_model: Path) -> None:
    push = ["models", "push", str(onnx_model), "--name", "cli-reg", "--runtime", "onnx"]
    pushed = ok_json(live_server, *push, "--alias", "prod", "--metadata", '{"team": "x"}')
    assert pushed["version"] == 1
    assert (pushed["aliases"], pushed["metadata"]) == (["prod"], {"team": "x"})
    table = cli(live_server, "models", "push", str(onnx_model), "-n", "cli-reg", "-r", "onnx")
    assert table.exit_code == 0, table.output
    assert "cli-reg v2" in table.stdout

    listed = ok_json(live_server, "models", "list")
    assert any(m["name"] == "cli-reg" and m["latest_version"] == 2 for m in listed)
    assert "cli-reg" in cli(live_server, "models", "list").stdout

    assert ok_json(live_server, "models", "alias", "cli-reg", "canary", "2")["version"] == 2
    detail = ok_json(live_server, "models", "get", "cli-reg")
    assert [v["version"] for v in detail["versions"]] == [1, 2]
    assert detail["aliases"] == {"prod": 1, "canary": 2}
    assert ok_json(live_server, "models", "get", "cli-reg", "--version", "canary")["version"] == 2

    assert cli(live_server, "models", "delete", "cli-reg", "--version", "1", "--yes").exit_code == 0
    refused = cli(live_server, "models", "delete", "cli-reg", stdin="n\n")
    assert refused.exit_code == 1  # not confirmed: nothing deleted
    versions = ok_json(live_server, "models", "get", "cli-reg")["versions"]
    assert [v["version"] for v in versions] == [2]
    assert cli(live_server, "models", "delete", "cli-reg", "--yes").exit_code == 0
    assert cli(live_server, "models", "get", "cli-reg").exit_code == 1


# --- deployments --------------------------------------------------------------------------


def test_cli_deploy_scale_predict_undeploy(
    live_server: ServerProcess, client: Client, onnx_model: Path
) -> None:
    client.push_model(onnx_model, "cli-dep", "onnx")
    status = ok_json(live_server, "deploy", "cli-dep", "--max-batch-size", "4", "--timeout", "90")
    assert (status["state"], status["ready_replicas"], status["max_batch_size"]) == ("ready", 1, 4)

    scaled = ok_json(live_server, "scale", "cli-dep", "2")
    assert scaled["replicas"] == 2
    ready = client.wait_ready("cli-dep", timeout=90)
    assert ready.state == DeploymentState.READY and ready.ready_replicas == 2
    assert [d["name"] for d in ok_json(live_server, "deployments", "cli-dep")] == ["cli-dep"]
    server = ok_json(live_server, "status")
    assert "cli-dep" in {d["name"] for d in server["deployments"]}
    assert "cli-dep" in cli(live_server, "status").stdout

    rows = iris_rows(6, seed=3)
    want = _as_v1(
        served_runtime(live_server.data_dir, live_server.url, "cli-dep").predict({"input": rows})
    )
    _assert_same(
        ok_json(live_server, "predict", "cli-dep", "--input", json.dumps(rows.tolist())), want
    )
    _assert_same(client.predict("cli-dep", rows.tolist()), want)

    assert cli(live_server, "undeploy", "cli-dep").exit_code == 0
    with pytest.raises(errors.DeploymentNotFound):
        client.deployment("cli-dep")
    client.delete_model("cli-dep")


# --- inference on the demo model ----------------------------------------------------------


@pytest.fixture(scope="module")
def iris_expected(live_server: ServerProcess) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rows = iris_rows(8, seed=11)
    runtime = served_runtime(live_server.data_dir, live_server.url, "iris")
    return rows, runtime.predict({"input": rows})


def test_sync_client_predict_and_infer_match_in_process(
    client: Client, iris_expected: tuple[np.ndarray, dict[str, np.ndarray]]
) -> None:
    rows, want = iris_expected
    client.wait_ready("iris", timeout=60)
    _assert_same(client.predict("iris", rows), _as_v1(want))  # numpy instances are fine too
    got = client.infer("iris", {"input": rows})
    assert set(got) == set(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape
        np.testing.assert_allclose(got[name], array, rtol=1e-6)
    assert client.ready()


def test_async_client_matches_sync(
    live_server: ServerProcess,
    iris_expected: tuple[np.ndarray, dict[str, np.ndarray]],
    onnx_model: Path,
) -> None:
    rows, want = iris_expected

    async def run() -> None:
        async with AsyncClient(live_server.url, api_key=TEST_ADMIN_KEY) as aclient:
            assert (await aclient.wait_ready("iris", timeout=60)).state == DeploymentState.READY
            _assert_same(await aclient.predict("iris", rows.tolist()), _as_v1(want))
            got = await aclient.infer("iris", {"input": rows})
            for name, array in want.items():
                np.testing.assert_allclose(got[name], array, rtol=1e-6)
            sent: list[int] = []
            version = await aclient.push_model(
                onnx_model, "async-push", "onnx", progress=sent.append
            )
            assert sent == [onnx_model.stat().st_size] and version.version == 1
            assert "async-push" in {m.name for m in await aclient.list_models()}
            await aclient.delete_model("async-push")
            with pytest.raises(errors.ModelNotFound):
                await aclient.get_model("async-push")
            assert "iris" in {d.name for d in (await aclient.status()).deployments}

    asyncio.run(run())


def test_cli_predict_reads_file_and_stdin(
    live_server: ServerProcess,
    tmp_path: Path,
    iris_expected: tuple[np.ndarray, dict[str, np.ndarray]],
) -> None:
    rows, want = iris_expected
    payload = json.dumps({"instances": rows.tolist()})
    (tmp_path / "in.json").write_text(payload)
    _assert_same(
        ok_json(live_server, "predict", "iris", "--input", f"@{tmp_path / 'in.json'}"), _as_v1(want)
    )
    _assert_same(ok_json(live_server, "predict", "iris", "-i", "-", stdin=payload), _as_v1(want))
    pretty = cli(live_server, "predict", "iris", "--input", payload)
    assert pretty.exit_code == 0 and json.loads(pretty.stdout) == json.loads(
        cli(live_server, "predict", "iris", "--input", payload, "--json").stdout
    )


# --- errors -------------------------------------------------------------------------------


def test_unknown_model_is_a_clear_one_line_error(
    live_server: ServerProcess, client: Client
) -> None:
    result = cli(live_server, "models", "get", "no-such-model")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and "no-such-model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output

    predict = cli(live_server, "predict", "no-such-model", "--input", "[[1, 2, 3, 4]]")
    assert predict.exit_code == 1 and "no-such-model" in predict.stderr
    with pytest.raises(errors.ModelNotFound):
        client.get_model("no-such-model")
    with pytest.raises(errors.NotFound, match="no-such-model"):
        client.predict("no-such-model", [[1, 2, 3, 4]])


def test_bad_input_raises_the_servers_error_class(client: Client) -> None:
    with pytest.raises(errors.InvalidInput, match="shape"):
        client.infer("iris", {"input": np.zeros((2, 3), dtype=np.float32)})
    with pytest.raises(errors.InvalidInput, match="replicas"):
        client.deploy("iris", replicas=100)  # refused before sending
    with pytest.raises(errors.NotFound):
        client.set_alias("iris", "x", 999)


def test_cli_reports_unreachable_server_and_bad_json() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    down = runner.invoke(app, ["--url", url, "models", "list"])
    assert down.exit_code == 1 and f"cannot connect to the modelport server at {url}" in down.stderr
    bad = runner.invoke(app, ["--url", url, "predict", "iris", "--input", "[[1,"])
    assert bad.exit_code == 1 and "--input is not valid JSON" in bad.stderr
    env = runner.invoke(app, ["models", "list"], env={"MODELPORT_URL": url})
    assert env.exit_code == 1 and url in env.stderr
