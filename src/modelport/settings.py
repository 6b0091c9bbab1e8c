"""The one settings object.

Every tunable of the server is a field here, read from the environment with the prefix
``MODELPORT_`` (for example ``MODELPORT_PORT=9000``). No other module reads the environment:
objects that need a setting get the ``Settings`` instance handed to them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
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

    # Large models (OpenAI API, ``engine.llm``).
    demo_text_models: bool = Field(
        default=True,
        description="With demo_models: also deploy the bundled text models (minilm, gemma).",
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

    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

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
    def runtime_dir(self) -> Path:
        """Scratch space for unpacked artifacts and worker files."""
        return self.data_dir / "run"
