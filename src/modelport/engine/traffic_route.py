"""The per-request half of traffic management: a weighted choice and shadow copies.

``TrafficRoute`` is what ``InferenceService.resolve`` finds for a model with a route. Each
request draws one deployment by weight (``WeightedChoice``: a bisect over cumulative
weights, deterministic under a seeded ``random.Random``), so over many requests each
deployment gets its share. With a shadow, the request is wrapped in ``Shadowed``, which
sends a copy to the shadow deployment in the background (answer discarded, its metrics
kept under ``protocol="shadow"``) and answers from the chosen one.

Shadow copies never slow or fail the real request: they run in their own task, at most
``ShadowSender.limit`` at a time (more are skipped and counted), outside the caller's request
context (so they are neither metered nor billed).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from modelport.engine.access import AccessIndex
from modelport.engine.deployments import Deployment, DeploymentManager
from modelport.engine.principal import CURRENT
from modelport.engine.routing import InferFn, Route, Routed, Target
from modelport.engine.traffic_records import TrafficState
from modelport.errors import DeploymentNotFound, ModelportError, VersionNotFound
from modelport.observability.metrics import Metrics
from modelport.runtimes.base import Tensors
from modelport.types.admin import DeploymentState

log = logging.getLogger("modelport.traffic")

SHADOW_PROTOCOL = "shadow"


class WeightedChoice:
    """Pick names with probability proportional to their weights."""

    def __init__(self, weights: Mapping[str, int], rng: random.Random) -> None:
        items = [(name, w) for name, w in weights.items() if w > 0]
        if not items:
            raise ValueError("a weighted choice needs a positive weight")
        self.names = [name for name, _ in items]
        self._cumulative = list(itertools.accumulate(w for _, w in items))
        self._total = self._cumulative[-1]
        self._rng = rng

    def pick(self) -> str:
        if len(self.names) == 1:
            return self.names[0]
        point = self._rng.random() * self._total
        return self.names[bisect.bisect_right(self._cumulative, point)]


class ShadowSender:
    """Fire-and-forget copies of requests to shadow deployments (bounded)."""

    def __init__(self, metrics: Metrics, limit: int = 64) -> None:
        self._metrics = metrics
        self.limit = limit
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0

    def send(
        self,
        infer: InferFn,
        shadow: Deployment,
        inputs: Mapping[str, np.ndarray],
        params: dict[str, Any] | None,
        cast: bool,
    ) -> None:
        if len(self._tasks) >= self.limit:
            self.dropped += 1
            return
        task = asyncio.create_task(self._copy(infer, shadow, dict(inputs), params, cast))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _copy(
        self,
        infer: InferFn,
        shadow: Deployment,
        inputs: dict[str, np.ndarray],
        params: dict[str, Any] | None,
        cast: bool,
    ) -> None:
        CURRENT.set(None)  # this task's own context: the copy is not the caller's usage
        started = time.perf_counter()
        status = 200
        try:
            await infer(shadow, inputs, params, cast)
        except ModelportError as exc:
            status = int(exc.status)
        except Exception:  # a shadow must never take the server down; it is counted below
            log.exception("shadow copy to %s failed", shadow.record.name)
            status = 500
        self._metrics.observe_request(
            shadow.record.name, SHADOW_PROTOCOL, status, time.perf_counter() - started
        )

    async def drain(self) -> None:
        """Wait for the copies in flight (tests, shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class Shadowed(Routed):
    """A request answered by ``primary`` while ``shadow`` receives a copy."""

    def __init__(
        self,
        primary: Deployment,
        shadow: Deployment,
        sender: ShadowSender,
        state_of: Callable[[str], DeploymentState],
    ) -> None:
        self.record = primary.record
        self.version = primary.version
        self._primary = primary
        self._shadow = shadow
        self._sender = sender
        self._state_of = state_of

    async def run(
        self,
        infer: InferFn,
        inputs: Mapping[str, np.ndarray],
        params: dict[str, Any] | None,
        cast: bool,
    ) -> Tensors:
        answer = await infer(self._primary, inputs, params, cast)
        # Copied once the primary accepted the inputs: a malformed request is not shadowed.
        self._sender.send(infer, self._shadow, inputs, params, cast)
        return answer

    def readiness(self) -> str | None:
        state = self._state_of(self._primary.record.name)
        return None if state == DeploymentState.READY else f"{self.record.name} is {state.value}"


class TrafficRoute(Route):
    """One model's split (see the module docstring)."""

    def __init__(
        self,
        state: TrafficState,
        deployments: DeploymentManager,
        access: AccessIndex,
        sender: ShadowSender,
        rng: random.Random,
    ) -> None:
        self.state = state
        self._deployments = deployments
        self._access = access
        self._sender = sender
        self._choice = WeightedChoice(state.shares(), rng)

    def _missing(self) -> DeploymentNotFound:
        # Exactly what an unrouted name that is not deployed answers (no leak, engine/access).
        return DeploymentNotFound(f"model {self.state.model!r} is not deployed", param="model")

    def _live(self, name: str) -> Deployment | None:
        try:
            return self._deployments.get(name)
        except DeploymentNotFound:
            return None

    def target(self, version: str | None) -> Target:
        if not self._access.visible(self.state.model):
            raise self._missing()
        live: Deployment | None
        if version is not None:
            live = self._by_version(version)
        else:
            # A deployment removed under the route: its share goes to the stable one.
            live = self._live(self._choice.pick()) or self._live(self.state.stable)
            if live is None:
                raise self._missing()
        shadow = self._live(self.state.shadow) if self.state.shadow is not None else None
        if shadow is None or shadow is live:
            return live
        return Shadowed(live, shadow, self._sender, self._state)

    def _by_version(self, version: str) -> Deployment:
        state = self.state
        for name in (state.stable, *state.weights, state.previous, state.shadow):
            live = self._live(name) if name is not None else None
            if live is not None and str(live.record.version) == version:
                return live
        raise VersionNotFound(
            f"version {version!r} of model {self.state.model!r} is not deployed", param="version"
        )

    def _state(self, name: str) -> DeploymentState:
        return self._deployments.status(name).state
