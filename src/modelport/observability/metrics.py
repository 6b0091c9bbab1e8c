"""Prometheus metrics, one registry per server instance (no process globals).

Counters and histograms are updated on the request path; replica and queue gauges are read
at scrape time from the live objects through a custom collector, so they are never stale
and cost nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class DeploymentGauges:
    """A snapshot of one deployment, taken at scrape time."""

    name: str
    queue_depth: int
    replicas_desired: int
    replicas_ready: int
    restarts: int
    inflight: int = 0
    memory_bytes: int = 0
    replicas_min: int | None = None  # autoscaling bounds (None: a fixed count)
    replicas_max: int | None = None
    last_scaling: float | None = None  # unix time of the last replica count change


class _LiveCollector(Collector):
    def __init__(self, snapshot: Callable[[], Iterable[DeploymentGauges]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            "modelport_queue_depth", "Requests waiting to be batched", labels=["model"]
        )
        desired = GaugeMetricFamily(
            "modelport_replicas_desired", "Replicas asked for", labels=["model"]
        )
        ready = GaugeMetricFamily("modelport_replicas_ready", "Replicas serving", labels=["model"])
        restarts = CounterMetricFamily(
            "modelport_replica_restarts", "Replica restarts after a crash", labels=["model"]
        )
        scaling = _ScalingFamilies()
        for snap in self._snapshot():
            queue.add_metric([snap.name], snap.queue_depth)
            desired.add_metric([snap.name], snap.replicas_desired)
            ready.add_metric([snap.name], snap.replicas_ready)
            restarts.add_metric([snap.name], snap.restarts)
            scaling.add(snap)
        yield from (queue, desired, ready, restarts)
        yield from scaling.families()


class _ScalingFamilies:
    """Autoscaling and memory gauges of the live deployments, built at scrape time."""

    def __init__(self) -> None:
        self.inflight = GaugeMetricFamily(
            "modelport_inflight_requests", "Requests queued or running", labels=["model"]
        )
        self.memory = GaugeMetricFamily(
            "modelport_deployment_memory_bytes",
            "Resident memory of a deployment's replicas (measured, or estimated while loading)",
            labels=["model"],
        )
        self.low = GaugeMetricFamily(
            "modelport_replicas_min", "Autoscaling floor", labels=["model"]
        )
        self.high = GaugeMetricFamily("modelport_replicas_max", "Autoscaling cap", labels=["model"])
        self.last = GaugeMetricFamily(
            "modelport_scaling_last_timestamp_seconds",
            "When the replica count last changed (unix time)",
            labels=["model"],
        )

    def add(self, snap: DeploymentGauges) -> None:
        self.inflight.add_metric([snap.name], snap.inflight)
        self.memory.add_metric([snap.name], snap.memory_bytes)
        if snap.replicas_min is not None and snap.replicas_max is not None:
            self.low.add_metric([snap.name], snap.replicas_min)
            self.high.add_metric([snap.name], snap.replicas_max)
        if snap.last_scaling is not None:
            self.last.add_metric([snap.name], snap.last_scaling)

    def families(self) -> tuple[Metric, ...]:
        return (self.inflight, self.memory, self.low, self.high, self.last)


class Metrics:
    """The server's metrics; ``render()`` gives the Prometheus text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "modelport_requests",
            "Inference requests by model, protocol and outcome",
            ["model", "protocol", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelport_request_latency_seconds",
            "Inference latency seen by the server, parse to response",
            ["model", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.batch_size = Histogram(
            "modelport_batch_size",
            "Rows per model call after batching",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.scaling = Counter(
            "modelport_scaling_decisions",
            "Replica count changes by direction (up, down, blocked) and cause "
            "(autoscale, cold_start, eviction, admin, repository)",
            ["model", "direction", "cause"],
            registry=self.registry,
        )
        self.memory_budget = Gauge(
            "modelport_memory_budget_bytes",
            "Memory budget for model replicas on this node (0: none)",
            registry=self.registry,
        )

    def scaling_decision(self, model: str, direction: str, cause: str) -> None:
        """Count one replica count change (or a blocked one)."""
        self.scaling.labels(model, direction, cause).inc()

    def set_memory_budget(self, budget_bytes: int | None) -> None:
        self.memory_budget.set(budget_bytes or 0)

    def observe_request(self, model: str, protocol: str, status: int, seconds: float) -> None:
        """Count one inference request and its latency (hot path: children are cached)."""
        key = (model, protocol, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(model, protocol, str(status)),
                self.latency.labels(model, protocol),
            )
        children[0].inc()
        children[1].observe(seconds)

    def batch_observer(self, model: str) -> Callable[[int], None]:
        """A callback for a batcher: records the size of each dispatched batch."""
        child = self.batch_size.labels(model)
        return child.observe

    def track(self, snapshot: Callable[[], Iterable[DeploymentGauges]]) -> None:
        """Report live deployment gauges from ``snapshot`` at every scrape."""
        self.registry.register(_LiveCollector(snapshot))

    def render(self) -> bytes:
        return generate_latest(self.registry)
