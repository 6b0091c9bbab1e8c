"""Training overhead: the digits CNN trained through a job on a live server vs the same
``run_training`` called directly in an already-warm process, same seed, epochs and threads.

Direct, the baseline: ``run_training`` in this process after one untimed run (so the
imports, torch's and the ONNX exporter's included, are done), with the server's thread
setting (``training_threads``, 0: every core, as in the job).

Job: ``POST /api/runs`` → its event stream (SSE) says ``succeeded``, on a live server whose
warm spare job worker (``training_prestart``) is ready: one untimed job first (it runs in a
fresh worker; the spare is started when it ends), and before each timed job the benchmark
waits until the spare is idle on its stdin. The job's time covers the API call, the queue,
handing the spare its work folder, loading the data, training, export, bundle, storing
every event, copying the bundle into the artifact store and the final status. Registration
is left out (``register_model: false``: it loads the bundle in an inspection worker, which
is serving work, not training); one registered run is timed at the end for contrast.

Extra figures: the untimed first job (no spare yet: a fresh worker, imports included) and
``run_training`` in a fresh Python process (interpreter, imports, training, export, exit).

Rounds alternate which of job and direct goes first (this VM's speed drifts); the result
is the median of the per-round ratios. Target: job <= 110 % of direct.

    .venv/bin/python -m benchmarks.training_overhead [--epochs 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import ADMIN_HEADERS, ROOT, child_pids, free_port, modelport_server

TARGET = 1.10


class _Quiet:
    """A reporter that keeps only the count of events."""

    def __init__(self) -> None:
        self.events = 0

    def event(self, type: str, data: dict[str, Any]) -> None:
        self.events += 1


_SCRIPT = """
import os, sys
from pathlib import Path
from modelport.training.run import RunSpec, run_training
class Quiet:
    def event(self, type, data): pass
spec = RunSpec.model_validate_json(sys.argv[1])
outcome = run_training(spec, Path(sys.argv[2]), Quiet())
print(outcome.metrics["test"]["accuracy"], flush=True)
"""


def _spec(epochs: int, seed: int, threads: int) -> Any:
    from modelport.training.run import RunSpec

    return RunSpec(
        run_id=0,
        dataset_format="builtin",
        dataset_name="digits",
        trainer="cnn",
        params={"epochs": epochs},
        seed=seed,
        threads=threads,
    )


def _direct(epochs: int, seed: int, threads: int, workdir: Path, label: str = "direct") -> float:
    """``run_training`` in this process."""
    from modelport.training.run import run_training

    start = time.perf_counter()
    outcome = run_training(_spec(epochs, seed, threads), workdir, _Quiet())
    elapsed = time.perf_counter() - start
    accuracy = outcome.metrics["test"]["accuracy"]
    print(f"  {label + ':':<24} {elapsed:6.2f} s  test accuracy {accuracy:.4f}", flush=True)
    return elapsed


def _direct_process(epochs: int, seed: int, threads: int, workdir: Path) -> float:
    """``run_training`` in a fresh Python process, from spawn to exit."""
    spec = _spec(epochs, seed, threads).model_dump_json()
    args = [sys.executable, "-c", _SCRIPT, spec, str(workdir)]
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=True, env=_env())
    elapsed = time.perf_counter() - start
    accuracy = float(done.stdout.split()[-1])
    print(f"  {'direct, new process:':<24} {elapsed:6.2f} s  test accuracy {accuracy:.4f}")
    return elapsed


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _job(
    client: httpx.Client, epochs: int, seed: int, register: bool = False, label: str = "job"
) -> float:
    """Submit a run; the time until its event stream says it finished."""
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
    status = _until_finished(client, run_id)
    elapsed = time.perf_counter() - start
    info = client.get(f"/api/runs/{run_id}").json()
    if status != "succeeded":
        raise RuntimeError(f"run {run_id} {info['status']}: {info['error']}")
    accuracy = info["metrics"]["test"]["accuracy"]
    print(f"  {label + ':':<24} {elapsed:6.2f} s  test accuracy {accuracy:.4f}", flush=True)
    return elapsed


def _until_finished(client: httpx.Client, run_id: int) -> str:
    """Follow ``/api/runs/{id}/events`` (no polling) until a final status event."""
    with client.stream("GET", f"/api/runs/{run_id}/events", timeout=600) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                status = event["data"].get("status") if event["type"] == "status" else None
                if status in {"succeeded", "failed", "cancelled"}:
                    return str(status)
    return str(client.get(f"/api/runs/{run_id}").json()["status"])


def _spares_of(server_pid: int) -> list[int]:
    """Pids of the server's warm job workers (``job_worker --spare``, its children)."""
    return child_pids(server_pid, b"modelport.training.job_worker", b"--spare")


def _wait_spare_idle(server_pid: int, timeout: float = 120.0) -> float:
    """Wait until the server's spare has done its imports and waits on stdin (its main
    thread blocked reading its socket or pipe, twice in a row); the seconds waited."""
    start = time.perf_counter()
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        idle = False
        for pid in _spares_of(server_pid):
            try:
                wchan = Path(f"/proc/{pid}/wchan").read_text()
            except OSError:
                continue
            idle = idle or any(w in wchan for w in ("unix_stream_read", "pipe_read", "pipe_wait"))
        seen = seen + 1 if idle else 0
        if seen >= 2:
            return time.perf_counter() - start
        time.sleep(0.1)
    raise RuntimeError(f"no idle warm job worker under the server after {timeout:.0f} s")


def _settle(server_pid: int) -> None:
    waited = _wait_spare_idle(server_pid)
    if waited > 0.5:
        print(f"  (waited {waited:.1f} s for the spare's imports)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="training_threads (0: all)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        work = Path(tmp)
        print(f"digits cnn, {args.epochs} epochs, seed {args.seed}, threads {args.threads}")
        # The baseline's warm-up: imports and first-call costs (exporter, data) paid here.
        _direct(args.epochs, args.seed, args.threads, work / "warmup", "direct warm-up")
        port = free_port()
        env = {"MODELPORT_TRAINING_THREADS": str(args.threads), "MODELPORT_TRAINING_PRESTART": "1"}
        server = modelport_server(work / "data", port, demo=False, pin=False, env=env)
        with (
            server,
            httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers=ADMIN_HEADERS, timeout=60
            ) as client,
        ):
            first = _job(client, args.epochs, args.seed, label="first job, no spare")
            jobs: list[float] = []
            direct: list[float] = []

            def job() -> None:
                _settle(server.proc.pid)
                jobs.append(_job(client, args.epochs, args.seed))

            def direct_run(workdir: Path) -> None:
                _settle(server.proc.pid)  # the spare's imports must not overlap either
                direct.append(_direct(args.epochs, args.seed, args.threads, workdir))

            for round_ in range(args.rounds):
                print(f"round {round_ + 1}/{args.rounds}")
                if round_ % 2:
                    direct_run(work / f"direct-{round_}")
                    job()
                else:
                    job()
                    direct_run(work / f"direct-{round_}")
            _settle(server.proc.pid)
            registered = _job(client, args.epochs, args.seed, register=True, label="job+register")
            _settle(server.proc.pid)
            process = _direct_process(args.epochs, args.seed, args.threads, work / "p")
    ratios = [j / d for j, d in zip(jobs, direct, strict=True)]
    ratio = statistics.median(ratios)
    print()
    print(f"direct, warm process        median {statistics.median(direct):6.2f} s")
    print(f"job, warm spare             median {statistics.median(jobs):6.2f} s")
    print(f"job / direct: median {ratio:.3f} "
          f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})")  # fmt: skip
    print(f"target job <= {TARGET:.2f} x direct: {'met' if ratio <= TARGET else 'NOT met'}")
    best = min(jobs) / min(direct)  # the least disturbed run of each, on a shared machine
    print(f"best of {len(jobs)}: job {min(jobs):.2f} s, direct {min(direct):.2f} s, {best:.3f}")
    print("extra:")
    print(f"  first job, fresh worker          {first:6.2f} s")
    print(f"  job with registration            {registered:6.2f} s (one run)")
    print(f"  direct in a fresh process        {process:6.2f} s")


if __name__ == "__main__":
    main()
