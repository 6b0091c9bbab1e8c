"""Adaptive batching: many callers' rows, one model call.

Callers ``submit`` named arrays whose axis 0 is their rows. Compatible requests (same input
names, dtypes and trailing shapes, equal params) are concatenated along axis 0 into one
batch, sent to one replica, and each caller gets exactly its own rows of every output back.

One dispatcher task per deployment forms batches. It takes a backend *lease* before it
closes a batch, so while every replica is busy requests keep queueing and the next batch
grows on its own. With a lease in hand, the batch of the oldest waiting request closes when

* it holds ``max_batch_size`` rows, or
* ``max_latency_ms`` passed since its first request arrived, or
* a whole event-loop turn went by without a new request for it: at low load a request
  goes out at once, while under load (many arrivals per turn) batches fill up without
  any timer.

A request larger than ``max_batch_size`` goes alone (never split). Several batches can be in
flight at once, one per lease; a failed batch fails every caller in it. Per request the hot
path costs one future and a deque append: no task, and no copy when a batch holds a single
request.

``submit_timed`` also tells the caller its share of the model time of the batch that served
it (the batch's ``replica.predict`` wall time split by rows), which metering bills as
``compute_ms``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from contextlib import AbstractAsyncContextManager
from typing import Any

import numpy as np
import orjson

from modelport.backends.base import Backend, Replica
from modelport.errors import DeadlineExceeded, InvalidInput, ModelportError, Unavailable
from modelport.runtimes.base import Tensors

logger = logging.getLogger(__name__)


class _Request:
    __slots__ = ("arrived", "compute_ms", "future", "inputs", "params", "rows", "seq")

    def __init__(
        self,
        future: asyncio.Future[Tensors],
        inputs: Tensors,
        params: dict[str, Any],
        rows: int,
        arrived: float,
        seq: int,
    ) -> None:
        self.future = future
        self.inputs = inputs
        self.params = params
        self.rows = rows
        self.arrived = arrived
        self.seq = seq
        self.compute_ms = 0.0  # this request's share of its batch's model time


class _Group:
    """Queued requests that may share a batch."""

    __slots__ = ("arrivals", "key", "queue", "rows")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.queue: deque[_Request] = deque()
        self.rows = 0  # queued rows, cancelled requests included until dropped
        self.arrivals = 0


class AdaptiveBatcher:
    """Merge concurrent requests for deployment ``name`` into batches (see module doc)."""

    def __init__(
        self,
        name: str,
        backend: Backend,
        max_batch_size: int,
        max_latency_ms: float,
        lease_timeout: float,
        on_batch: Callable[[int], None] | None = None,
        call_timeout: float | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise InvalidInput(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_latency_ms < 0:
            raise InvalidInput(f"max_latency_ms must be >= 0, got {max_latency_ms}")
        self._name = name
        self._backend = backend
        self._max_rows = max_batch_size
        self._max_latency = max_latency_ms / 1000.0
        self._lease_timeout = lease_timeout
        # One timer per batch, not per request: a request waits at most lease_timeout for a
        # replica, then call_timeout for its batch's answer.
        self._call_timeout = call_timeout
        self._on_batch = on_batch
        self._groups: dict[Hashable, _Group] = {}
        self._queued = 0  # requests in all groups, cancelled ones until dropped
        self._sent = 0  # requests in batches sent to a replica and not yet answered
        self._seq = 0
        self._wakeup: asyncio.Future[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (not counting batches already sent)."""
        return sum(not r.future.done() for g in self._groups.values() for r in g.queue)

    @property
    def load(self) -> int:
        """Requests in this deployment now: queued plus in sent batches (autoscaling)."""
        return self._queued + self._sent

    async def submit(self, inputs: Tensors, params: dict[str, Any]) -> Tensors:
        """Queue one request and wait for its rows of the outputs."""
        return await self._enqueue(inputs, params).future

    async def submit_timed(self, inputs: Tensors, params: dict[str, Any]) -> tuple[Tensors, float]:
        """``submit``, plus the request's share (by rows) of its batch's model time in ms."""
        request = self._enqueue(inputs, params)
        outputs = await request.future
        return outputs, request.compute_ms

    def _enqueue(self, inputs: Tensors, params: dict[str, Any]) -> _Request:
        if self._closed:
            raise Unavailable(f"deployment {self._name!r} is shutting down")
        rows = _rows(inputs)
        key = (_layout(inputs), _params_key(params))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Tensors] = loop.create_future()
        self._seq += 1
        request = _Request(future, inputs, params, rows, loop.time(), self._seq)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(key)
        group.queue.append(request)
        group.rows += rows
        group.arrivals += 1
        self._queued += 1
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = loop.create_task(self._dispatch(), name=f"batcher-{self._name}")
        return request

    async def close(self) -> None:
        """Fail queued requests with ``Unavailable``; batches already sent finish normally."""
        self._closed = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        self._fail_queued(Unavailable(f"deployment {self._name!r} is shutting down"))
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    # -- the dispatcher -----------------------------------------------------------------------

    async def _dispatch(self) -> None:
        try:
            while True:
                await self._dispatch_one()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave callers waiting forever
            logger.exception("batcher for %r failed", self._name)
            self._fail_queued(exc)

    async def _dispatch_one(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._queued:
            self._wakeup = loop.create_future()
            await self._wakeup
            self._wakeup = None
        horizon = self._seq
        lease = self._backend.lease(self._name, self._lease_timeout)
        try:
            replica = await lease.__aenter__()
        except ModelportError as exc:
            self._fail_queued(exc, up_to=horizon)  # those that waited for this lease
            return
        try:
            batch = await self._close_batch()
        except BaseException:
            await lease.__aexit__(None, None, None)
            raise
        if not batch:  # every queued caller gave up meanwhile
            await lease.__aexit__(None, None, None)
            return
        task = loop.create_task(self._run(lease, replica, batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _close_batch(self) -> list[_Request]:
        group = self._oldest_group()
        if group is None:
            return []
        loop = asyncio.get_running_loop()
        deadline = group.queue[0].arrived + self._max_latency
        while group.rows < self._max_rows and loop.time() < deadline:
            seen = group.arrivals
            await asyncio.sleep(0)  # one loop turn: let requests already on their way arrive
            if group.arrivals == seen:
                break
        return self._take(group)

    async def _run(
        self,
        lease: AbstractAsyncContextManager[Replica],
        replica: Replica,
        batch: list[_Request],
    ) -> None:
        self._sent += len(batch)
        try:
            try:
                if len(batch) == 1:
                    inputs, rows = batch[0].inputs, batch[0].rows
                else:
                    inputs, rows = _concat(batch), sum(r.rows for r in batch)
                if self._on_batch is not None:
                    self._on_batch(rows)
                started = time.perf_counter()
                async with asyncio.timeout(self._call_timeout):
                    outputs = await replica.predict(inputs, batch[0].params)
                per_row_ms = (time.perf_counter() - started) * 1000.0 / rows
            finally:
                await lease.__aexit__(None, None, None)  # free the slot before fanning out
            for request in batch:
                request.compute_ms = per_row_ms * request.rows
            if len(batch) == 1:
                _resolve(batch[0].future, outputs)
            else:
                _split(outputs, batch, rows)
        except asyncio.CancelledError:
            _fail(batch, Unavailable(f"deployment {self._name!r} is shutting down"))
            raise
        except TimeoutError:
            _fail(batch, DeadlineExceeded(
                f"deployment {self._name!r} did not answer within {self._call_timeout:g} s"
            ))  # fmt: skip
        except Exception as exc:
            _fail(batch, exc)
        finally:
            self._sent -= len(batch)

    # -- queue bookkeeping ----------------------------------------------------------------------

    def _oldest_group(self) -> _Group | None:
        oldest: _Group | None = None
        for group in list(self._groups.values()):
            self._drop_cancelled_head(group)
            if group.queue and (oldest is None or group.queue[0].seq < oldest.queue[0].seq):
                oldest = group
        return oldest

    def _drop_cancelled_head(self, group: _Group) -> None:
        queue = group.queue
        while queue and queue[0].future.done():
            self._pop(group)

    def _take(self, group: _Group) -> list[_Request]:
        batch: list[_Request] = []
        rows = 0
        queue = group.queue
        while queue:
            head = queue[0]
            if head.future.done():  # its caller gave up
                self._pop(group)
                continue
            if batch and rows + head.rows > self._max_rows:
                break
            batch.append(self._pop(group))
            rows += head.rows
        return batch

    def _pop(self, group: _Group) -> _Request:
        request = group.queue.popleft()
        group.rows -= request.rows
        self._queued -= 1
        if not group.queue:
            del self._groups[group.key]
        return request

    def _fail_queued(self, exc: BaseException, up_to: int | None = None) -> None:
        for group in list(self._groups.values()):
            while group.queue and (up_to is None or group.queue[0].seq <= up_to):
                request = self._pop(group)
                if not request.future.done():
                    request.future.set_exception(exc)


def _rows(inputs: Tensors) -> int:
    rows: int | None = None
    for name, array in inputs.items():
        if array.ndim == 0:
            raise InvalidInput(f"input {name!r} needs a batch dimension (axis 0)", param=name)
        if rows is None:
            rows = int(array.shape[0])
        elif array.shape[0] != rows:
            raise InvalidInput(
                f"inputs disagree on the batch size (axis 0): {name!r} has "
                f"{array.shape[0]} rows, the others {rows}",
                param=name,
            )
    if rows is None:
        raise InvalidInput("a request needs at least one input tensor")
    if rows == 0:
        raise InvalidInput("empty request: the inputs have no rows (axis 0 is 0)")
    return rows


def _layout(inputs: Tensors) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """What must match for two requests to be concatenated: names, dtypes, trailing shapes."""
    layout = tuple((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items())
    return layout if len(layout) == 1 else tuple(sorted(layout))


def _params_key(params: dict[str, Any]) -> Hashable:
    if not params:
        return None
    try:
        return orjson.dumps(params, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:  # not JSON-like: such a request is never merged with another
        return object()


def _concat(batch: list[_Request]) -> Tensors:
    return {
        name: np.concatenate([r.inputs[name] for r in batch], axis=0) for name in batch[0].inputs
    }


def _split(outputs: Tensors, batch: list[_Request], rows: int) -> None:
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != rows:
            shape = list(array.shape)
            raise ModelportError(
                f"output {name!r} has shape {shape}; a batch of {rows} rows needs {rows} "
                "on axis 0 (this model cannot be batched: use max_batch_size=1)"
            )
    start = 0
    for request in batch:
        end = start + request.rows
        _resolve(request.future, {name: array[start:end] for name, array in outputs.items()})
        start = end


def _resolve(future: asyncio.Future[Tensors], outputs: Tensors) -> None:
    if not future.done():  # a caller that timed out is simply skipped
        future.set_result(outputs)


def _fail(batch: list[_Request], exc: BaseException) -> None:
    for request in batch:
        if not request.future.done():
            request.future.set_exception(exc)
