"""Crash reconciliation: SIGKILL the server under load, start it again, count the bills.

Every answered request must have exactly one usage record, and a request the client did not
get must have none, however the process dies. Concurrent clients call iris (V2) through a
real server; the server is killed with SIGKILL mid-load and started again on the same data
dir (it replays its usage journal before serving); the usage records must then number
exactly the 2xx responses the clients received in full. The same with streamed chats: a
stream counts from its 200 status line, and its record bills at least the chunks the
client got and at most the one whose send had started when the server died.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.helpers import AUTH, wait_state
from tests.integration.server_process import ServerProcess

IRIS = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                    "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip
GEMMA = "gemma-3-270m"
CLIENTS = 8


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest) -> dict[str, str]:
    values = {"MODELPORT_DEMO_TEXT_MODELS": "false"}
    if request.param == "postgres":
        values["MODELPORT_DATABASE_URL"] = request.getfixturevalue("fresh_postgres_url")
    return values


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def _usage(server: ServerProcess, model: str) -> dict[str, Any]:
    resp = httpx.get(f"{server.url}/api/usage", params={"model": model}, headers=AUTH, timeout=60)
    resp.raise_for_status()
    return dict(resp.json())


def _restart(server: ServerProcess, servers: list[ServerProcess]) -> ServerProcess:
    again = ServerProcess(server.data_dir, env=server.env)
    servers.append(again)
    return again.start(timeout=240)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_under_load_bills_each_answered_request_exactly_once(
    env: dict[str, str], tmp_path: Path, servers: list[ServerProcess]
) -> None:
    server = ServerProcess(tmp_path / "data", env=env)
    servers.append(server)
    server.start()
    answered = [0] * CLIENTS
    other = [0] * CLIENTS
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as http:
            while not stop.is_set():
                try:
                    resp = http.post("/v2/models/iris/infer", json=IRIS)
                except httpx.HTTPError:  # the server died: this one was not answered
                    return
                if resp.status_code == 200:
                    answered[i] += 1  # the whole body arrived
                else:
                    other[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while sum(answered) < 400 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()  # SIGKILL, mid-load
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    received = sum(answered)
    assert received >= 400 and sum(other) == 0

    again = _restart(server, servers)
    assert _usage(again, "iris")["total"]["requests"] == received


@dataclass
class Stream:
    """What one streamed chat got."""

    status: int = 0
    id: str | None = None
    content: int = 0  # chunks with text
    done: bool = False
    error: str | None = None


def _chat(url: str, stream: Stream) -> None:
    body = {
        "model": GEMMA,
        "messages": [{"role": "user", "content": "Count from 1 to 200, one number a line."}],
        "max_tokens": 64,
        "temperature": 0,
        "stream": True,
    }
    try:
        with (
            httpx.Client(base_url=url, headers=AUTH, timeout=120) as http,
            http.stream("POST", "/v1/chat/completions", json=body) as resp,
        ):
            stream.status = resp.status_code
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    stream.done = True
                    continue
                chunk = json.loads(line[6:])
                stream.id = chunk.get("id", stream.id)
                for choice in chunk.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        stream.content += 1
    except httpx.HTTPError as exc:  # the server died mid-stream
        stream.error = type(exc).__name__


@pytest.mark.slow
@pytest.mark.timeout(540)
def test_sigkill_mid_stream_bills_the_tokens_sent(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    env = {"MODELPORT_DEMO_TEXT_MODELS": "true"}
    server = ServerProcess(tmp_path / "data", env=env)
    servers.append(server)
    server.start(timeout=240)
    wait_state(server.url, GEMMA, "ready", timeout=240)
    streams = [Stream() for _ in range(4)]
    threads = [threading.Thread(target=_chat, args=(server.url, s)) for s in streams]
    for thread in threads:
        thread.start()
    # Kill once one stream has ended and the next is sending (or after a while regardless).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ended = any(s.done for s in streams)
        if ended and any(s.content >= 3 and not s.done for s in streams):
            break
        time.sleep(0.005)
    time.sleep(0.2)
    server.kill()
    for thread in threads:
        thread.join(timeout=60)
    answered = [s for s in streams if s.status == 200]
    assert any(s.done for s in answered), streams
    assert any(not s.done and s.content for s in answered), streams  # one was cut

    again = _restart(server, servers)
    wait_state(again.url, GEMMA, "ready", timeout=240)
    resp = httpx.get(f"{again.url}/api/usage/records", params={"model": GEMMA, "limit": 100},
                     headers=AUTH, timeout=60)  # fmt: skip
    records = {r["request_id"]: r for r in resp.json()}
    assert len(records) == len(answered), (records, streams)
    for stream in answered:
        if stream.id is None:  # killed between the status line and the first chunk
            continue
        record = records[stream.id]
        tokens = record["output_tokens"]
        if stream.done:
            assert record["finished"] is True
            assert tokens >= stream.content
        else:  # billed: every chunk it got, at most the one whose send had started
            assert record["finished"] is False
            assert stream.content <= tokens <= stream.content + 1, (record, stream)
