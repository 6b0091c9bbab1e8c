"""Cold start from zero: the first request after scale-to-zero vs a warm request.

One server (not pinned: a cold start spawns a worker process beside it). ``iris`` (V2) and
``minilm`` (POST /v1/embeddings) are redeployed with ``min_replicas=0`` and a 1 s idle
timeout; each round waits until the deployment is at zero replicas, then times the first
request (which waits for a worker to start and load the model) and then warm requests.
Target: the cold request for ``iris`` < 2 s. Medians over the rounds are printed.

    .venv/bin/python -m benchmarks.cold_start [--rounds 3] [--no-minilm]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from benchmarks.common import ADMIN_HEADERS, free_port, modelport_server, v2_body

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
TARGET_IRIS_S = 2.0


def _wait(client: httpx.Client, name: str, done: Callable[[dict[str, object]], bool]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if done(client.get(f"/api/deployments/{name}").json()):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name}: timed out waiting")


def _timed(call: Callable[[], httpx.Response]) -> float:
    started = time.perf_counter()
    resp = call()
    elapsed = time.perf_counter() - started
    if resp.status_code != 200:
        raise RuntimeError(f"request failed: {resp.status_code} {resp.text}")
    return elapsed


def measure(
    client: httpx.Client, name: str, call: Callable[[], httpx.Response], rounds: int
) -> None:
    resp = client.post("/api/deployments", json={
        "model": name, "min_replicas": 0, "max_replicas": 1, "idle_timeout_s": 1,
        "scale_down_delay_s": 0})  # fmt: skip
    resp.raise_for_status()
    _wait(client, name, lambda s: s["state"] == "ready")
    cold, warm = [], []
    for _ in range(rounds):
        _wait(client, name, lambda s: s["replicas"] == 0 and not s["replica_status"])
        cold.append(_timed(call))
        warm.extend(_timed(call) for _ in range(20))
    cold_s, warm_s = statistics.median(cold), statistics.median(warm)
    print(f"{name:<8} cold start {cold_s * 1000:8.0f} ms (median of {rounds}, "
          f"all {[round(c * 1000) for c in cold]})  warm {warm_s * 1000:7.2f} ms  "
          f"ratio {cold_s / warm_s:6.0f}x")  # fmt: skip
    if name == "iris":
        verdict = "met" if cold_s < TARGET_IRIS_S else "NOT met"
        print(f"iris target < {TARGET_IRIS_S:g} s: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-minilm", action="store_true", help="Only iris (no text models).")
    args = parser.parse_args()
    env = {"MODELPORT_AUTOSCALE_TICK_S": "0.1"}
    if args.no_minilm:
        env["MODELPORT_DEMO_TEXT_MODELS"] = "false"
    port = free_port()
    with (
        tempfile.TemporaryDirectory() as tmp,
        modelport_server(Path(tmp) / "data", port, pin=False, env=env),
        httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers=ADMIN_HEADERS, timeout=300
        ) as client,
    ):
        measure(client, "iris",
                lambda: client.post("/v2/models/iris/infer", json=v2_body("input", IRIS_ROW)),
                args.rounds)  # fmt: skip
        if not args.no_minilm:
            body = {"model": "minilm", "input": "a cold start"}
            measure(client, "minilm", lambda: client.post("/v1/embeddings", json=body),
                    args.rounds)  # fmt: skip


if __name__ == "__main__":
    main()
