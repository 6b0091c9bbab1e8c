"""The server <-> worker wire protocol over real socketpairs.

The "worker" end here is a thread using the blocking helpers, exactly as the worker process
does; the server end is the asyncio side (``read_message``/``write_message`` and
``WorkerConnection``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelport.backends.protocol import (
    CANCEL,
    CHUNK,
    END,
    ERROR,
    PREDICT,
    RESULT,
    STREAM,
    Message,
    WorkerConnection,
    encode,
    error_to_dict,
    load_spec_from_dict,
    load_spec_to_dict,
    read_message,
    recv_message,
    send_message,
    write_message,
)
from modelport.errors import (
    ModelLoadError,
    ModelportError,
    ShapeMismatch,
    UnsafeArtifact,
    WorkerCrashed,
)
from modelport.runtimes.base import LoadSpec
from modelport.types.admin import Signature, TensorSpec


class Wire:
    """A socketpair: ``server`` for the asyncio side, ``worker`` for a stand-in worker."""

    def __init__(self) -> None:
        self.server, self.worker = socket.socketpair()
        self._threads: list[threading.Thread] = []

    def serve(self, handle: Callable[[Message], list[Message]]) -> None:
        """Answer each message on ``worker`` with ``handle``'s replies, in a thread, until EOF."""

        def loop() -> None:
            while (message := recv_message(self.worker)) is not None:
                for reply in handle(message):
                    send_message(self.worker, reply)

        self._threads.append(_in_thread(loop))

    def close(self) -> None:
        self.server.close()  # EOF for the stand-in worker, which then returns
        for thread in self._threads:
            thread.join(5)
        self.worker.close()


@pytest.fixture
def wire() -> Iterator[Wire]:
    wire = Wire()
    yield wire
    wire.close()


def _in_thread(target: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_blocking_roundtrip_keeps_arrays_exact(wire: Wire) -> None:
    a, b = wire.server, wire.worker
    inputs = {
        "x": np.arange(12, dtype=np.float32).reshape(3, 4),
        "text": np.array([b"caf\xc3\xa9", b"", "naïve"], dtype=object),
        "flags": np.array([True, False, True]),
    }
    send_message(a, (PREDICT, 7, inputs, {"temperature": 0.5}))
    message = recv_message(b)

    assert message is not None
    kind, req_id, got, params = message
    assert (kind, req_id, params) == (PREDICT, 7, {"temperature": 0.5})
    assert got["x"].dtype == np.float32
    np.testing.assert_array_equal(got["x"], inputs["x"])
    assert got["text"].dtype == object
    assert list(got["text"]) == [b"caf\xc3\xa9", b"", "naïve"]
    np.testing.assert_array_equal(got["flags"], inputs["flags"])
    got["x"][0, 0] = 99.0  # arrays arrive writable, so runtimes may work in place


def test_big_array_crosses_in_both_directions(wire: Wire) -> None:
    a, b = wire.server, wire.worker
    big = np.random.default_rng(0).random((2048, 2048))  # 32 MiB: far above socket buffers

    async def main() -> Message | None:
        reader, writer = await asyncio.open_connection(sock=a)
        echo = _in_thread(lambda: send_message(b, recv_message(b) or ()))
        await write_message(writer, (RESULT, 1, {"y": big}))
        answer = await read_message(reader)
        echo.join()
        writer.close()
        return answer

    answer = asyncio.run(main())
    assert answer is not None
    np.testing.assert_array_equal(answer[2]["y"], big)


def test_eof_and_truncated_frames_read_as_none(wire: Wire) -> None:
    a, b = wire.server, wire.worker
    header, payload = encode((RESULT, 1, {}))
    a.sendall(header + payload[:3])  # a worker killed in the middle of a write
    a.close()
    assert recv_message(b) is None

    c, d = socket.socketpair()
    c.close()

    async def main() -> Message | None:
        reader, writer = await asyncio.open_connection(sock=d)
        try:
            return await read_message(reader)
        finally:
            writer.close()

    assert asyncio.run(main()) is None


def test_load_spec_roundtrip_is_json_able() -> None:
    spec = LoadSpec(
        runtime="sklearn",
        artifact_path=Path("/data/artifacts/ab/abcd"),
        artifact_name="model.skops",
        sha256="a" * 64,
        trusted=True,
        signature=Signature(inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 4])]),
        options={"threads": 2},
    )
    data = load_spec_to_dict(spec)
    assert data["artifact_path"] == "/data/artifacts/ab/abcd"
    assert load_spec_from_dict(data) == spec


def test_malformed_load_spec_names_the_field() -> None:
    with pytest.raises(ModelLoadError, match="sha256"):
        load_spec_from_dict({"runtime": "x", "artifact_path": "/a", "artifact_name": "a"})


def test_errors_cross_with_their_type_and_foreign_ones_keep_their_name() -> None:
    rebuilt = ModelportError.from_dict(error_to_dict(ShapeMismatch("bad shape", param="x")))
    assert type(rebuilt) is ShapeMismatch
    assert (rebuilt.message, rebuilt.param) == ("bad shape", "x")

    foreign = ModelportError.from_dict(error_to_dict(ZeroDivisionError("division by zero")))
    assert type(foreign) is ModelportError
    assert foreign.message == "ZeroDivisionError: division by zero"


# -- WorkerConnection ------------------------------------------------------------------------


def test_concurrent_calls_get_their_own_replies_even_out_of_order(
    wire: Wire,
) -> None:
    a = wire.server
    held: list[Message] = []

    def handle(message: Message) -> list[Message]:
        held.append(message)
        if len(held) < 3:
            return []
        # answer all three at once, newest first
        return [(RESULT, m[1], {"y": m[2]["x"] * 10}) for m in reversed(held)]

    wire.serve(handle)

    async def main() -> list[Any]:
        reader, writer = await asyncio.open_connection(sock=a)
        conn = WorkerConnection(reader, writer)
        conn.start()
        results = await asyncio.gather(*(conn.predict({"x": np.array([i])}, {}) for i in range(3)))
        await conn.aclose()
        return [int(r["y"][0]) for r in results]

    assert asyncio.run(main()) == [0, 10, 20]


def test_error_reply_is_rebuilt_and_the_connection_stays_usable(
    wire: Wire,
) -> None:
    a = wire.server

    def handle(message: Message) -> list[Message]:
        if message[2]["x"][0] < 0:
            return [(ERROR, message[1], UnsafeArtifact("nope", param="x").to_dict())]
        return [(RESULT, message[1], message[2])]

    wire.serve(handle)

    async def main() -> int:
        reader, writer = await asyncio.open_connection(sock=a)
        conn = WorkerConnection(reader, writer)
        conn.start()
        with pytest.raises(UnsafeArtifact, match="nope"):
            await conn.predict({"x": np.array([-1])}, {})
        result = await conn.predict({"x": np.array([5])}, {})
        await conn.aclose()
        return int(result["x"][0])

    assert asyncio.run(main()) == 5


def test_cancelled_call_sends_cancel_and_its_late_result_is_dropped(
    wire: Wire,
) -> None:
    a = wire.server
    seen: list[Message] = []

    def handle(message: Message) -> list[Message]:
        seen.append(message)
        if message[0] == CANCEL:
            return []
        if message[2]["x"][0] == 1:  # the slow one: its answer comes after the caller gave up
            time.sleep(0.4)
            return [(RESULT, message[1], {"x": np.array([111])})]
        return [(RESULT, message[1], message[2])]

    wire.serve(handle)

    async def main() -> int:
        reader, writer = await asyncio.open_connection(sock=a)
        conn = WorkerConnection(reader, writer)
        conn.start()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.predict({"x": np.array([1])}, {}), 0.2)
        result = await conn.predict({"x": np.array([2])}, {})
        await conn.aclose()
        return int(result["x"][0])

    # The late 111 for the cancelled call arrived before the answer for 2 and was dropped.
    assert asyncio.run(main()) == 2
    assert [m[0] for m in seen] == [PREDICT, CANCEL, PREDICT]
    assert seen[1][1] == seen[0][1]


def test_fail_answers_pending_and_later_calls_at_once(
    wire: Wire,
) -> None:
    a = wire.server  # nobody answers on the worker end

    async def main() -> None:
        reader, writer = await asyncio.open_connection(sock=a)
        conn = WorkerConnection(reader, writer)
        conn.start()
        pending = asyncio.create_task(conn.predict({"x": np.array([1])}, {}))
        await asyncio.sleep(0.05)
        conn.fail(WorkerCrashed("replica r1 crashed"))
        with pytest.raises(WorkerCrashed, match="r1 crashed"):
            await asyncio.wait_for(pending, 1)
        with pytest.raises(WorkerCrashed, match="r1 crashed"):
            await conn.predict({"x": np.array([2])}, {})
        await conn.aclose()

    asyncio.run(main())


def test_stream_yields_chunks_and_closing_early_sends_cancel(
    wire: Wire,
) -> None:
    a = wire.server
    seen: list[Message] = []

    def handle(message: Message) -> list[Message]:
        seen.append(message)
        if message[0] == STREAM:
            n = message[2]["n"]
            return [*((CHUNK, message[1], i) for i in range(n)), (END, message[1])]
        return []

    wire.serve(handle)

    async def main() -> tuple[list[int], list[int]]:
        reader, writer = await asyncio.open_connection(sock=a)
        conn = WorkerConnection(reader, writer)
        conn.start()
        full = [item async for item in conn.stream({"n": 4})]
        partial = []
        items = conn.stream({"n": 10})
        async for item in items:
            partial.append(item)
            if item == 1:
                break
        await items.aclose()
        await asyncio.sleep(0.05)
        await conn.aclose()
        return full, partial

    full, partial = asyncio.run(main())
    assert full == [0, 1, 2, 3]
    assert partial == [0, 1]
    assert [m[0] for m in seen] == [STREAM, STREAM, CANCEL]


class _Evil:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_a_subverted_worker_cannot_run_code_in_the_server(wire: Wire, tmp_path: Path) -> None:
    a = wire.server
    marker = tmp_path / "pwned"

    def handle(message: Message) -> list[Message]:
        return [(RESULT, message[1], {"y": _Evil(marker)})]

    wire.serve(handle)

    async def main() -> None:
        reader, writer = await asyncio.open_connection(sock=a)
        conn = WorkerConnection(reader, writer)
        conn.start()
        with pytest.raises(WorkerCrashed, match=r"posix\.system is not allowed"):
            await asyncio.wait_for(conn.predict({"x": np.array([1])}, {}), 5)
        assert conn.error is not None
        await conn.aclose()

    asyncio.run(main())
    assert not marker.exists()
