"""W1 on the Ray backend vs the local backend, same run: what running replicas as Ray actors costs.

The demo `iris` deployment (one replica, batching 64 rows / 2 ms), one row per request, V2
JSON, at concurrency 64. One server at a time on CPU 0, restarted each round, alternating
local and Ray; wrk on CPU 1. The single-node Ray cluster (``ray start --head`` on
127.0.0.1) is pinned to CPU 0 as well, so the actor shares the server's core exactly as a
local worker process (a child of the server) does. Medians of the rounds are reported, and
the median of the per-round ratios. Target: Ray costs < 30 % (ratio >= 0.70).

    .venv/bin/python -m benchmarks.ray_w1 [--seconds 5] [--rounds 3] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import (
    SERVER_CPU,
    WrkResult,
    free_port,
    median_run,
    modelport_server,
    v2_body,
    wrk,
)

ROW = [5.1, 3.5, 1.4, 0.2]
RAY = Path(sys.executable).parent / "ray"


@contextlib.contextmanager
def ray_head() -> Iterator[str]:
    """A single-node Ray cluster on CPU 0, in its own process group; yields its address."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="mpray-", dir="/tmp")  # short: Ray puts sockets in it
    log_path = Path(temp) / "ray-start.log"
    args = ["taskset", "-c", SERVER_CPU, str(RAY), "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
            "--include-dashboard=false", "--object-store-memory", str(200 * 1024**2),
            "--disable-usage-stats", "--temp-dir", temp]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()  # `ray start --block` stops the cluster it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--ray-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the Ray server only (experiments)",
    )
    args = parser.parse_args()
    if not RAY.exists():
        sys.exit("the ray package is not installed: pip install -e '.[ray]'")
    body = v2_body("input", ROW)
    c = args.concurrency
    runs: dict[str, list[WrkResult]] = {"local": [], "ray": []}
    base = {"MODELPORT_DEMO_TEXT_MODELS": "false"}
    with tempfile.TemporaryDirectory() as tmp, ray_head() as address:
        envs = {
            "local": base,
            "ray": {
                **base,
                "MODELPORT_BACKEND": "ray",
                "MODELPORT_RAY_ADDRESS": address,
                **dict(item.split("=", 1) for item in args.ray_env),
            },
        }
        for round_ in range(args.rounds):
            for label, env in envs.items():
                port = free_port()
                data = Path(tmp) / f"{label}-{round_}"
                with modelport_server(data, port, env=env):
                    url = f"http://127.0.0.1:{port}/v2/models/iris/infer"
                    wrk(url, body, 16, 2)  # warm-up
                    runs[label].append(wrk(url, body, c, args.seconds))
                print(runs[label][-1].row(f"round {round_ + 1} {label}"), flush=True)
    local, ray = median_run(runs["local"]), median_run(runs["ray"])
    ratio = statistics.median(
        r.rps / lo.rps for r, lo in zip(runs["ray"], runs["local"], strict=True)
    )
    print(f"W1 iris, 1 row/request, V2 JSON, c={c}; server + Ray on CPU 0, wrk on CPU 1")
    print(f"(median of {args.rounds} alternating rounds of {args.seconds:g} s each)")
    print(local.row("local backend"))
    print(ray.row("ray backend"))
    print(
        f"RAY W1 RESULT: ray/local req/s = {ratio:.2f} at c={c} "
        f"(Ray costs {1 - ratio:.0%}; target < 30 %)"
    )


if __name__ == "__main__":
    main()
