"""Usage events: one record per answered request, for metrics now and billing later.

Every request the engine answers (chat, completion, embedding, plain inference) produces
exactly one ``UsageEvent`` with token counts from the model's own tokenizer. A failed
request produces none. A stream produces one when it ends, counting only the tokens actually
sent to the client, also when the client went away midway (``finished=False``).

``UsageHub`` fans events out to subscribers. Built in: Prometheus token counters and a
bounded ring of recent events (``GET /api/usage/recent``). The metering/billing issue adds a
database writer with ``subscribe``. Subscribers run on the event loop, inline with the
request, so they must be quick and must not block: a slow sink queues the event and writes
it from its own task or thread. A failing subscriber is logged and never fails the request
or starves the other subscribers.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter

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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (``created`` as ISO 8601)."""
        data = asdict(self)
        data["created"] = self.created.isoformat()
        return data


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
