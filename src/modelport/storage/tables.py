"""The SQL schema of the registry, as typed SQLAlchemy 2 ORM classes.

Registry: ``models``, ``model_versions``, ``aliases``, ``model_shares`` and ``deployments``
(the desired state of deployments, so they survive restarts). Tenancy and billing:
``tenants``, ``users``, ``api_keys`` (secrets only as SHA-256 hashes), ``prices`` (versioned in
time), ``usage_records`` (one per answered request, unique by request id) and ``audit_log``.
Training: ``datasets`` (numbered versions of uploaded files, plus the built-in sets),
``training_runs`` (one row per job and its experiment record) and ``run_events`` (its
progress events, numbered per run).
Traffic and pipelines: ``traffic_routes`` (a model's split between its deployments),
``pipelines`` (graphs of deployed models served as one model name) and ``pipeline_shares``.
Money columns are ``Numeric`` read back as ``Decimal``, never floats.

The same definitions run on SQLite and PostgreSQL: JSON columns use the portable ``JSON``
type and timestamps go through ``UTCDateTime`` so they always come back timezone-aware in UTC.

This module only describes the schema; Alembic (``migrations/versions``) creates it. Any
change here needs a new migration, and ``tests/integration/test_registry.py`` checks that
the two agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Deterministic constraint names, so migrations can refer to (and later drop) them by name
# on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    PostgreSQL keeps the offset (``timestamptz``); SQLite has no timestamp type, so the value
    is stored as naive UTC text and the zone is re-attached on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            # A naive time is ambiguous; refusing it keeps every stored time comparable.
            raise ValueError(f"naive datetime {value!r} refused: pass a timezone-aware time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table of modelport."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Money: 10 decimal places covers per-token prices; 20 digits covers any realistic bill.
Money = Numeric(20, 10, asdecimal=True)
# An auto-increment 64-bit key (SQLite only auto-increments a column typed INTEGER).
BigId = BigInteger().with_variant(Integer(), "sqlite")


class TenantRow(Base):
    """A customer: owns models, deployments, keys and usage; limits and budget apply to it."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    monthly_budget: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    # Share of a budget at which the usage API flags the soft threshold (0.8 = 80 %).
    soft_budget_ratio: Mapped[Decimal] = mapped_column(
        Numeric(4, 3, asdecimal=True), default=Decimal("0.8")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UserRow(Base):
    """A person in a tenant with a role: owner, admin, developer or viewer."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKeyRow(Base):
    """An API key: ``mp-<key_id>-<secret>``; only the SHA-256 of the whole key is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)  # the public part
    secret_hash: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    name: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    monthly_budget: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelRow(Base):
    """A named model; its versions hold the artifacts. Owned by a tenant."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # NULL: owned by the platform (models from before tenancy, demo models).
    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True, index=True
    )
    # "private" (owner only), "shared" (owner + model_shares), "public" (every tenant).
    visibility: Mapped[str] = mapped_column(
        String(16), default="private", server_default=text("'private'")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelShareRow(Base):
    """A tenant a ``shared`` model is shared with."""

    __tablename__ = "model_shares"
    __table_args__ = (UniqueConstraint("model_id", "tenant_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))


class VersionRow(Base):
    """One immutable, numbered version of a model: an artifact plus how to load it."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    runtime: Mapped[str] = mapped_column(String(64))
    artifact_sha256: Mapped[str] = mapped_column(String(64), index=True)
    artifact_name: Mapped[str] = mapped_column(String(255))
    artifact_size: Mapped[int] = mapped_column(BigInteger)
    trusted: Mapped[bool] = mapped_column(Boolean, default=False)
    signature: Mapped[dict[str, Any]] = mapped_column(JSON)
    # ``metadata`` is taken by the declarative base, hence the attribute name ``meta``.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AliasRow(Base):
    """A movable name (``production``, ``staging``...) pointing at one version of a model."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("model_id", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(128))
    # Deleting a version drops the aliases that pointed at it.
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))


class DeploymentRow(Base):
    """The desired state of one deployment; the engine reconciles running replicas to it."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # No cascade: a model in use by a deployment must not disappear under it.
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    # The tenant that deployed it (NULL: the platform); who may call it follows the model.
    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True
    )
    version: Mapped[int] = mapped_column(Integer)
    replicas: Mapped[int] = mapped_column(Integer)
    max_batch_size: Mapped[int] = mapped_column(Integer)
    max_latency_ms: Mapped[float] = mapped_column(Float)
    # Runtime options (threads, chat_template...) passed to every replica's load spec.
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PriceRow(Base):
    """One price sheet of a model, in force from ``effective_from`` until the next one.

    Keyed by model *name*, not id, so bills stay explainable after a model is deleted.
    """

    __tablename__ = "prices"
    __table_args__ = (UniqueConstraint("model", "effective_from"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    effective_from: Mapped[datetime] = mapped_column(UTCDateTime)
    per_1k_requests: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    per_1k_input_tokens: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    per_1k_output_tokens: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    per_compute_second: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UsageRow(Base):
    """What one answered request consumed and what it cost; unique by request id."""

    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    requests: Mapped[int] = mapped_column(Integer, default=1)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    compute_ms: Mapped[Decimal] = mapped_column(Numeric(18, 3, asdecimal=True), default=0)
    streamed: Mapped[bool] = mapped_column(Boolean, default=False)
    finished: Mapped[bool] = mapped_column(Boolean, default=True)
    price_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cost: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class AuditRow(Base):
    """One admin action: who (tenant, key), what (action, target, status), when, from where."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    tenant_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str] = mapped_column(String(160))
    action: Mapped[str] = mapped_column(String(160))
    target: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[int] = mapped_column(Integer)
    remote: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class DatasetRow(Base):
    """One immutable, numbered version of a dataset: an uploaded file and its inferred schema.

    Built-in datasets (scikit-learn's bundled sets) have ``builtin`` set, no artifact and no
    tenant; every tenant sees them.
    """

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True, index=True
    )
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    format: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str] = mapped_column(String(255))
    artifact_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    rows: Mapped[int] = mapped_column(Integer)
    # How the file was read: target column, task, text field (what training reads it with).
    target: Mapped[str | None] = mapped_column(String(255), nullable=True)
    task: Mapped[str | None] = mapped_column(String(16), nullable=True)
    text_column: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # DatasetSchema as JSON (kind, task, target, columns, classes).
    dataset_schema: Mapped[dict[str, Any]] = mapped_column("schema", JSON)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RunRow(Base):
    """One training job and its experiment record (inputs, progress, outcome).

    The dataset is recorded by name, version and checksum rather than by key, so the record
    stays readable after the dataset is deleted.
    """

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True, index=True
    )
    status: Mapped[str] = mapped_column(String(16), index=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    register_model: Mapped[bool] = mapped_column(Boolean, default=True)
    dataset: Mapped[str] = mapped_column(String(128))
    dataset_version: Mapped[int] = mapped_column(Integer)
    dataset_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    trainer: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    preprocessing: Mapped[dict[str, Any]] = mapped_column(JSON)
    split: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    artifacts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    code_version: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RunEventRow(Base):
    """One progress event of a run (status change, epoch, log line, metrics), numbered."""

    __tablename__ = "run_events"
    __table_args__ = (UniqueConstraint("run_id", "seq"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class TrafficRouteRow(Base):
    """How one model's requests are split between its deployments (``engine/traffic.py``).

    Deployments are named, not referenced: a route outlives the redeploy of one of them, and
    a route naming a deployment that is gone falls back to the stable one.
    """

    __tablename__ = "traffic_routes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Deleting the model drops its route.
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), unique=True)
    stable: Mapped[str] = mapped_column(String(128))
    # Deployment name → percent of requests, for the deployments other than ``stable``.
    weights: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    shadow: Mapped[str | None] = mapped_column(String(128), nullable=True)
    previous: Mapped[str | None] = mapped_column(String(128), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PipelineRow(Base):
    """A graph of deployed models served as one model name (``engine/pipelines.py``)."""

    __tablename__ = "pipelines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # The owning tenant (NULL: the platform).
    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True, index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    # The steps and combined outputs as PipelineSpec's JSON.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # As a model's: "private" (owner only), "shared" (owner + pipeline_shares), "public".
    visibility: Mapped[str] = mapped_column(
        String(16), default="private", server_default=text("'private'")
    )


class PipelineShareRow(Base):
    """A tenant a ``shared`` pipeline is shared with."""

    __tablename__ = "pipeline_shares"
    __table_args__ = (UniqueConstraint("pipeline_id", "tenant_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
