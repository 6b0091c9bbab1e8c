"""Pipelines: a graph of deployed models served as one model name (V2 infer and ``:predict``).

Each step is an existing deployment (or another pipeline, or a model with a traffic split),
so every step keeps its own replicas, batcher and scaling; a pipeline only moves tensors
between them through ``InferenceService``. Kinds (``engine/pipeline_graph.py`` holds the
rules): ``sequence`` (outputs feed the next step's inputs by name or by a declared mapping),
``ensemble-average`` / ``ensemble-vote`` (every step gets the same inputs concurrently; float
outputs are averaged, labels voted), ``switch`` (per row, the first step whose condition on
an input column or a request parameter holds; the last step is the default).

A pipeline belongs to the tenant that created it (``None``: the platform, when an admin made
it) and has a model's visibility (``engine/access.py``, the same rules and answers):
``private`` (the owner), ``shared`` (plus named tenants) or ``public`` (every tenant), set at
creation or by ``set_visibility`` (owner or admin; 403 for one who may only see it). To
anyone who may not see it, it is a name that does not exist (404). Its steps still resolve
with the caller's rights: a step the caller may not see fails the call naming the step. So a
pipeline only becomes shared or public when every step is visible to that audience at that
moment (400 naming the step, ``param="visibility"``); a step the owner may not see counts as
not visible. Its name lives in the model namespace, so it may not be a model's name. The
graph is validated at creation against the steps' live signatures (400 naming the step).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from modelport.engine import pipeline_rows
from modelport.engine.access import Owner, audience_sees, may_change, may_see
from modelport.engine.deployments import Deployment, DeploymentManager
from modelport.engine.pipeline_graph import average, check, merge_rows, switch_rows, vote
from modelport.engine.principal import current_principal
from modelport.engine.registry import DeploymentRecord, Registry
from modelport.engine.registry_rows import check_visibility
from modelport.engine.routing import InferFn, Route, Routed, RouteTable, Target
from modelport.errors import (
    Conflict,
    DeploymentNotFound,
    InvalidInput,
    ModelportError,
    NotFound,
    NotReady,
    PermissionDenied,
)
from modelport.runtimes.base import Tensors
from modelport.storage.db import Database
from modelport.types.admin import DeploymentState, Signature, VersionInfo
from modelport.types.traffic import PipelineInfo, PipelineKind, PipelineSpec

Resolve = Callable[[str], Target]


def _hidden_from(audience: Owner, tenants: Mapping[str, int], step: Owner | None) -> str:
    """Why a step keeps a pipeline from ``audience`` (the end of a 400 message)."""
    if audience.visibility == "public":
        return "is not public: make it public first, or keep the pipeline private"
    blind = [name for name, tenant_id in tenants.items()
             if not audience_sees(Owner(None, "shared", frozenset({tenant_id})), step)]  # fmt: skip
    return f"is not visible to tenant(s) {', '.join(blind)}: share it with them first"


class PipelineTarget(Routed, Route):
    """One pipeline, as the inference path runs it."""

    def __init__(
        self,
        info: PipelineInfo,
        spec: PipelineSpec,
        owner: Owner,
        resolve: Resolve,
        state_of: Callable[[str], DeploymentState],
    ) -> None:
        self.info = info
        self.spec = spec
        self.owner = owner  # replaced whole by a visibility change
        self._resolve = resolve
        self._state_of = state_of
        self.record = DeploymentRecord(name=info.name, model=info.name, version=1)
        self.version = VersionInfo(
            model=info.name, version=1, runtime="pipeline", artifact_sha256="",
            artifact_name="", artifact_size=0, signature=info.signature(),
            created_at=info.created_at,
        )  # fmt: skip

    def visible(self) -> bool:
        who = current_principal()
        return who is None or may_see(who, self.owner)

    def target(self, version: str | None) -> Target:
        if not self.visible():
            raise DeploymentNotFound(f"model {self.info.name!r} is not deployed", param="model")
        if version is not None and version != "1":
            raise DeploymentNotFound(
                f"version {version!r} of model {self.info.name!r} is not deployed "
                "(serving version 1)",
                param="version",
            )
        return self

    def _step(self, index: int) -> Target:
        name = self.spec.steps[index].deployment
        try:
            return self._resolve(name)
        except DeploymentNotFound:
            raise NotReady(
                f"pipeline {self.info.name!r} step {index} ({name}): {name!r} is not deployed"
            ) from None

    async def _call(
        self, infer: InferFn, index: int, inputs: Mapping[str, np.ndarray],
        params: dict[str, Any] | None, cast: bool,
    ) -> Tensors:  # fmt: skip
        target = self._step(index)
        try:
            return await infer(target, inputs, params, cast)
        except ModelportError as exc:
            if index == 0 or self.spec.kind != PipelineKind.SEQUENCE:
                raise  # the caller's own inputs: the step's message names the tensor
            name = self.spec.steps[index].deployment
            message = f"pipeline {self.info.name!r} step {index} ({name}): {exc.message}"
            raise type(exc)(message, param=exc.param) from None

    async def run(
        self,
        infer: InferFn,
        inputs: Mapping[str, np.ndarray],
        params: dict[str, Any] | None,
        cast: bool,
    ) -> Tensors:
        kind = self.spec.kind
        if kind == PipelineKind.SEQUENCE:
            return await self._sequence(infer, inputs, params, cast)
        if kind == PipelineKind.SWITCH:
            return await self._switch(infer, inputs, params, cast)
        answers = await asyncio.gather(
            *(self._call(infer, i, inputs, params, cast) for i in range(len(self.spec.steps)))
        )
        names = [t.name for t in self.info.outputs_signature]
        combine = average if kind == PipelineKind.ENSEMBLE_AVERAGE else vote
        return combine(answers, names)

    async def _sequence(
        self, infer: InferFn, inputs: Mapping[str, np.ndarray],
        params: dict[str, Any] | None, cast: bool,
    ) -> Tensors:  # fmt: skip
        available: dict[str, np.ndarray] = dict(inputs)
        answer: Tensors = {}
        for i, step in enumerate(self.spec.steps):
            if i == 0:
                feed: Mapping[str, np.ndarray] = inputs
            else:
                wanted = self._step(i).version.signature.inputs
                feed = {
                    t.name: available[step.inputs[t.name]] if t.name in step.inputs
                    else answer[t.name]
                    for t in wanted
                }  # fmt: skip
            answer = await self._call(infer, i, feed, params, cast or i > 0)
            available.update(answer)
        return answer

    async def _switch(
        self, infer: InferFn, inputs: Mapping[str, np.ndarray],
        params: dict[str, Any] | None, cast: bool,
    ) -> Tensors:  # fmt: skip
        first = next(iter(inputs.values()), None)
        rows = int(first.shape[0]) if first is not None and first.ndim else 1
        conditions = [s.when for s in self.spec.steps[:-1] if s.when is not None]
        choice = switch_rows(conditions, inputs, params or {}, rows)
        branches = [int(i) for i in np.unique(choice)]
        if len(branches) == 1:  # the whole request takes one step: no splitting
            return await self._call(infer, branches[0], inputs, params, cast)
        picks = [np.flatnonzero(choice == i) for i in branches]
        answers = await asyncio.gather(*(
            self._call(infer, i, {k: v[idx] for k, v in inputs.items()}, params, cast)
            for i, idx in zip(branches, picks, strict=True)
        ))  # fmt: skip
        return merge_rows(list(zip(picks, answers, strict=True)), rows)

    def readiness(self) -> str | None:
        for i, step in enumerate(self.spec.steps):
            try:
                target = self._resolve(step.deployment)
            except ModelportError as exc:
                return f"step {i} ({step.deployment}): {exc.message}"
            if isinstance(target, Deployment):
                state = self._state_of(target.record.name)
                reason = None if state == DeploymentState.READY else state.value
            else:
                reason = target.readiness()
            if reason is not None:
                return f"step {i} ({step.deployment}) is {reason}"
        return None


class PipelineService:
    """Create, list, show and delete pipelines; install them in the route table."""

    def __init__(
        self,
        database: Database,
        registry: Registry,
        deployments: DeploymentManager,
        routes: RouteTable,
        resolve: Resolve,
    ) -> None:
        self._db = database
        self._access = registry.access
        self._deployments = deployments
        self._routes = routes
        self._resolve = resolve
        self._pipelines: dict[str, PipelineTarget] = {}
        self._lock = asyncio.Lock()

    async def restore(self) -> None:
        """Install the stored pipelines (server start)."""
        for stored in await asyncio.to_thread(pipeline_rows.load, self._db):
            row = stored.row
            spec = PipelineSpec.model_validate({**row.spec, "name": row.name, "kind": row.kind,
                                                "description": row.description})  # fmt: skip
            try:
                signature = self._check(spec)
            except ModelportError:
                signature = Signature()  # a step is gone: the pipeline answers 503 naming it
            self._install(spec, signature, stored.owner, stored.owner_name, row.created_at)

    def list_pipelines(self) -> list[PipelineInfo]:
        return [p.info for name, p in sorted(self._pipelines.items()) if p.visible()]

    def get(self, name: str) -> PipelineInfo:
        return self._visible(name).info

    async def create(self, spec: PipelineSpec) -> PipelineInfo:
        """Validate ``spec`` against the live steps and store it (409 if the name is taken)."""
        async with self._lock:
            existing = self._pipelines.get(spec.name)
            owner = self._access.owner(spec.name)
            if existing is not None or owner is not None:
                if (existing is not None and existing.visible()) or (
                    owner is not None and self._access.visible(spec.name)
                ):
                    what = "pipeline" if existing is not None else "model"
                    raise Conflict(f"a {what} named {spec.name!r} exists", param="name")
                raise NotFound(f"name {spec.name!r} is taken", param="name")
            signature = self._check(spec)
            who = current_principal()
            tenant_id = who.tenant_id if who is not None and not who.is_admin else None
            owner = await self._audience(spec, tenant_id, spec.visibility, spec.tenants)
            now = datetime.now(UTC)
            name = await asyncio.to_thread(pipeline_rows.insert, self._db, spec, owner, now)
            return self._install(spec, signature, owner, name, now).info

    async def set_visibility(
        self, name: str, visibility: str, tenants: Iterable[str]
    ) -> PipelineInfo:
        """Make ``name`` private, public, or shared with the named tenants (replacing shares).

        Owner or admin (403 for one who may only see it); shared or public only when every
        step is visible to that audience (400 naming the step).
        """
        async with self._lock:
            target = self._changeable(name)
            owner = await self._audience(target.spec, target.owner.tenant_id, visibility, tenants)
            await asyncio.to_thread(pipeline_rows.set_visibility, self._db, name, owner)
            target.owner = owner
            target.info = target.info.model_copy(update={"visibility": owner.visibility})
            return target.info

    async def delete(self, name: str) -> None:
        async with self._lock:
            self._changeable(name)
            users = sorted(p.info.name for p in self._pipelines.values()
                           if any(s.deployment == name for s in p.spec.steps))  # fmt: skip
            if users:
                raise Conflict(f"pipeline {name!r} is a step of {users}", param="name")
            await asyncio.to_thread(pipeline_rows.remove, self._db, name)
            target = self._pipelines.pop(name)
            self._routes.remove(name, target)

    # -- internals ------------------------------------------------------------------------

    def _visible(self, name: str) -> PipelineTarget:
        target = self._pipelines.get(name)
        if target is None or not target.visible():
            raise NotFound(f"pipeline {name!r} not found", param="name")
        return target

    def _changeable(self, name: str) -> PipelineTarget:
        """The pipeline, if the caller may change it (404 if it may not see it, else 403)."""
        target = self._visible(name)
        if not may_change(current_principal(), target.owner):
            raise PermissionDenied(
                f"pipeline {name!r} belongs to another tenant: it can be used, not changed",
                param="name",
            )
        return target

    async def _audience(
        self, spec: PipelineSpec, tenant_id: int | None, visibility: str, tenants: Iterable[str]
    ) -> Owner:
        """The ``Owner`` a pipeline would have, once its steps are known to be visible to it."""
        names = check_visibility(visibility, tenants)
        ids = await asyncio.to_thread(pipeline_rows.lookup_tenants, self._db, names)
        owner = Owner(tenant_id, visibility, frozenset(ids.values()))
        for i, step in enumerate(spec.steps):
            seen = self._step_owner(step.deployment)
            if not audience_sees(owner, seen):
                why = _hidden_from(owner, ids, seen)
                message = f"pipeline {spec.name!r} step {i} ({step.deployment}) {why}"
                raise InvalidInput(message, param="visibility")
        return owner

    def _step_owner(self, step: str) -> Owner | None:
        """Who owns step ``step``, as far as the caller may see it (None: it may not)."""
        pipeline = self._pipelines.get(step)
        if pipeline is not None:
            return pipeline.owner if pipeline.visible() else None
        try:
            target = self._resolve(step)
        except ModelportError:
            return None
        return self._access.owner(target.record.model)

    def _check(self, spec: PipelineSpec) -> Signature:
        def signature_of(step: str) -> Signature | None:
            pipeline = self._pipelines.get(step)
            if pipeline is not None:
                return pipeline.version.signature if pipeline.visible() else None
            try:
                target = self._resolve(step)
            except ModelportError:
                return None
            return target.version.signature

        def children(step: str) -> list[str]:
            pipeline = self._pipelines.get(step)
            return [s.deployment for s in pipeline.spec.steps] if pipeline is not None else []

        return check(spec, signature_of, children)

    def _install(
        self, spec: PipelineSpec, signature: Signature, owner: Owner,
        owner_name: str | None, created_at: datetime,
    ) -> PipelineTarget:  # fmt: skip
        info = PipelineInfo(
            name=spec.name, kind=spec.kind, steps=spec.steps, outputs=spec.outputs,
            description=spec.description, inputs_signature=signature.inputs,
            outputs_signature=signature.outputs, owner=owner_name,
            visibility=owner.visibility, created_at=created_at,
        )  # fmt: skip
        target = PipelineTarget(info, spec, owner, self._resolve, self._state)
        self._pipelines[spec.name] = target
        self._routes.set(spec.name, target)
        return target

    def _state(self, name: str) -> DeploymentState:
        return self._deployments.status(name).state
