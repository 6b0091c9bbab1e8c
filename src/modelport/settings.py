"""The one settings object.

Every tunable of the server is a field here, read from the environment with the prefix
``MODELPORT_`` (for example ``MODELPORT_PORT=9000``). No other module reads the environment:
objects that need a setting get the ``Settings`` instance handed to them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Server configuration; see README for the common ones."""

    model_config = SettingsConfigDict(env_prefix="MODELPORT_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Path(".modelport")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; defaults to SQLite (WAL) at <data_dir>/modelport.db.",
    )
    artifact_dir: Path | None = Field(
        default=None, description="Artifact store root; defaults to <data_dir>/artifacts."
    )

    demo_models: bool = Field(
        default=True, description="Build and deploy the bundled demo models at first start."
    )
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="Inference bodies above this get 413."
    )
    max_upload_bytes: int = Field(
        default=20 * 1024 * 1024 * 1024, gt=0, description="Largest artifact upload."
    )

    request_timeout_s: float = Field(default=60.0, gt=0, description="Inference deadline.")
    replica_wait_s: float = Field(
        default=30.0, gt=0, description="How long a request waits for a ready replica."
    )
    worker_start_timeout_s: float = Field(
        default=120.0, gt=0, description="Time a worker gets to load its model."
    )
    worker_restart_backoff_s: float = Field(default=0.5, gt=0)
    worker_restart_backoff_max_s: float = Field(default=30.0, gt=0)
    replica_max_inflight: int = Field(
        default=1,
        ge=1,
        description=(
            "Batches sent to one replica before it answers. 1 lets requests pile up into the "
            "next batch while a replica computes; more pipelines IPC on many-core hosts."
        ),
    )
    inspect_timeout_s: float = Field(
        default=120.0, gt=0, description="Limit for reading a new artifact's signature."
    )
    worker_spares: bool = Field(
        default=True,
        description=(
            "Local backend: keep one warm spare worker (runtime libraries imported) for each "
            "runtime + env whose replicas come and go (scaled down, crashed), so cold starts, "
            "scale-ups and restarts skip the imports. Costs one idle process per kind "
            "(~450 MB for scikit-learn with skops, which imports torch)."
        ),
    )

    # Where replicas run (``engine.services`` picks the backend; ``backends.ray`` for Ray).
    backend: Literal["local", "ray"] = Field(
        default="local",
        description="local: worker processes on this machine; ray: actors on a Ray cluster.",
    )
    ray_address: str | None = Field(
        default=None,
        description=(
            "Ray cluster to join (host:port of its head, or 'auto'); unset: RAY_ADDRESS, else "
            "a new single-node Ray started inside the server."
        ),
    )
    ray_namespace: str = Field(default="modelport", description="Ray namespace of the actors.")
    ray_replica_cpus: float = Field(
        default=0.0,
        ge=0,
        description=(
            "CPUs each replica actor reserves in Ray's scheduler. 0 packs replicas anywhere "
            "(like the local backend); 1 spreads them over a cluster by free CPUs."
        ),
    )
    ray_connect_timeout_s: float = Field(
        default=30.0, gt=0, description="How long joining the Ray cluster may take."
    )

    # Autoscaling and memory (``engine.autoscaler``, ``engine.model_memory``).
    autoscale_tick_s: float = Field(
        default=1.0, gt=0, le=60, description="How often the autoscaler looks at deployments."
    )
    autoscale_window_s: float = Field(
        default=5.0, gt=0, le=600, description="Look-back window for the average load."
    )
    cold_start_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="How long a request to a deployment at zero replicas waits for one (503).",
    )
    memory_budget_mb: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Resident memory all model replicas on this node may use (0: no limit); past it "
            "the least recently used idle, unpinned models are unloaded."
        ),
    )
    model_memory_estimate_mb: float = Field(
        default=100.0,
        ge=0,
        description=(
            "A worker's memory before its model is measured: this plus twice the artifact size."
        ),
    )

    # Large models (OpenAI API, ``engine.llm``).
    demo_text_models: bool = Field(
        default=True,
        description="With demo_models: also deploy the bundled text models (minilm, gemma).",
    )
    demo_pipeline: bool = Field(
        default=True,
        description=(
            "With demo_text_models: at first start, train 'sentiment-head' on minilm "
            "embeddings of bundled reviews and create pipeline 'review-sentiment' (background)."
        ),
    )
    llm_queue_wait_s: float = Field(
        default=60.0,
        gt=0,
        description="How long a generation waits in its model's queue for a replica (503).",
    )
    llm_max_queue: int = Field(
        default=256, ge=1, description="Generations waiting per model before new ones get 503."
    )
    llm_request_timeout_s: float = Field(
        default=600.0, gt=0, description="Longest one chat/completion request may generate."
    )
    llm_default_max_tokens: int = Field(
        default=512, ge=1, description="Chat max_tokens when the request sets none."
    )
    llm_max_tokens: int = Field(
        default=32768, ge=1, description="Largest max_tokens a request may ask for."
    )
    llm_max_n: int = Field(default=16, ge=1, description="Largest n (choices per request).")
    usage_recent_events: int = Field(
        default=1000, ge=0, description="Usage events kept in memory for /api/usage/recent."
    )

    # Metering and billing (``engine.metering``, ``api.metering``).
    metering: bool = Field(
        default=True,
        description="Journal one usage record per answered inference request; enforce budgets.",
    )
    metering_flush_ms: float = Field(
        default=1000.0,
        gt=0,
        description=(
            "How often the usage journal is committed to the DB (records are safe in the "
            "journal meanwhile, and usage reports commit first; larger batches cost the "
            "server less per record)."
        ),
    )
    metering_fsync: bool = Field(
        default=False,
        description=(
            "fdatasync every usage journal line (survives power loss, much slower); without "
            "it the journal survives a killed process, not a crashed kernel."
        ),
    )
    metering_tenant_refresh_s: float = Field(
        default=2.0, gt=0, description="How often tenant budgets are re-read from the DB."
    )

    # Rate limits (``engine.ratelimit``): keys and tenants carry their own rpm/tpm.
    rate_limits: bool = Field(
        default=True, description="Enforce requests/tokens per minute on inference calls."
    )
    model_rpm: dict[str, PositiveInt] = Field(
        default_factory=dict,
        description='Requests per minute per tenant for these models (JSON: {"iris": 600}).',
    )
    model_tpm: dict[str, PositiveInt] = Field(
        default_factory=dict,
        description="Tokens per minute per tenant for these models (JSON, like model_rpm).",
    )

    # Authentication (``engine.accounts``, ``api.auth``).
    auth: bool = Field(
        default=True,
        description=(
            "False: no API keys, no rate limits, no metering — every caller is trusted. Only "
            "for a single user on a closed machine, and to measure what pay-per-use costs."
        ),
    )
    admin_key: SecretStr | None = Field(
        default=None,
        description=(
            "The platform admin API key (env MODELPORT_ADMIN_KEY), stored hashed at start; "
            "unset: the first start generates one into <data_dir>/admin.key (mode 0600)."
        ),
    )
    metrics_public: bool = Field(
        default=True, description="Serve /metrics without an API key (for scrapers)."
    )

    # Training (``engine.training``): jobs run in worker processes, a few at a time.
    training_max_jobs: int = Field(
        default=1, ge=1, description="Training jobs that run at once; the rest wait queued."
    )
    training_threads: int = Field(
        default=0, ge=0, description="CPU threads per training job (0: all cores)."
    )
    training_prestart: bool = Field(
        default=True,
        description=(
            "Keep one job worker started ahead, its imports (torch, scikit-learn...) done, "
            "for the next training job (started when a job ends; it saves the next job "
            "seconds); off: each job starts its worker from scratch."
        ),
    )

    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("admin_key")
    @classmethod
    def _no_placeholder_admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        # A short or blank admin key is a placeholder, not a secret: refuse to start with it.
        if value is not None:
            secret = value.get_secret_value()
            if not secret:  # MODELPORT_ADMIN_KEY= (empty) means unset
                return None
            if len(secret) < 16 or secret != secret.strip():
                raise ValueError("admin_key must be at least 16 characters without spaces")
        return value

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser()
        if self.artifact_dir is None:
            self.artifact_dir = self.data_dir / "artifacts"
        return self

    @property
    def db_url(self) -> str:
        """The database URL in force (SQLite file in the data dir unless set)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'modelport.db').resolve()}"

    @property
    def artifacts_root(self) -> Path:
        """Root folder of the local artifact store."""
        assert self.artifact_dir is not None  # set by the validator
        return self.artifact_dir

    @property
    def training_dir(self) -> Path:
        """Per-run work folders (``<training_dir>/<run_id>``: spec, checkpoints, log, bundle)."""
        return self.data_dir / "training"

    @property
    def runtime_dir(self) -> Path:
        """Scratch space for unpacked artifacts and worker files."""
        return self.data_dir / "run"
