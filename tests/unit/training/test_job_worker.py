"""The job worker as a real subprocess, and the LocalJobRunner that starts it.

Each test writes a spec.json into a temporary work folder and runs
``python -m modelport.training.job_worker <workdir>`` for real: success → a "result" line,
bad spec → an "error" line and exit 1, SIGTERM → "cancelled" and exit 3, SIGKILL then a
second start → it resumes from the checkpoint and finishes. The warm spare
(``--spare``, ``LocalJobRunner.prestart``): it takes the next job, one process per job,
cancel/kill/resume work the same, a dead spare is passed over.
"""

from __future__ import annotations

import asyncio
import json
import os
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


# -- the warm spare ---------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def _ready_spare(runner: LocalJobRunner, timeout: float = 240) -> int:
    """The runner's spare once its imports are done (started after a job ends)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while runner.spare_pid is None:
        assert asyncio.get_running_loop().time() < deadline, "no spare was started"
        await asyncio.sleep(0.05)
    assert await asyncio.wait_for(runner.spare_ready(), timeout)
    pid = runner.spare_pid
    assert pid is not None
    return pid


def test_spare_protocol_ready_then_a_job_or_end_of_input(tmp_path: Path) -> None:
    """``--spare``: a "ready" line, then the job named on stdin ("accepted"), logging to the
    job's log; end of input instead of a job is a quiet exit 0."""
    spare = subprocess.Popen(
        [*WORKER, "--spare"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert spare.stdout is not None and spare.stdin is not None
    ready = json.loads(spare.stdout.readline())
    assert ready["type"] == "ready" and ready["data"]["failed"] == []
    workdir = _spec(tmp_path / "run")
    spare.stdin.write(json.dumps({"workdir": str(workdir)}) + "\n")
    spare.stdin.close()
    with spare.stdout:
        lines = [json.loads(line) for line in spare.stdout]
    spare.wait(timeout=240)
    assert spare.returncode == EXIT_OK, (workdir / JOB_LOG).read_text()
    assert lines[0] == {"type": "accepted", "data": {"pid": spare.pid}}
    assert lines[1]["type"] == "started" and lines[-1]["type"] == "result"
    log = (workdir / JOB_LOG).read_text()
    assert f"job worker {spare.pid}: a warm spare" in log
    assert f"job worker {spare.pid}: threads 1: torch 1" in log  # applied as the job came

    idle = subprocess.Popen([*WORKER, "--spare"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    out, _ = idle.communicate(timeout=240)
    assert idle.returncode == EXIT_OK
    assert [json.loads(line)["type"] for line in out.splitlines()] == ["ready"]


async def _spare_jobs(tmp_path: Path) -> None:
    runner = LocalJobRunner()
    await runner.prestart()  # from the first job's end on
    assert runner.spare_pid is None

    first, code = await _run_job(runner, _spec(tmp_path / "a"))
    assert code == EXIT_OK and first[-1]["type"] == "result"
    assert "a warm spare" not in (tmp_path / "a" / JOB_LOG).read_text()

    spare = await _ready_spare(runner)  # started when the first job ended
    handle = await runner.start(2, _spec(tmp_path / "b", run_id=2))
    assert handle.pid == spare and runner.spare_pid is None  # taken; none beside the job
    events = [event async for event in handle.events()]
    assert await handle.wait() == EXIT_OK
    assert events[0]["type"] == "started" and events[-1]["type"] == "result"
    assert not {"ready", "accepted"} & {e["type"] for e in events}  # the spare's own lines
    assert RunOutcome.from_json(events[-1]).bundle_path == tmp_path / "b" / "model.mpbundle"
    assert f"job worker {spare}: a warm spare" in (tmp_path / "b" / JOB_LOG).read_text()

    following = await _ready_spare(runner)  # one job, one process: a new spare follows
    assert following != spare and not _alive(spare)
    handle = await runner.start(3, _spec(tmp_path / "c", run_id=3))
    assert handle.pid == following
    assert [e async for e in handle.events()][-1]["type"] == "result"
    assert await handle.wait() == EXIT_OK

    last = await _ready_spare(runner)
    await runner.close()  # the spare dies with the runner; no new one after that
    assert runner.spare_pid is None and not _alive(last)


def test_spare_takes_the_next_job_and_each_job_has_its_own_process(tmp_path: Path) -> None:
    asyncio.run(_spare_jobs(tmp_path))


async def _spare_cancel_and_resume(tmp_path: Path) -> None:
    runner = LocalJobRunner(grace_s=30)
    await runner.prestart(now=True)
    spare = await _ready_spare(runner)

    handle = await runner.start(1, _long_mlp(tmp_path / "cancel", epochs=2000))
    assert handle.pid == spare
    events: list[dict[str, Any]] = []
    async for event in handle.events():
        events.append(event)
        if event["type"] == "epoch":
            await handle.cancel()
    assert await handle.wait() == EXIT_CANCELLED
    assert events[-1] == {"type": "cancelled"}

    workdir = _long_mlp(tmp_path / "kill", epochs=10)
    spare = await _ready_spare(runner)
    handle = await runner.start(2, workdir)
    assert handle.pid == spare
    async for event in handle.events():
        if event["type"] == "epoch" and event["data"]["epoch"] >= 3:
            os.kill(handle.pid, signal.SIGKILL)
    assert await handle.wait() == -signal.SIGKILL

    spare = await _ready_spare(runner)
    handle = await runner.start(2, workdir)  # the same folder again: it resumes
    assert handle.pid == spare
    lines = [event async for event in handle.events()]
    assert await handle.wait() == EXIT_OK, (workdir / JOB_LOG).read_text()
    resumed_from = lines[0]["data"]["resumed_from_epoch"]
    assert lines[0]["type"] == "started" and resumed_from is not None and resumed_from >= 3
    assert lines[-1]["type"] == "result" and lines[-1]["epochs_run"] == 10
    await runner.close()


def test_spare_jobs_cancel_kill_and_resume(tmp_path: Path) -> None:
    asyncio.run(_spare_cancel_and_resume(tmp_path))


async def _dead_spare(tmp_path: Path) -> int:
    runner = LocalJobRunner()
    await runner.prestart(now=True)
    spare = await _ready_spare(runner)
    os.kill(spare, signal.SIGKILL)
    while _alive(spare):
        await asyncio.sleep(0.05)
    events, code = await _run_job(runner, _spec(tmp_path / "run"))  # a fresh worker instead
    assert events[-1]["type"] == "result"
    await runner.close()
    return code


def test_a_dead_spare_is_passed_over(tmp_path: Path) -> None:
    assert asyncio.run(_dead_spare(tmp_path)) == EXIT_OK
    assert "a warm spare" not in (tmp_path / "run" / JOB_LOG).read_text()
