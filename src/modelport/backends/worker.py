"""A worker process: one loaded model behind one socket.

The local backend starts ``python -m modelport.backends.worker --fd N --parent-pid P`` with
one end of a socketpair inherited as descriptor ``N`` and speaks ``backends.protocol`` over
it: the first message is "load"; the worker checks the artifact's sha256, loads it with its
runtime and answers "ready" (or "failed" and exits with code 3), then serves until
"shutdown" or EOF. Model code runs here and never in the API server, so a crashing or
hostile model takes down one replica, not the service.

Warm spare (``--preload RUNTIME``, see ``backends.spares``): the worker imports the runtime's
module and its heavy libraries (``PRELOAD``) first, then waits for "load" as usual, so the
replica that takes it later skips those seconds. Its "load" names the replica's log file;
the worker appends its stdout and stderr there from then on (it was started before the
replica existed, logging to the spares' log).

``--inspect`` reads a ``LoadSpec`` as JSON on stdin, loads it and prints the signature JSON
on stdout (exit 0), or the error JSON (exit 3): the registry learns a new artifact's
signature this way without loading it in the server process.

Threads: plain "predict" calls run inline on the main thread (no hand-off, lowest latency).
The first "stream" starts a single model thread; from then on every model call, predicts
included, goes through it in arrival order, so the model is never called concurrently and
the main thread keeps reading the socket, which is what lets a "cancel" stop a running
stream between two items.

Trust: ``LoadSpec.options["runtime_class"] = "module:Class"`` overrides the ``RUNTIMES``
lookup. Only server code builds load specs (users choose a runtime *name*, never options),
so this is a hook for tests and embedders, not something a request can reach.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import json
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from modelport.backends.protocol import (
    CANCEL,
    CHUNK,
    END,
    ERROR,
    FAILED,
    LOAD,
    PREDICT,
    READY,
    RESULT,
    SHUTDOWN,
    STREAM,
    Message,
    encode,
    error_to_dict,
    load_spec_from_dict,
    recv_message,
    send_frame,
    send_message,
)
from modelport.errors import ModelLoadError, ModelportError
from modelport.runtimes.base import LoadSpec, Runtime, Tensors, runtime_class
from modelport.storage.artifacts import verify_file
from modelport.types.admin import Signature

EXIT_OK = 0
EXIT_LOAD_FAILED = 3
_PR_SET_PDEATHSIG = 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m modelport.backends.worker")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--fd", type=int, help="inherited socket to serve on")
    mode.add_argument("--inspect", action="store_true", help="print a LoadSpec's signature")
    parser.add_argument("--parent-pid", type=int, help="exit when this process dies")
    parser.add_argument("--preload", metavar="RUNTIME", help="import a runtime, then wait")
    args = parser.parse_args(argv)
    # Ctrl-C in the server's terminal reaches the whole process group; the server decides
    # when workers stop, so they ignore it instead of dying mid-request.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.parent_pid is not None:
        _die_with_parent(args.parent_pid)
    if args.inspect:
        return _inspect(sys.stdin.buffer.read())
    if args.preload:
        preload(args.preload)
    return _serve(socket.socket(fileno=args.fd))


def load_runtime(spec: LoadSpec) -> tuple[Runtime, Signature]:
    """Verify the artifact's bytes, then load it; every failure is a ``ModelportError``."""
    try:
        verify_file(spec.artifact_path, spec.sha256)
        cls = _runtime_class(spec)
        cls.check_artifact(spec.artifact_path, spec.artifact_name, trusted=spec.trusted)
        runtime = cls(spec)
        return runtime, runtime.load()
    except ModelportError:
        raise
    except Exception as exc:
        traceback.print_exc()  # the full story goes to the replica's log file
        raise ModelLoadError(
            f"could not load {spec.artifact_name!r} with runtime {spec.runtime!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


# What a warm spare imports for a runtime besides the runtime's own module: the libraries its
# ``load`` imports on the way to a typical model (``skops.io`` alone imports every scikit-learn
# estimator, scipy and, through scikit-learn's array-API shim, torch: seconds of CPU, the bulk
# of an iris cold start). Missing ones are skipped; a real load reports them.
PRELOAD: dict[str, tuple[str, ...]] = {
    "sklearn": (
        "threadpoolctl",
        "skops.io",
        "sklearn.linear_model",
        "sklearn.ensemble",
        "sklearn.pipeline",
        "sklearn.preprocessing",
    ),
    "onnx": ("onnxruntime",),
    "torch": ("torch",),
    "transformers": ("torch", "transformers", "sentence_transformers"),
    "gguf": ("llama_cpp",),
    "trained": ("onnxruntime", "modelport.training.exported", "modelport.training.preprocess"),
}


def preload(runtime: str) -> None:
    """Import ``runtime`` (a name in ``RUNTIMES``, or ``module:Class``) and its libraries.

    Best effort: an import that fails is logged and left for the real load to report.
    """
    try:
        _find_class(runtime, override=runtime if ":" in runtime else None)
    except ModelportError as exc:
        print(f"preload: {exc.message}", file=sys.stderr)
    for module in PRELOAD.get(runtime, ()):
        try:
            importlib.import_module(module)
        except Exception as exc:
            print(f"preload: cannot import {module}: {type(exc).__name__}: {exc}", file=sys.stderr)


def _runtime_class(spec: LoadSpec) -> type[Runtime]:
    return _find_class(spec.runtime, spec.options.get("runtime_class"))


def _find_class(runtime: str, override: Any) -> type[Runtime]:
    if override is None:
        return runtime_class(runtime)
    module_name, _, class_name = str(override).partition(":")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"runtime class {override!r} not found: {exc}") from exc
    if not (isinstance(found, type) and issubclass(found, Runtime)):
        raise ModelLoadError(f"{override!r} is not a Runtime subclass")
    return found


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill us when the server dies, even by SIGKILL (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        print(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}", file=sys.stderr)
    if os.getppid() != parent_pid:  # the server died before prctl took effect
        os._exit(1)


def _serve(sock: socket.socket) -> int:
    message = recv_message(sock)
    if message is None:
        return EXIT_OK  # the server went away before asking for anything
    try:
        if message[0] != LOAD:
            raise ModelLoadError(f"expected a 'load' message first, got {message[0]!r}")
        if len(message) > 2 and message[2]:
            _log_to(str(message[2]))
        runtime, signature = load_runtime(load_spec_from_dict(message[1]))
    except ModelportError as exc:
        send_message(sock, (FAILED, exc.to_dict()))
        return EXIT_LOAD_FAILED
    gc.freeze()  # the loaded model is long-lived: keep full collections from walking it
    send_message(sock, (READY, signature.model_dump(mode="json"), os.getpid()))
    _WorkerLoop(sock, runtime).run()
    return EXIT_OK


def _log_to(path: str) -> None:
    """Send our stdout and stderr (and those of any library) to the file at ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:  # serving matters more than where the log goes
        print(f"cannot log to {path}: {exc}; logging here instead", file=sys.stderr)
        return
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _inspect(raw: bytes) -> int:
    # Model code may print; keep our stdout for the one JSON answer by pointing fd 1 at
    # stderr while the model loads and writing the answer to a saved copy of the real one.
    answer_fd = os.dup(1)
    os.dup2(2, 1)
    code = EXIT_OK
    try:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ModelLoadError(f"malformed load spec: {exc}") from None
        runtime, signature = load_runtime(load_spec_from_dict(data))
        answer = signature.model_dump_json()
        runtime.unload()
    except ModelportError as exc:
        answer, code = json.dumps(exc.to_dict()), EXIT_LOAD_FAILED
    with os.fdopen(answer_fd, "w") as out:
        out.write(answer)
    return code


class _WorkerLoop:
    """Reads requests from the socket and answers them (see the module docstring)."""

    def __init__(self, sock: socket.socket, runtime: Runtime) -> None:
        self._sock = sock
        self._runtime = runtime
        self._send_lock = threading.Lock()
        self._model_thread: ThreadPoolExecutor | None = None
        self._state_lock = threading.Lock()
        self._queued: set[int] = set()  # request ids handed to the model thread
        self._cancelled: set[int] = set()  # subset of _queued the server gave up on

    def run(self) -> None:
        """Serve until "shutdown" (finish queued work) or EOF (drop queued work)."""
        graceful = False
        while (message := recv_message(self._sock)) is not None:
            kind = message[0]
            if kind == PREDICT:
                params = message[3] if len(message) > 3 else None
                self._on_predict(message[1], message[2], params)
            elif kind == STREAM:
                self._on_stream(message[1], message[2])
            elif kind == CANCEL:
                self._on_cancel(message[1])
            elif kind == SHUTDOWN:
                graceful = True
                break
            else:
                print(f"ignoring unknown message {kind!r}", file=sys.stderr)
        if self._model_thread is not None:
            if not graceful:
                with self._state_lock:
                    self._cancelled |= self._queued
            self._model_thread.shutdown(wait=True)
        try:
            self._runtime.unload()
        except Exception:
            traceback.print_exc()  # exiting anyway; the log keeps the reason

    def _on_predict(self, req_id: int, inputs: Tensors, params: dict[str, Any] | None) -> None:
        if self._model_thread is None:
            self._send(self._predict(req_id, inputs, params), req_id)
        else:
            self._queue(req_id, lambda: self._send(self._predict(req_id, inputs, params), req_id))

    def _predict(self, req_id: int, inputs: Tensors, params: dict[str, Any] | None) -> Message:
        try:
            outputs = self._runtime.predict(inputs, params or None)
        except Exception as exc:  # the model failed this batch; the worker lives on
            return (ERROR, req_id, error_to_dict(exc))
        if not isinstance(outputs, dict):
            error = ModelportError(
                f"runtime {self._runtime.spec.runtime!r} returned {type(outputs).__name__}, "
                "expected a dict of named arrays"
            )
            return (ERROR, req_id, error.to_dict())
        return (RESULT, req_id, outputs)

    def _on_stream(self, req_id: int, payload: Any) -> None:
        stream = self._runtime.stream  # the base class refuses with InvalidInput
        if self._model_thread is None:
            self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._queue(req_id, lambda: self._run_stream(req_id, stream, payload))

    def _run_stream(
        self, req_id: int, stream: Callable[[Any], Iterable[Any]], payload: Any
    ) -> None:
        iterator: Iterator[Any] = iter(())
        try:
            iterator = iter(stream(payload))
            for item in iterator:
                if self._is_cancelled(req_id):
                    break
                self._send((CHUNK, req_id, item), req_id)
            reply: Message = (END, req_id)
        except Exception as exc:
            reply = (ERROR, req_id, error_to_dict(exc))
        finally:
            close = getattr(iterator, "close", None)
            if callable(close):
                close()  # runs the generator's cleanup (free the KV cache, ...)
        self._send(reply, req_id)

    def _queue(self, req_id: int, work: Callable[[], None]) -> None:
        assert self._model_thread is not None
        with self._state_lock:
            self._queued.add(req_id)

        def run() -> None:
            try:
                if not self._is_cancelled(req_id):
                    work()
            finally:
                with self._state_lock:
                    self._queued.discard(req_id)
                    self._cancelled.discard(req_id)

        self._model_thread.submit(run)

    def _on_cancel(self, req_id: int) -> None:
        # Inline predicts are already answered when their cancel is read: nothing to keep.
        with self._state_lock:
            if req_id in self._queued:
                self._cancelled.add(req_id)

    def _is_cancelled(self, req_id: int) -> bool:
        with self._state_lock:
            return req_id in self._cancelled

    def _send(self, message: Message, req_id: int) -> None:
        try:
            header, payload = encode(message)
        except Exception as exc:  # e.g. an output that cannot be pickled
            header, payload = encode((ERROR, req_id, error_to_dict(exc)))
        try:
            with self._send_lock:
                send_frame(self._sock, header, payload)
        except OSError:
            pass  # the server is gone; the main loop sees EOF and exits


if __name__ == "__main__":
    sys.exit(main())
