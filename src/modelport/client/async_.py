"""The asyncio Python client: ``AsyncClient``, the awaitable twin of ``Client``.

Same methods, same arguments, same errors; requests come from the shared ``ClientCore``.
File reads (hashing, upload chunks) run off the event loop.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import anyio
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
from modelport.client.tenancy_async import AsyncTenancyMixin
from modelport.client.traffic import AsyncTrafficMixin
from modelport.client.training_async import AsyncTrainingMixin
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

_DONE = b""


class AsyncClient(AsyncTenancyMixin, AsyncTrainingMixin, AsyncTrafficMixin):
    """An asyncio connection to a modelport server; ``async with`` it or ``await aclose()``.

    The API key is found as in ``Client``; tenancy and billing methods come from
    ``AsyncTenancyMixin``, datasets, trainers and runs from ``AsyncTrainingMixin``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._core = ClientCore(base_url, resolve_api_key(api_key))
        self._http = httpx.AsyncClient(
            base_url=self._core.base_url, headers=self._core.headers, timeout=timeout
        )

    @property
    def base_url(self) -> str:
        return self._core.base_url

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: Call[T], body: AsyncIterator[bytes] | None = None) -> T:
        request = call.request
        try:
            response = await self._http.request(
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

    async def upload_artifact(
        self, path: str | os.PathLike[str], progress: Progress | None = None
    ) -> ArtifactInfo:
        """Stream one file to the artifact store; the server verifies its SHA-256."""
        artifact = await anyio.to_thread.run_sync(ArtifactFile.measure, path)
        return await self._upload(artifact, progress)

    async def _upload(self, artifact: ArtifactFile, progress: Progress | None) -> ArtifactInfo:
        chunks = _aiter_file(artifact, progress)
        try:
            info = await self._send(self._core.upload_artifact(artifact), chunks)
        finally:
            await chunks.aclose()  # closes the file even if the upload failed midway
        check_uploaded(artifact, info)
        return info

    async def push_model(
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
        """Upload an artifact file (or model folder) and register it as the next version."""
        artifact = await anyio.to_thread.run_sync(ArtifactFile.measure_path, path)
        await self._upload(artifact, progress)
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
        return await self._send(call)

    async def list_models(self) -> list[ModelInfo]:
        return await self._send(self._core.list_models())

    async def get_model(self, name: str) -> ModelDetail:
        return await self._send(self._core.get_model(name))

    async def get_version(self, name: str, ref: int | str = "latest") -> VersionInfo:
        """One version by number, alias or ``"latest"``."""
        return await self._send(self._core.get_version(name, ref))

    async def delete_model(self, name: str) -> None:
        await self._send(self._core.delete_model(name))

    async def delete_version(self, name: str, version: int) -> None:
        await self._send(self._core.delete_version(name, version))

    async def set_alias(self, name: str, alias: str, version: int) -> VersionInfo:
        return await self._send(self._core.set_alias(name, alias, version))

    async def delete_alias(self, name: str, alias: str) -> None:
        await self._send(self._core.delete_alias(name, alias))

    # deployments

    async def deploy(
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
        return await self._send(call)

    async def scale(self, name: str, replicas: int) -> DeploymentStatus:
        return await self._send(self._core.scale(name, replicas))

    async def undeploy(self, name: str) -> None:
        await self._send(self._core.undeploy(name))

    async def deployments(self) -> list[DeploymentStatus]:
        return await self._send(self._core.deployments())

    async def deployment(self, name: str) -> DeploymentStatus:
        return await self._send(self._core.deployment(name))

    async def wait_ready(
        self,
        name: str,
        timeout: float = 120.0,  # noqa: ASYNC109 - mirrors Client.wait_ready
        *,
        all_replicas: bool = True,
    ) -> DeploymentStatus:
        """Poll a deployment until it is ready; raises like ``Client.wait_ready``."""
        deadline = anyio.current_time() + timeout
        for delay in poll_delays():
            status = await self.deployment(name)
            if is_ready(status, all_replicas=all_replicas):
                return status
            left = deadline - anyio.current_time()
            if left <= 0:
                raise not_ready_in_time(status, timeout)
            await anyio.sleep(min(delay, left))
        raise AssertionError("unreachable: poll_delays never ends")

    async def status(self) -> ServerStatus:
        return await self._send(self._core.status())

    async def ready(self) -> bool:
        """Whether the server answers ``/v2/health/ready`` with success."""
        try:
            return await self._send(self._core.ready())
        except ModelportError:
            return False

    # inference

    async def predict(
        self, name: str, instances: Sequence[Any], version: int | str | None = None
    ) -> list[Any]:
        """Run ``instances`` (rows) through deployment ``name`` (V1 ``:predict``).

        With one model input each instance is a row of it; with several, an object keyed by
        input name. Returns one prediction per instance.
        """
        return await self._send(self._core.predict(name, instances, version))

    async def infer(
        self, name: str, inputs: Mapping[str, Any], version: int | str | None = None
    ) -> dict[str, np.ndarray]:
        """Run named arrays through deployment ``name`` (V2 JSON); returns named arrays."""
        return await self._send(self._core.infer(name, inputs, version))


async def _aiter_file(
    artifact: ArtifactFile, progress: Progress | None
) -> AsyncGenerator[bytes, None]:
    """The file's chunks, each read in a worker thread; ``progress`` runs on the loop.

    As in ``iter_file``, progress is reported once httpx asks for the next chunk, i.e.
    after the previous one was sent.
    """
    chunks = iter_file(artifact.path)
    sent = 0
    try:
        while chunk := await anyio.to_thread.run_sync(next, chunks, _DONE):
            yield chunk
            sent += len(chunk)
            if progress is not None:
                progress(sent)
    finally:
        chunks.close()
