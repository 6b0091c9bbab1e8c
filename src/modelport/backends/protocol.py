"""The wire protocol between the server and its worker processes.

One stream socket (a ``socketpair``) joins the server (asyncio) and a worker (blocking
code). Each message is a tuple framed as an 8-byte big-endian length followed by a pickle
(protocol 5) payload. Pickle is fine here because both ends are our own processes; model
artifacts never travel this way. Still, a worker runs model code, so the server must not
let a subverted worker run code in it: both ends unpickle with an allow-list that admits
plain Python values and numpy arrays, dtypes and scalars, and nothing else.

::

    server -> worker                       worker -> server
    ("load", spec_dict[, log_path])        ("ready", signature_dict, pid)
                                           ("failed", error_dict)
    ("predict", req_id, inputs, params)    ("result", req_id, outputs)
                                           ("error", req_id, error_dict)
    ("stream", req_id, payload)            ("chunk", req_id, item) ... ("end", req_id)
                                           or ("error", req_id, error_dict)
    ("cancel", req_id)                     (nothing, or the "end" of a cancelled stream)
    ("shutdown",)

``log_path`` (a warm spare's "load"): from then on the worker appends its stdout and stderr
to that file, the replica's log. ``error_dict`` is ``ModelportError.to_dict()``; the server
rebuilds it with ``ModelportError.from_dict``. Late replies for unknown or cancelled request
ids are dropped, so a cancelled call never corrupts the connection. ``WorkerConnection`` is
the server's end: it multiplexes concurrent calls over one socket by request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import pickle
import socket
import struct
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from modelport.errors import ModelLoadError, ModelportError, WorkerCrashed
from modelport.runtimes.base import LoadSpec, Tensors

Message = tuple[Any, ...]

LOAD: Final = "load"
PREDICT: Final = "predict"
STREAM: Final = "stream"
CANCEL: Final = "cancel"
SHUTDOWN: Final = "shutdown"
READY: Final = "ready"
FAILED: Final = "failed"
RESULT: Final = "result"
ERROR: Final = "error"
CHUNK: Final = "chunk"
END: Final = "end"

_HEADER = struct.Struct("!Q")
_PICKLE_PROTOCOL = 5
_LOAD_SPEC = TypeAdapter(LoadSpec)


# -- framing ------------------------------------------------------------------------------


def encode(message: Message) -> tuple[bytes, bytes]:
    """The header and payload of one frame (kept apart so big payloads are not copied)."""
    payload = pickle.dumps(message, protocol=_PICKLE_PROTOCOL)
    return _HEADER.pack(len(payload)), payload


async def read_message(reader: asyncio.StreamReader) -> Message | None:
    """Read one message; None once the peer is gone (EOF, also in the middle of a frame)."""
    try:
        header = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        payload = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return _loads(payload)


async def write_message(writer: asyncio.StreamWriter, message: Message) -> None:
    """Write one message and wait while the socket buffer is full (flow control)."""
    writer.writelines(encode(message))
    await writer.drain()


def send_message(sock: socket.socket, message: Message) -> None:
    """Blocking send of one message (worker side). Callers serialise sends themselves."""
    send_frame(sock, *encode(message))


def send_frame(sock: socket.socket, header: bytes, payload: bytes) -> None:
    """Blocking send of a frame made by ``encode``, without joining the two parts."""
    sent = sock.sendmsg([header, payload])
    if sent < len(header):
        sock.sendall(header[sent:])
        sent = len(header)
    if sent < len(header) + len(payload):  # the kernel took part of it: send the rest
        sock.sendall(memoryview(payload)[sent - len(header) :])


def recv_message(sock: socket.socket) -> Message | None:
    """Blocking receive of one message (worker side); None at EOF."""
    header = _recv_exact(sock, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    payload = _recv_exact(sock, size)
    if payload is None:
        return None
    return _loads(payload)


# What a message may contain besides plain Python values (numpy 2 and numpy 1 names).
_ALLOWED_GLOBALS = frozenset(
    (module, name)
    for core in ("numpy._core", "numpy.core")
    for module, name in (
        (f"{core}.multiarray", "_reconstruct"),
        (f"{core}.multiarray", "scalar"),
        (f"{core}.numeric", "_frombuffer"),
    )
) | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "complex"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
}


class _ValuesOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a message")


def _loads(payload: bytes | bytearray) -> Message:
    try:
        message = _ValuesOnlyUnpickler(io.BytesIO(payload)).load()
    except Exception as exc:
        raise WorkerCrashed(f"refused a malformed message ({type(exc).__name__}: {exc})") from exc
    if not isinstance(message, tuple) or not message:
        raise WorkerCrashed(f"refused a malformed message: {type(message).__name__}")
    return message


def _recv_exact(sock: socket.socket, size: int) -> bytearray | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return buffer


# -- payload conversions ------------------------------------------------------------------


def load_spec_to_dict(spec: LoadSpec) -> dict[str, Any]:
    """A JSON-able form of a ``LoadSpec`` (also what ``worker --inspect`` reads on stdin)."""
    data: dict[str, Any] = _LOAD_SPEC.dump_python(spec, mode="json")
    return data


def load_spec_from_dict(data: Any) -> LoadSpec:
    """Rebuild a ``LoadSpec``; a malformed one is a ``ModelLoadError`` naming the field."""
    try:
        return _LOAD_SPEC.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ModelLoadError(f"malformed load spec ({problems})") from None


def error_to_dict(exc: BaseException) -> dict[str, Any]:
    """Describe any exception for the other side; foreign ones keep their type and text."""
    if isinstance(exc, ModelportError):
        return exc.to_dict()
    return ModelportError(f"{type(exc).__name__}: {exc}").to_dict()


# -- the server's end ---------------------------------------------------------------------


class WorkerConnection:
    """The server's end of one worker socket: concurrent calls matched by request id.

    ``start`` launches the one reader task. When the worker goes away every pending call
    fails at once with the error given to ``fail`` (or a generic ``WorkerCrashed``), and
    later calls fail immediately, so nothing waits on a dead process.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[Tensors]] = {}
        self._streams: dict[int, asyncio.Queue[Message]] = {}
        self._reader_task: asyncio.Task[None] | None = None
        self._error: ModelportError | None = None
        self.closed = asyncio.Event()  # set when the worker's end is gone

    async def handshake(self, spec: LoadSpec, log: Path | None = None) -> Message | None:
        """Send "load" and return the worker's first answer ("ready"/"failed"), None at EOF.

        ``log``: the file the worker should write its output to from now on (a spare).
        """
        load = load_spec_to_dict(spec)
        await write_message(self._writer, (LOAD, load) if log is None else (LOAD, load, str(log)))
        return await read_message(self._reader)

    def start(self) -> None:
        """Begin dispatching replies (after a successful handshake)."""
        self._reader_task = asyncio.create_task(self._read_loop(), name="worker-reader")

    async def predict(self, inputs: Tensors, params: dict[str, Any]) -> Tensors:
        """Run one batch on the worker; cancelling the caller tells the worker to drop it."""
        if self._error is not None:
            raise self._error
        req_id = next(self._ids)
        future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
        self._calls[req_id] = future
        try:
            # If the worker is gone, ``fail`` answers this call with the reason.
            with contextlib.suppress(ConnectionError):
                await write_message(self._writer, (PREDICT, req_id, inputs, params))
            return await future
        except asyncio.CancelledError:
            self._send_nowait((CANCEL, req_id))
            raise
        finally:
            self._calls.pop(req_id, None)

    async def stream(self, payload: dict[str, Any]) -> AsyncGenerator[Any, None]:
        """Yield the items the worker streams for ``payload`` until its "end".

        Closing the iterator early (client went away) sends "cancel", which the worker
        reads while the stream runs and acts on between items.
        """
        if self._error is not None:
            raise self._error
        req_id = next(self._ids)
        queue: asyncio.Queue[Message] = asyncio.Queue()
        self._streams[req_id] = queue
        finished = False
        try:
            # If the worker is gone, ``fail`` queues the error for us.
            with contextlib.suppress(ConnectionError):
                await write_message(self._writer, (STREAM, req_id, payload))
            while True:
                message = await queue.get()
                if message[0] == CHUNK:
                    yield message[2]
                elif message[0] == END:
                    finished = True
                    return
                else:
                    finished = True
                    raise _as_error(message)
        finally:
            self._streams.pop(req_id, None)
            if not finished:
                self._send_nowait((CANCEL, req_id))

    async def send_shutdown(self) -> None:
        """Ask the worker to exit after the calls it already has."""
        if self._error is None:
            # Already gone: the supervisor notices the exit anyway.
            with contextlib.suppress(ConnectionError):
                await write_message(self._writer, (SHUTDOWN,))

    def fail(self, error: ModelportError) -> None:
        """Fail every pending and future call with ``error`` and close the socket."""
        if self._error is None:
            self._error = error
        for future in self._calls.values():
            if not future.done():
                future.set_exception(self._error)
        for queue in self._streams.values():
            queue.put_nowait((ERROR, 0, self._error.to_dict()))
        self._calls.clear()
        self.closed.set()
        self._writer.close()

    async def aclose(self, error: ModelportError | None = None) -> None:
        """Stop the reader task and close the socket; pending calls fail with ``error``."""
        self.fail(error or WorkerCrashed("worker connection closed"))
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)

    def _send_nowait(self, message: Message) -> None:
        # Cancels are tiny; skipping drain() keeps them usable from cancellation paths.
        if self._error is None and not self._writer.is_closing():
            self._writer.writelines(encode(message))

    @property
    def error(self) -> ModelportError | None:
        """Why the connection failed (a protocol violation, a crash...), once it has."""
        return self._error

    async def _read_loop(self) -> None:
        try:
            while (message := await read_message(self._reader)) is not None:
                self._dispatch(message)
        except WorkerCrashed as exc:  # it broke the protocol: treat it like a crash
            self.fail(exc)
        finally:
            self.closed.set()

    def _dispatch(self, message: Message) -> None:
        kind, req_id = message[0], message[1]
        if kind in (RESULT, ERROR) and req_id in self._calls:
            future = self._calls[req_id]
            if not future.done():  # a cancelled caller's late reply is dropped
                if kind == RESULT:
                    future.set_result(message[2])
                else:
                    future.set_exception(_as_error(message))
        elif kind in (CHUNK, END, ERROR) and req_id in self._streams:
            self._streams[req_id].put_nowait(message)


def _as_error(message: Message) -> ModelportError:
    return ModelportError.from_dict(message[2])
