"""Model names served by more than one deployment: the seam between routing and inference.

A name with no route is served by the deployment of the same name (the common case, and the
hot path: one dict lookup that misses). A name *with* a route — a traffic split between
versions (``engine/traffic.py``) or a pipeline (``engine/pipelines.py``) — resolves through
its ``Route``, which hands back either a plain ``Deployment`` (a weighted choice) or a
``Routed`` target that runs the request itself (a shadow copy, a graph of steps).

``Routed`` looks like a ``Deployment`` to the transport layer (``record`` names the answering
model and version, ``version`` carries the signature), so the V2 and V1 handlers encode its
answers exactly like a deployment's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

import numpy as np

from modelport.engine.deployments import Deployment
from modelport.engine.registry import DeploymentRecord
from modelport.runtimes.base import Tensors
from modelport.types.admin import VersionInfo

InferFn: TypeAlias = Callable[
    ["Target", Mapping[str, np.ndarray], dict[str, Any] | None, bool], Awaitable[Tensors]
]
"""``InferenceService.infer`` as a routed target calls it: (target, inputs, params, cast)."""


class Routed(ABC):
    """A target that answers for a model name by calling other targets."""

    record: DeploymentRecord
    version: VersionInfo

    @abstractmethod
    async def run(
        self,
        infer: InferFn,
        inputs: Mapping[str, np.ndarray],
        params: dict[str, Any] | None,
        cast: bool,
    ) -> Tensors:
        """Answer one request; ``infer`` runs a sub-request on another target."""

    @abstractmethod
    def readiness(self) -> str | None:
        """``None`` when every target behind it is ready, else why not (V2 model ready)."""


Target: TypeAlias = Deployment | Routed


class Route(ABC):
    """What a routed model name resolves through (kept in ``RouteTable``)."""

    @abstractmethod
    def target(self, version: str | None) -> Target:
        """The target of one request (``version``: the one the path asks for, if any)."""


class RouteTable:
    """Model name → ``Route``, shared by the traffic and pipeline services (no I/O).

    Writers replace entries whole (a dict assignment is atomic for the event loop), so a
    request that already resolved its target finishes on it: switching a route never drops
    an in-flight request.
    """

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}

    def get(self, name: str) -> Route | None:
        return self.routes.get(name)

    def set(self, name: str, route: Route) -> None:
        self.routes[name] = route

    def remove(self, name: str, route: Route | None = None) -> None:
        """Drop ``name``'s route (only if it still is ``route``, when given)."""
        if route is None or self.routes.get(name) is route:
            self.routes.pop(name, None)
