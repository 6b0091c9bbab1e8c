"""One chat/completion request on one leased replica: its choices as a stream of events.

A ``Generation`` owns a backend lease from the moment ``LLMService.generate`` hands it out
until it is closed, and runs its choices (``n`` per prompt) one after the other on that
replica, each as a worker stream (``runtimes.text``). The consumer iterates ``events()``
(or awaits ``collect()``) and must close it; closing early — the client went away — closes
the worker stream at once (the worker gets "cancel"), frees the lease and emits the usage
event.

Token accounting follows the contract of ``engine.usage``: a choice that ran to its end
counts the runtime's ``completion_tokens``; a choice cut short counts the deltas the
consumer took *and came back for*. A streaming consumer asks for the next event only once
it has sent the previous one, so a delta whose send was interrupted is not counted.

A streamed generation also registers ``snapshot`` with the request context: the usage so
far *including the delta being sent*, which metering journals before each chunk goes out,
so a server killed mid-stream still bills every chunk whose send had started. Compute time
is the time the generation held its replica; all its events carry the start time, so one
price applies to the whole stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from numbers import Integral
from typing import Any, Literal

from modelport.backends.base import Replica
from modelport.engine.usage import UsageEvent, UsageHub, UsageKind, set_stream_snapshot
from modelport.errors import DeadlineExceeded, ModelportError
from modelport.runtimes.text import GenerationRequest

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Delta:
    """A piece of text of choice ``index`` and the number of tokens it took."""

    index: int
    text: str
    tokens: int


@dataclass(frozen=True)
class Finish:
    """Choice ``index`` ended: ``finish_reason`` is "stop" or "length"."""

    index: int
    finish_reason: FinishReason
    completion_tokens: int


GenerationEvent = Delta | Finish


@dataclass(frozen=True)
class Choice:
    """One finished choice of a non-streamed request."""

    index: int
    text: str
    finish_reason: FinishReason
    completion_tokens: int


@dataclass(frozen=True)
class Target:
    """What a generation runs on and reports against."""

    request_id: str
    model: str
    version: int
    kind: UsageKind
    streamed: bool


class Generation:
    """The choices of one request (see the module docstring). Build via ``LLMService``."""

    def __init__(
        self,
        target: Target,
        requests: Sequence[GenerationRequest],
        n: int,
        replica: Replica,
        release: Callable[[], Awaitable[object]],
        timeout_s: float,
        hub: UsageHub,
        on_tokens: Callable[[float], None],
    ) -> None:
        self.target = target
        self.id = target.request_id
        self.model = target.model
        self.created = int(time.time())
        self.choices = len(requests)
        self.prompt_tokens = 0
        self._requests = requests
        self._n = n
        self._replica = replica
        self._release: Callable[[], Awaitable[object]] | None = release
        self._timeout_s = timeout_s
        self._deadline = asyncio.get_running_loop().time() + timeout_s
        self._hub = hub
        self._on_tokens = on_tokens
        self._stream: AsyncIterator[Any] | None = None
        self._done_tokens = 0  # completion tokens of the choices that ended
        self._taken = 0  # delta tokens of the current choice the consumer took and came back
        self._sending = 0  # tokens of the delta the consumer holds now (being sent)
        self._started_at = datetime.now(UTC)
        self._started = time.perf_counter()
        self._compute_ms: float | None = None  # set when the replica is released
        self._answered = False
        self._finished = False
        self._closed = False

    @property
    def completion_tokens(self) -> int:
        """Completion tokens so far, by the rule in the module docstring."""
        return self._done_tokens + self._taken

    @property
    def finished(self) -> bool:
        return self._finished

    async def open(self) -> None:
        """Start the first choice. Errors before any output (a prompt longer than the
        context, a missing chat template) surface here, while an HTTP status can still
        be chosen."""
        await self._start(0)
        self._answered = True
        if self.target.streamed:
            set_stream_snapshot(self.snapshot)

    async def events(self) -> AsyncGenerator[GenerationEvent, None]:
        """The deltas and finishes of every choice, in order; closing it closes the request."""
        try:
            index = 0
            while True:
                item = await self._next()
                kind = item.get("type")
                if kind == "delta":
                    tokens = self._count(item, "tokens")
                    self._on_tokens(tokens)
                    self._sending = tokens
                    yield Delta(index, str(item.get("text", "")), tokens)
                    self._sending = 0
                    self._taken += tokens  # the consumer came back: the delta went out
                elif kind == "end":
                    reason: FinishReason = (
                        "length" if item.get("finish_reason") == "length" else "stop"
                    )
                    finish = Finish(index, reason, self._count(item, "completion_tokens"))
                    self._done_tokens += finish.completion_tokens
                    self._taken = 0
                    await self._end_stream()
                    last = index + 1 == len(self._requests)
                    self._finished = last
                    yield finish
                    if last:
                        return
                    index += 1
                    await self._start(index)
                else:
                    raise ModelportError(f"model {self.model!r} streamed an unexpected {kind!r}")
        finally:
            await self.aclose()

    async def collect(self) -> list[Choice]:
        """Run every choice to its end and return the texts (non-streamed requests)."""
        texts: list[list[str]] = [[] for _ in self._requests]
        choices: list[Choice] = []
        async with aclosing(self.events()) as events:
            async for event in events:
                if isinstance(event, Delta):
                    texts[event.index].append(event.text)
                else:
                    text = "".join(texts[event.index])
                    choices.append(
                        Choice(event.index, text, event.finish_reason, event.completion_tokens)
                    )
        return choices

    async def aclose(self) -> None:
        """Stop generating, free the replica and emit the usage event (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._close_stream()
        finally:
            self._sending = 0
            release, self._release = self._release, None
            if release is not None:
                await release()
                self._compute_ms = (time.perf_counter() - self._started) * 1000.0
            if self._finished or (self.target.streamed and self._answered):
                self._emit()

    # -- internals ----------------------------------------------------------------------------

    async def _start(self, index: int) -> None:
        self._stream = self._replica.stream(self._requests[index].to_payload())
        item = await self._next()
        if item.get("type") != "start":
            raise ModelportError(f"model {self.model!r} streamed {item.get('type')!r} first")
        if index % self._n == 0:  # n choices of one prompt share its prompt tokens
            self.prompt_tokens += self._count(item, "prompt_tokens")

    def _count(self, item: dict[str, Any], key: str) -> int:
        value = item.get(key)
        if not isinstance(value, Integral) or isinstance(value, bool) or value < 0:
            raise ModelportError(
                f"model {self.model!r} streamed a {item.get('type')!r} event without a "
                f"token count {key!r}"
            )
        return int(value)

    async def _next(self) -> dict[str, Any]:
        """The next event of the current choice, within the request's deadline."""
        assert self._stream is not None
        try:
            # The deadline covers only this wait, never a yield to the consumer.
            async with asyncio.timeout_at(self._deadline):
                item = await anext(self._stream)
        except StopAsyncIteration:
            raise ModelportError(
                f"model {self.model!r} ended a stream without an 'end' event"
            ) from None
        except TimeoutError:
            raise DeadlineExceeded(
                f"generation on model {self.model!r} did not finish within "
                f"{self._timeout_s:g} s (llm_request_timeout_s)"
            ) from None
        if not isinstance(item, dict):
            raise ModelportError(f"model {self.model!r} streamed a {type(item).__name__}")
        return item

    async def _end_stream(self) -> None:
        """After a choice's "end": wait for the worker's end of stream (no cancel needed)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            async with asyncio.timeout_at(self._deadline):
                await anext(stream)
        except (StopAsyncIteration, TimeoutError):
            pass
        finally:
            await _close(stream)

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await _close(stream)

    def snapshot(self) -> UsageEvent:
        """The usage so far, counting the delta being sent (see the module docstring)."""
        return self._event(self.completion_tokens + self._sending)

    def _event(self, completion: int) -> UsageEvent:
        target = self.target
        compute_ms = self._compute_ms
        if compute_ms is None:  # still holding the replica
            compute_ms = (time.perf_counter() - self._started) * 1000.0
        return UsageEvent(
            request_id=target.request_id,
            model=target.model,
            version=target.version,
            kind=target.kind,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
            streamed=target.streamed,
            finished=self._finished,
            created=self._started_at,
            rows=self.choices,
            compute_ms=compute_ms,
        )

    def _emit(self) -> None:
        self._hub.emit(self._event(self.completion_tokens))


async def _close(stream: AsyncIterator[Any]) -> None:
    """Close a replica stream; an unfinished one tells its worker to stop ("cancel")."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
