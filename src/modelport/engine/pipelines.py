"""Pipelines: a graph of deployed models served as one model name (V2 infer and ``:predict``).

Each step is an existing deployment (or another pipeline, or a model with a traffic split),
so every step keeps its own replicas, batcher and scaling; a pipeline only moves tensors
between them through ``InferenceService``. Kinds (``engine/pipeline_graph.py`` holds the
rules): ``sequence`` (outputs feed the next step's inputs by name or by a declared mapping),
``ensemble-average`` / ``ensemble-vote`` (every step gets the same inputs concurrently; float
outputs are averaged, labels voted), ``switch`` (per row, the first step whose condition on
an input column or a request parameter holds; the last step is the default).

A pipeline belongs to the tenant that created it and only that tenant (and platform admins)
may see or call it: to anyone else it is a name that does not exist (404). Its name lives in
the model namespace, so it may not be a model's name. The graph is validated at creation
against the steps' live signatures (400 naming the step).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import select

from modelport.engine.access import Owner, may_see
from modelport.engine.deployments import Deployment, DeploymentManager
from modelport.engine.pipeline_graph import average, check, merge_rows, switch_rows, vote
from modelport.engine.principal import current_principal
from modelport.engine.registry import DeploymentRecord, Registry
from modelport.engine.routing import InferFn, Route, Routed, RouteTable, Target
from modelport.errors import Conflict, DeploymentNotFound, ModelportError, NotFound, NotReady
from modelport.runtimes.base import Tensors
from modelport.storage.db import Database
from modelport.storage.tables import PipelineRow, TenantRow
from modelport.types.admin import DeploymentState, Signature, VersionInfo
from modelport.types.traffic import PipelineInfo, PipelineKind, PipelineSpec

Resolve = Callable[[str], Target]


class PipelineTarget(Routed, Route):
    """One pipeline, as the inference path runs it."""

    def __init__(
        self,
        info: PipelineInfo,
        spec: PipelineSpec,
        tenant_id: int | None,
        resolve: Resolve,
        state_of: Callable[[str], DeploymentState],
    ) -> None:
        self.info = info
        self.spec = spec
        self.owner = Owner(tenant_id)
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
        for row, owner in await asyncio.to_thread(self._load_rows):
            spec = PipelineSpec.model_validate({**row.spec, "name": row.name, "kind": row.kind,
                                                "description": row.description})  # fmt: skip
            try:
                signature = self._check(spec)
            except ModelportError:
                signature = Signature()  # a step is gone: the pipeline answers 503 naming it
            self._install(spec, signature, row.tenant_id, owner, row.created_at)

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
            now = datetime.now(UTC)
            tenant = await asyncio.to_thread(self._insert, spec, tenant_id, now)
            return self._install(spec, signature, tenant_id, tenant, now).info

    async def delete(self, name: str) -> None:
        async with self._lock:
            self._visible(name)
            users = sorted(p.info.name for p in self._pipelines.values()
                           if any(s.deployment == name for s in p.spec.steps))  # fmt: skip
            if users:
                raise Conflict(f"pipeline {name!r} is a step of {users}", param="name")
            await asyncio.to_thread(self._delete_row, name)
            target = self._pipelines.pop(name)
            self._routes.remove(name, target)

    # -- internals ------------------------------------------------------------------------

    def _visible(self, name: str) -> PipelineTarget:
        target = self._pipelines.get(name)
        if target is None or not target.visible():
            raise NotFound(f"pipeline {name!r} not found", param="name")
        return target

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
        self, spec: PipelineSpec, signature: Signature, tenant_id: int | None,
        owner: str | None, created_at: datetime,
    ) -> PipelineTarget:  # fmt: skip
        info = PipelineInfo(
            name=spec.name, kind=spec.kind, steps=spec.steps, outputs=spec.outputs,
            description=spec.description, inputs_signature=signature.inputs,
            outputs_signature=signature.outputs, owner=owner, created_at=created_at,
        )  # fmt: skip
        target = PipelineTarget(info, spec, tenant_id, self._resolve, self._state)
        self._pipelines[spec.name] = target
        self._routes.set(spec.name, target)
        return target

    def _state(self, name: str) -> DeploymentState:
        return self._deployments.status(name).state

    def _load_rows(self) -> list[tuple[PipelineRow, str | None]]:
        with self._db.session() as s:
            rows = s.execute(
                select(PipelineRow, TenantRow.name)
                .outerjoin(TenantRow, PipelineRow.tenant_id == TenantRow.id)
                .order_by(PipelineRow.id)  # creation order: a step pipeline comes first
            ).all()
            return [(row, owner) for row, owner in rows]

    def _insert(self, spec: PipelineSpec, tenant_id: int | None, now: datetime) -> str | None:
        body = spec.model_dump(mode="json", include={"steps", "outputs"})
        with self._db.session(write=True) as s:
            s.add(PipelineRow(name=spec.name, tenant_id=tenant_id, kind=spec.kind.value,
                              spec=body, description=spec.description, created_at=now))  # fmt: skip
            if tenant_id is None:
                return None
            return s.scalar(select(TenantRow.name).where(TenantRow.id == tenant_id))

    def _delete_row(self, name: str) -> None:
        with self._db.session(write=True) as s:
            row = s.scalar(select(PipelineRow).where(PipelineRow.name == name))
            if row is not None:
                s.delete(row)
