"""Client calls of traffic management and pipelines, with their sync and async mixins.

``TrafficCalls`` builds each request (sans-IO, shared); ``TrafficMixin`` (``Client``) and
``AsyncTrafficMixin`` (``AsyncClient``) only send them, so the two cannot drift apart.
Bodies are checked against the server's own models (``modelport.types.traffic``) first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from modelport.client.calls import Call, Request, json_call, path_segment, validated_body
from modelport.client.responses import parse_list, parse_model, parse_nothing
from modelport.types.admin import SetVisibility
from modelport.types.traffic import (
    PipelineInfo,
    PipelineSpec,
    PromoteSpec,
    StepSpec,
    TrafficSpec,
    TrafficStatus,
)

T = TypeVar("T")

Step = str | StepSpec | Mapping[str, Any]
"""A pipeline step: a deployment name, a ``StepSpec``, or a mapping of its fields."""


class TrafficCalls:
    """Builds the traffic and pipeline requests; stateless."""

    def traffic(self, model: str) -> Call[TrafficStatus]:
        path = f"/api/models/{path_segment(model)}/traffic"
        return Call(Request("GET", path), parse_model(TrafficStatus))

    def set_traffic(
        self, model: str, weights: Mapping[int, int] | None, shadow: int | None
    ) -> Call[TrafficStatus]:
        """``PUT /api/models/{m}/traffic``: version → percent, and a shadow version."""
        body = validated_body(TrafficSpec, {"weights": dict(weights or {}), "shadow": shadow})
        path = f"/api/models/{path_segment(model)}/traffic"
        return json_call("PUT", path, body, TrafficStatus)

    def promote(self, model: str, version: int | None) -> Call[TrafficStatus]:
        body = validated_body(PromoteSpec, {"version": version})
        path = f"/api/models/{path_segment(model)}/promote"
        return json_call("POST", path, body, TrafficStatus)

    def rollback(self, model: str) -> Call[TrafficStatus]:
        path = f"/api/models/{path_segment(model)}/rollback"
        return Call(Request("POST", path), parse_model(TrafficStatus))

    def create_pipeline(
        self, name: str, steps: Sequence[Step], kind: str, outputs: Sequence[str],
        description: str, visibility: str = "private", tenants: Sequence[str] = (),
    ) -> Call[PipelineInfo]:  # fmt: skip
        items = [{"deployment": s} if isinstance(s, str) else s for s in steps]
        values = {"name": name, "kind": kind, "steps": items, "outputs": list(outputs),
                  "description": description, "visibility": visibility,
                  "tenants": list(tenants)}  # fmt: skip
        body = validated_body(PipelineSpec, values)
        return json_call("POST", "/api/pipelines", body, PipelineInfo)

    def set_pipeline_visibility(
        self, name: str, visibility: str, tenants: Sequence[str] = ()
    ) -> Call[PipelineInfo]:
        """``PUT /api/pipelines/{name}/visibility``: private, public, or shared with ``tenants``."""
        body = validated_body(SetVisibility, {"visibility": visibility, "tenants": list(tenants)})
        return json_call("PUT", f"/api/pipelines/{path_segment(name)}/visibility", body,
                         PipelineInfo)  # fmt: skip

    def list_pipelines(self) -> Call[list[PipelineInfo]]:
        return Call(Request("GET", "/api/pipelines"), parse_list(PipelineInfo))

    def get_pipeline(self, name: str) -> Call[PipelineInfo]:
        return Call(Request("GET", f"/api/pipelines/{path_segment(name)}"),
                    parse_model(PipelineInfo))  # fmt: skip

    def delete_pipeline(self, name: str) -> Call[None]:
        return Call(Request("DELETE", f"/api/pipelines/{path_segment(name)}"), parse_nothing)


CALLS = TrafficCalls()


class TrafficMixin:
    """Traffic and pipeline methods of ``Client``."""

    if TYPE_CHECKING:

        def _send(self, call: Call[T]) -> T: ...

    def traffic(self, model: str) -> TrafficStatus:
        """How ``model``'s requests are split between its deployments."""
        return self._send(CALLS.traffic(model))

    def set_traffic(
        self, model: str, weights: Mapping[int, int] | None = None, *, shadow: int | None = None
    ) -> TrafficStatus:
        """Give versions a percent of the requests (the stable one gets the rest) and shadow
        one; a version without a deployment gets one first (the call waits until ready)."""
        return self._send(CALLS.set_traffic(model, weights, shadow))

    def canary(self, model: str, version: int, weight: int) -> TrafficStatus:
        """Send ``weight`` percent of ``model``'s requests to ``version`` (shadow kept)."""
        shadow = self.traffic(model).shadow
        return self.set_traffic(model, {version: weight},
                                shadow=shadow.version if shadow else None)  # fmt: skip

    def shadow(self, model: str, version: int | None) -> TrafficStatus:
        """Copy every request of ``model`` to ``version`` (``None``: stop); weights kept."""
        current = self.traffic(model)
        weights = {r.version: r.weight for r in current.routes if r.deployment != current.stable}
        return self.set_traffic(model, weights, shadow=version)

    def promote(self, model: str, version: int | None = None) -> TrafficStatus:
        """All traffic to ``version`` (default: the canary); rollback returns to the old."""
        return self._send(CALLS.promote(model, version))

    def rollback(self, model: str) -> TrafficStatus:
        return self._send(CALLS.rollback(model))

    def create_pipeline(
        self, name: str, steps: Sequence[Step], *, kind: str = "sequence",
        outputs: Sequence[str] = (), description: str = "", visibility: str = "private",
        tenants: Sequence[str] = (),
    ) -> PipelineInfo:  # fmt: skip
        """Serve ``steps`` (deployment names or ``StepSpec``) as model ``name``; ``visibility``
        and ``tenants`` as for models (shared/public: every step must be visible to them)."""
        return self._send(CALLS.create_pipeline(name, steps, kind, outputs, description,
                                                visibility, tenants))  # fmt: skip

    def set_pipeline_visibility(
        self, name: str, visibility: str, tenants: Sequence[str] = ()
    ) -> PipelineInfo:
        """Make pipeline ``name`` private, public, or shared with ``tenants`` (owner/admin)."""
        return self._send(CALLS.set_pipeline_visibility(name, visibility, tenants))

    def list_pipelines(self) -> list[PipelineInfo]:
        return self._send(CALLS.list_pipelines())

    def get_pipeline(self, name: str) -> PipelineInfo:
        return self._send(CALLS.get_pipeline(name))

    def delete_pipeline(self, name: str) -> None:
        self._send(CALLS.delete_pipeline(name))


class AsyncTrafficMixin:
    """Traffic and pipeline methods of ``AsyncClient`` (see ``TrafficMixin``)."""

    if TYPE_CHECKING:

        async def _send(self, call: Call[T]) -> T: ...

    async def traffic(self, model: str) -> TrafficStatus:
        return await self._send(CALLS.traffic(model))

    async def set_traffic(
        self, model: str, weights: Mapping[int, int] | None = None, *, shadow: int | None = None
    ) -> TrafficStatus:
        return await self._send(CALLS.set_traffic(model, weights, shadow))

    async def canary(self, model: str, version: int, weight: int) -> TrafficStatus:
        shadow = (await self.traffic(model)).shadow
        return await self.set_traffic(model, {version: weight},
                                      shadow=shadow.version if shadow else None)  # fmt: skip

    async def shadow(self, model: str, version: int | None) -> TrafficStatus:
        current = await self.traffic(model)
        weights = {r.version: r.weight for r in current.routes if r.deployment != current.stable}
        return await self.set_traffic(model, weights, shadow=version)

    async def promote(self, model: str, version: int | None = None) -> TrafficStatus:
        return await self._send(CALLS.promote(model, version))

    async def rollback(self, model: str) -> TrafficStatus:
        return await self._send(CALLS.rollback(model))

    async def create_pipeline(
        self, name: str, steps: Sequence[Step], *, kind: str = "sequence",
        outputs: Sequence[str] = (), description: str = "", visibility: str = "private",
        tenants: Sequence[str] = (),
    ) -> PipelineInfo:  # fmt: skip
        return await self._send(CALLS.create_pipeline(name, steps, kind, outputs, description,
                                                      visibility, tenants))  # fmt: skip

    async def set_pipeline_visibility(
        self, name: str, visibility: str, tenants: Sequence[str] = ()
    ) -> PipelineInfo:
        return await self._send(CALLS.set_pipeline_visibility(name, visibility, tenants))

    async def list_pipelines(self) -> list[PipelineInfo]:
        return await self._send(CALLS.list_pipelines())

    async def get_pipeline(self, name: str) -> PipelineInfo:
        return await self._send(CALLS.get_pipeline(name))

    async def delete_pipeline(self, name: str) -> None:
        await self._send(CALLS.delete_pipeline(name))
