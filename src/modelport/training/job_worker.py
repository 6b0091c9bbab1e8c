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
once the protocol's own copy of it is saved. The worker dies with its parent
(``PR_SET_PDEATHSIG``), like serving workers; a killed job resumes from its checkpoints when
it is started again on the same work folder. It leaves with ``os._exit`` once its last line
is out: the interpreter's teardown after torch and the ONNX exporter took ~1.7 s here.

Warm spare: ``python -m modelport.training.job_worker --spare [--parent-pid P]`` imports
what a run needs (torch, the ONNX exporter, scikit-learn, onnxruntime, the trainers and the
data library: ``PRELOAD``), pays the first-call costs on a throwaway model (``warm_up``),
says ``{"type": "ready", "data": {"import_s", "failed"}}``, then waits for one line on
stdin, ``{"workdir": "..."}``, answers ``{"type": "accepted"}`` and from there on is the
worker above for that folder, its stderr (and fd 1) now appended to ``<workdir>/job.log``.
End of input instead of a job: it exits 0. Until the job arrives SIGTERM just ends it. One
job per process: a spare is used once, so no state passes from one job to the next.

Threads (the spec's ``threads``; 0 leaves every library at its default, all cores): set
when the job starts, in either mode: ``torch.set_num_threads`` (torch's intra-op OpenMP pool
and MKL, as used from the main thread, where the trainers run and autograd's CPU backward
runs), threadpoolctl for the BLAS/OpenMP libraries already loaded (numpy's and scipy's
OpenBLAS, libgomp), and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS``
for anything the job starts. The environment alone cannot do it in a spare: those
libraries read it once, when they are loaded, which was before the job arrived. The
trainers set torch's and the classic models' pools again themselves; the ONNX check after
export uses onnxruntime's own default pool either way. The job log says what was applied.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
import time
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
JOB_LOG = "job.log"  # the job's stderr, appended
_PR_SET_PDEATHSIG = 1
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

# What a spare imports before its job arrives: everything a run imports on its way
# (the torch and scikit-learn trainers, the dynamo ONNX exporter with onnxscript, sympy and
# networkx under it, skl2onnx, onnxruntime for the export check, the dataset readers). A
# name this torch does not have is skipped: the job imports what it needs anyway.
PRELOAD = (
    "torch",
    "torch.export",
    "torch.export._trace",
    "torch._dynamo",
    "torch._functorch.aot_autograd",
    "torch.onnx",
    "torch.onnx._internal.exporter._core",
    "torch.onnx._internal.exporter._registration",
    "onnxscript",
    "onnxscript.function_libs.torch_lib",
    "onnxscript.rewriter.onnx_fusions",
    "onnx",
    "onnxruntime",
    "safetensors.torch",
    "sympy",
    "networkx",
    "sklearn.datasets",
    "sklearn.datasets.data",
    "sklearn.preprocessing",
    "sklearn.metrics",
    "sklearn.linear_model",
    "sklearn.ensemble",
    "sklearn.model_selection",
    "skl2onnx",
    "threadpoolctl",
    "pandas",
    "pyarrow.parquet",
    "PIL.Image",
    "modelport.training.run",
    "modelport.training.builtin",
    "modelport.training.formats",
    "modelport.training.text",
    "modelport.training.preprocess",
    "modelport.training.metrics",
    "modelport.training.splits",
    "modelport.training.bundle",
    "modelport.training.trainers.classic",
    "modelport.training.trainers.torch_trainers",
    "modelport.training.trainers.torch_loop",
    "modelport.training.trainers.torch_models",
)


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
    parser.add_argument("workdir", type=Path, nargs="?", help="the job's folder (spec.json)")
    parser.add_argument("--parent-pid", type=int, help="exit when this process dies")
    parser.add_argument(
        "--spare", action="store_true", help="import first, then read the job from stdin"
    )
    args = parser.parse_args(argv)
    if (args.workdir is None) != args.spare:
        parser.error("give a workdir, or --spare (and the workdir on stdin)")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when jobs stop
    _die_with_parent(args.parent_pid if args.parent_pid is not None else os.getppid())
    stop = threading.Event()
    writer = LineWriter(_protocol_stream())
    if args.spare:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # nothing to wind down yet
        workdir, waited = _wait_for_job(writer)
        if workdir is None:
            return EXIT_OK
        _log_to(workdir)
        writer.event("accepted", {"pid": os.getpid()})
        print(f"job worker {os.getpid()}: a warm spare; {waited}", file=sys.stderr)
    else:
        workdir = args.workdir
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return run_job(workdir, writer, stop)


def _wait_for_job(writer: LineWriter) -> tuple[Path | None, str]:
    """Import ``PRELOAD``, warm up, say "ready", read the job's line: its workdir (None: no
    job)."""
    start = time.monotonic()
    failed = preload()
    try:
        warm_up()
    except Exception as exc:
        failed.append(f"warm_up: {type(exc).__name__}: {exc}")
    import_s = time.monotonic() - start
    writer.event("ready", {"import_s": round(import_s, 3), "failed": failed})
    line = sys.stdin.readline()
    arrived = time.monotonic() - start
    if not line.strip():
        return None, ""
    workdir = Path(json.loads(line)["workdir"])
    waited = arrived - import_s
    return workdir, f"imports and warm-up took {import_s:.2f} s, then it waited {waited:.2f} s"


def preload(names: Sequence[str] = PRELOAD) -> list[str]:
    """Import ``names`` (what a run will import); the names that failed, kept quiet: the job
    imports what it needs again and reports a real failure itself."""
    import importlib

    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            failed.append(name)
    return failed


def warm_up() -> None:
    """Pay the first-call costs a run would pay, on a throwaway model: torch's first
    backward and optimizer step, the ONNX exporter's first export, onnxruntime's first
    session (together ~0.7 s of the digits CNN's first export here). Library caches only:
    torch's RNG is put back, and every trainer seeds its own anyway."""
    import tempfile
    import warnings

    import torch

    rng = torch.random.get_rng_state()
    try:
        nn = torch.nn
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
        )
        x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        torch.nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        with (
            tempfile.TemporaryDirectory(prefix="modelport-warm-") as tmp,
            contextlib.redirect_stdout(sys.stderr),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            path = str(Path(tmp) / "warm.onnx")
            torch.onnx.export(
                model.eval(),
                (x,),
                path,
                input_names=["x"],
                output_names=["y"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            import onnxruntime as ort

            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            session.run(["y"], {"x": x.numpy()})
    finally:
        torch.random.set_rng_state(rng)


def _log_to(workdir: Path) -> None:
    """Point stderr, and fd 1 with it, at ``<workdir>/job.log`` (appended)."""
    sys.stderr.flush()
    sys.stdout.flush()
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir / JOB_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.dup2(fd, 1)
    os.close(fd)


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
    limit_threads(int(raw.get("threads") or 0))
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


def limit_threads(threads: int) -> None:
    """Apply the spec's ``threads`` (module docstring) to this process; 0: leave defaults."""
    if threads <= 0:
        return
    for name in _THREAD_VARS:
        os.environ[name] = str(threads)
    from threadpoolctl import threadpool_info, threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(limits=threads)
    applied = sorted({f"{p['internal_api']} {p['num_threads']}" for p in threadpool_info()})
    if "torch" in sys.modules:  # a spare imported it; a fresh worker reads the env later
        import torch

        torch.set_num_threads(threads)
        applied.insert(0, f"torch {torch.get_num_threads()}")
    print(f"job worker {os.getpid()}: threads {threads}: {', '.join(applied)}", file=sys.stderr)


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


def _exit(code: int) -> None:
    """Leave without the interpreter's teardown (seconds after torch); lines are flushed."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
