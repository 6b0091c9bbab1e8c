"""One conformance suite, run on every backend: local worker processes and Ray actors.

Each test runs once per backend (``[local]``, ``[ray]``) against a real server with the demo
models, text models included (iris, digits, minilm, gemma-3-270m, all ready): ``[local]`` on
the session's ``live_server`` (tests/integration/conftest.py), ``[ray]`` on the package's
``ray_server``, which joins a real single-node cluster (``ray start --head`` on 127.0.0.1;
backends/conftest.py, shared with test_ray_only.py). The ``[ray]`` tests carry the ``ray``
marker and are skipped when the ``ray`` package is missing. pytest runs every ``[local]``
test, then the ``[ray]`` ones.

What must hold on both: V2 with the official tritonclient (metadata, inference with JSON and
binary tensors equal to the same artifact run in this process), the OpenAI API with the
official openai SDK (models, embeddings equal to sentence-transformers, a temperature-0
completion equal to llama.cpp, a chat stream with usage, errors), and training through the
API (a run that registers a model which then deploys and answers V2), which on the Ray
backend must have run on the cluster. Generation stays short: gemma runs on one CPU thread.
Ray-only behaviour (actors killed and replaced, placement) is in test_ray_only.py.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as triton
from openai import OpenAI
from tritonclient.http import InferenceServerClientPlugin

from tests.integration.helpers import (
    AUTH,
    deploy,
    iris_rows,
    served_llama,
    served_runtime,
    wait_state,
)
from tests.integration.ray_cluster import RAY_MARKS
from tests.integration.server_process import TEST_ADMIN_KEY, ServerProcess
from tests.integration.training_helpers import sse_events, wait_run

GEMMA = "gemma-3-270m"
MINILM = "minilm"
PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "Name three colours."}]
# The last one is longer than minilm's 256 tokens: truncated, as sentence-transformers does.
TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog.", "word " * 400]
SERVERS = {"local": "live_server", "ray": "ray_server"}  # the fixture of each backend's server


@pytest.fixture(scope="module", params=["local", pytest.param("ray", marks=RAY_MARKS)])
def server(request: pytest.FixtureRequest) -> ServerProcess:
    """The server of the parameter's backend (shared, not started here), its models ready.

    Tests here leave it as they found it (a model they add is undeployed), since others use
    the same server after them."""
    proc: ServerProcess = request.getfixturevalue(SERVERS[str(request.param)])
    for name in ("iris", "digits", MINILM, GEMMA):
        wait_state(proc.url, name, "ready", timeout=240)
    return proc


def test_the_server_runs_on_its_backend(server: ServerProcess) -> None:
    status = httpx.get(f"{server.url}/api/status", timeout=10, headers=AUTH).json()
    assert status["backend"] == server.backend


# -- V2 with tritonclient -------------------------------------------------------------------------


class BearerAuth(InferenceServerClientPlugin):
    """tritonclient's own way to add a header to every request: the API key."""

    def __call__(self, request: Any) -> None:
        request.headers.update(AUTH)


@pytest.fixture(scope="module")
def triton_client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    client.register_plugin(BearerAuth())
    yield client
    client.close()


def _rows(model: str, n: int, seed: int) -> np.ndarray:
    if model == "iris":
        return iris_rows(n, seed=seed)
    return np.random.default_rng(seed).uniform(0, 16, (n, 64)).astype(np.float32)


@pytest.mark.parametrize("model", ["iris", "digits"])
def test_v2_metadata_and_readiness(triton_client: triton.InferenceServerClient, model: str) -> None:
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready(model)
    meta = triton_client.get_model_metadata(model)
    assert meta["name"] == model and meta["platform"]
    width = 4 if model == "iris" else 64
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("input", "FP32", [-1, width])
    ]
    assert {t["name"] for t in meta["outputs"]} == {"label", "probabilities"}


@pytest.mark.parametrize("model", ["iris", "digits"])
def test_v2_infer_equals_in_process(
    server: ServerProcess, triton_client: triton.InferenceServerClient, model: str
) -> None:
    rows = _rows(model, 9, seed=3)
    runtime = served_runtime(server.data_dir, server.url, model)
    try:
        local = runtime.predict({"input": rows})
    finally:
        runtime.unload()
    for binary in (True, False):
        inp = triton.InferInput("input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows, binary_data=binary)
        outputs = [
            triton.InferRequestedOutput(name, binary_data=binary)
            for name in ("label", "probabilities")
        ]
        result = triton_client.infer(model, [inp], outputs=outputs)
        assert np.array_equal(result.as_numpy("label"), local["label"])
        assert np.allclose(result.as_numpy("probabilities"), local["probabilities"], atol=1e-6)


def test_concurrent_callers_get_their_own_rows(server: ServerProcess) -> None:
    """Requests batched together on one replica come back to the right callers."""
    rows = iris_rows(48, seed=5)
    runtime = served_runtime(server.data_dir, server.url, "iris")
    try:
        want = runtime.predict({"input": rows})["label"]
    finally:
        runtime.unload()

    def one(i: int) -> int:
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                            "data": rows[i].tolist()}]}  # fmt: skip
        resp = httpx.post(f"{server.url}/v2/models/iris/infer", json=body, timeout=30, headers=AUTH)
        assert resp.status_code == 200, resp.text
        return int(resp.json()["outputs"][0]["data"][0])

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(len(rows))))
    assert got == want.tolist()


# -- OpenAI with the openai SDK -------------------------------------------------------------------


@pytest.fixture(scope="module")
def oai(server: ServerProcess) -> Iterator[OpenAI]:
    with OpenAI(
        base_url=f"{server.url}/v1", api_key=TEST_ADMIN_KEY, max_retries=0, timeout=120
    ) as client:
        yield client


@pytest.fixture(scope="module")
def llama(server: ServerProcess) -> Iterator[Any]:
    """The GGUF file the server serves, in llama-cpp-python with the deployment's settings."""
    with contextlib.closing(served_llama(server.data_dir, server.url, GEMMA)) as llm:
        yield llm


def test_models_are_listed_and_retrieved(oai: OpenAI) -> None:
    listed = {m.id: m for m in oai.models.list().data}
    assert {"iris", "digits", MINILM, GEMMA} <= set(listed)
    assert listed[MINILM].model_extra == {"task": "embeddings"}
    assert listed[GEMMA].model_extra == {"task": "text-generation"}
    model = oai.models.retrieve(GEMMA)
    assert (model.id, model.object, model.owned_by) == (GEMMA, "model", "modelport")
    assert model.created > 0


def test_embeddings_equal_sentence_transformers(oai: OpenAI, sentence_model: Any) -> None:
    want = np.asarray(sentence_model.encode(TEXTS, convert_to_numpy=True), np.float64)
    tokens = sentence_model.tokenizer(
        TEXTS, truncation=True, max_length=sentence_model.max_seq_length
    )["input_ids"]
    default = oai.embeddings.create(model=MINILM, input=TEXTS)  # the SDK asks for base64
    floats = oai.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    for answer in (default, floats):
        got = np.array([d.embedding for d in answer.data], np.float64)
        assert got.shape == (len(TEXTS), 384)
        assert [d.index for d in answer.data] == list(range(len(TEXTS)))
        cosines = np.sum(got * want, axis=1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
        )
        assert cosines.min() >= 0.9999
        assert answer.usage.prompt_tokens == answer.usage.total_tokens == sum(map(len, tokens))
    assert np.array_equal(  # base64 carries the exact float32 values that "float" prints
        np.array([d.embedding for d in default.data], np.float32),
        np.array([d.embedding for d in floats.data], np.float32),
    )


def test_completion_at_temperature_0_equals_llama_cpp(oai: OpenAI, llama: Any) -> None:
    """Plain and streamed (with usage): the same text as llama.cpp, token for token."""
    llama.reset()
    want = llama.create_completion(PROMPT, max_tokens=12, temperature=0)
    got = oai.completions.create(model=GEMMA, prompt=PROMPT, max_tokens=12, temperature=0)
    choice = got.choices[0]
    assert choice.text == want["choices"][0]["text"]
    assert choice.finish_reason == want["choices"][0]["finish_reason"] == "length"
    assert got.usage.prompt_tokens == len(llama.tokenize(PROMPT.encode())) > 0
    assert got.usage.completion_tokens == want["usage"]["completion_tokens"] == 12
    assert got.id.startswith("cmpl-") and got.model == GEMMA and got.created > 0

    chunks = list(
        oai.completions.create(
            model=GEMMA,
            prompt=PROMPT,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == []  # the include_usage chunk comes last
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == got.usage.model_dump()


def test_chat_stream_with_usage_equals_the_plain_answer(oai: OpenAI) -> None:
    plain = oai.chat.completions.create(model=GEMMA, messages=CHAT, max_tokens=6, temperature=0)
    chunks = list(
        oai.chat.completions.create(
            model=GEMMA,
            messages=CHAT,
            max_completion_tokens=6,  # the newer name of max_tokens
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert plain.choices[0].message.role == "assistant" and plain.id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content and text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None  # usage comes last
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()


def test_a_stream_left_early_frees_the_replica(oai: OpenAI) -> None:
    stream = oai.completions.create(
        model=GEMMA, prompt=PROMPT, max_tokens=200, temperature=0, stream=True
    )
    next(iter(stream))
    stream.close()
    got = oai.completions.create(model=GEMMA, prompt=PROMPT, max_tokens=2, temperature=0)
    assert got.usage.completion_tokens == 2


def test_unknown_models_are_not_found(oai: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oai.models.retrieve("no-such-model")
    assert info.value.body == {
        "message": "model 'no-such-model' is not deployed",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="nope", messages=CHAT)
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="nope", input="x")


def test_bad_parameters_are_bad_requests(oai: OpenAI) -> None:
    cases = [
        (lambda: oai.chat.completions.create(model=GEMMA, messages=CHAT, temperature=5),
         "temperature"),
        (lambda: oai.embeddings.create(model=MINILM, input="x", dimensions=100), "dimensions"),
        (lambda: oai.embeddings.create(model=GEMMA, input="x"), "model"),
    ]  # fmt: skip
    for call, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            call()
        assert info.value.status_code == 400
        assert info.value.body["param"] == param
        assert info.value.body["type"] == "invalid_request_error"


# -- training -------------------------------------------------------------------------------------


def test_a_training_run_registers_a_model_that_deploys_and_answers(server: ServerProcess) -> None:
    """iris with logistic regression, through the API: it succeeds, registers version 1,
    deploys and answers V2 like the bundle run in this process; on Ray, the job ran there."""
    model = "iris-trained"
    with httpx.Client(base_url=server.url, headers=dict(AUTH), timeout=60) as admin:
        body = {"dataset": "iris", "trainer": "logistic_regression", "model_name": model}
        created = admin.post("/api/runs", json=body)
        # A failure here has its cause in the server's log (the built-ins registered at start)
        assert created.status_code == 201, (created.text, _dataset_lines(server))
        run = created.json()
        done = wait_run(admin, run["id"])
        logs = admin.get(f"/api/runs/{run['id']}/logs").text
        assert done["status"] == "succeeded", (done, logs)
        assert done["model_version"] == 1 and done["metrics"]["test"]["accuracy"] > 0.8
        events = sse_events(admin, run["id"])
        version = admin.get(f"/api/models/{model}/versions/1").json()
    assert version["runtime"] == "trained" and version["lineage"]["run_id"] == run["id"]
    _assert_ran_on_the_backend(server, events, logs)

    deploy(server.url, model, timeout=120)
    rows = iris_rows(12, seed=7)
    assert version["signature"]["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 4]}  # a built-in set's features
    ]
    runtime = served_runtime(server.data_dir, server.url, model)
    try:
        want = runtime.predict({"input": rows})
    finally:
        runtime.unload()
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        tensor = triton.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        result = client.infer(model, [tensor], headers=dict(AUTH))
    finally:
        client.close()
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], atol=1e-6)
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    assert labels == [x.decode() if isinstance(x, bytes) else x for x in want["label"]]
    assert httpx.delete(f"{server.url}/api/deployments/{model}", headers=AUTH).status_code == 204


def _dataset_lines(server: ServerProcess) -> list[str]:
    return [line for line in server.log().splitlines() if "dataset" in line.lower()]


def _assert_ran_on_the_backend(
    server: ServerProcess, events: list[dict[str, Any]], logs: str
) -> None:
    """On Ray the job's first event names the Ray node, actor and process it ran in; on the
    local backend no such event exists."""
    on_ray = [e["data"] for e in events if e["type"] == "log" and e["data"].get("runner") == "ray"]
    if server.backend != "ray":
        assert on_ray == [] and "runs on Ray" not in logs
        return
    (where,) = on_ray
    assert where["process"].startswith("ray::JobActor"), where  # a Ray worker's title
    assert where["node_id"] == server.ray_node_id  # the test cluster's (only) node
    assert re.fullmatch(r"[0-9a-f]{32}", where["actor_id"]), where
    assert server.proc is not None and where["pid"] != server.proc.pid
    assert where["message"] in logs  # the job log starts with the same line
    kinds = [e["type"] for e in events]
    assert kinds.index("log") < kinds.index("started")  # said before the job worker's events
