"""Run one training job out of the API process: ``python -m modelport.training.job_worker``.

Usage: ``python -m modelport.training.job_worker <workdir> [--parent-pid P]``. The worker
reads ``<workdir>/spec.json`` (a ``RunSpec``), runs ``run_training`` and speaks JSON lines
on stdout, one object per line, flushed as they happen:

- each progress event: ``{"type": "started"|"epoch"|"log"|"metrics"|"done", "data": {...}}``
- success: ``{"type": "result", "metrics", "bundle_path", "signature", "metadata",
  "epochs_run"}``, exit 0
- failure: ``{"type": "error", "message", "error": {type, message, param}}``, exit 1
  (``InvalidInput`` and friends keep their message: it is meant for the user)
- SIGTERM: training stops after the current batch/epoch, ``{"type": "cancelled"}``, exit 3

Anything else the libraries print goes to stderr (the job log): fd 1 is pointed at stderr
once the protocol's own copy of it is saved. The spec's ``threads`` caps OpenMP/BLAS
(environment, set before torch is imported, and threadpoolctl) and torch's pool. The worker
dies with its parent (``PR_SET_PDEATHSIG``), like serving workers; a killed job resumes
from its checkpoints when it is started again on the same work folder.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from modelport.training.run import RunOutcome

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 3
SPEC_FILE = "spec.json"
_PR_SET_PDEATHSIG = 1
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class LineWriter:
    """Writes protocol lines to a private copy of stdout; a ``Reporter`` for run_training."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def event(self, type: str, data: dict[str, Any]) -> None:
        self.send({"type": type, "data": data})

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(_finite(message), default=_json_default, allow_nan=False)
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m modelport.training.job_worker")
    parser.add_argument("workdir", type=Path, help="the job's folder (holds spec.json)")
    parser.add_argument("--parent-pid", type=int, help="exit when this process dies")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when jobs stop
    _die_with_parent(args.parent_pid if args.parent_pid is not None else os.getppid())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    writer = LineWriter(_protocol_stream())
    return run_job(args.workdir, writer, stop)


def run_job(workdir: Path, writer: LineWriter, stop: threading.Event) -> int:
    """Run the job in ``workdir``, reporting through ``writer``; the exit code."""
    from modelport.errors import ModelportError

    try:
        outcome = _run(workdir, writer, stop)
    except Exception as exc:
        if _is_cancel(exc):
            writer.send({"type": "cancelled"})
            return EXIT_CANCELLED
        if isinstance(exc, ModelportError):
            writer.send({"type": "error", "message": exc.message, "error": exc.to_dict()})
            return EXIT_FAILED
        traceback.print_exc()  # the whole story goes to the job log
        message = f"training failed: {type(exc).__name__}: {exc}"
        error = {"type": type(exc).__name__, "message": message, "param": None}
        writer.send({"type": "error", "message": message, "error": error})
        return EXIT_FAILED
    writer.send({"type": "result", **outcome.to_json()})
    return EXIT_OK


def _run(workdir: Path, writer: LineWriter, stop: threading.Event) -> RunOutcome:
    from pydantic import ValidationError

    from modelport.errors import InvalidInput

    raw = _read_spec(workdir)
    _limit_threads(int(raw.get("threads") or 0))
    from modelport.training.run import RunSpec, run_training  # imports torch & co lazily

    try:
        spec = RunSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise InvalidInput(f"invalid job spec: {where}: {first['msg']}", param=where) from None
    return run_training(spec, workdir, writer, should_stop=stop.is_set)


def _is_cancel(exc: BaseException) -> bool:
    try:
        from modelport.training.trainers.base import TrainingCancelled
    except ImportError:  # pragma: no cover - the trainers package is part of modelport
        return False
    return isinstance(exc, TrainingCancelled)


def _read_spec(workdir: Path) -> dict[str, Any]:
    from modelport.errors import InvalidInput

    path = workdir / SPEC_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read the job spec {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"the job spec {str(path)!r} is not a JSON object")
    return data


def _limit_threads(threads: int) -> None:
    """Cap OpenMP/BLAS threads: env for torch (imported later), threadpoolctl for numpy's
    BLAS (already loaded with the package); the trainer sets torch's pool from the spec."""
    if threads <= 0:
        return
    for name in _THREAD_VARS:
        os.environ[name] = str(threads)
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(limits=threads)


def _protocol_stream() -> IO[str]:
    """A private copy of stdout for protocol lines; fd 1 then points at stderr."""
    sys.stdout.flush()
    answer_fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(answer_fd, "w", encoding="utf-8", buffering=1)


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill us when the server dies, even by SIGKILL (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        print(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}", file=sys.stderr)
    if os.getppid() != parent_pid:  # the server died before prctl took effect
        os._exit(EXIT_FAILED)


def _finite(value: Any) -> Any:
    """NaN/inf (a diverged loss) become null: JSON has no spelling for them."""
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


if __name__ == "__main__":
    sys.exit(main())
