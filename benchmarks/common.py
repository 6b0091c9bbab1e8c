"""Shared helpers for the benchmark scripts: pinned processes, wrk runs, result tables.

The server under test is pinned to CPU 0 and wrk to CPU 1 (``taskset``), so the two do not
steal each other's core; every figure is printed next to a baseline from the same run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SERVER_CPU = "0"
LOAD_CPU = "1"
# The platform admin key the benchmark servers start with (MODELPORT_ADMIN_KEY); a fixed,
# well-formed key so scripts can call the admin API. Never use it outside benchmarks.
BENCH_ADMIN_KEY = "mp-0000be4c4000_benchmark-admin-key-not-secret-000000000000"
ADMIN_HEADERS = {"Authorization": f"Bearer {BENCH_ADMIN_KEY}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_pids(parent_pid: int, *markers: bytes) -> list[int]:
    """Pids of ``parent_pid``'s children whose command line holds each of ``markers``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent_pid and all(marker in argv for marker in markers):
            pids.append(int(proc.name))
    return pids


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout}s")


class Pinned:
    """A subprocess pinned to one CPU (unless ``pin`` is false), stopped on exit."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, pin: bool = True
    ) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="bench-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, *args] if pin else args,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def __enter__(self) -> Pinned:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def modelport_server(
    data_dir: Path,
    port: int,
    demo: bool = True,
    pin: bool = True,
    env: dict[str, str] | None = None,
) -> Pinned:
    args = [
        sys.executable,
        "-m",
        "modelport",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--log-level",
        "warning",
    ]
    if not demo:
        args.append("--no-demo")
    # No demo pipeline: its head's training run would share the CPU with the measurement.
    base = {"MODELPORT_ADMIN_KEY": BENCH_ADMIN_KEY, "MODELPORT_DEMO_PIPELINE": "false"}
    server = Pinned(args, env={**base, **(env or {})}, pin=pin)
    wait_http(f"http://127.0.0.1:{port}/v2/health/ready")
    return server


@dataclass
class WrkResult:
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0  # completed requests (2xx and other)

    def row(self, label: str) -> str:
        return (
            f"{label:<28} c={self.concurrency:<3} {self.rps:>9.0f} req/s  "
            f"p50 {self.p50_ms:7.2f} ms  p99 {self.p99_ms:7.2f} ms  errors {self.errors}"
        )


def median_run(runs: list[WrkResult]) -> WrkResult:
    """The run with the median req/s (the upper one of an even count)."""
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]


_LUA = """
wrk.method = "POST"
{headers}
local f = io.open("{body}", "rb")
wrk.body = f:read("*a")
f:close()
function response(status, headers, body)
  if status ~= 200 then
    if not printed then print("non-200: " .. status .. " " .. body); printed = true end
  end
end
"""


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wrk(
    url: str,
    body: dict[str, object] | bytes,
    concurrency: int,
    seconds: float,
    headers: dict[str, str] | None = None,
) -> WrkResult:
    """Closed-loop load: ``concurrency`` connections posting ``body`` for ``seconds``.

    A dict is sent as JSON; bytes are sent as they are, with ``headers``. Every request
    carries the benchmark admin key (servers without auth ignore it, so both sides of a
    comparison send the same bytes).
    """
    headers = {**ADMIN_HEADERS, **(headers or {})}
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: run scripts/ensure-wrk.sh (Debian package 'wrk')")
    with tempfile.TemporaryDirectory() as tmp:
        body_path = Path(tmp) / "body.bin"
        if isinstance(body, bytes):
            body_path.write_bytes(body)
        else:
            body_path.write_text(json.dumps(body))
            headers = {"Content-Type": "application/json", **(headers or {})}
        lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
        script = Path(tmp) / "post.lua"
        script.write_text(_LUA.replace("{body}", str(body_path)).replace("{headers}", lines))
        proc = subprocess.run(
            [
                "taskset",
                "-c",
                LOAD_CPU,
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
        out = proc.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(g) for g in m.groups())
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return WrkResult(concurrency, rps, p50, p99, errors, done)


def v2_body(name: str, row: list[float]) -> dict[str, object]:
    return {"inputs": [{"name": name, "shape": [1, len(row)], "datatype": "FP32", "data": row}]}


def v2_binary_body(name: str, row: list[float]) -> tuple[bytes, dict[str, str]]:
    """The same request as tritonclient sends it by default: binary tensor extension."""
    import numpy as np

    data = np.asarray([row], dtype=np.float32).tobytes()
    header = json.dumps(
        {"inputs": [{"name": name, "shape": [1, len(row)], "datatype": "FP32",
                     "parameters": {"binary_data_size": len(data)}}],
         "parameters": {"binary_data_output": True}}
    ).encode()  # fmt: skip
    return header + data, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
