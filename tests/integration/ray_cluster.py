"""A real single-node Ray cluster for integration tests, and the marks that guard its tests.

``RayHead`` runs ``ray start --head --block`` on 127.0.0.1 (bounded CPUs and object store,
no dashboard) in its own process group and tears exactly that cluster down after. Tests that
need it carry ``RAY_MARKS``: the ``ray`` marker, and a skip when the ``ray`` package (the
``ray`` extra) is not installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.server_process import free_port

RAY = Path(sys.executable).parent / "ray"
RAY_MARKS = (
    pytest.mark.ray,
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None,
        reason="the ray package is not installed (pip install -e '.[ray]')",
    ),
)
_START_TIMEOUT_S = 90


class RayHead:
    """``ray start --head --block`` on 127.0.0.1 in its own process group.

    ``--block`` keeps the start command in the foreground as the parent of the cluster's
    processes, so stopping that one process group stops exactly this cluster (and not some
    other Ray on the machine, as ``ray stop`` would).
    """

    def __init__(self, num_cpus: int = 2) -> None:
        self.port = free_port()
        self.num_cpus = num_cpus
        # Short: Ray puts Unix sockets under it (108-byte path limit).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="mpray-", dir="/tmp"))
        self.log_path = self.temp_dir / "ray-start.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def node_id(self) -> str:
        """The head node's Ray node id (hex), from the name of a file Ray keeps per node in
        its session folder (``gcs_server_port_<node id>``)."""
        (found,) = (self.temp_dir / "session_latest").glob("gcs_server_port_*")
        return found.name.removeprefix("gcs_server_port_")

    def start(self) -> RayHead:
        args = [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                "--port", str(self.port), "--num-cpus", str(self.num_cpus),
                "--include-dashboard=false", "--object-store-memory", str(200 * 1024**2),
                "--disable-usage-stats", "--temp-dir", str(self.temp_dir)]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while "Ray runtime started" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ray start failed or timed out:\n{self.log()}")
            time.sleep(0.2)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """SIGTERM the cluster's process group, SIGKILL whatever is left after a grace."""
        if self.proc is not None:
            group = self.proc.pid  # start_new_session: the group id is the leader's pid
            self.proc.terminate()  # `ray start --block` stops its processes on SIGTERM
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            self.proc.wait()
            self.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def ray_env(head: RayHead) -> dict[str, str]:
    """What a test server needs to run on ``head`` with the Ray backend."""
    return {
        "MODELPORT_BACKEND": "ray",
        "MODELPORT_RAY_ADDRESS": head.address,
        "MODELPORT_WORKER_RESTART_BACKOFF_S": "0.2",
    }
