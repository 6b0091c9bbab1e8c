"""W1, overhead-bound: the `iris` demo model, one row per request, V2 JSON.

Concurrency 1, 16 and 64 against modelport (demo deployment: batching 64 rows / 2 ms,
one replica) and, in the same run, against a bare FastAPI endpoint calling the same model
in-process. Server on CPU 0, wrk on CPU 1. Target: modelport >= 70 % of the bare
endpoint's req/s at concurrency 64.

    .venv/bin/python -m benchmarks.w1_overhead [--seconds 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import httpx

from benchmarks.common import Pinned, free_port, modelport_server, v2_body, wait_http, wrk

ROW = [5.1, 3.5, 1.4, 0.2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()
    body = v2_body("input", ROW)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        port = free_port()
        with modelport_server(data, port):
            url = f"http://127.0.0.1:{port}"
            info = httpx.get(f"{url}/api/models/iris/versions/latest").json()
            sha = info["artifact_sha256"]
            artifact = data / "artifacts" / "sha256" / sha[:2] / sha
            wrk(f"{url}/v2/models/iris/infer", body, 16, 2)  # warm-up
            for c in args.concurrency:
                results[("modelport", c)] = wrk(
                    f"{url}/v2/models/iris/infer", body, c, args.seconds
                )
            bare_port = free_port()
            bare = [
                sys.executable,
                "benchmarks/bare_app.py",
                "--runtime",
                "sklearn",
                "--artifact",
                str(artifact),
                "--name",
                info["artifact_name"],
                "--port",
                str(bare_port),
            ]
            with Pinned(bare):
                bare_url = f"http://127.0.0.1:{bare_port}"
                wait_http(f"{bare_url}/v2/health/ready")
                wrk(f"{bare_url}/v2/models/iris/infer", body, 16, 2)
                for c in args.concurrency:
                    results[("bare", c)] = wrk(
                        f"{bare_url}/v2/models/iris/infer", body, c, args.seconds
                    )
    print("W1 overhead-bound: iris, 1 row/request, V2 JSON; server CPU 0, wrk CPU 1")
    for c in args.concurrency:
        print(results[("modelport", c)].row("modelport"))
        print(results[("bare", c)].row("bare FastAPI in-process"))
    for c in args.concurrency:
        ratio = results[("modelport", c)].rps / results[("bare", c)].rps
        print(f"ratio modelport/bare at c={c}: {ratio:.2f}")
    top = max(args.concurrency)
    ratio = results[("modelport", top)].rps / results[("bare", top)].rps
    print(f"W1 RESULT: modelport = {ratio:.0%} of bare FastAPI req/s at c={top} (target >= 70%)")


if __name__ == "__main__":
    main()
