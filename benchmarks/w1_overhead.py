"""W1, overhead-bound: the `iris` demo model, one row per request, V2 JSON.

Concurrency 1, 16 and 64 against modelport (demo deployment: batching 64 rows / 2 ms,
one replica) and, in the same run, against a bare FastAPI endpoint calling the same model
artifact in-process. Both servers run on CPU 0 (the idle one costs nothing), wrk on CPU 1;
the two are measured in alternating rounds and the median of each is reported, because this
VM's speed drifts within a minute. Target: modelport >= 70 % of the bare endpoint's req/s at
concurrency 64.

    .venv/bin/python -m benchmarks.w1_overhead [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

from benchmarks.common import (
    ADMIN_HEADERS,
    Pinned,
    WrkResult,
    free_port,
    median_run,
    modelport_server,
    v2_body,
    wait_http,
    wrk,
)

ROW = [5.1, 3.5, 1.4, 0.2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()
    body = v2_body("input", ROW)
    runs: dict[tuple[str, int], list[WrkResult]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        port = free_port()
        with modelport_server(data, port):
            url = f"http://127.0.0.1:{port}/v2/models/iris/infer"
            info = httpx.get(
                f"http://127.0.0.1:{port}/api/models/iris/versions/latest", headers=ADMIN_HEADERS
            ).json()
            sha = info["artifact_sha256"]
            artifact = data / "artifacts" / "sha256" / sha[:2] / sha
            bare_port = free_port()
            bare = [sys.executable, "benchmarks/bare_app.py", "--runtime", "sklearn",
                    "--artifact", str(artifact), "--name", info["artifact_name"],
                    "--port", str(bare_port)]  # fmt: skip
            with Pinned(bare):
                wait_http(f"http://127.0.0.1:{bare_port}/v2/health/ready")
                bare_url = f"http://127.0.0.1:{bare_port}/v2/models/iris/infer"
                targets = {"modelport": url, "bare": bare_url}
                for target in targets.values():
                    wrk(target, body, 16, 2)  # warm-up
                for c in args.concurrency:
                    for _ in range(args.rounds):
                        for label, target in targets.items():
                            runs.setdefault((label, c), []).append(
                                wrk(target, body, c, args.seconds)
                            )
    print("W1 overhead-bound: iris, 1 row/request, V2 JSON; server CPU 0, wrk CPU 1")
    print(f"(median of {args.rounds} alternating rounds of {args.seconds:g} s each)")
    ratios = {}
    for c in args.concurrency:
        mp, bare_run = median_run(runs[("modelport", c)]), median_run(runs[("bare", c)])
        ratios[c] = statistics.median(
            m.rps / b.rps for m, b in zip(runs[("modelport", c)], runs[("bare", c)], strict=True)
        )
        print(mp.row("modelport"))
        print(bare_run.row("bare FastAPI in-process"))
        print(f"ratio modelport/bare at c={c}: {ratios[c]:.2f}")
    top = max(args.concurrency)
    print(
        f"W1 RESULT: modelport = {ratios[top]:.0%} of bare FastAPI req/s at c={top} (target >= 70%)"
    )


if __name__ == "__main__":
    main()
