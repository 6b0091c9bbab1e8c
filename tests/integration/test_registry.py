"""The registry on real databases: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text

from modelport.engine.registry import DeploymentRecord, Registry
from modelport.errors import (
    Conflict,
    DeploymentNotFound,
    InvalidInput,
    ModelNotFound,
    NotFound,
    Unavailable,
    VersionNotFound,
)
from modelport.storage.artifacts import LocalArtifactStore
from modelport.storage.db import Database
from modelport.storage.tables import Base, ModelRow
from modelport.types.admin import CreateVersion, Signature, TensorSpec

SIGNATURE = Signature(
    inputs=[TensorSpec(name="input", datatype="FP32", shape=[-1, 4])],
    outputs=[TensorSpec(name="label", datatype="INT64", shape=[-1])],
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'registry.db'}"
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    db.migrate()
    yield db
    db.dispose()


@pytest.fixture
def registry(database: Database, artifact_store: LocalArtifactStore) -> Registry:
    return Registry(database, artifact_store)


def _upload(store: LocalArtifactStore, data: bytes) -> str:
    return store.put([data]).sha256


def _body(sha: str, **fields: object) -> CreateVersion:
    values: dict[str, object] = {
        "artifact_sha256": sha,
        "artifact_name": "model.onnx",
        "runtime": "onnx",
    }
    values.update(fields)
    return CreateVersion.model_validate(values)


# -- database -------------------------------------------------------------------------------


def test_migrated_schema_matches_the_tables(database: Database) -> None:
    database.migrate()  # a second run (every server start) is a no-op
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == "0006"


def test_session_rolls_back_on_error(database: Database) -> None:
    with pytest.raises(RuntimeError, match="midway"), database.session() as s:
        s.add(ModelRow(name="half-written"))
        s.flush()
        raise RuntimeError("midway")
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(ModelRow)) == 0


def test_sqlite_pragmas(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'new' / 'dir' / 'm.db'}", busy_timeout_ms=1234)
    try:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234
        db.ping()
    finally:
        db.dispose()


def test_database_urls(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unsupported database 'mysql'"):
        Database("mysql://localhost/db")
    with pytest.raises(InvalidInput, match="invalid database URL"):
        Database("not a url")
    db = Database("postgresql://user:secret@127.0.0.1:1/db")
    try:
        assert db.url.drivername == "postgresql+psycopg"
        assert "secret" not in db.display_url and "secret" not in repr(db)
        with pytest.raises(Unavailable, match="unreachable"):
            db.ping()
    finally:
        db.dispose()
    memory = Database("sqlite://")
    memory.migrate()
    assert Registry(memory, LocalArtifactStore(tmp_path / "a")).count_models() == 0
    memory.dispose()


# -- models and versions --------------------------------------------------------------------


def test_versions_are_numbered_and_roundtrip(
    registry: Registry, artifact_store: LocalArtifactStore
) -> None:
    sha = _upload(artifact_store, b"weights-1")
    first = registry.create_version(
        "iris",
        _body(sha, trusted=True, metadata={"acc": 0.97, "tags": ["a"]}, lineage={"run": "r1"},
              description="Iris classifier"),
        SIGNATURE,
    )  # fmt: skip
    assert (first.model, first.version, first.runtime) == ("iris", 1, "onnx")
    assert (first.artifact_sha256, first.artifact_size, first.trusted) == (sha, 9, True)
    assert first.signature == SIGNATURE
    assert first.metadata == {"acc": 0.97, "tags": ["a"]}
    assert first.lineage == {"run": "r1"}
    assert first.created_at.tzinfo is not None and first.created_at.utcoffset() == UTC.utcoffset(
        None
    )

    second = registry.create_version("iris", _body(_upload(artifact_store, b"w2")), Signature())
    third = registry.create_version("iris", _body(sha), SIGNATURE)
    assert [second.version, third.version] == [2, 3]

    assert registry.get_version("iris", 1) == first
    assert registry.get_version("iris", "2") == second
    assert registry.get_version("iris", "latest") == third
    model = registry.get_model("iris")
    assert [v.version for v in model.versions] == [1, 2, 3]
    assert model.versions[0] == first
    assert (model.description, model.latest_version) == ("Iris classifier", 3)
    assert registry.count_models() == 1

    registry.create_version("digits", _body(sha), SIGNATURE)
    assert [(m.name, m.latest_version) for m in registry.list_models()] == [
        ("digits", 1),
        ("iris", 3),
    ]
    assert registry.count_models() == 2

    registry.create_version("iris", _body(sha, description="new text"), SIGNATURE)
    assert registry.get_model("iris").description == "new text"


def test_version_numbers_after_deletes(
    registry: Registry, artifact_store: LocalArtifactStore
) -> None:
    sha = _upload(artifact_store, b"w")
    for _ in range(3):
        registry.create_version("m", _body(sha), SIGNATURE)
    registry.delete_version("m", 2)
    assert registry.create_version("m", _body(sha), SIGNATURE).version == 4
    assert [v.version for v in registry.get_model("m").versions] == [1, 3, 4]
    with pytest.raises(VersionNotFound, match="2"):
        registry.get_version("m", 2)
    with pytest.raises(VersionNotFound):
        registry.delete_version("m", 2)


def test_lookup_errors(registry: Registry, artifact_store: LocalArtifactStore) -> None:
    with pytest.raises(ModelNotFound, match="'nope'"):
        registry.get_model("nope")
    with pytest.raises(ModelNotFound):
        registry.get_version("nope", "latest")
    with pytest.raises(ModelNotFound):
        registry.delete_model("nope")
    with pytest.raises(ModelNotFound):
        registry.set_alias("nope", "prod", 1)

    sha = _upload(artifact_store, b"w")
    registry.create_version("m", _body(sha), SIGNATURE)
    refs: list[str | int] = [99, "99", 0, -1, "missing-alias"]
    for ref in refs:
        with pytest.raises(VersionNotFound):
            registry.get_version("m", ref)
    registry.delete_version("m", 1)
    with pytest.raises(VersionNotFound):
        registry.get_version("m", "latest")
    assert registry.get_model("m").latest_version is None


def test_bad_input_writes_nothing(registry: Registry, artifact_store: LocalArtifactStore) -> None:
    sha = _upload(artifact_store, b"w")
    absent = "0" * 64
    cases: list[tuple[str, CreateVersion, str]] = [
        ("new-model", _body(absent), "artifact_sha256"),
        ("new-model", _body(sha, aliases=["prod", "latest"]), "aliases"),
        ("new-model", _body(sha, aliases=["123"]), "aliases"),
        ("new-model", _body(sha, aliases=["has space"]), "aliases"),
        ("new-model", _body(sha, runtime="tensorflow-1"), "runtime"),
        ("new-model", _body(sha, metadata={"x": float("nan")}), "metadata"),
        ("bad name", _body(sha), "name"),
        ("-leading-dash", _body(sha), "name"),
        ("x" * 129, _body(sha), "name"),
        ("trailing-newline\n", _body(sha), "name"),
    ]
    for name, body, param in cases:
        with pytest.raises(InvalidInput) as caught:
            registry.create_version(name, body, SIGNATURE)
        assert caught.value.param == param, (name, body)
    assert registry.count_models() == 0
    assert registry.list_models() == []

    # An existing model gains nothing from a refused version either.
    registry.create_version("m", _body(sha), SIGNATURE)
    with pytest.raises(InvalidInput):
        registry.create_version("m", _body(absent, aliases=["prod"]), SIGNATURE)
    model = registry.get_model("m")
    assert ([v.version for v in model.versions], model.aliases) == ([1], {})


def test_aliases(registry: Registry, artifact_store: LocalArtifactStore) -> None:
    sha = _upload(artifact_store, b"w")
    v1 = registry.create_version("m", _body(sha, aliases=["prod", "stable", "prod"]), SIGNATURE)
    assert v1.aliases == ["prod", "stable"]
    registry.create_version("m", _body(sha), SIGNATURE)

    moved = registry.set_alias("m", "prod", 2)
    assert (moved.version, moved.aliases) == (2, ["prod"])
    assert registry.get_version("m", "prod").version == 2
    assert registry.get_version("m", "stable").aliases == ["stable"]
    assert registry.get_model("m").aliases == {"prod": 2, "stable": 1}
    assert registry.list_models()[0].aliases == {"prod": 2, "stable": 1}

    # A new version can take over an alias at registration.
    v3 = registry.create_version("m", _body(sha, aliases=["stable"]), SIGNATURE)
    assert registry.get_version("m", "stable") == v3

    registry.delete_alias("m", "stable")
    with pytest.raises(VersionNotFound):
        registry.get_version("m", "stable")
    with pytest.raises(NotFound, match="no alias 'stable'"):
        registry.delete_alias("m", "stable")
    for bad in ["latest", "42", "", "a/b"]:
        with pytest.raises(InvalidInput):
            registry.set_alias("m", bad, 1)
    with pytest.raises(VersionNotFound):
        registry.set_alias("m", "canary", 99)

    # Deleting a version drops the aliases that pointed at it.
    registry.delete_version("m", 2)
    assert registry.get_model("m").aliases == {}


# -- deletion and artifacts -----------------------------------------------------------------


def test_deletes_refused_while_deployed(
    registry: Registry, artifact_store: LocalArtifactStore
) -> None:
    sha = _upload(artifact_store, b"w")
    registry.create_version("m", _body(sha), SIGNATURE)
    registry.create_version("m", _body(sha), SIGNATURE)
    registry.save_deployment(DeploymentRecord(name="m-prod", model="m", version=2))

    with pytest.raises(Conflict, match="m-prod"):
        registry.delete_model("m")
    with pytest.raises(Conflict, match="m-prod"):
        registry.delete_version("m", 2)
    registry.delete_version("m", 1)  # not deployed

    registry.delete_deployment("m-prod")
    registry.delete_model("m")
    with pytest.raises(ModelNotFound):
        registry.get_model("m")
    assert registry.count_models() == 0


def test_artifacts_deleted_with_their_last_version(
    registry: Registry, artifact_store: LocalArtifactStore
) -> None:
    shared = _upload(artifact_store, b"shared")
    own = _upload(artifact_store, b"own")
    registry.create_version("a", _body(shared), SIGNATURE)
    registry.create_version("a", _body(own), SIGNATURE)
    registry.create_version("b", _body(shared), SIGNATURE)

    registry.delete_version("a", 2)
    assert not artifact_store.exists(own)
    registry.delete_model("a")
    assert artifact_store.exists(shared), "still used by model b"
    registry.delete_model("b")
    assert not artifact_store.exists(shared)


# -- deployments ----------------------------------------------------------------------------


def test_deployments_crud(registry: Registry, artifact_store: LocalArtifactStore) -> None:
    sha = _upload(artifact_store, b"w")
    registry.create_version("m", _body(sha), SIGNATURE)
    registry.create_version("m", _body(sha), SIGNATURE)

    saved = registry.save_deployment(
        DeploymentRecord(name="m", model="m", version=1, replicas=2, max_batch_size=8,
                         max_latency_ms=2.5)
    )  # fmt: skip
    assert (saved.model, saved.version, saved.replicas, saved.max_batch_size) == ("m", 1, 2, 8)
    assert saved.max_latency_ms == 2.5
    assert saved.created_at is not None and saved.created_at == saved.updated_at
    assert saved.created_at.tzinfo is not None
    assert registry.get_deployment("m") == saved

    updated = registry.save_deployment(DeploymentRecord(name="m", model="m", version=2, replicas=0))
    assert (updated.version, updated.replicas, updated.max_batch_size) == (2, 0, 1)
    assert updated.created_at == saved.created_at
    assert updated.updated_at is not None and updated.updated_at >= saved.created_at
    registry.save_deployment(DeploymentRecord(name="a-second", model="m", version=1))
    assert [d.name for d in registry.list_deployments()] == ["a-second", "m"]

    registry.delete_deployment("m")
    with pytest.raises(DeploymentNotFound, match="'m'"):
        registry.get_deployment("m")
    with pytest.raises(DeploymentNotFound):
        registry.delete_deployment("m")
    assert [d.name for d in registry.list_deployments()] == ["a-second"]


def test_deployment_validation(registry: Registry, artifact_store: LocalArtifactStore) -> None:
    registry.create_version("m", _body(_upload(artifact_store, b"w")), SIGNATURE)
    with pytest.raises(ModelNotFound):
        registry.save_deployment(DeploymentRecord(name="d", model="other", version=1))
    with pytest.raises(VersionNotFound):
        registry.save_deployment(DeploymentRecord(name="d", model="m", version=5))
    invalid = [
        (DeploymentRecord(name="bad name", model="m", version=1), "name"),
        (DeploymentRecord(name="d", model="m", version=1, replicas=-1), "replicas"),
        (DeploymentRecord(name="d", model="m", version=1, max_batch_size=0), "max_batch_size"),
        (DeploymentRecord(name="d", model="m", version=1, max_latency_ms=-1), "max_latency_ms"),
        (
            DeploymentRecord(name="d", model="m", version=1, max_latency_ms=float("inf")),
            "max_latency_ms",
        ),
    ]
    for record, param in invalid:
        with pytest.raises(InvalidInput) as caught:
            registry.save_deployment(record)
        assert caught.value.param == param
    assert registry.list_deployments() == []


# -- restart and concurrency ----------------------------------------------------------------


def test_reopen_sees_everything(
    db_url: str, registry: Registry, artifact_store: LocalArtifactStore, database: Database
) -> None:
    sha = _upload(artifact_store, b"w")
    registry.create_version("m", _body(sha, metadata={"k": [1, 2]}, aliases=["prod"]), SIGNATURE)
    registry.create_version("n", _body(sha), SIGNATURE)
    registry.save_deployment(DeploymentRecord(name="m", model="m", version=1, replicas=3))
    before = (registry.list_models(), registry.get_model("m"), registry.list_deployments())
    database.dispose()

    reopened = Database(db_url)
    try:
        reopened.migrate()
        again = Registry(reopened, artifact_store)
        after = (again.list_models(), again.get_model("m"), again.list_deployments())
        assert after == before
        assert again.get_version("m", "prod").metadata == {"k": [1, 2]}
    finally:
        reopened.dispose()


def test_concurrent_create_version_gets_distinct_numbers(
    registry: Registry, artifact_store: LocalArtifactStore
) -> None:
    sha = _upload(artifact_store, b"w")
    threads, per_thread = 6, 3
    barrier = threading.Barrier(threads)
    numbers: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(per_thread):
                # The model does not exist yet: the first calls also race to create it.
                version = registry.create_version("racy", _body(sha), SIGNATURE).version
                with lock:
                    numbers.append(version)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)

    assert errors == []
    assert sorted(numbers) == list(range(1, threads * per_thread + 1))
    assert registry.count_models() == 1
    assert registry.get_model("racy").latest_version == threads * per_thread
