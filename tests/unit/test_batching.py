"""The adaptive batcher on its own, in front of an in-process backend.

The backend here is a small real ``Backend`` (slots guarded by a semaphore, replicas that
compute ``y = 2 * x`` in the event loop), so these tests pin the batcher's rules without
worker processes; tests/integration/test_local_backend.py covers the real one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import numpy as np
import pytest

from modelport.backends.base import Backend, Replica, ReplicaSetSpec
from modelport.batching import AdaptiveBatcher
from modelport.errors import InvalidInput, NotReady, Unavailable, WorkerCrashed
from modelport.runtimes.base import Tensors
from modelport.types.admin import ReplicaStatus

T = TypeVar("T")


class DoublingReplica(Replica):
    def __init__(self, backend: SlotBackend) -> None:
        self.id = "r1"
        self._backend = backend

    async def predict(self, inputs: Tensors, params: dict[str, Any]) -> Tensors:
        self._backend.calls.append((inputs, params))
        if self._backend.delay:
            await asyncio.sleep(self._backend.delay)
        if self._backend.error is not None:
            raise self._backend.error
        return {"y": inputs["x"] * 2, "x": inputs["x"]}


class SlotBackend(Backend):
    """``slots`` concurrent batches; a lease waits for a slot up to its timeout."""

    name = "test"

    def __init__(self, slots: int = 1, delay: float = 0.0) -> None:
        self.delay = delay
        self.error: Exception | None = None
        self.calls: list[tuple[Tensors, dict[str, Any]]] = []
        self._slots = asyncio.Semaphore(slots)
        self._replica = DoublingReplica(self)

    @asynccontextmanager
    async def _lease(self, timeout: float) -> AsyncIterator[Replica]:
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except TimeoutError:
            raise NotReady("deployment 'm' has no ready replica: r1 busy") from None
        try:
            yield self._replica
        finally:
            self._slots.release()

    def lease(self, name: str, timeout: float) -> Any:
        return self._lease(timeout)

    async def deploy(self, spec: ReplicaSetSpec) -> None:
        raise NotImplementedError

    async def scale(self, name: str, replicas: int) -> None:
        raise NotImplementedError

    async def undeploy(self, name: str) -> None:
        raise NotImplementedError

    def replicas(self, name: str) -> list[ReplicaStatus]:
        return []

    def free_slots(self, name: str) -> int:
        return self._slots._value

    async def shutdown(self) -> None:
        pass


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def rows(*values: float, width: int = 3) -> Tensors:
    return {"x": np.array([[v] * width for v in values], dtype=np.float32)}


def test_concurrent_callers_get_exactly_their_rows_and_batches_merge() -> None:
    sizes: list[int] = []

    async def main() -> None:
        backend = SlotBackend(slots=1, delay=0.005)
        batcher = AdaptiveBatcher("m", backend, 64, 50.0, 5.0, on_batch=sizes.append)
        requests = [rows(*range(i * 10, i * 10 + 1 + i % 3)) for i in range(100)]
        results = await asyncio.gather(*(batcher.submit(r, {}) for r in requests))
        for request, result in zip(requests, results, strict=True):
            np.testing.assert_array_equal(result["x"], request["x"])
            np.testing.assert_array_equal(result["y"], request["x"] * 2)
        await batcher.close()

    run(main())
    assert sum(sizes) == sum(1 + i % 3 for i in range(100))
    assert max(sizes) > 1, sizes
    assert all(size <= 64 for size in sizes)
    assert len(sizes) < 20  # 100 requests went out in a handful of model calls


def test_requests_pile_up_while_every_replica_is_busy() -> None:
    sizes: list[int] = []

    async def main() -> None:
        backend = SlotBackend(slots=1, delay=0.1)
        batcher = AdaptiveBatcher("m", backend, 1000, 1000.0, 5.0, on_batch=sizes.append)
        first = asyncio.create_task(batcher.submit(rows(0), {}))
        await asyncio.sleep(0.02)  # the first batch is running and holds the only slot
        later = [asyncio.create_task(batcher.submit(rows(i), {})) for i in range(1, 21)]
        await asyncio.sleep(0.02)
        assert batcher.queue_depth == 20
        await asyncio.gather(first, *later)
        await batcher.close()

    run(main())
    assert sizes == [1, 20]


def test_a_lone_request_goes_out_at_once_despite_a_long_latency_budget() -> None:
    async def main() -> list[float]:
        batcher = AdaptiveBatcher("m", SlotBackend(), 64, 10_000.0, 5.0)
        loop = asyncio.get_running_loop()
        waits = []
        for i in range(5):
            start = loop.time()
            await batcher.submit(rows(i), {})
            waits.append(loop.time() - start)
        await batcher.close()
        return waits

    assert max(run(main())) < 0.5  # nowhere near the 10 s budget


def test_latency_budget_closes_a_batch_under_a_constant_stream() -> None:
    dispatched: list[tuple[float, int]] = []

    async def main() -> float:
        loop = asyncio.get_running_loop()
        backend = SlotBackend(slots=4)
        batcher = AdaptiveBatcher(
            "m",
            backend,
            1_000_000,
            30.0,
            5.0,
            on_batch=lambda n: dispatched.append((loop.time(), n)),
        )
        start = loop.time()
        tasks = []
        # A new request every loop turn: the "quiet turn" rule never fires, only the budget.
        while loop.time() - start < 0.2:
            tasks.append(asyncio.create_task(batcher.submit(rows(len(tasks)), {})))
            await asyncio.sleep(0)
        results = await asyncio.gather(*tasks)
        for i, result in enumerate(results):
            assert result["x"][0, 0] == i
        await batcher.close()
        return start

    start = run(main())
    first_at, first_rows = dispatched[0]
    # Not before the 30 ms budget, and not only at the end of the stream: the budget (not
    # the stream running dry) closed it. No upper time bound: a loaded CI machine may stall
    # the loop, which delays the batch but cannot change which rule closed it.
    assert first_at - start >= 0.03, first_at - start
    assert 10 < first_rows < sum(rows for _, rows in dispatched)
    assert len(dispatched) >= 2


def test_max_batch_size_caps_merging_but_never_splits_a_big_request() -> None:
    sizes: list[int] = []

    async def main() -> None:
        backend = SlotBackend(slots=1, delay=0.01)
        batcher = AdaptiveBatcher("m", backend, 8, 50.0, 5.0, on_batch=sizes.append)
        small = [batcher.submit(rows(i), {}) for i in range(30)]
        big = rows(*range(100, 120))
        results = await asyncio.gather(*small, batcher.submit(big, {}))
        np.testing.assert_array_equal(results[-1]["y"], big["x"] * 2)
        await batcher.close()

    run(main())
    assert 20 in sizes  # the 20-row request went alone
    assert all(size <= 8 for size in sizes if size != 20)
    assert sum(sizes) == 50


def test_max_batch_size_one_means_no_merging() -> None:
    sizes: list[int] = []

    async def main() -> None:
        batcher = AdaptiveBatcher("m", SlotBackend(slots=2), 1, 50.0, 5.0, on_batch=sizes.append)
        await asyncio.gather(*(batcher.submit(rows(i), {}) for i in range(20)))
        await batcher.close()

    run(main())
    assert sizes == [1] * 20


def test_incompatible_requests_go_in_separate_batches() -> None:
    async def main() -> SlotBackend:
        backend = SlotBackend(slots=1, delay=0.01)
        batcher = AdaptiveBatcher("m", backend, 64, 50.0, 5.0)
        blocker = asyncio.create_task(batcher.submit(rows(-1), {}))
        await asyncio.sleep(0.005)  # everything below queues behind the first batch
        requests: list[tuple[Tensors, dict[str, Any]]] = [
            (rows(1, width=3), {}),
            (rows(2, width=4), {}),  # other trailing shape
            (rows(3, width=3), {"top_k": 2}),  # other params
            ({"x": np.array([[4, 4, 4]], dtype=np.float64)}, {}),  # other dtype
            (rows(5, width=3), {}),
            (rows(6, width=4), {}),
            (rows(7, width=3), {"top_k": 2}),
        ]
        results = await asyncio.gather(*(batcher.submit(x, p) for x, p in requests))
        for (inputs, _), result in zip(requests, results, strict=True):
            np.testing.assert_array_equal(result["x"], inputs["x"])
            assert result["x"].dtype == inputs["x"].dtype
        await blocker
        await batcher.close()
        return backend

    backend = run(main())
    batches = sorted(
        (inputs["x"].shape[1], str(inputs["x"].dtype), str(params), len(inputs["x"]))
        for inputs, params in backend.calls[1:]
    )
    assert batches == [
        (3, "float32", "{'top_k': 2}", 2),
        (3, "float32", "{}", 2),
        (3, "float64", "{}", 1),
        (4, "float32", "{}", 2),
    ]


def test_a_failed_batch_fails_every_caller_in_it_and_the_batcher_goes_on() -> None:
    async def main() -> None:
        backend = SlotBackend(slots=1, delay=0.01)
        batcher = AdaptiveBatcher("m", backend, 64, 50.0, 5.0)
        backend.error = WorkerCrashed("replica r1 of deployment 'm' crashed")
        outcomes = await asyncio.gather(
            *(batcher.submit(rows(i), {}) for i in range(10)), return_exceptions=True
        )
        assert len(backend.calls) < 10  # they were merged...
        assert all(isinstance(o, WorkerCrashed) for o in outcomes)  # ...and all failed
        backend.error = None
        result = await batcher.submit(rows(42), {})
        assert result["y"][0, 0] == 84
        await batcher.close()

    run(main())


def test_no_replica_in_time_fails_waiting_callers_with_not_ready() -> None:
    async def main() -> None:
        backend = SlotBackend(slots=1, delay=1.0)
        batcher = AdaptiveBatcher("m", backend, 64, 5.0, 0.1)
        first = asyncio.create_task(batcher.submit(rows(0), {}))
        await asyncio.sleep(0.01)
        with pytest.raises(NotReady, match="no ready replica"):
            await batcher.submit(rows(1), {})
        await first
        await batcher.close()

    run(main())


def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    async def main() -> None:
        backend = SlotBackend(slots=1, delay=0.05)
        batcher = AdaptiveBatcher("m", backend, 64, 5.0, 5.0)
        blocker = asyncio.create_task(batcher.submit(rows(0), {}))
        await asyncio.sleep(0.01)
        impatient = asyncio.create_task(asyncio.wait_for(batcher.submit(rows(1), {}), 0.01))
        patient = asyncio.create_task(batcher.submit(rows(2), {}))
        with pytest.raises(TimeoutError):
            await impatient
        assert (await patient)["y"][0, 0] == 4
        await blocker
        await batcher.close()
        assert len(backend.calls[1][0]["x"]) == 1  # the abandoned request was dropped

    run(main())


def test_single_request_batches_are_not_copied() -> None:
    async def main() -> None:
        backend = SlotBackend()
        batcher = AdaptiveBatcher("m", backend, 64, 5.0, 5.0)
        request = rows(1, 2)
        await batcher.submit(request, {})
        assert backend.calls[0][0]["x"] is request["x"]
        await batcher.close()

    run(main())


def test_close_fails_queued_requests_and_refuses_new_ones() -> None:
    async def main() -> None:
        backend = SlotBackend(slots=1, delay=0.1)
        batcher = AdaptiveBatcher("m", backend, 64, 5.0, 5.0)
        running = asyncio.create_task(batcher.submit(rows(0), {}))
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(batcher.submit(rows(1), {}))
        await asyncio.sleep(0.01)
        await batcher.close()
        assert (await running)["y"][0, 0] == 0  # batches already sent finish normally
        with pytest.raises(Unavailable, match="shutting down"):
            await queued
        with pytest.raises(Unavailable):
            await batcher.submit(rows(2), {})

    run(main())


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "at least one input"),
        ({"x": np.float32(1.0) * np.ones(())}, "batch dimension"),
        ({"x": np.ones((2, 3)), "z": np.ones((3, 3))}, "disagree on the batch size"),
    ],
)
def test_malformed_requests_are_refused_before_queueing(inputs: Tensors, message: str) -> None:
    async def main() -> None:
        batcher = AdaptiveBatcher("m", SlotBackend(), 64, 5.0, 5.0)
        with pytest.raises(InvalidInput, match=message):
            await batcher.submit(inputs, {})
        assert batcher.queue_depth == 0
        await batcher.close()

    run(main())
