"""The job worker as a real subprocess, and the LocalJobRunner that starts it.

Each test writes a spec.json into a temporary work folder and runs
``python -m modelport.training.job_worker <workdir>`` for real: success → a "result" line,
bad spec → an "error" line and exit 1, SIGTERM → "cancelled" and exit 3, SIGKILL then a
second start → it resumes from the checkpoint and finishes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelport.backends.jobs import JOB_LOG, LocalJobRunner
from modelport.training.job_worker import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK
from modelport.training.run import RunOutcome

pytestmark = pytest.mark.slow

WORKER = [sys.executable, "-m", "modelport.training.job_worker"]


def _spec(workdir: Path, **overrides: Any) -> Path:
    spec: dict[str, Any] = {
        "run_id": 1,
        "dataset_path": None,
        "dataset_format": "builtin",
        "dataset_name": "iris",
        "dataset_version": 1,
        "trainer": "logistic_regression",
        "params": {},
        "seed": 0,
        "threads": 1,
    }
    spec.update(overrides)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "spec.json").write_text(json.dumps(spec))
    return workdir


def _long_mlp(workdir: Path, epochs: int) -> Path:
    """digits with an MLP: many short epochs, so signals land mid-training."""
    params = {"epochs": epochs, "batch_size": 32}
    return _spec(workdir, dataset_name="digits", trainer="mlp", params=params)


def _start(workdir: Path) -> subprocess.Popen[str]:
    log = (workdir / JOB_LOG).open("a")
    process = subprocess.Popen(
        [*WORKER, str(workdir)], stdout=subprocess.PIPE, stderr=log, text=True
    )
    log.close()
    return process


def _lines(process: subprocess.Popen[str]) -> list[dict[str, Any]]:
    stdout, _ = process.communicate(timeout=240)
    return [json.loads(line) for line in stdout.splitlines()]


def _read_until_epoch(process: subprocess.Popen[str], epoch: int) -> list[dict[str, Any]]:
    """Read lines until an "epoch" event for ``epoch`` (or later) arrives."""
    assert process.stdout is not None
    seen: list[dict[str, Any]] = []
    for line in process.stdout:
        event = json.loads(line)
        seen.append(event)
        if event["type"] == "epoch" and event["data"]["epoch"] >= epoch:
            return seen
    raise AssertionError(f"the job ended before epoch {epoch}: {seen}")


def test_iris_job_reports_events_and_a_result(tmp_path: Path) -> None:
    workdir = _spec(tmp_path / "run")
    process = _start(workdir)
    lines = _lines(process)
    assert process.returncode == EXIT_OK, (workdir / JOB_LOG).read_text()
    types = [line["type"] for line in lines]
    assert types[0] == "started" and types[-2:] == ["done", "result"]
    assert lines[0]["data"] == {"resumed_from_epoch": None}
    assert {line["data"]["split"] for line in lines if line["type"] == "metrics"} == {
        "validation",
        "test",
    }
    outcome = RunOutcome.from_json(lines[-1])
    assert outcome.bundle_path == workdir / "model.mpbundle" and outcome.bundle_path.is_file()
    assert outcome.metrics["test"]["accuracy"] >= 0.85
    assert outcome.metadata["classes"] == ["setosa", "versicolor", "virginica"]
    assert [t.name for t in outcome.signature.outputs] == ["label", "probabilities"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"trainer": "no_such_trainer"}, "no_such_trainer"),
        ({"params": {"C": -1}}, "params.C"),
        ({"trainer": "cnn"}, "cnn"),  # an image trainer on a table
        ({"dataset_name": "no_such_set"}, "no_such_set"),
        ({"split": {"validation": 0.5, "test": 0.45}}, "split"),
    ],
)
def test_bad_spec_is_an_error_line_and_exit_1(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    process = _start(_spec(tmp_path / "run", **overrides))
    lines = _lines(process)
    assert process.returncode == EXIT_FAILED
    assert lines[-1]["type"] == "error"
    assert message in lines[-1]["message"]
    assert lines[-1]["error"]["type"] == "InvalidInput"


def test_missing_spec_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    process = _start(tmp_path / "run")
    lines = _lines(process)
    assert process.returncode == EXIT_FAILED
    assert lines == [
        {
            "type": "error",
            "message": lines[0]["message"],
            "error": {"type": "InvalidInput", "message": lines[0]["message"], "param": None},
        }
    ]
    assert "spec.json" in lines[0]["message"]


def test_sigterm_cancels_and_exits_3(tmp_path: Path) -> None:
    workdir = _long_mlp(tmp_path / "run", epochs=2000)
    process = _start(workdir)
    _read_until_epoch(process, 1)
    process.send_signal(signal.SIGTERM)
    rest = _lines(process)
    assert process.returncode == EXIT_CANCELLED
    assert rest[-1] == {"type": "cancelled"}
    assert not (workdir / "model.mpbundle").exists()


def test_killed_job_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    workdir = _long_mlp(tmp_path / "run", epochs=10)
    process = _start(workdir)
    _read_until_epoch(process, 3)
    process.kill()
    process.wait()
    process.stdout.close()  # type: ignore[union-attr]
    again = _start(workdir)
    lines = _lines(again)
    assert again.returncode == EXIT_OK, (workdir / JOB_LOG).read_text()
    started = [line for line in lines if line["type"] == "started"]
    assert len(started) == 1 and lines[0] is started[0]
    resumed_from = started[0]["data"]["resumed_from_epoch"]
    assert resumed_from is not None and resumed_from >= 3
    epochs = [line["data"]["epoch"] for line in lines if line["type"] == "epoch"]
    assert epochs == list(range(resumed_from + 1, 11))
    assert lines[-1]["type"] == "result" and lines[-1]["epochs_run"] == 10


async def _run_job(runner: LocalJobRunner, workdir: Path) -> tuple[list[dict[str, Any]], int]:
    handle = await runner.start(1, workdir)
    events = [event async for event in handle.events()]
    return events, await handle.wait()


def test_local_runner_streams_events_and_logs(tmp_path: Path) -> None:
    workdir = _spec(tmp_path / "run", split={"folds": 3})
    events, code = asyncio.run(_run_job(LocalJobRunner(), workdir))
    assert code == EXIT_OK
    assert events[0]["type"] == "started" and events[-1]["type"] == "result"
    assert events[-1]["metrics"]["cv"]["folds"] == 3
    assert (workdir / JOB_LOG).is_file()


async def _start_then_cancel(workdir: Path) -> tuple[list[dict[str, Any]], int]:
    handle = await LocalJobRunner(grace_s=30).start(1, workdir)
    events: list[dict[str, Any]] = []
    async for event in handle.events():
        events.append(event)
        if event["type"] == "epoch":
            await handle.cancel()
    return events, await handle.wait()


def test_local_runner_cancel(tmp_path: Path) -> None:
    workdir = _long_mlp(tmp_path / "run", epochs=2000)
    events, code = asyncio.run(_start_then_cancel(workdir))
    assert code == EXIT_CANCELLED
    assert events[-1] == {"type": "cancelled"}


def test_local_runner_kills_after_grace(tmp_path: Path) -> None:
    """A job that ignores SIGTERM is killed once the grace period is over."""
    stubborn = tmp_path / "stubborn.sh"  # stands in for python through the runner's hook
    stubborn.write_text("#!/bin/sh\ntrap '' TERM\necho ready\nsleep 60\n")
    stubborn.chmod(0o755)
    runner = LocalJobRunner(python=str(stubborn), grace_s=0.5)

    async def go() -> tuple[dict[str, Any], int]:
        handle = await runner.start(1, tmp_path / "run")
        first = await anext(aiter(handle.events()))  # the trap is installed
        await handle.cancel()
        return first, await handle.wait()

    first, code = asyncio.run(go())
    assert first == {"type": "log", "data": {"message": "ready"}}
    assert code == -signal.SIGKILL
    assert (tmp_path / "run" / JOB_LOG).is_file()
