"""Training jobs across server restarts: a killed server's job resumes from its checkpoint, a
stopped server stops its job workers (and its warm spare); the spare takes the next job."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import AUTH
from tests.integration.server_process import ServerProcess
from tests.integration.training_helpers import sse_events, start_run, wait_epoch, wait_run

pytestmark = pytest.mark.slow


def _client(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=dict(AUTH), timeout=120)


def _job_workers() -> dict[int, tuple[int, list[bytes], str]]:
    """Job worker processes: pid → (parent pid, argv, where its stderr goes)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"modelport.training.job_worker" in argv:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                found[int(proc.name)] = (ppid, argv, os.readlink(proc / "fd" / "2"))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _workers_of(workdir: Path) -> list[int]:
    """Pids of job worker processes running on ``workdir``: started for it (it is in their
    argv) or a warm spare that took it (its stderr is the job's log)."""
    return [
        pid
        for pid, (_, argv, stderr) in _job_workers().items()
        if str(workdir).encode() in argv or stderr.startswith(str(workdir) + os.sep)
    ]


def _spares(server: ServerProcess) -> list[int]:
    """The server's warm job workers."""
    assert server.proc is not None
    parent = server.proc.pid
    return [p for p, (pp, argv, _) in _job_workers().items() if pp == parent and b"--spare" in argv]


def _wait_gone(workdir: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _workers_of(workdir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _workers_of(workdir) == []


def test_killed_server_resumes_the_job_from_its_checkpoint(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, demo=False).start()
    try:
        with _client(server) as client:
            run = start_run(client, dataset="digits", trainer="cnn", model_name="digits-cnn",
                            params={"epochs": 6}, seed=1)  # fmt: skip
            wait_epoch(client, run["id"], 2)
            workdir = data / "training" / str(run["id"])
            assert (workdir / "spec.json").exists() and _workers_of(workdir)
    finally:
        server.kill()  # SIGKILL: no shutdown code runs; the worker dies with its parent
    _wait_gone(workdir)

    server = ServerProcess(data, demo=False).start()
    try:
        with _client(server) as client:
            done = wait_run(client, run["id"])
            assert done["status"] == "succeeded", done
            assert done["model_version"] == 1 and done["progress"]["epoch"] == 6
            events = sse_events(client, run["id"])
    finally:
        server.stop()
    requeued = [e for e in events if e["type"] == "status" and e["data"].get("reason")]
    assert requeued and requeued[0]["data"]["status"] == "queued"
    started = [e["data"]["resumed_from_epoch"] for e in events if e["type"] == "started"]
    assert started[0] is None and started[-1] is not None and started[-1] >= 2
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert done["progress"]["resumed_from_epoch"] == started[-1]


def test_stopping_the_server_stops_its_job_workers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, demo=False).start()
    try:
        with _client(server) as client:
            run = start_run(client, dataset="digits", trainer="cnn", model_name="digits-cnn",
                            params={"epochs": 100})  # fmt: skip
            wait_epoch(client, run["id"], 1)
            workdir = data / "training" / str(run["id"])
            assert _workers_of(workdir)
    finally:
        server.stop()  # SIGTERM: a graceful stop
    assert _workers_of(workdir) == []
    server = ServerProcess(data, demo=False).start()
    try:
        with _client(server) as client:
            info = wait_run(client, run["id"], until={"running"})  # queued again, resumed
            assert info["progress"]["epoch"] >= 1
            assert client.post(f"/api/runs/{run['id']}/cancel").status_code == 200
            assert wait_run(client, run["id"], timeout=60)["status"] == "cancelled"
    finally:
        server.stop()


def test_the_warm_spare_takes_the_next_job_and_stops_with_the_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, demo=False).start()
    spares: list[int] = []
    try:
        with _client(server) as client:
            assert _spares(server) == []  # none at server start: the first job is cold
            body = {"dataset": "iris", "trainer": "logistic_regression", "model_name": "iris-lr",
                    "register_model": False}  # fmt: skip
            first = wait_run(client, start_run(client, **body)["id"])
            assert first["status"] == "succeeded", first
            log = (data / "training" / str(first["id"]) / "job.log").read_text()
            assert "a warm spare" not in log
            deadline = time.monotonic() + 120  # one is started as that job ends
            while not (spares := _spares(server)):
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.1)
            (spare,) = spares
            second = wait_run(client, start_run(client, **body)["id"])
            assert second["status"] == "succeeded", second
            log = (data / "training" / str(second["id"]) / "job.log").read_text()
            assert f"job worker {spare}: a warm spare" in log
            deadline = time.monotonic() + 120
            while not (spares := [p for p in _spares(server) if p != spare]):
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.1)
    finally:
        server.stop()  # SIGTERM: the spare goes with the server
    deadline = time.monotonic() + 10
    while spares and Path(f"/proc/{spares[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert spares and not Path(f"/proc/{spares[0]}").exists()
