"""Rate limits through a real server: per key, per tenant and per model, V2 and OpenAI shapes.

One server for the module, classic demo models only (iris, digits), a per-model limit on
``digits`` (2 requests per minute per tenant). Every test makes its own tenant and keys
through ``/api/tenants`` and ``/api/keys`` with the admin key, so buckets never overlap.
Limits are a few requests per minute: a refused call then waits tens of seconds, far more
than a test takes, so the counts are exact.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.integration.helpers import TEST_ADMIN_KEY
from tests.integration.server_process import ServerProcess

IRIS = {
    "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]
}
DIGITS = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
RATE_HEADERS = ("limit", "remaining", "reset")
_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data: Path = tmp_path_factory.mktemp("limits") / "data"
    env = {
        "MODELPORT_DEMO_TEXT_MODELS": "false",
        "MODELPORT_MODEL_RPM": '{"digits": 2}',
    }
    server = ServerProcess(data, env=env).start()
    try:
        yield server
    finally:
        server.stop()


def _admin(server: ServerProcess, method: str, path: str, **body: Any) -> dict[str, Any]:
    resp = httpx.request(
        method,
        f"{server.url}{path}",
        json=body,
        headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"},
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def tenant(server: ServerProcess, **limits: int) -> str:
    name = f"rl-{next(_names)}"
    _admin(server, "POST", "/api/tenants", name=name, **limits)
    return name


def key(server: ServerProcess, tenant_name: str, **limits: int) -> str:
    created = _admin(
        server,
        "POST",
        "/api/keys",
        tenant=tenant_name,
        name=f"key-{next(_names)}",
        scopes=["inference"],
        **limits,
    )
    return str(created["key"])


def infer(server: ServerProcess, api_key: str, model: str = "iris") -> httpx.Response:
    body = DIGITS if model == "digits" else IRIS
    return httpx.post(
        f"{server.url}/v2/models/{model}/infer",
        json=body,
        headers={"x-api-key": api_key},
        timeout=30,
    )


def rate_headers(resp: httpx.Response, kind: str = "requests") -> tuple[str, str, str]:
    limit, remaining, reset = (resp.headers[f"x-ratelimit-{h}-{kind}"] for h in RATE_HEADERS)
    return limit, remaining, reset


def assert_refused(resp: httpx.Response, max_wait: int) -> None:
    """A 429 whose ``Retry-After`` is whole seconds within ``max_wait``."""
    assert resp.status_code == 429, resp.text
    retry = resp.headers["retry-after"]
    assert retry.isdigit() and 1 <= int(retry) <= max_wait, retry
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"


def test_key_rpm_counts_down_then_refuses_in_the_v2_shape(server: ServerProcess) -> None:
    api_key = key(server, tenant(server), rpm=2)
    first, second, third = (infer(server, api_key) for _ in range(3))
    assert first.status_code == 200 and second.status_code == 200, first.text
    assert rate_headers(first)[:2] == ("2", "1")
    assert rate_headers(second)[:2] == ("2", "0")
    assert rate_headers(second)[2].endswith("s")  # e.g. "59.98s"
    assert_refused(third, max_wait=30)
    assert third.headers["x-ratelimit-limit-requests"] == "2"
    assert "Rate limit reached for requests" in third.json()["error"]
    assert third.headers["x-modelport-error"] == "rate_limit_exceeded"
    # The refusal is before the model: a V1 predict of the same key is refused as well.
    predict = httpx.post(
        f"{server.url}/v1/models/iris:predict",
        json={"instances": [[5.1, 3.5, 1.4, 0.2]]},
        headers={"x-api-key": api_key},
        timeout=30,
    )
    assert_refused(predict, max_wait=30)
    assert isinstance(predict.json()["error"], str)


def test_tenant_rpm_is_shared_by_its_keys(server: ServerProcess) -> None:
    name = tenant(server, rpm=3)
    first, second = key(server, name), key(server, name, rpm=100)
    assert [infer(server, first).status_code for _ in range(2)] == [200, 200]
    ok = infer(server, second)
    assert ok.status_code == 200
    assert rate_headers(ok)[:2] == ("3", "0")  # the tenant's bucket is the tightest
    refused = infer(server, second)
    assert_refused(refused, max_wait=20)
    assert f"tenant '{name}'" in refused.json()["error"]
    # Another tenant's keys are not affected.
    assert infer(server, key(server, tenant(server, rpm=3))).status_code == 200


def test_token_limits_show_in_the_headers(server: ServerProcess) -> None:
    api_key = key(server, tenant(server, tpm=5000), tpm=1000)
    resp = infer(server, api_key)
    assert resp.status_code == 200
    assert rate_headers(resp, "tokens") == ("1000", "1000", "0s")  # iris uses no tokens
    assert "x-ratelimit-limit-requests" not in resp.headers  # no request limit set


def test_model_rpm_limits_each_tenant_on_that_model(server: ServerProcess) -> None:
    name = tenant(server)
    api_key = key(server, name)
    assert [infer(server, api_key, "digits").status_code for _ in range(2)] == [200, 200]
    refused = infer(server, api_key, "digits")
    assert_refused(refused, max_wait=30)
    assert f"model 'digits' for tenant '{name}'" in refused.json()["error"]
    assert infer(server, api_key, "iris").status_code == 200  # other models are not limited
    assert infer(server, key(server, tenant(server)), "digits").status_code == 200


def test_openai_sdk_raises_rate_limit_error_with_the_headers(server: ServerProcess) -> None:
    api_key = key(server, tenant(server), rpm=1)
    assert infer(server, api_key).status_code == 200  # the one request of this minute
    with OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0, timeout=30) as oai:
        with pytest.raises(openai.RateLimitError) as info:
            oai.completions.create(model="iris", prompt="hello", max_tokens=4)
        error = info.value
        assert error.status_code == 429
        assert error.code == "rate_limit_exceeded"
        assert isinstance(error.body, dict) and error.body["type"] == "rate_limit_error"
        headers = error.response.headers
        assert 1 <= int(headers["retry-after"]) <= 60
        assert headers["x-ratelimit-limit-requests"] == "1"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"].endswith("s")
    # The per-model limit reads the model from an OpenAI body: digits, twice, then 429.
    other = key(server, tenant(server))
    with OpenAI(base_url=f"{server.url}/v1", api_key=other, max_retries=0, timeout=30) as oai:
        for _ in range(2):
            with pytest.raises(openai.APIStatusError) as answered:
                oai.embeddings.create(model="digits", input="x")  # digits embeds nothing
            assert answered.value.status_code != 429
        with pytest.raises(openai.RateLimitError, match="model 'digits'"):
            oai.embeddings.create(model="digits", input="x")
