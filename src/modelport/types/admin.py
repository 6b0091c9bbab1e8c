"""Admin wire models: registry objects, deployments and their status.

These are the shapes the admin API returns and the Python client parses, so the client and
server cannot drift apart.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
OPTION_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
# Load options only the server sets: the runtime class to import (a trust decision), where
# archives unpack, and the task (from the version's metadata).
# ``scaling`` holds the autoscaling fields of a stored deployment (never sent to a runtime).
RESERVED_OPTIONS = frozenset({"runtime_class", "cache_dir", "task", "scaling"})


class TensorSpec(BaseModel):
    """One named tensor of a model signature; ``-1`` marks a variable dimension."""

    name: str
    datatype: str = Field(description="V2 datatype, e.g. FP32, INT64, BYTES")
    shape: list[int]


class Signature(BaseModel):
    """Inputs and outputs of a model version."""

    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)


class ModelInfo(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    description: str = ""
    created_at: datetime
    latest_version: int | None = None
    aliases: dict[str, int] = Field(default_factory=dict)
    owner: str | None = Field(default=None, description="Owning tenant; null: the platform.")
    visibility: str = Field(default="private", description="private, shared or public.")


class VersionInfo(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    model: str
    version: int
    runtime: str
    artifact_sha256: str
    artifact_name: str
    artifact_size: int
    trusted: bool = False
    signature: Signature
    metadata: dict[str, Any] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    aliases: list[str] = Field(default_factory=list)


class ModelDetail(ModelInfo):
    versions: list[VersionInfo] = Field(default_factory=list)


class SetVisibility(BaseModel):
    """Body of ``PUT /api/models/{name}/visibility`` (and ``/api/pipelines/{name}/...``)."""

    model_config = ConfigDict(extra="forbid")

    visibility: Literal["private", "shared", "public"]
    tenants: list[str] = Field(default_factory=list, description="With 'shared': who.")


class ArtifactInfo(BaseModel):
    sha256: str
    size: int


class CreateVersion(BaseModel):
    """Body of ``POST /api/models/{name}/versions``: register an uploaded artifact."""

    model_config = ConfigDict(extra="forbid")

    artifact_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    artifact_name: str = Field(min_length=1, max_length=255)
    runtime: str
    trusted: bool = False
    signature: Signature | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None
    aliases: list[str] = Field(default_factory=list)

    def signature_or_empty(self) -> Signature:
        return self.signature or Signature()


class SetAlias(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)


class DeploymentState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"
    IDLE = "idle"  # at zero replicas; the next request starts one (cold start)


class ReplicaState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    RESTARTING = "restarting"
    STOPPED = "stopped"


class DeploySpec(BaseModel):
    """Body of ``POST /api/deployments``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=NAME_PATTERN)
    version: int | None = Field(default=None, ge=1, description="Default: newest version.")
    alias: str | None = Field(default=None, description="Resolve the version via this alias.")
    replicas: int = Field(default=1, ge=0, le=64)
    max_batch_size: int = Field(default=1, ge=1, le=65536)
    max_latency_ms: float = Field(default=5.0, ge=0, le=60_000)
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Runtime options, e.g. threads, n_ctx, chat_template (see the runtime).",
    )
    # Autoscaling (engine/autoscale.py): on when min_replicas or max_replicas is given;
    # ``replicas`` is then the starting count, kept within [min_replicas, max_replicas].
    min_replicas: int | None = Field(
        default=None, ge=0, le=64, description="Autoscaling floor; 0 allows scale-to-zero."
    )
    max_replicas: int | None = Field(default=None, ge=1, le=64, description="Autoscaling cap.")
    target_inflight: float = Field(
        default=4.0, gt=0, le=10_000, description="Requests in flight per replica to aim for."
    )
    scale_up_delay_s: float = Field(
        default=1.0, ge=0, le=3600, description="How long more replicas must be wanted first."
    )
    scale_down_delay_s: float = Field(
        default=30.0, ge=0, le=86_400, description="How long fewer replicas must suffice first."
    )
    idle_timeout_s: float = Field(
        default=300.0, gt=0, le=604_800, description="With min_replicas=0: idle time to zero."
    )
    pinned: bool = Field(
        default=False, description="Never unloaded to make room under the memory budget."
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> DeploySpec:
        low, high = self.min_replicas, self.max_replicas
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_replicas ({low}) must be <= max_replicas ({high})")
        return self

    @property
    def autoscaled(self) -> bool:
        """Whether the autoscaler manages the replica count."""
        return self.min_replicas is not None or self.max_replicas is not None

    @field_validator("options")
    @classmethod
    def _check_options(
        cls, options: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        for key in options:
            if not re.fullmatch(OPTION_PATTERN, key):
                raise ValueError(f"option name {key!r} must match {OPTION_PATTERN}")
            if key in RESERVED_OPTIONS:
                raise ValueError(f"option {key!r} is set by the server, not by a deployment")
        return options


class ScaleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(ge=0, le=64)


class ReplicaStatus(BaseModel):
    id: str
    state: ReplicaState
    pid: int | None = None
    restarts: int = 0
    reason: str | None = None
    inflight: int = 0
    memory_bytes: int | None = Field(
        default=None, description="Resident memory of the replica's worker, when measured."
    )


class ScalingDecision(BaseModel):
    """One change of a deployment's replica count (autoscaler, cold start, eviction...)."""

    at: datetime
    replicas_from: int
    replicas_to: int
    reason: str


class DeploymentStatus(BaseModel):
    name: str
    model: str
    version: int
    runtime: str
    replicas: int
    max_batch_size: int
    max_latency_ms: float
    options: dict[str, Any] = Field(default_factory=dict)
    state: DeploymentState
    reason: str | None = None
    ready_replicas: int = 0
    replica_status: list[ReplicaStatus] = Field(default_factory=list)
    queue_depth: int = 0
    autoscaling: bool = False
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_inflight: float | None = None
    scale_up_delay_s: float | None = None
    scale_down_delay_s: float | None = None
    idle_timeout_s: float | None = None
    pinned: bool = False
    unloaded: bool = Field(
        default=False, description="Unloaded through the V2 repository API: no cold start."
    )
    inflight: int = Field(default=0, description="Requests in the deployment right now.")
    memory_bytes: int = Field(default=0, description="Resident memory of its replicas.")
    last_used_at: datetime | None = None
    decisions: list[ScalingDecision] = Field(
        default_factory=list, description="The last replica count changes, newest last."
    )


class UsageRecord(BaseModel):
    """One usage event (``engine.usage.UsageEvent``) as ``/api/usage/recent`` shows it."""

    request_id: str
    model: str
    version: int
    kind: str = Field(description="chat, completion, embedding or inference")
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    streamed: bool
    finished: bool = Field(description="False when the client left before the end")
    created: datetime


class ServerStatus(BaseModel):
    version: str
    database: str
    backend: str
    models: int
    deployments: list[DeploymentStatus]
