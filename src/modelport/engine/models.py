"""Model registration: check an uploaded artifact, learn its signature, record the version.

Reading a signature means loading the model, which for some formats runs code from the
artifact; so it happens in a short-lived worker process, never in the API process. The
API process itself only sniffs bytes (``Runtime.check_artifact``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from modelport.backends.local import inspect_signature
from modelport.engine.registry import Registry
from modelport.runtimes.base import LoadSpec, runtime_class
from modelport.settings import Settings
from modelport.storage.artifacts import ArtifactStore
from modelport.types.admin import RESERVED_OPTIONS, CreateVersion, VersionInfo


def load_options(
    settings: Settings, metadata: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``LoadSpec.options`` for a version: deployment options plus what the server sets.

    The server's own keys (the version's ``task``, the ``cache_dir`` archives unpack into)
    come last and reserved keys from ``extra`` are dropped, so a deployment can tune a
    runtime (threads, chat_template) but never pick the class it imports.
    """
    options = {k: v for k, v in (extra or {}).items() if k not in RESERVED_OPTIONS}
    options["cache_dir"] = str(settings.runtime_dir / "unpacked")
    task = metadata.get("task")
    if isinstance(task, str):
        options["task"] = task
    return options


class ModelService:
    """Register new model versions safely."""

    def __init__(self, settings: Settings, registry: Registry, artifacts: ArtifactStore) -> None:
        self._settings = settings
        self._registry = registry
        self._artifacts = artifacts

    async def register(self, name: str, body: CreateVersion) -> VersionInfo:
        """Check the artifact, read its signature out of process, then record the version."""
        cls = runtime_class(body.runtime)
        if not await asyncio.to_thread(self._artifacts.exists, body.artifact_sha256):
            # Let the registry raise its usual error for an unknown artifact.
            return await asyncio.to_thread(
                self._registry.create_version, name, body, body.signature_or_empty()
            )
        path = self._artifacts.local_path(body.artifact_sha256)
        await asyncio.to_thread(cls.check_artifact, path, body.artifact_name, trusted=body.trusted)
        spec = LoadSpec(
            runtime=body.runtime,
            artifact_path=path,
            artifact_name=body.artifact_name,
            sha256=body.artifact_sha256,
            trusted=body.trusted,
            signature=body.signature,
            options=load_options(self._settings, body.metadata),
        )
        signature = await inspect_signature(spec, timeout=self._settings.inspect_timeout_s)
        return await asyncio.to_thread(self._registry.create_version, name, body, signature)
