"""A real modelport server in a subprocess on 127.0.0.1, for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
# The platform admin key every test server starts with (MODELPORT_ADMIN_KEY), so tests can
# call it; ``env={"MODELPORT_ADMIN_KEY": ""}`` starts one that generates its own key file.
TEST_ADMIN_KEY = "mp-00000000a11d_test-admin-key-not-a-secret-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """``modelport serve`` on a data dir; start/stop/kill it like an operator would."""

    data_dir: Path
    demo: bool = True
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _log_file: BinaryIO | None = None
    # What the server runs on, for tests that check it: set by whoever starts it on another
    # backend (for Ray also the id of the one node of its test cluster).
    backend: str = "local"
    ray_node_id: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "MODELPORT_ADMIN_KEY": TEST_ADMIN_KEY,
            # No background training in every server with the text demos: only the tests
            # of the demo pipeline turn it on.
            "MODELPORT_DEMO_PIPELINE": "false",
            **self.env,
        }
        args = [
            sys.executable,
            "-m",
            "modelport",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        if not self.demo:
            args.append("--no-demo")
        self.log_path = self.data_dir / f"server-{self.port}-{time.monotonic_ns()}.log"
        self._log_file = self.log_path.open("wb")
        self.proc = subprocess.Popen(args, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path else ""

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        self._close_log()
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self._close_log()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
