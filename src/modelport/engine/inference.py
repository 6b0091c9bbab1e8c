"""Protocol-neutral inference: find the deployment, check inputs, batch, wait.

V2 and V1 routes (and later OpenAI routes) call this; it knows no HTTP. Inputs are checked
against the version's signature *before* batching, so one caller's bad tensor can never fail
a batch shared with others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from modelport.engine.deployments import Deployment, DeploymentManager
from modelport.errors import VersionNotFound
from modelport.runtimes.base import Tensors, validate_inputs


class InferenceService:
    """Run inference requests against live deployments."""

    def __init__(self, deployments: DeploymentManager) -> None:
        self._deployments = deployments

    def resolve(self, model: str, version: str | None = None) -> Deployment:
        """The deployment answering for ``model`` (and ``version``, when given)."""
        live = self._deployments.get(model)
        if version is not None and version != str(live.record.version):
            raise VersionNotFound(
                f"version {version!r} of model {model!r} is not deployed "
                f"(serving version {live.record.version})",
                param="version",
            )
        return live

    async def infer(
        self,
        live: Deployment,
        inputs: Mapping[str, np.ndarray],
        params: dict[str, Any] | None = None,
        *,
        cast: bool = False,
    ) -> Tensors:
        """Validate ``inputs`` against the deployed signature and run them through the batcher."""
        checked = validate_inputs(live.version.signature, inputs, cast=cast)
        # The batcher checks the rows (axis 0) agree and are not empty; deadlines are kept
        # per batch there too (one timer per batch, not per request).
        return await live.batcher.submit(checked, params or {})
