"""Pipeline visibility: the access rules, the publish check, ``PipelineService`` over a real
SQLite database (steps are stand-ins), and migration 0006 (existing pipelines stay private).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text

from modelport.engine import pipeline_rows
from modelport.engine.access import Owner, audience_sees, may_change, may_see
from modelport.engine.pipelines import PipelineService
from modelport.engine.principal import CURRENT, Principal, RequestContext
from modelport.engine.registry import Registry
from modelport.engine.routing import RouteTable
from modelport.errors import DeploymentNotFound, InvalidInput, NotFound, PermissionDenied
from modelport.storage.artifacts import LocalArtifactStore
from modelport.storage.db import MIGRATIONS_DIR, Database
from modelport.storage.tables import TenantRow
from modelport.types.admin import Signature, TensorSpec
from modelport.types.traffic import PipelineSpec

T = TypeVar("T")
A, B, C = 1, 2, 3
SIG = Signature(
    inputs=[TensorSpec(name="input", datatype="FP32", shape=[-1, 4])],
    outputs=[TensorSpec(name="input", datatype="FP32", shape=[-1, 4])],
)


def _who(tenant_id: int, *, admin: bool = False) -> Principal:
    scopes = {"inference", "deploy"} | ({"admin"} if admin else set())
    return Principal(tenant_id, f"t-{tenant_id}", tenant_id, "k", frozenset(scopes))


# --- the rules ----------------------------------------------------------------------------


def test_see_and_change_follow_the_model_rules() -> None:
    private, shared = Owner(A), Owner(A, "shared", frozenset({B}))
    public, platform = Owner(A, "public"), Owner(None, "public")
    assert may_see(_who(A), private) and not may_see(_who(B), private)
    assert may_see(_who(B), shared) and not may_see(_who(C), shared)
    assert all(may_see(_who(t), public) and may_see(_who(t), platform) for t in (A, B, C))
    assert may_see(_who(C, admin=True), private) and may_see(None, private)
    assert may_change(_who(A), shared) and not may_change(_who(B), shared)
    assert not may_change(_who(B), public) and not may_change(_who(A), platform)
    assert may_change(_who(C, admin=True), platform)


def test_an_audience_must_see_every_step() -> None:
    public = Owner(A, "public")
    assert audience_sees(public, Owner(None, "public"))
    assert not audience_sees(public, Owner(A))
    assert not audience_sees(public, Owner(A, "shared", frozenset({B})))
    assert not audience_sees(public, None)  # a step the owner may not see
    to_b = Owner(A, "shared", frozenset({B}))
    assert audience_sees(to_b, Owner(None, "public"))
    assert audience_sees(to_b, Owner(C, "shared", frozenset({A, B})))
    assert audience_sees(to_b, Owner(B))  # B's own model
    assert not audience_sees(to_b, Owner(A))
    assert not audience_sees(Owner(A, "shared", frozenset({B, C})), Owner(B))
    assert audience_sees(Owner(A), Owner(A))  # private: the owner's own rights apply


# --- the service --------------------------------------------------------------------------

STEPS = {
    "a-private": Owner(A),
    "a-to-b": Owner(A, "shared", frozenset({B})),
    "b-to-a": Owner(B, "shared", frozenset({A})),
    "pub": Owner(None, "public"),
}


@dataclass
class World:
    db: Database
    registry: Registry
    routes: RouteTable = field(default_factory=RouteTable)

    def service(self) -> PipelineService:
        def resolve(name: str) -> Any:
            if name not in STEPS or not self.registry.access.visible(name):
                raise DeploymentNotFound(f"model {name!r} is not deployed", param="model")
            version = SimpleNamespace(signature=SIG)
            return SimpleNamespace(record=SimpleNamespace(model=name), version=version)

        self.routes = RouteTable()
        deployments = cast(Any, None)  # only asked for states, which these tests never read
        return PipelineService(self.db, self.registry, deployments, self.routes, resolve)

    def call(self, name: str) -> object:
        """What the inference path resolves ``name`` to (``DeploymentNotFound`` if hidden)."""
        route = self.routes.get(name)
        assert route is not None
        return route.target(None)


@pytest.fixture
def world(tmp_path: Path, artifact_store: LocalArtifactStore) -> Iterator[World]:
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    db.migrate()
    with db.session(write=True) as s:
        s.add_all([TenantRow(id=t, name=f"t-{t}") for t in (A, B, C)])
    registry = Registry(db, artifact_store)
    for name, owner in STEPS.items():
        registry.access.set(name, owner)
    yield World(db, registry)
    db.dispose()


@contextmanager
def _as(principal: Principal | None) -> Iterator[None]:
    token = CURRENT.set(RequestContext(principal))
    try:
        yield
    finally:
        CURRENT.reset(token)


def _run(principal: Principal | None, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with _as(principal):
        return asyncio.run(work())


def _spec(name: str, *steps: str, **fields: Any) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {"name": name, "steps": [{"deployment": s} for s in steps], **fields}
    )


def _refusal(exc: pytest.ExceptionInfo[InvalidInput]) -> str:
    assert exc.value.param == "visibility"
    return exc.value.message


def test_publishing_needs_every_step_visible_to_the_audience(world: World) -> None:
    svc = world.service()
    with pytest.raises(InvalidInput) as exc:
        _run(_who(A), lambda: svc.create(_spec("p", "pub", "a-private", visibility="public")))
    assert "step 1 (a-private) is not public" in _refusal(exc)
    with pytest.raises(InvalidInput) as exc:
        spec = _spec("p", "a-to-b", visibility="shared", tenants=["t-2", "t-3"])
        _run(_who(A), lambda: svc.create(spec))
    assert "step 0 (a-to-b) is not visible to tenant(s) t-3" in _refusal(exc)
    # shared with B: a step shared with B, a public one, one B owns
    spec = _spec("ok", "a-to-b", "pub", "b-to-a", visibility="shared", tenants=["t-2"])
    info = _run(_who(A), lambda: svc.create(spec))
    assert info.visibility == "shared" and info.owner == "t-1"
    # an admin's platform pipeline gets the same check
    with pytest.raises(InvalidInput) as exc:
        _run(_who(C, admin=True), lambda: svc.create(_spec("adm", "a-to-b", visibility="public")))
    assert "step 0 (a-to-b)" in _refusal(exc)
    made = _run(_who(C, admin=True), lambda: svc.create(_spec("adm", "pub", visibility="public")))
    assert made.owner is None and made.visibility == "public"
    # later changes: the same check, same answers as a model's
    with pytest.raises(InvalidInput) as exc:
        _run(_who(A), lambda: svc.set_visibility("ok", "public", ()))
    assert "step 0 (a-to-b) is not public" in _refusal(exc)
    with pytest.raises(InvalidInput, match="only be given with visibility 'shared'"):
        _run(_who(A), lambda: svc.set_visibility("ok", "public", ["t-2"]))
    with pytest.raises(InvalidInput, match=r"unknown tenant\(s\): nobody"):
        _run(_who(A), lambda: svc.set_visibility("ok", "shared", ["nobody"]))
    with pytest.raises(InvalidInput, match="visibility must be one of"):
        _run(_who(A), lambda: svc.set_visibility("ok", "everyone", ()))


def test_who_may_see_call_and_change(world: World) -> None:
    svc = world.service()
    _run(_who(A), lambda: svc.create(_spec("mine", "a-to-b")))
    b, c = _who(B), _who(C)

    def names(principal: Principal) -> list[str]:
        with _as(principal):
            return [p.name for p in svc.list_pipelines()]

    # private: B gets exactly what a missing name gets
    for work in (
        lambda: svc.set_visibility("mine", "public", ()),
        lambda: svc.delete("mine"),
    ):
        with pytest.raises(NotFound, match="pipeline 'mine' not found"):
            _run(b, work)
    with _as(b), pytest.raises(NotFound, match="pipeline 'mine' not found"):
        svc.get("mine")
    with _as(b), pytest.raises(DeploymentNotFound, match="model 'mine' is not deployed"):
        world.call("mine")
    assert names(b) == []
    # shared with B: listed, callable, not changeable (403); C still sees nothing
    _run(_who(A), lambda: svc.set_visibility("mine", "shared", ["t-2"]))
    assert names(b) == ["mine"] and names(c) == []
    with _as(b):
        assert svc.get("mine").visibility == "shared"
        assert world.call("mine") is not None
    with _as(c), pytest.raises(DeploymentNotFound):
        world.call("mine")
    for work in (lambda: svc.set_visibility("mine", "private", ()), lambda: svc.delete("mine")):
        with pytest.raises(PermissionDenied, match="belongs to another tenant"):
            _run(b, work)
    # back to private: B loses it again
    _run(_who(A), lambda: svc.set_visibility("mine", "private", ()))
    assert names(b) == []


def test_visibility_is_stored_and_restored(world: World) -> None:
    svc = world.service()
    _run(_who(A), lambda: svc.create(_spec("kept", "a-to-b", visibility="shared", tenants=["t-2"])))
    _run(None, lambda: svc.create(_spec("open", "pub", visibility="public")))
    again = world.service()
    _run(None, again.restore)
    with _as(_who(B)):
        assert [(p.name, p.visibility) for p in again.list_pipelines()] == [
            ("kept", "shared"),
            ("open", "public"),
        ]
    with _as(_who(C)):
        assert [p.name for p in again.list_pipelines()] == ["open"]
    _run(_who(A), lambda: again.delete("kept"))
    with world.db.session() as s:
        assert s.scalar(text("SELECT count(*) FROM pipeline_shares")) == 0


# --- migration 0006 -----------------------------------------------------------------------


def _alembic(db: Database, action: Callable[[Config, str], None], revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    with db.engine.begin() as conn:
        config.attributes["connection"] = conn
        action(config, revision)


def test_migration_keeps_existing_pipelines_private_and_downgrades(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        _alembic(db, command.upgrade, "0005")
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO tenants (id, name, soft_budget_ratio, created_at) "
                              "VALUES (1, 't-1', 0.8, '2026-01-01 00:00:00')"))  # fmt: skip
            conn.execute(text(
                "INSERT INTO pipelines (name, tenant_id, kind, spec, description, created_at) "
                "VALUES ('old', 1, 'sequence', '{\"steps\": [{\"deployment\": \"m\"}]}', '', "
                "'2026-01-01 00:00:00')"
            ))  # fmt: skip
        _alembic(db, command.upgrade, "head")
        [stored] = pipeline_rows.load(db)
        assert stored.row.name == "old" and stored.owner == Owner(1, "private")
        assert "pipeline_shares" in inspect(db.engine).get_table_names()

        _alembic(db, command.downgrade, "0005")
        assert "pipeline_shares" not in inspect(db.engine).get_table_names()
        columns = {c["name"] for c in inspect(db.engine).get_columns("pipelines")}
        assert "visibility" not in columns
        with db.engine.connect() as conn:
            assert conn.scalar(text("SELECT name FROM pipelines")) == "old"
        _alembic(db, command.upgrade, "head")  # and up again
        assert pipeline_rows.load(db)[0].owner.visibility == "private"
    finally:
        db.dispose()
