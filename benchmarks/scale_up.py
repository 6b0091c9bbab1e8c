"""Scale-up reaction: time from a load step to the new replica serving.

``iris`` is redeployed with ``min_replicas=1, max_replicas=2, target_inflight=1`` and no
up-delay; at t=0 eight client threads start sending requests back to back. Printed per
round: when the autoscaler decided to scale up (its decision's time) and when the second
replica was ready (leases go to the least loaded ready replica, so from then on it serves).
Then the load stops and the deployment is scaled back to one replica for the next round.

    .venv/bin/python -m benchmarks.scale_up [--rounds 3] [--clients 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

from benchmarks.common import ADMIN_HEADERS, free_port, modelport_server, v2_body

BODY = v2_body("input", [5.1, 3.5, 1.4, 0.2])


def _load(url: str, stop: threading.Event, failures: list[int]) -> None:
    with httpx.Client(base_url=url, headers=ADMIN_HEADERS, timeout=60) as client:
        while not stop.is_set():
            resp = client.post("/v2/models/iris/infer", json=BODY)
            if resp.status_code != 200:
                failures.append(resp.status_code)


def one_round(client: httpx.Client, url: str, clients: int) -> tuple[float, float]:
    """(seconds to the scale-up decision, seconds to the second replica serving)."""
    client.patch("/api/deployments/iris", json={"replicas": 1}).raise_for_status()
    while client.get("/api/deployments/iris").json()["ready_replicas"] != 1:
        time.sleep(0.05)
    stop, failures = threading.Event(), []
    threads = [threading.Thread(target=_load, args=(url, stop, failures)) for _ in range(clients)]
    step = time.time()
    for thread in threads:
        thread.start()
    try:
        while True:
            status = client.get("/api/deployments/iris").json()
            if status["ready_replicas"] >= 2:
                serving = time.time() - step
                break
            if time.time() - step > 120:
                raise RuntimeError(f"no second replica after 120 s: {status}")
            time.sleep(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    ups = [d for d in status["decisions"] if "scale up" in d["reason"]]
    decided = datetime.fromisoformat(ups[-1]["at"]).timestamp() - step
    if failures:
        raise RuntimeError(f"{len(failures)} failed requests during the step: {failures[:5]}")
    return decided, serving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    env = {"MODELPORT_DEMO_TEXT_MODELS": "false", "MODELPORT_AUTOSCALE_TICK_S": "0.2",
           "MODELPORT_AUTOSCALE_WINDOW_S": "1"}  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        tempfile.TemporaryDirectory() as tmp,
        modelport_server(Path(tmp) / "data", port, pin=False, env=env),
        httpx.Client(base_url=url, headers=ADMIN_HEADERS, timeout=120) as client,
    ):
        client.post("/api/deployments", json={
            "model": "iris", "min_replicas": 1, "max_replicas": 2, "target_inflight": 1,
            "scale_up_delay_s": 0, "scale_down_delay_s": 600}).raise_for_status()  # fmt: skip
        results = [one_round(client, url, args.clients) for _ in range(args.rounds)]
    for i, (decided, serving) in enumerate(results, 1):
        print(f"round {i}: scale-up decided after {decided * 1000:6.0f} ms, "
              f"second replica serving after {serving * 1000:6.0f} ms")  # fmt: skip
    print(f"scale-up reaction (median of {args.rounds}): decision "
          f"{statistics.median(r[0] for r in results) * 1000:.0f} ms, new replica serving "
          f"{statistics.median(r[1] for r in results) * 1000:.0f} ms "
          f"(tick 0.2 s, window 1 s, {args.clients} clients)")  # fmt: skip


if __name__ == "__main__":
    main()
