"""Protocol-neutral inference: find the deployment, check inputs, batch, wait.

V2 and V1 routes (and later OpenAI routes) call this; it knows no HTTP. Inputs are checked
against the version's signature *before* batching, so one caller's bad tensor can never fail
a batch shared with others.

Routes (``engine/routing.py``): a model name with a traffic split or a pipeline resolves
through its ``Route``; a name without one costs one dict lookup that misses.

Metering: ``infer`` adds the request's share of its batch's model time to the request
context, and the routes call ``answered`` once their response is encoded, which emits the
request's one ``UsageEvent`` (a request that failed emits none).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from modelport.engine.deployments import Deployment, DeploymentManager
from modelport.engine.principal import CURRENT
from modelport.engine.routing import RouteTable, Target
from modelport.engine.usage import UsageEvent, UsageHub, add_compute_ms, take_compute_ms
from modelport.errors import VersionNotFound
from modelport.runtimes.base import Tensors, validate_inputs


class InferenceService:
    """Run inference requests against live deployments."""

    def __init__(
        self,
        deployments: DeploymentManager,
        usage: UsageHub | None = None,
        routes: RouteTable | None = None,
    ) -> None:
        self._deployments = deployments
        self._usage = usage
        self.routes = routes if routes is not None else RouteTable()
        self._routes = self.routes.routes  # the dict itself: one lookup per request

    def resolve(self, model: str, version: str | None = None) -> Target:
        """The target answering for ``model`` (and ``version``, when given)."""
        route = self._routes.get(model)
        if route is not None:
            return route.target(version)
        live = self._deployments.get(model)
        if version is not None and version != str(live.record.version):
            raise VersionNotFound(
                f"version {version!r} of model {model!r} is not deployed "
                f"(serving version {live.record.version})",
                param="version",
            )
        return live

    async def infer(
        self,
        live: Target,
        inputs: Mapping[str, np.ndarray],
        params: dict[str, Any] | None = None,
        *,
        cast: bool = False,
    ) -> Tensors:
        """Validate ``inputs`` against the deployed signature and run them through the batcher.

        A routed target (a shadowed split, a pipeline) runs the request itself, calling back
        here for each deployment it uses.
        """
        if not isinstance(live, Deployment):  # a plain class: a cheap check on the hot path
            return await live.run(self._infer_sub, inputs, params, cast)
        checked = validate_inputs(live.version.signature, inputs, cast=cast)
        # The batcher checks the rows (axis 0) agree and are not empty; deadlines are kept
        # per batch there too (one timer per batch, not per request).
        outputs, compute_ms = await live.batcher.submit_timed(checked, params or {})
        add_compute_ms(compute_ms)
        return outputs

    async def _infer_sub(
        self,
        live: Target,
        inputs: Mapping[str, np.ndarray],
        params: dict[str, Any] | None,
        cast: bool,
    ) -> Tensors:
        return await self.infer(live, inputs, params, cast=cast)

    def answered(self, live: Target, inputs: Mapping[str, np.ndarray]) -> None:
        """Emit the usage event of one answered V2/V1 request (call once it is encoded)."""
        if self._usage is None:
            return
        context = CURRENT.get()
        request_id = context.request_id if context is not None else ""
        first = next(iter(inputs.values()), None)
        rows = int(first.shape[0]) if first is not None and first.ndim else 0
        self._usage.emit(
            UsageEvent(
                request_id or uuid.uuid4().hex,
                live.record.model,  # a version deployment (``iris.v3``) bills as its model
                live.record.version,
                "inference",
                0,
                0,
                0,
                rows=rows,
                compute_ms=take_compute_ms(),
            )
        )
