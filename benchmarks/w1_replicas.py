"""W1 with 2 replicas vs 1 on the local backend, the server given both cores.

The demo `iris` deployment (batching 64 rows / 2 ms), one row per request, V2 JSON, at
concurrency 64 (``--concurrency`` for others). One server for the whole run, *not* pinned:
the API process and the worker processes may use both cores; wrk stays on CPU 1 as in the
other W1 benchmarks, so it shares that core with the server. Rounds alternate 1 and 2
replicas in ABBA order (``PATCH /api/deployments/iris``; each measurement starts once every
replica is ready, after a warm-up), because this VM's speed drifts within a minute.
Medians of the rounds are reported, and the median of the per-round ratios 2/1.

    .venv/bin/python -m benchmarks.w1_replicas [--seconds 5] [--rounds 3] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import (
    ADMIN_HEADERS,
    WrkResult,
    free_port,
    median_run,
    modelport_server,
    v2_body,
    wrk,
)

ROW = [5.1, 3.5, 1.4, 0.2]
COUNTS = (1, 2)


def _scale(base: str, replicas: int, timeout: float = 60) -> None:
    """Set iris's replica count and wait until exactly that many are ready."""
    url = f"{base}/api/deployments/iris"
    resp = httpx.patch(url, json={"replicas": replicas}, headers=ADMIN_HEADERS, timeout=30)
    resp.raise_for_status()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(url, headers=ADMIN_HEADERS, timeout=10).json()
        states = [r["state"] for r in status["replica_status"]]
        if status["ready_replicas"] == replicas and len(states) == replicas:
            return
        time.sleep(0.1)
    raise RuntimeError(f"iris did not reach {replicas} ready replicas: {status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    body = v2_body("input", ROW)
    c = args.concurrency
    runs: dict[int, list[WrkResult]] = {n: [] for n in COUNTS}
    env = {"MODELPORT_DEMO_TEXT_MODELS": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with modelport_server(Path(tmp) / "data", port, pin=False, env=env):
            url = f"{base}/v2/models/iris/infer"
            for round_ in range(args.rounds):
                # ABBA order: a drift within the run does not favour one side.
                for n in COUNTS if round_ % 2 == 0 else COUNTS[::-1]:
                    _scale(base, n)
                    wrk(url, body, 16, 2)  # warm-up
                    runs[n].append(wrk(url, body, c, args.seconds))
                    print(runs[n][-1].row(f"round {round_ + 1} {n} replica(s)"), flush=True)
    one, two = median_run(runs[1]), median_run(runs[2])
    ratio = statistics.median(b.rps / a.rps for a, b in zip(runs[1], runs[2], strict=True))
    print(f"W1 iris, 1 row/request, V2 JSON, c={c}; server unpinned ({os.cpu_count()} CPUs), "
          "wrk on CPU 1")  # fmt: skip
    print(f"(median of {args.rounds} alternating rounds of {args.seconds:g} s each)")
    print(one.row("1 replica"))
    print(two.row("2 replicas"))
    print(f"W1 REPLICAS RESULT: 2 replicas / 1 replica req/s = {ratio:.2f} at c={c}")


if __name__ == "__main__":
    main()
