"""The blocking Python client: ``Client``.

Each method asks ``ClientCore`` for a ``Call`` and sends it with httpx; nothing about the
API's shapes lives here (``AsyncClient`` mirrors this file with ``await``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx
import numpy as np

from modelport.client.auth import resolve_api_key
from modelport.client.core import (
    DEFAULT_URL,
    Call,
    ClientCore,
    is_ready,
    not_ready_in_time,
    poll_delays,
)
from modelport.client.files import ArtifactFile, Progress, check_uploaded, iter_file
from modelport.client.responses import transport_error
from modelport.client.tenancy_sync import TenancyMixin
from modelport.client.traffic import TrafficMixin
from modelport.client.training_sync import TrainingMixin
from modelport.errors import ModelportError
from modelport.types.admin import (
    ArtifactInfo,
    DeploymentStatus,
    ModelDetail,
    ModelInfo,
    ServerStatus,
    Signature,
    VersionInfo,
)

T = TypeVar("T")


class Client(TenancyMixin, TrainingMixin, TrafficMixin):
    """A connection to a modelport server; use it as a context manager or ``close()`` it.

    Every error the server reports is raised as the same ``modelport.errors`` class the
    server raised (``ModelNotFound``, ``ShapeMismatch``, ``Unauthenticated``...); an
    unreachable server raises ``Unavailable`` and a timeout ``DeadlineExceeded``.

    The API key, sent as ``Authorization: Bearer``, is ``api_key`` when given (``""`` sends
    none), else ``MODELPORT_API_KEY``, else the file ``<data_dir>/admin.key``
    (``client.auth``). Tenancy and billing methods come from ``TenancyMixin``; datasets,
    trainers and runs from ``TrainingMixin``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._core = ClientCore(base_url, resolve_api_key(api_key))
        self._http = httpx.Client(
            base_url=self._core.base_url, headers=self._core.headers, timeout=timeout
        )

    @property
    def base_url(self) -> str:
        return self._core.base_url

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: Call[T], body: Iterable[bytes] | None = None) -> T:
        request = call.request
        try:
            response = self._http.request(
                request.method,
                request.path,
                params=request.params,
                content=body if body is not None else request.content,
                headers=request.headers,
            )
        except httpx.TransportError as exc:
            raise transport_error(exc, self.base_url) from exc
        return call.handle(response.status_code, response.content, response.headers)

    # registry

    def upload_artifact(
        self, path: str | os.PathLike[str], progress: Progress | None = None
    ) -> ArtifactInfo:
        """Stream one file to the artifact store; the server verifies its SHA-256."""
        artifact = ArtifactFile.measure(path)
        return self._upload(artifact, progress)

    def _upload(self, artifact: ArtifactFile, progress: Progress | None) -> ArtifactInfo:
        info = self._send(self._core.upload_artifact(artifact), iter_file(artifact.path, progress))
        check_uploaded(artifact, info)
        return info

    def push_model(
        self,
        path: str | os.PathLike[str],
        name: str,
        runtime: str,
        *,
        trusted: bool = False,
        signature: Signature | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        description: str | None = None,
        aliases: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> VersionInfo:
        """Upload an artifact file (or model folder) and register it as the next version.

        The file is streamed in chunks and ``progress`` gets the bytes sent so far. Pushing
        the same bytes again stores them once (the store is content-addressed).
        """
        artifact = ArtifactFile.measure_path(path)
        self._upload(artifact, progress)
        call = self._core.create_version(
            name,
            artifact,
            runtime,
            trusted=trusted,
            signature=signature,
            metadata=metadata,
            description=description,
            aliases=aliases,
        )
        return self._send(call)

    def list_models(self) -> list[ModelInfo]:
        return self._send(self._core.list_models())

    def get_model(self, name: str) -> ModelDetail:
        return self._send(self._core.get_model(name))

    def get_version(self, name: str, ref: int | str = "latest") -> VersionInfo:
        """One version by number, alias or ``"latest"``."""
        return self._send(self._core.get_version(name, ref))

    def delete_model(self, name: str) -> None:
        self._send(self._core.delete_model(name))

    def delete_version(self, name: str, version: int) -> None:
        self._send(self._core.delete_version(name, version))

    def set_alias(self, name: str, alias: str, version: int) -> VersionInfo:
        """Point ``alias`` at ``version`` (moving it if it pointed elsewhere)."""
        return self._send(self._core.set_alias(name, alias, version))

    def delete_alias(self, name: str, alias: str) -> None:
        self._send(self._core.delete_alias(name, alias))

    # deployments

    def deploy(
        self,
        model: str,
        *,
        version: int | None = None,
        alias: str | None = None,
        replicas: int = 1,
        max_batch_size: int = 1,
        max_latency_ms: float = 5.0,
        options: Mapping[str, Any] | None = None,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
        target_inflight: float = 4.0,
        pinned: bool = False,
        **scaling: Any,
    ) -> DeploymentStatus:
        """Start serving a model version (newest unless ``version`` or ``alias`` is given).

        ``min_replicas``/``max_replicas`` turn autoscaling on (``min_replicas=0``: scale to
        zero when idle); ``pinned`` keeps it loaded under the memory budget. ``scaling``
        takes the other ``DeploySpec`` fields (``scale_up_delay_s``, ``scale_down_delay_s``,
        ``idle_timeout_s``).
        """
        call = self._core.deploy(
            model,
            version=version,
            alias=alias,
            replicas=replicas,
            max_batch_size=max_batch_size,
            max_latency_ms=max_latency_ms,
            options=options,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            target_inflight=target_inflight,
            pinned=pinned,
            **scaling,
        )
        return self._send(call)

    def scale(self, name: str, replicas: int) -> DeploymentStatus:
        return self._send(self._core.scale(name, replicas))

    def undeploy(self, name: str) -> None:
        self._send(self._core.undeploy(name))

    def deployments(self) -> list[DeploymentStatus]:
        return self._send(self._core.deployments())

    def deployment(self, name: str) -> DeploymentStatus:
        return self._send(self._core.deployment(name))

    def wait_ready(
        self, name: str, timeout: float = 120.0, *, all_replicas: bool = True
    ) -> DeploymentStatus:
        """Poll a deployment until every replica is ready (any one, if not ``all_replicas``).

        Raises ``ModelLoadError`` (with the server's reason) if it fails, ``NotReady`` if it
        is stopped and ``DeadlineExceeded`` if it is still loading after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        for delay in poll_delays():
            status = self.deployment(name)
            if is_ready(status, all_replicas=all_replicas):
                return status
            left = deadline - time.monotonic()
            if left <= 0:
                raise not_ready_in_time(status, timeout)
            time.sleep(min(delay, left))
        raise AssertionError("unreachable: poll_delays never ends")

    def status(self) -> ServerStatus:
        return self._send(self._core.status())

    def ready(self) -> bool:
        """Whether the server answers ``/v2/health/ready`` with success."""
        try:
            return self._send(self._core.ready())
        except ModelportError:
            return False

    # inference

    def predict(
        self, name: str, instances: Sequence[Any], version: int | str | None = None
    ) -> list[Any]:
        """Run ``instances`` (rows) through deployment ``name`` (V1 ``:predict``).

        With one model input each instance is a row of it; with several, an object keyed by
        input name. Returns one prediction per instance.
        """
        return self._send(self._core.predict(name, instances, version))

    def infer(
        self, name: str, inputs: Mapping[str, Any], version: int | str | None = None
    ) -> dict[str, np.ndarray]:
        """Run named arrays through deployment ``name`` (V2 JSON); returns named arrays."""
        return self._send(self._core.infer(name, inputs, version))
