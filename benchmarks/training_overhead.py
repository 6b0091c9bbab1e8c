"""Training overhead: the digits CNN trained through a job on a live server vs the same
``run_training`` called directly in this process, same seed and epochs.

Job: ``POST /api/runs`` → poll until ``succeeded`` (the worker process starts, imports torch,
loads the data, trains, exports; every event is stored). Registration is left out of the
timed job (``register_model: false``: it loads the bundle in an inspection worker, which is
serving work, not training); one registered run is timed at the end for contrast.

Direct, the target's baseline: the same ``run_training`` in a fresh Python process (what the
same loop costs as a script: interpreter, imports, training, export). Also printed, the
strictest contrast: ``run_training`` in this process with torch already imported, which
shows the job's fixed start-up cost. Target: job <= 110 % of the direct process.

Rounds alternate which goes first (this VM's speed drifts); the result is the median of the
per-round ratios. Nothing is pinned: both use every core.

    .venv/bin/python -m benchmarks.training_overhead [--epochs 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import ADMIN_HEADERS, ROOT, free_port, modelport_server

TARGET = 1.10


class _Quiet:
    """A reporter that keeps only the count of events."""

    def __init__(self) -> None:
        self.events = 0

    def event(self, type: str, data: dict[str, Any]) -> None:
        self.events += 1


_SCRIPT = """
import sys
from pathlib import Path
from modelport.training.run import RunSpec, run_training
class Quiet:
    def event(self, type, data): pass
spec = RunSpec.model_validate_json(sys.argv[1])
outcome = run_training(spec, Path(sys.argv[2]), Quiet())
print(outcome.metrics["test"]["accuracy"])
"""


def _spec(epochs: int, seed: int) -> Any:
    from modelport.training.run import RunSpec

    return RunSpec(
        run_id=0,
        dataset_format="builtin",
        dataset_name="digits",
        trainer="cnn",
        params={"epochs": epochs},
        seed=seed,
    )


def _direct(epochs: int, seed: int, workdir: Path) -> float:
    """``run_training`` in this (warm) process."""
    from modelport.training.run import run_training

    start = time.perf_counter()
    outcome = run_training(_spec(epochs, seed), workdir, _Quiet())
    elapsed = time.perf_counter() - start
    accuracy = outcome.metrics["test"]["accuracy"]
    print(f"  direct, warm process: {elapsed:6.2f} s  test accuracy {accuracy:.4f}")
    return elapsed


def _direct_process(epochs: int, seed: int, workdir: Path) -> float:
    """``run_training`` in a fresh Python process, from spawn to exit."""
    args = [sys.executable, "-c", _SCRIPT, _spec(epochs, seed).model_dump_json(), str(workdir)]
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=True, env=_env())
    elapsed = time.perf_counter() - start
    accuracy = float(done.stdout.split()[-1])
    print(f"  direct, new process:  {elapsed:6.2f} s  test accuracy {accuracy:.4f}")
    return elapsed


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _job(client: httpx.Client, epochs: int, seed: int, register: bool = False) -> float:
    body = {
        "dataset": "digits",
        "trainer": "cnn",
        "params": {"epochs": epochs},
        "seed": seed,
        "model_name": "bench-cnn",
        "register_model": register,
    }
    start = time.perf_counter()
    resp = client.post("/api/runs", json=body)
    resp.raise_for_status()
    run_id = resp.json()["id"]
    while True:
        info = client.get(f"/api/runs/{run_id}").json()
        if info["status"] in {"succeeded", "failed", "cancelled"}:
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    if info["status"] != "succeeded":
        raise RuntimeError(f"run {run_id} {info['status']}: {info['error']}")
    accuracy = info["metrics"]["test"]["accuracy"]
    label = "job + registration" if register else "job"
    print(f"  {label + ':':<21} {elapsed:6.2f} s  test accuracy {accuracy:.4f}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch  # noqa: F401  # the direct baseline does not pay the import

    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        port = free_port()
        server = modelport_server(Path(tmp) / "data", port, demo=False, pin=False)
        with (
            server,
            httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers=ADMIN_HEADERS, timeout=60
            ) as client,
        ):
            jobs, processes, warm = [], [], []
            for round_ in range(args.rounds):
                print(f"round {round_ + 1}/{args.rounds} (digits cnn, {args.epochs} epochs)")
                workdir = Path(tmp) / f"direct-{round_}"
                if round_ % 2:
                    processes.append(_direct_process(args.epochs, args.seed, workdir / "p"))
                    jobs.append(_job(client, args.epochs, args.seed))
                else:
                    jobs.append(_job(client, args.epochs, args.seed))
                    processes.append(_direct_process(args.epochs, args.seed, workdir / "p"))
                warm.append(_direct(args.epochs, args.seed, workdir / "w"))
            registered = _job(client, args.epochs, args.seed, register=True)
    ratios = [j / p for j, p in zip(jobs, processes, strict=True)]
    ratio = statistics.median(ratios)
    print()
    print(f"direct, new process   median {statistics.median(processes):6.2f} s")
    print(f"direct, warm process  median {statistics.median(warm):6.2f} s")
    print(f"job on a live server  median {statistics.median(jobs):6.2f} s")
    print(f"job with registration        {registered:6.2f} s (one run)")
    print(f"job / direct process: median {ratio:.3f} "
          f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})")  # fmt: skip
    warm_ratio = statistics.median([j / w for j, w in zip(jobs, warm, strict=True)])
    print(f"job / warm in-process run_training: median {warm_ratio:.3f}")
    print(f"target job <= {TARGET:.2f} x direct: {'met' if ratio <= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
