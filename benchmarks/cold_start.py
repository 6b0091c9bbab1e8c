"""Cold start from zero: the first request after scale-to-zero, warm spares off vs on.

Two servers, one after the other, the same in all but ``MODELPORT_WORKER_SPARES`` (not
pinned: a cold start spawns a worker process beside the server). In each, ``iris`` (V2) and
``minilm`` (POST /v1/embeddings) are redeployed with ``min_replicas=0`` and a 1 s idle
timeout; each round waits until the deployment is at zero replicas, then ``--settle``
seconds and until every spare worker of the server has finished its imports (its CPU time
stops growing: a real idle timeout is minutes, by then a spare is long ready; with spares
off there is none to wait for), then times the first request (which waits for a worker to
start and load the model) and then warm requests. With spares on, the warm requests share
the CPU with the next spare's imports (it starts once the new replica has loaded), which the
warm figure shows on a 2-core machine. Medians over the rounds are printed, and the ratio
spares-on / spares-off of the cold figure. Target: iris cold < 2 s (spares on).

    .venv/bin/python -m benchmarks.cold_start [--rounds 3] [--settle 1] [--no-minilm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from benchmarks.common import ADMIN_HEADERS, child_pids, free_port, modelport_server, v2_body

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
TARGET_IRIS_S = 2.0


def _wait(client: httpx.Client, name: str, done: Callable[[dict[str, object]], bool]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if done(client.get(f"/api/deployments/{name}").json()):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name}: timed out waiting")


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return -1  # gone
    return int(fields[11]) + int(fields[12])  # utime + stime


def _wait_spares_idle(server_pid: int) -> None:
    """Until no spare of the server used CPU for 0.5 s (their imports are done)."""
    deadline = time.monotonic() + 120
    before = {pid: _cpu_ticks(pid) for pid in child_pids(server_pid, b"--preload")}
    while before and time.monotonic() < deadline:
        time.sleep(0.5)
        now = {pid: _cpu_ticks(pid) for pid in child_pids(server_pid, b"--preload")}
        if now == before:
            return
        before = now


def _timed(call: Callable[[], httpx.Response]) -> float:
    started = time.perf_counter()
    resp = call()
    elapsed = time.perf_counter() - started
    if resp.status_code != 200:
        raise RuntimeError(f"request failed: {resp.status_code} {resp.text}")
    return elapsed


def measure(
    client: httpx.Client,
    name: str,
    call: Callable[[], httpx.Response],
    rounds: int,
    settle_s: float,
    label: str,
    server_pid: int,
) -> float:
    """Print and return the median cold-start time of ``name`` over ``rounds``."""
    resp = client.post("/api/deployments", json={
        "model": name, "min_replicas": 0, "max_replicas": 1, "idle_timeout_s": 1,
        "scale_down_delay_s": 0})  # fmt: skip
    resp.raise_for_status()
    _wait(client, name, lambda s: s["state"] == "ready")
    cold: list[float] = []
    warm: list[float] = []
    for _ in range(rounds):
        _wait(client, name, lambda s: s["replicas"] == 0 and not s["replica_status"])
        time.sleep(settle_s)
        _wait_spares_idle(server_pid)
        cold.append(_timed(call))
        warm.extend(_timed(call) for _ in range(20))
    cold_s, warm_s = statistics.median(cold), statistics.median(warm)
    print(f"{name:<8} {label:<11} cold start {cold_s * 1000:7.0f} ms (median of {rounds}, "
          f"all {[round(c * 1000) for c in cold]})  warm {warm_s * 1000:7.2f} ms  "
          f"cold/warm {cold_s / warm_s:6.0f}x")  # fmt: skip
    return cold_s


def run_server(args: argparse.Namespace, spares: bool) -> dict[str, float]:
    """One server with warm spares on or off; the cold median of each model."""
    env = {"MODELPORT_AUTOSCALE_TICK_S": "0.1", "MODELPORT_WORKER_SPARES": str(spares).lower()}
    if args.no_minilm:
        env["MODELPORT_DEMO_TEXT_MODELS"] = "false"
    label = "spares on" if spares else "spares off"
    port = free_port()
    cold: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        modelport_server(Path(tmp) / "data", port, pin=False, env=env) as server,
        httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers=ADMIN_HEADERS, timeout=300
        ) as client,
    ):
        iris = lambda: client.post("/v2/models/iris/infer", json=v2_body("input", IRIS_ROW))  # noqa: E731
        pid = server.proc.pid
        cold["iris"] = measure(client, "iris", iris, args.rounds, args.settle, label, pid)
        if not args.no_minilm:
            body = {"model": "minilm", "input": "a cold start"}
            embed = lambda: client.post("/v1/embeddings", json=body)  # noqa: E731
            cold["minilm"] = measure(client, "minilm", embed, args.rounds, args.settle, label, pid)
    return cold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=1.0, help="Seconds at zero before.")
    parser.add_argument("--no-minilm", action="store_true", help="Only iris (no text models).")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    off = run_server(args, spares=False)
    on = run_server(args, spares=True)
    for name in on:
        print(f"{name:<8} cold start spares on / off: {on[name] / off[name]:.2f} "
              f"({on[name] * 1000:.0f} ms vs {off[name] * 1000:.0f} ms)")  # fmt: skip
    verdict = "met" if on["iris"] < TARGET_IRIS_S else "NOT met"
    print(f"iris target < {TARGET_IRIS_S:g} s with spares: {verdict}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
