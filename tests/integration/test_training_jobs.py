"""Training jobs across server restarts: a killed server's job resumes from its checkpoint, a
stopped server stops its job workers."""

from __future__ import annotations

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


def _workers_of(workdir: Path) -> list[int]:
    """Pids of job worker processes running on ``workdir``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"modelport.training.job_worker" in argv and str(workdir).encode() in argv:
            pids.append(int(proc.name))
    return pids


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
