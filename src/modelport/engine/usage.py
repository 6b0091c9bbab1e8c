"""Usage events: one record per answered request, for metrics now and billing later.

Every request the engine answers (chat, completion, embedding, plain inference) produces
exactly one ``UsageEvent`` with token counts from the model's own tokenizer. A failed
request produces none. A stream produces one when it ends, counting only the tokens actually
sent to the client, also when the client went away midway (``finished=False``).

``UsageHub`` fans events out to subscribers. Built in: Prometheus token counters and a
bounded ring of recent events (``GET /api/usage/recent``); the meter (``engine.metering``)
subscribes too and turns each event into a billed usage record. Subscribers run on the
event loop, inline with the request, so they must be quick and must not block: a slow sink
queues the event and writes it from its own task or thread. A failing subscriber is logged
and never fails the request or starves the other subscribers.

Billing units beside the tokens: ``requests`` (1), ``rows`` (axis 0 of a V2/V1 request or
the inputs of an embedding) and ``compute_ms``, the model time of the batch that served the
request shared among its requests by rows (``add_compute_ms``/``take_compute_ms`` carry it
from the batcher to the event through the request context). ``tenant_id``/``key_id`` may
stay None: the meter fills them from the request's principal.

A streamed response also registers a *snapshot* provider (``set_stream_snapshot``): the
usage so far, which the metering middleware journals before each chunk it sends, so a
stream cut short by a crash is still billed for what it sent.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter

from modelport.engine.principal import CURRENT

log = logging.getLogger("modelport.usage")

UsageKind = Literal["chat", "completion", "embedding", "inference"]
Subscriber = Callable[["UsageEvent"], None]


@dataclass(frozen=True)
class UsageEvent:
    """What one answered request consumed."""

    request_id: str
    model: str
    version: int
    kind: UsageKind
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    streamed: bool = False
    finished: bool = True  # False: the client left (or the stream broke) before the end
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    tenant_id: int | None = None  # None: the meter takes the request's principal
    key_id: int | None = None  # api_keys.id, likewise
    rows: int = 0
    compute_ms: float = 0.0  # model time of the serving batch, this request's share
    requests: int = 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (``created`` as ISO 8601)."""
        data = asdict(self)
        data["created"] = self.created.isoformat()
        return data


# Keys of ``RequestContext.extra`` (engine.principal) used by metering.
COMPUTE_MS = "usage.compute_ms"
STREAM_SNAPSHOT = "usage.snapshot"


def add_compute_ms(ms: float) -> None:
    """Add model time to the current request (no-op outside a request)."""
    context = CURRENT.get()
    if context is not None:
        extra = context.extra
        before = extra.get(COMPUTE_MS)
        extra[COMPUTE_MS] = ms + before if isinstance(before, float) else ms


def take_compute_ms() -> float:
    """The model time added to the current request so far, reset to zero."""
    context = CURRENT.get()
    if context is None:
        return 0.0
    ms = context.extra.pop(COMPUTE_MS, 0.0)
    return ms if isinstance(ms, float) else 0.0


def set_stream_snapshot(snapshot: Callable[[], UsageEvent]) -> None:
    """Register the usage-so-far of the current request's stream (see the module doc)."""
    context = CURRENT.get()
    if context is not None:
        context.extra[STREAM_SNAPSHOT] = snapshot


class UsageHub:
    """Publish usage events to subscribers (see the module docstring)."""

    def __init__(self, recent: int = 1000, registry: CollectorRegistry | None = None) -> None:
        self._subscribers: list[Subscriber] = []
        self._recent: deque[UsageEvent] = deque(maxlen=recent)
        if recent:
            self.subscribe(self._recent.append)
        if registry is not None:
            self.subscribe(PrometheusUsage(registry))

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on; returns an unsubscribe."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def emit(self, event: UsageEvent) -> None:
        """Hand ``event`` to every subscriber, in subscription order."""
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("usage subscriber %r failed on %s", callback, event.request_id)

    def recent(self, limit: int | None = None) -> list[UsageEvent]:
        """The newest events, oldest first (at most ``limit``)."""
        events = list(self._recent)
        return events if limit is None else events[-limit:] if limit > 0 else []


class PrometheusUsage:
    """Subscriber: token and request counters by model and kind."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tokens = Counter(
            "modelport_tokens",
            "Tokens consumed by answered requests (prompt or completion)",
            ["model", "kind", "type"],
            registry=registry,
        )
        self.requests = Counter(
            "modelport_usage_requests",
            "Answered requests with usage, by whether they ran to the end",
            ["model", "kind", "finished"],
            registry=registry,
        )

    def __call__(self, event: UsageEvent) -> None:
        if event.prompt_tokens:
            self.tokens.labels(event.model, event.kind, "prompt").inc(event.prompt_tokens)
        if event.completion_tokens:
            self.tokens.labels(event.model, event.kind, "completion").inc(event.completion_tokens)
        self.requests.labels(event.model, event.kind, str(event.finished).lower()).inc()
