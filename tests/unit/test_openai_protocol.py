"""The OpenAI wire layer without a server: request checks, translation, error shape, usage."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from modelport.api.errors import error_response, openai_error
from modelport.api.openai.chat import chat_messages
from modelport.api.openai.completions import prompts
from modelport.api.openai.embeddings import embedding_inputs
from modelport.api.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse,
)
from modelport.api.openai.sampling import choices_per_prompt, expand, sampling_params
from modelport.api.openai.sse import DONE, event
from modelport.engine.llm import embedding_dim, task_of
from modelport.engine.usage import UsageEvent, UsageHub
from modelport.errors import InvalidInput
from modelport.runtimes.text import EMBEDDINGS, GENERATION, TENSORS, SamplingParams
from modelport.settings import Settings
from modelport.types.admin import DeploySpec, Signature, TensorSpec, VersionInfo

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _refused(model: type[Any], body: dict[str, Any]) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        parse(model, body)
    return info.value


# -- request parsing ----------------------------------------------------------------------------


def test_a_plain_chat_request_parses() -> None:
    request = parse(ChatCompletionRequest, {**CHAT, "temperature": 0, "stop": "\n", "seed": 3})
    assert request.model == "m" and request.temperature == 0 and request.stop == "\n"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"store": True}, "store"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"bogus": 1}, "bogus"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"stop": 5}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"colour": 1}}, "stream_options.colour"),
    ],
)
def test_unsupported_or_bad_chat_parameters_are_named(extra: dict[str, Any], param: str) -> None:
    error = _refused(ChatCompletionRequest, {**CHAT, **extra})
    assert error.param == param
    assert param.split(".")[-1] in error.message


@pytest.mark.parametrize(
    "noop",
    [
        {"tools": []},
        {"logprobs": False},
        {"response_format": {"type": "text"}},
        {"logit_bias": {}},
        {"tool_choice": "none"},
        {"store": False},
        {"service_tier": "auto"},
        {"user": "someone"},
        {"stream": True, "stream_options": {"include_usage": True}},
    ],
)
def test_no_op_values_of_unsupported_parameters_are_accepted(noop: dict[str, Any]) -> None:
    parse(ChatCompletionRequest, {**CHAT, **noop})


def test_missing_fields_and_non_objects_are_refused() -> None:
    assert _refused(ChatCompletionRequest, {"model": "m"}).param == "messages"
    assert _refused(ChatCompletionRequest, {**CHAT, "messages": []}).param == "messages"
    with pytest.raises(InvalidInput, match="JSON object"):
        parse(ChatCompletionRequest, [CHAT])


def test_completion_specific_parameters() -> None:
    body = {"model": "m", "prompt": "x"}
    assert _refused(CompletionRequest, {**body, "echo": True}).param == "echo"
    assert _refused(CompletionRequest, {**body, "suffix": "end"}).param == "suffix"
    assert _refused(CompletionRequest, {**body, "best_of": 3}).param == "best_of"
    parse(CompletionRequest, {**body, "best_of": 2, "n": 2})  # best_of = n ranks nothing


def test_embedding_request_fields() -> None:
    body = {"model": "m", "input": "x"}
    assert parse(EmbeddingRequest, body).encoding_format == "float"
    refused = _refused(EmbeddingRequest, {**body, "encoding_format": "int8"})
    assert refused.param == "encoding_format"
    assert _refused(EmbeddingRequest, {**body, "dimensions": 0}).param == "dimensions"


# -- translation --------------------------------------------------------------------------------


def test_chat_messages_flatten_text_and_map_roles() -> None:
    messages = chat_messages(
        [
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": "ok"},
        ]
    )
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "ok"},
    ]


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "tool", "content": "x"}, "messages[0].role"),
        ({"role": "user", "content": "x", "name": "bob"}, "messages[0].name"),
        ({"role": "assistant", "content": None, "tool_calls": []}, "messages[0].tool_calls"),
        ({"role": "assistant", "content": None}, "messages[0].content"),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            "messages[0].content[0]",
        ),
        ("hello", "messages[0]"),
    ],
)
def test_chat_messages_name_what_they_refuse(message: Any, param: str) -> None:
    with pytest.raises(InvalidInput) as info:
        chat_messages([message])
    assert info.value.param == param


def test_prompts() -> None:
    assert prompts("x") == ["x"]
    assert prompts(["a", "b"]) == ["a", "b"]
    for bad in ([], [1, 2], [[1, 2]], None, ["a", 1]):
        with pytest.raises(InvalidInput) as info:
            prompts(bad)
        assert info.value.param == "prompt"


def test_embedding_inputs() -> None:
    assert embedding_inputs("x") == ["x"]
    assert embedding_inputs(["x", "y"]) == ["x", "y"]
    assert embedding_inputs([1, 2, 3]) == [[1, 2, 3]]
    assert embedding_inputs([[1], [2, 3]]) == [[1], [2, 3]]
    for bad in ("", [], [""], ["a", 1], [[1], []], [True], [-1], [[2**31]], {"a": 1}):
        with pytest.raises(InvalidInput) as info:
            embedding_inputs(bad)
        assert info.value.param == "input"
    with pytest.raises(InvalidInput, match="2048"):
        embedding_inputs(["x"] * 2049)


def test_sampling_params_defaults_and_limits() -> None:
    settings = Settings(llm_max_tokens=100, llm_max_n=2)
    request = parse(ChatCompletionRequest, CHAT)
    assert sampling_params(request, settings, 64) == SamplingParams(max_tokens=64)
    request = parse(
        ChatCompletionRequest,
        {**CHAT, "max_completion_tokens": 7, "temperature": 0, "stop": ["a", "b"], "seed": 1},
    )
    assert sampling_params(request, settings, 64) == SamplingParams(
        max_tokens=7, temperature=0.0, stop=["a", "b"], seed=1
    )
    both = parse(ChatCompletionRequest, {**CHAT, "max_tokens": 5, "max_completion_tokens": 7})
    with pytest.raises(InvalidInput) as info:
        sampling_params(both, settings, 64)
    assert info.value.param == "max_tokens"
    too_many = parse(ChatCompletionRequest, {**CHAT, "max_tokens": 101})
    with pytest.raises(InvalidInput, match="llm_max_tokens"):
        sampling_params(too_many, settings, 64)
    with pytest.raises(InvalidInput) as info:
        choices_per_prompt(parse(ChatCompletionRequest, {**CHAT, "n": 3}), settings)
    assert info.value.param == "n"
    five_stops = parse(ChatCompletionRequest, {**CHAT, "stop": list("abcde")})
    with pytest.raises(InvalidInput, match="at most 4"):
        sampling_params(five_stops, settings, 64)


def test_expand_orders_choices_by_prompt_and_varies_seeds() -> None:
    requests = expand(SamplingParams(seed=10), 2, prompts=["a", "b"])
    assert [(r.prompt, r.params.seed) for r in requests] == [
        ("a", 10),
        ("a", 11),
        ("b", 10),
        ("b", 11),
    ]
    unseeded = expand(SamplingParams(), 3, messages=[{"role": "user", "content": "x"}])
    assert [r.params.seed for r in unseeded] == [None, None, None]


# -- wire shapes ----------------------------------------------------------------------------------


def test_openai_routes_answer_in_openai_error_shape() -> None:
    response = error_response("/v1/chat/completions", 404, "no such model", "deployment_not_found")
    assert orjson.loads(response.body) == {
        "error": {
            "message": "no such model",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }
    predict = error_response("/v1/models/iris:predict", 404, "gone", "deployment_not_found")
    assert orjson.loads(predict.body) == {"error": "gone"}  # V1 predict keeps its shape
    kinds = {s: openai_error(s, "m", "c", None)["error"]["type"] for s in (401, 429, 500, 503)}
    assert kinds == {
        401: "authentication_error",
        429: "rate_limit_error",
        500: "server_error",
        503: "server_error",
    }


def test_sse_events() -> None:
    assert event({"a": 1}) == b'data: {"a":1}\n\n'
    assert DONE == b"data: [DONE]\n\n"


# -- engine helpers -------------------------------------------------------------------------------


def _version(runtime: str, metadata: dict[str, Any], outputs: list[TensorSpec]) -> VersionInfo:
    return VersionInfo(
        model="m",
        version=1,
        runtime=runtime,
        artifact_sha256="0" * 64,
        artifact_name="a",
        artifact_size=1,
        signature=Signature(outputs=outputs),
        metadata=metadata,
        created_at=datetime.now(UTC),
    )


def test_task_of_a_version() -> None:
    embedding = [TensorSpec(name="embedding", datatype="FP32", shape=[-1, 8])]
    assert task_of(_version("gguf", {}, [])) == GENERATION
    assert task_of(_version("transformers", {"task": "feature-extraction"}, [])) == EMBEDDINGS
    assert task_of(_version("onnx", {}, embedding)) == EMBEDDINGS
    assert task_of(_version("onnx", {"task": "something-else"}, [])) == TENSORS
    assert embedding_dim(_version("onnx", {}, embedding)) == 8
    assert embedding_dim(_version("gguf", {}, [])) is None


def test_deploy_spec_refuses_server_owned_options() -> None:
    DeploySpec(model="m", options={"threads": 2, "chat_template": "{{ x }}"})
    for key in ("runtime_class", "cache_dir", "task", "Bad-Name"):
        with pytest.raises(ValueError, match=key):
            DeploySpec(model="m", options={key: "x"})


def _event(request_id: str, **fields: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "model": "m",
        "version": 1,
        "kind": "chat",
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
        **fields,
    }
    return UsageEvent(request_id=request_id, **values)


def test_usage_hub_fans_out_keeps_a_bounded_ring_and_counts_tokens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    hub = UsageHub(recent=2, registry=registry)
    seen: list[str] = []

    def broken(event: UsageEvent) -> None:
        raise RuntimeError("sink down")

    hub.subscribe(broken)
    unsubscribe = hub.subscribe(lambda e: seen.append(e.request_id))
    with caplog.at_level(logging.ERROR, logger="modelport.usage"):
        for i in range(3):
            hub.emit(_event(f"r{i}", finished=i != 1))
    assert seen == ["r0", "r1", "r2"]  # a failing subscriber does not stop the others
    assert "sink down" in caplog.text
    assert [e.request_id for e in hub.recent()] == ["r1", "r2"]
    assert [e.request_id for e in hub.recent(1)] == ["r2"]
    unsubscribe()
    hub.emit(_event("r3"))
    assert seen == ["r0", "r1", "r2"]
    labels = {"model": "m", "kind": "chat"}
    assert registry.get_sample_value("modelport_tokens_total", {**labels, "type": "prompt"}) == 12
    completion = {**labels, "type": "completion"}
    assert registry.get_sample_value("modelport_tokens_total", completion) == 16
    stopped = {**labels, "finished": "false"}
    assert registry.get_sample_value("modelport_usage_requests_total", stopped) == 1
    assert _event("x").to_dict()["created"].endswith("+00:00")
