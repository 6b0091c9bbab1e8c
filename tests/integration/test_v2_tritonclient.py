"""The official tritonclient.http client against a real modelport server, unmodified."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.http import InferenceServerClientPlugin
from tritonclient.utils import InferenceServerException

from tests.integration.helpers import AUTH, iris_rows, served_runtime
from tests.integration.server_process import ServerProcess


class BearerAuth(InferenceServerClientPlugin):
    """tritonclient's own way to add headers to every request: here, the API key."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = headers

    def __call__(self, request: Any) -> None:
        request.headers.update(self.headers)


@pytest.fixture(scope="module")
def client(live_server: ServerProcess) -> triton.InferenceServerClient:
    client = triton.InferenceServerClient(url=live_server.url.removeprefix("http://"))
    client.register_plugin(BearerAuth(AUTH))
    return client


def test_api_key_per_call_or_none(live_server: ServerProcess) -> None:
    """Without a key only health answers; ``headers=`` on a call authenticates it."""
    bare = triton.InferenceServerClient(url=live_server.url.removeprefix("http://"))
    assert bare.is_server_live() and bare.is_server_ready()
    with pytest.raises(InferenceServerException, match="missing API key"):
        bare.get_model_metadata("iris")
    assert bare.get_model_metadata("iris", headers=dict(AUTH))["name"] == "iris"
    inp = triton.InferInput("input", [1, 4], "FP32")
    inp.set_data_from_numpy(iris_rows(1))
    with pytest.raises(InferenceServerException, match="missing API key"):
        bare.infer("iris", [inp])
    assert bare.infer("iris", [inp], headers=dict(AUTH)).as_numpy("label").shape == (1,)


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "modelport"
    assert "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("model", ["iris", "digits"])
def test_model_ready_and_metadata(client: triton.InferenceServerClient, model: str) -> None:
    assert client.is_model_ready(model)
    meta = client.get_model_metadata(model)
    assert meta["name"] == model
    inputs = {t["name"]: t for t in meta["inputs"]}
    assert inputs["input"]["datatype"] == "FP32"
    assert inputs["input"]["shape"] == [-1, 4 if model == "iris" else 64]
    assert {t["name"] for t in meta["outputs"]} == {"label", "probabilities"}
    assert client.is_model_ready(model, model_version=meta["versions"][0])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_iris_infer_equals_in_process(
    client: triton.InferenceServerClient, live_server: ServerProcess, binary: bool
) -> None:
    rows = iris_rows(9, seed=1)
    inp = triton.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("label", binary_data=binary),
        triton.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    result = client.infer("iris", [inp], outputs=outputs, request_id="req-7")
    expected = served_runtime(live_server.data_dir, live_server.url, "iris").predict(
        {"input": rows}
    )
    assert np.array_equal(result.as_numpy("label"), expected["label"])
    assert np.array_equal(result.as_numpy("probabilities"), expected["probabilities"])
    assert result.get_response()["id"] == "req-7"


def test_defaults_binary_in_and_out(
    client: triton.InferenceServerClient, live_server: ServerProcess
) -> None:
    """tritonclient with every default: binary input, all outputs, no outputs named."""
    from sklearn.datasets import load_digits

    rows = load_digits().data[:25].astype(np.float32)
    inp = triton.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    result = client.infer("digits", [inp])
    expected = served_runtime(live_server.data_dir, live_server.url, "digits").predict(
        {"input": rows}
    )
    assert np.array_equal(result.as_numpy("label"), expected["label"])
    assert np.array_equal(result.as_numpy("probabilities"), expected["probabilities"])


def test_infer_by_version(client: triton.InferenceServerClient) -> None:
    version = client.get_model_metadata("iris")["versions"][0]
    inp = triton.InferInput("input", [1, 4], "FP32")
    inp.set_data_from_numpy(iris_rows(1))
    result = client.infer("iris", [inp], model_version=version)
    assert result.as_numpy("label").shape == (1,)


def test_errors_surface_as_triton_exceptions(client: triton.InferenceServerClient) -> None:
    inp = triton.InferInput("input", [1, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer("iris", [inp])
    with pytest.raises(InferenceServerException, match=r"not deployed|not found"):
        client.infer("no-such-model", [inp])
    assert not client.is_model_ready("no-such-model")
