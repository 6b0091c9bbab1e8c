"""Traffic management: canary splits by weight, shadow traffic, promote and rollback.

A model's requests normally go to the deployment of the same name. A *route*
(``TrafficState``) splits them instead: the ``stable`` deployment takes what the other
deployments' weights leave, a ``shadow`` deployment receives copies. Other versions run as
their own deployments, named ``<model>.v<version>`` and configured like the stable one, so
each scales on its own and switching between them never restarts a replica.

- ``set`` (``PUT /api/models/{m}/traffic``): weights per version, and a shadow version.
- ``promote``: the version becomes ``stable`` (100 %), the old stable is kept as
  ``previous``; the model's ``production`` alias moves to it and ``previous`` names the old.
- ``rollback``: cancels a canary or shadow if there is one, else returns to ``previous``.

Nothing is undeployed by these moves: a request that already resolved its deployment
finishes there (the route is swapped by one dict assignment), and a deployment only gets
traffic once it is ready. Old deployments stay up for an instant rollback until removed
with ``modelport undeploy <model>.v<n>``.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

from modelport.engine.deployments import Deployment, DeploymentManager
from modelport.engine.registry import Registry
from modelport.engine.routing import RouteTable
from modelport.engine.traffic_records import TrafficRecords, TrafficState
from modelport.engine.traffic_route import ShadowSender, TrafficRoute
from modelport.errors import (
    Conflict,
    DeploymentNotFound,
    InvalidInput,
    ModelNotFound,
    NotReady,
)
from modelport.observability.metrics import Metrics
from modelport.settings import Settings
from modelport.types.admin import DeploymentState, DeploySpec
from modelport.types.traffic import RouteEntry, TrafficSpec, TrafficStatus

# States a deployment takes traffic in ("idle": at zero replicas, started by a request).
_SERVING = frozenset({"ready", "idle"})
PRODUCTION_ALIAS = "production"
PREVIOUS_ALIAS = "previous"


def version_deployment(model: str, version: int) -> str:
    """The name of the deployment that runs one version of ``model`` beside its stable one."""
    return f"{model}.v{version}"


class TrafficService:
    """Routes of models between their deployments (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        deployments: DeploymentManager,
        routes: RouteTable,
        records: TrafficRecords,
        metrics: Metrics,
        *,
        seed: int | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._access = registry.access
        self._deployments = deployments
        self._routes = routes
        self._records = records
        self._rng = random.Random(seed)
        self.shadows = ShadowSender(metrics)
        self._states: dict[str, TrafficState] = {}
        self._lock = asyncio.Lock()  # one change at a time: read-modify-write of a route

    async def restore(self) -> None:
        """Install the stored routes (server start, after the deployments are restored)."""
        for state in await asyncio.to_thread(self._records.load_all):
            self._install(state)

    # -- reads ----------------------------------------------------------------------------

    async def status(self, model: str) -> TrafficStatus:
        await self._check(model, change=False)
        return self._status(self._state(model))

    def _status(self, state: TrafficState) -> TrafficStatus:
        routes = [self._entry(name, weight) for name, weight in state.shares().items()]
        return TrafficStatus(
            model=state.model,
            stable=state.stable,
            routes=[r for r in routes if r is not None],
            shadow=self._entry(state.shadow, 0) if state.shadow else None,
            previous=state.previous,
            shadow_dropped=self.shadows.dropped,
        )

    def _entry(self, name: str, weight: int) -> RouteEntry | None:
        try:
            status = self._deployments.status(name)
        except DeploymentNotFound:
            return None
        return RouteEntry(
            deployment=name, version=status.version, weight=weight, state=status.state.value
        )

    # -- changes --------------------------------------------------------------------------

    async def set(self, model: str, spec: TrafficSpec) -> TrafficStatus:
        """Split ``model``'s requests as ``spec`` says (deploying versions that need it)."""
        await self._check(model, change=True)
        values = spec.weights.values()
        if sum(values) > 100 or any(not 0 <= w <= 100 for w in values):
            raise InvalidInput(
                "weights are percentages from 0 to 100 that add up to at most 100",
                param="weights",
            )
        async with self._lock:
            state = self._state(model)
            stable = self._stable(state)
            weights: dict[str, int] = {}
            for version, weight in spec.weights.items():
                name = await self._ensure(model, version, stable)
                if name == state.stable:
                    raise InvalidInput(
                        f"version {version} is the stable one; it gets what the others leave",
                        param="weights",
                    )
                weights[name] = weight
            shadow = None
            if spec.shadow is not None:
                shadow = await self._ensure(model, spec.shadow, stable)
                if shadow == state.stable:
                    raise InvalidInput(
                        f"version {spec.shadow} is the stable one; shadow another version",
                        param="shadow",
                    )
            state = replace(state, weights=weights, shadow=shadow)
            await self._commit(state)
        return self._status(state)

    async def promote(self, model: str, version: int | None) -> TrafficStatus:
        """Send all of ``model``'s traffic to ``version`` (default: the current canary)."""
        await self._check(model, change=True)
        async with self._lock:
            state = self._state(model)
            stable = self._stable(state)
            if version is None:
                canaries = sorted(state.weights.items(), key=lambda kv: -kv[1])
                if not canaries or canaries[0][1] == 0:
                    raise Conflict(
                        f"model {model!r} has no canary to promote; name a version",
                        param="version",
                    )
                target = canaries[0][0]
            else:
                target = await self._ensure(model, version, stable)
            if target == state.stable:
                state = replace(state, weights={})
            else:
                state = TrafficState(model, stable=target, previous=state.stable)
            await self._commit(state)
            await self._move_aliases(state)
        return self._status(state)

    async def rollback(self, model: str) -> TrafficStatus:
        """Cancel the canary/shadow, or (with none) return to the previous stable deployment."""
        await self._check(model, change=True)
        async with self._lock:
            state = self._state(model)
            if any(state.weights.values()) or state.shadow is not None:
                state = replace(state, weights={}, shadow=None)
            elif state.previous is not None:
                if self._live(state.previous) is None:
                    raise Conflict(
                        f"the previous deployment {state.previous!r} is gone; deploy it again",
                        param="model",
                    )
                state = TrafficState(model, stable=state.previous)
                await self._move_aliases(state)
            else:
                raise Conflict(f"model {model!r} has nothing to roll back", param="model")
            await self._commit(state)
        return self._status(state)

    # -- internals ------------------------------------------------------------------------

    async def _check(self, model: str, *, change: bool) -> None:
        """``ModelNotFound`` (also for a model the caller may not see), 403 to change."""
        if not self._access.visible(model):
            raise ModelNotFound(f"model {model!r} not found", param="model")
        await asyncio.to_thread(self._registry.get_model, model)  # exists at all?
        if change:
            self._access.check_change(model)

    def _state(self, model: str) -> TrafficState:
        return self._states.get(model) or TrafficState(model, stable=model)

    def _live(self, name: str) -> Deployment | None:
        try:
            return self._deployments.get(name)
        except DeploymentNotFound:
            return None

    def _stable(self, state: TrafficState) -> Deployment:
        live = self._live(state.stable)
        if live is None:
            raise Conflict(
                f"model {state.model!r} is not deployed: deploy it before splitting its traffic",
                param="model",
            )
        return live

    async def _ensure(self, model: str, version: int, like: Deployment) -> str:
        """The name of a ready deployment of ``model`` ``version``, deploying it if needed."""
        for name in self._deployments.names():
            live = self._live(name)
            if live is not None and live.record.model == model and live.record.version == version:
                await self._wait_ready(name)
                return name
        name = version_deployment(model, version)
        if self._access.owner(name) is not None:
            raise Conflict(
                f"a model named {name!r} exists; its deployment name is taken", param="version"
            )
        await self._deployments.deploy(self._like(like, version), name=name)
        await self._wait_ready(name)
        return name

    def _like(self, like: Deployment, version: int) -> DeploySpec:
        """A spec for ``version`` configured like deployment ``like`` (batching, scaling)."""
        status = self._deployments.status(like.record.name).model_dump()
        given = {k: status[k] for k in DeploySpec.model_fields if status.get(k) is not None}
        return DeploySpec.model_validate({**given, "model": like.record.model, "version": version})

    async def _wait_ready(self, name: str) -> None:
        """Wait (bounded) until ``name`` can take traffic; a failed one is refused."""
        try:
            async with asyncio.timeout(self._settings.worker_start_timeout_s):
                while True:
                    status = self._deployments.status(name)
                    if status.state.value in _SERVING:
                        return
                    if status.state in (DeploymentState.FAILED, DeploymentState.STOPPED):
                        raise NotReady(
                            f"deployment {name!r} is {status.state.value}"
                            + (f": {status.reason}" if status.reason else "")
                            + "; traffic was not moved"
                        )
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise NotReady(
                f"deployment {name!r} did not become ready in "
                f"{self._settings.worker_start_timeout_s:g} s; traffic was not moved"
            ) from None

    async def _commit(self, state: TrafficState) -> None:
        await asyncio.to_thread(self._records.save, state)
        self._install(state)

    def _install(self, state: TrafficState) -> None:
        if state.trivial():
            self._states.pop(state.model, None)
            self._routes.remove(state.model)
            return
        self._states[state.model] = state
        route = TrafficRoute(state, self._deployments, self._access, self.shadows, self._rng)
        self._routes.set(state.model, route)

    async def _move_aliases(self, state: TrafficState) -> None:
        for alias, name in ((PRODUCTION_ALIAS, state.stable), (PREVIOUS_ALIAS, state.previous)):
            live = self._live(name) if name is not None else None
            if live is not None:
                await asyncio.to_thread(
                    self._registry.set_alias, state.model, alias, live.record.version
                )
