"""The client's training calls: the requests it builds, the SSE parser, the CLI's k=v options.

Request shapes are checked on the sans-IO calls and, for the methods that do more than one
request or stream (``push_dataset``, ``follow_run``, ``wait_run``), through an
``httpx.MockTransport`` that records what the real ``Client``/``AsyncClient`` send.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from modelport import errors
from modelport.cli import training_output as show
from modelport.cli.training import parse_pairs, with_shortcuts
from modelport.cli.training_output import headline
from modelport.client import AsyncClient, Client
from modelport.client.files import ArtifactFile
from modelport.client.training import CALLS, SseParser, parse_events, train_request
from modelport.types.training import (
    PreprocessSpec,
    RunComparison,
    RunDetail,
    RunEvent,
    RunStatus,
    SplitSpec,
    TrainRequest,
)

NOW = "2025-01-02T03:04:05Z"


def _run(run_id: int = 7, status: str = "queued", **extra: Any) -> dict[str, Any]:
    return {
        "id": run_id,
        "status": status,
        "model_name": "churn-lr",
        "dataset": "churn",
        "dataset_version": 1,
        "trainer": "logistic_regression",
        "params": {"C": 1.0},
        "preprocessing": {},
        "split": {},
        "seed": 0,
        "code_version": "0.1.0",
        "created_at": NOW,
        **extra,
    }


def _dataset(name: str = "churn") -> dict[str, Any]:
    return {
        "name": name,
        "version": 1,
        "format": "csv",
        "filename": "churn.csv",
        "sha256": "a" * 64,
        "size": 10,
        "rows": 20,
        "schema": {"kind": "tabular", "task": "classification", "target": "churned"},
        "created_at": NOW,
    }


def _event(seq: int, type_: str, **data: Any) -> dict[str, Any]:
    return {"seq": seq, "type": type_, "at": NOW, "data": data}


def _sse(*events: dict[str, Any]) -> bytes:
    chunks = [f"event: {e['type']}\ndata: {orjson.dumps(e).decode()}\n\n" for e in events]
    return ": keep-alive\n\n".join(chunks).encode()


Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler answering by (method, path) and keeping every request."""

    def __init__(self, answers: dict[tuple[str, str], Handler]) -> None:
        self.answers, self.requests = answers, list[httpx.Request]()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self.answers[(request.method, request.url.path)](request)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder({})


@pytest.fixture
def client(recorder: Recorder) -> Iterator[Client]:
    with Client("http://server.test", api_key="sk-1") as real:
        real._http.close()
        real._http = httpx.Client(
            base_url=real.base_url,
            headers=real._core.headers,
            transport=httpx.MockTransport(recorder),
        )
        yield real


# --- request building ------------------------------------------------------------------------


def test_create_dataset_body_names_the_upload(tmp_path: Path) -> None:
    path = tmp_path / "churn.csv"
    path.write_text("a,churned\n1,yes\n")
    artifact = ArtifactFile.measure(path)
    call = CALLS.create_dataset("churn", artifact, target="churned", task="classification")
    request = call.request
    assert (request.method, request.path) == ("POST", "/api/datasets")
    assert request.content is not None
    assert orjson.loads(request.content) == {
        "name": "churn",
        "artifact_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "filename": "churn.csv",
        "target": "churned",
        "task": "classification",
    }
    with pytest.raises(errors.InvalidInput, match="task") as info:
        CALLS.create_dataset("churn", artifact, task="clustering")
    assert info.value.param == "task"
    with pytest.raises(errors.InvalidInput, match="name") as info:
        CALLS.create_dataset("no spaces", artifact)
    assert info.value.param == "name"


def test_read_routes_paths_and_queries() -> None:
    preview = CALLS.preview_dataset("my set", version=2, rows=5).request
    assert preview.path == "/api/datasets/my%20set/preview"
    assert preview.params == {"version": "2", "rows": "5"}
    assert CALLS.preview_dataset("iris").request.params == {}
    assert CALLS.delete_dataset("iris").request.method == "DELETE"
    runs = CALLS.list_runs(model="m", status="succeeded", limit=3).request
    assert (runs.path, runs.params) == (
        "/api/runs",
        {"model": "m", "status": "succeeded", "limit": "3"},
    )
    compare = CALLS.compare_runs([3, 12]).request
    assert (compare.path, compare.params) == ("/api/runs/compare", {"ids": "3,12"})
    assert CALLS.cancel_run(4).request.path == "/api/runs/4/cancel"
    assert CALLS.run_events(4).request.headers["Accept"] == "text/event-stream"
    with pytest.raises(errors.InvalidInput, match="unknown run status 'done'"):
        CALLS.list_runs(status="done")
    with pytest.raises(errors.InvalidInput, match="at least one"):
        CALLS.compare_runs([])


def test_train_request_from_kwargs_mapping_or_model() -> None:
    built = train_request(
        None,
        {
            "dataset": "digits",
            "trainer": "cnn",
            "model_name": "digits-cnn",
            "params": {"epochs": 2},
            "split": SplitSpec(validation=0.2),
            "preprocessing": {"image_scale": "standardize"},
            "seed": None,
        },
    )
    assert built.split.validation == 0.2 and built.preprocessing.image_scale == "standardize"
    body = orjson.loads(CALLS.train(built).request.content or b"")
    # Unset fields stay out so the server's defaults apply.
    assert body == {
        "dataset": "digits",
        "trainer": "cnn",
        "model_name": "digits-cnn",
        "params": {"epochs": 2},
        "split": {"validation": 0.2},
        "preprocessing": {"image_scale": "standardize"},
    }
    ready = TrainRequest(dataset="iris", trainer="mlp", model_name="m")
    assert train_request(ready, {"seed": None}) is ready
    with pytest.raises(errors.InvalidInput, match="not both"):
        train_request(ready, {"seed": 1})
    with pytest.raises(errors.InvalidInput, match="split") as info:
        train_request(
            None,
            {
                "dataset": "iris",
                "trainer": "mlp",
                "model_name": "m",
                "split": {"validation": 0.5, "test": 0.5},
            },
        )
    assert info.value.param == "split"
    with pytest.raises(errors.InvalidInput, match=r"preprocessing\.numeric"):
        train_request(
            {
                "dataset": "iris",
                "trainer": "mlp",
                "model_name": "m",
                "preprocessing": {"numeric": "log"},
            },
            {},
        )
    with pytest.raises(errors.InvalidInput, match="model_name"):
        train_request(None, {"dataset": "iris", "trainer": "mlp", "model_name": "bad name"})
    assert PreprocessSpec().numeric == "standardize"


# --- server-sent events ----------------------------------------------------------------------


def test_sse_parser_joins_data_lines_and_skips_comments() -> None:
    event = _event(1, "epoch", epoch=1, epochs=3, metrics={"loss": 0.5})
    text = orjson.dumps(event, option=orjson.OPT_INDENT_2).decode()  # multi-line JSON
    lines = [": hello", "id: 1", "event: epoch", *(f"data: {line}" for line in text.splitlines())]
    lines += ["", "", "event: log", 'data: {"seq": 2, "type": "log", "at": "' + NOW + '"}']
    events = list(parse_events(lines))  # the last event ends without a blank line
    assert [(e.seq, e.type) for e in events] == [(1, "epoch"), (2, "log")]
    assert events[0].data["metrics"] == {"loss": 0.5}


def test_sse_parser_refuses_mismatched_or_bad_payloads() -> None:
    parser = SseParser()
    parser.feed("event: done")
    parser.feed("data: " + orjson.dumps(_event(3, "epoch")).decode())
    with pytest.raises(errors.ModelportError, match="named 'done' carries a 'epoch'"):
        parser.feed("")
    parser.feed("data: {not json")
    with pytest.raises(errors.ModelportError, match="unexpected run event"):
        parser.feed("")


# --- the clients, over a mock transport ------------------------------------------------------


def test_push_dataset_uploads_then_registers(
    client: Client, recorder: Recorder, tmp_path: Path
) -> None:
    path = tmp_path / "churn.csv"
    path.write_bytes(b"a,churned\n" + b"1,yes\n" * 50)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    stored = {"sha256": digest, "size": path.stat().st_size, "created_at": NOW}
    recorder.answers = {
        ("POST", "/api/artifacts"): lambda r: httpx.Response(201, json=stored),
        ("POST", "/api/datasets"): lambda r: httpx.Response(201, json=_dataset()),
    }
    sent: list[int] = []
    info = client.push_dataset(path, "churn", target="churned", progress=sent.append)
    assert info.dataset_schema.target == "churned" and info.rows == 20
    upload, create = recorder.requests
    assert upload.url.params["sha256"] == digest and upload.content == path.read_bytes()
    assert orjson.loads(create.content)["artifact_sha256"] == digest
    assert create.headers["Authorization"] == "Bearer sk-1"
    assert sent[-1] == path.stat().st_size
    recorder.requests.clear()
    with pytest.raises(errors.InvalidInput, match="format"):
        client.push_dataset(path, "churn", fmt="xlsx")
    assert recorder.requests == []  # a bad option fails before anything is uploaded


def test_follow_run_streams_events_and_errors(client: Client, recorder: Recorder) -> None:
    events = [
        _event(1, "status", status="running"),
        _event(2, "epoch", epoch=1, epochs=2, metrics={"loss": 0.7, "val_accuracy": 0.8}),
        _event(3, "done", metrics={}),
    ]
    recorder.answers = {
        ("GET", "/api/runs/7/events"): lambda r: httpx.Response(
            200, content=_sse(*events), headers={"Content-Type": "text/event-stream"}
        ),
        ("GET", "/api/runs/8/events"): lambda r: httpx.Response(
            404, json={"error": {"code": "not_found", "message": "no run 8", "param": "8"}}
        ),
    }
    followed = list(client.follow_run(7))
    assert [e.type for e in followed] == ["status", "epoch", "done"]
    assert followed[1].data["metrics"]["val_accuracy"] == 0.8
    with pytest.raises(errors.NotFound, match="no run 8"):
        list(client.follow_run(8))


def test_wait_run_polls_until_finished(client: Client, recorder: Recorder) -> None:
    states = iter(["queued", "running", "succeeded"])
    recorder.answers = {
        ("GET", "/api/runs/7"): lambda r: httpx.Response(
            200, json=_run(status=next(states), model_version=3)
        ),
    }
    run = client.wait_run(7, timeout=30)
    assert run.status is RunStatus.SUCCEEDED and run.model_version == 3
    assert len(recorder.requests) == 3
    recorder.answers = {("GET", "/api/runs/7"): lambda r: httpx.Response(200, json=_run())}
    with pytest.raises(errors.DeadlineExceeded, match="run 7 not finished"):
        client.wait_run(7, timeout=0)


def test_async_client_mirrors_the_sync_one(recorder: Recorder) -> None:
    recorder.answers = {
        ("POST", "/api/runs"): lambda r: httpx.Response(201, json=_run()),
        ("GET", "/api/runs/7/events"): lambda r: httpx.Response(
            200, content=_sse(_event(1, "status", status="running"), _event(2, "done"))
        ),
        ("GET", "/api/runs/7/logs"): lambda r: httpx.Response(200, text="epoch 1\n"),
    }

    async def scenario() -> tuple[int, list[str], str]:
        async with AsyncClient("http://server.test", api_key="sk-1") as real:
            await real._http.aclose()
            real._http = httpx.AsyncClient(
                base_url=real.base_url, transport=httpx.MockTransport(recorder)
            )
            run = await real.train(
                dataset="churn",
                trainer="logistic_regression",
                model_name="churn-lr",
                params={"C": 0.5},
            )
            kinds = [str(event.type) async for event in real.follow_run(run.id)]
            return run.id, kinds, await real.run_logs(run.id)

    run_id, kinds, logs = asyncio.run(scenario())
    assert (run_id, kinds, logs) == (7, ["status", "done"], "epoch 1\n")
    body = orjson.loads(recorder.requests[0].content)
    assert body == {
        "dataset": "churn",
        "trainer": "logistic_regression",
        "model_name": "churn-lr",
        "params": {"C": 0.5},
    }


# --- CLI helpers -----------------------------------------------------------------------------


def test_cli_pairs_parse_json_values_and_refuse_clashes() -> None:
    pairs = parse_pairs(["lr=0.01", "optimizer=sgd", "hidden=[64, 32]", "x=a=b"], "--param")
    assert pairs == {"lr": 0.01, "optimizer": "sgd", "hidden": [64, 32], "x": "a=b"}
    with pytest.raises(errors.InvalidInput, match="key=value"):
        parse_pairs(["lr"], "--param")
    with pytest.raises(errors.InvalidInput, match="given twice"):
        parse_pairs(["lr=1", "lr=2"], "--param")
    assert with_shortcuts({"lr": 0.1}, epochs=3, batch_size=None) == {"lr": 0.1, "epochs": 3}
    with pytest.raises(errors.InvalidInput, match="--batch-size and --param batch_size"):
        with_shortcuts({"batch_size": 8}, batch_size=16)


def test_headline_prefers_test_accuracy_then_r2() -> None:
    assert headline({"validation": {"accuracy": 0.9}, "test": {"accuracy": 0.97}}) == (
        "test.accuracy 0.97"
    )
    assert headline({"test": {"mse": 2.0, "r2": 0.5}}) == "test.r2 0.5"
    assert headline({}) == "-"


def test_tables_and_live_view_render(capsys: pytest.CaptureFixture[str]) -> None:
    metrics = {
        "validation": {"accuracy": 0.9, "per_class": {"no": {"f1": 0.9}}},
        "test": {"accuracy": 0.95, "confusion_matrix": [[5, 0], [1, 4]]},
    }
    epochs = [{"epoch": 1, "metrics": {"loss": 0.7, "val_loss": 0.6}, "at": NOW}]
    done = RunDetail.model_validate(
        _run(status="succeeded", model_version=2, metrics=metrics, epochs=epochs)
    )
    failed = RunDetail.model_validate(_run(8, status="failed", error="params.lr: too big"))
    show.print_run(done)
    show.print_result(done)
    show.print_result(failed)
    show.print_comparison(
        RunComparison(
            runs=[done, failed], params={"C": [1.0, 0.5]}, metrics={"test.accuracy": [0.95, None]}
        )
    )
    show.print_runs([done, failed])
    with show.run_view(7, enabled=True) as view:
        for event in (
            _event(1, "status", status="running"),
            _event(2, "started", resumed_from_epoch=3),
            _event(3, "epoch", epoch=4, epochs=5, metrics={"loss": 0.25, "val_accuracy": 0.9}),
            _event(4, "log", message="early stopping"),
            _event(5, "done"),
        ):
            view.show(RunEvent.model_validate(event))
    out, err = capsys.readouterr()
    assert "churn-lr v2" in out and "succeeded" in out
    assert "run 8 failed: params.lr: too big" in out
    assert "test.accuracy" in out and "0.95" in out and "val_loss" in out
    assert "confusion" not in out  # matrices and per-class figures stay in --json
    assert "early stopping" in err
