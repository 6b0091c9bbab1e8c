"""``AsyncClient`` methods of the training API: the awaitable twin of ``TrainingMixin``.

Same methods, same arguments, same results and errors as ``client.training_sync``; the
requests come from the shared ``TrainingCalls``. ``follow_run`` is an async iterator.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import httpx

from modelport.client.calls import Call
from modelport.client.core import poll_delays
from modelport.client.files import ArtifactFile, Progress
from modelport.client.responses import transport_error
from modelport.client.training import (
    CALLS,
    STREAM_TIMEOUT,
    Spec,
    SseParser,
    check_finished,
    run_not_done,
    train_request,
)
from modelport.types.admin import ArtifactInfo
from modelport.types.training import (
    DatasetDetail,
    DatasetInfo,
    DatasetPreview,
    RunComparison,
    RunDetail,
    RunEvent,
    RunInfo,
    TrainerInfo,
    TrainRequest,
)

T = TypeVar("T")


class AsyncTrainingMixin:
    """Training methods of ``AsyncClient`` (see ``TrainingMixin``)."""

    _http: httpx.AsyncClient

    if TYPE_CHECKING:

        @property
        def base_url(self) -> str: ...

        async def _send(self, call: Call[T]) -> T: ...

        async def _upload(
            self, artifact: ArtifactFile, progress: Progress | None
        ) -> ArtifactInfo: ...

    # datasets

    async def push_dataset(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        target: str | None = None,
        task: str | None = None,
        text_column: str | None = None,
        fmt: str | None = None,
        description: str | None = None,
        progress: Progress | None = None,
    ) -> DatasetInfo:
        """Upload a data file and register it as the next version of dataset ``name``."""
        artifact = await anyio.to_thread.run_sync(ArtifactFile.measure, path)
        call = CALLS.create_dataset(
            name,
            artifact,
            target=target,
            task=task,
            text_column=text_column,
            fmt=fmt,
            description=description,
        )
        await self._upload(artifact, progress)
        return await self._send(call)

    async def list_datasets(self) -> list[DatasetInfo]:
        """The newest version of every dataset the caller sees, built-ins included."""
        return await self._send(CALLS.list_datasets())

    async def get_dataset(self, name: str) -> DatasetDetail:
        return await self._send(CALLS.get_dataset(name))

    async def preview_dataset(
        self, name: str, *, version: int | None = None, rows: int | None = None
    ) -> DatasetPreview:
        return await self._send(CALLS.preview_dataset(name, version=version, rows=rows))

    async def delete_dataset(self, name: str) -> None:
        await self._send(CALLS.delete_dataset(name))

    async def list_trainers(self) -> list[TrainerInfo]:
        return await self._send(CALLS.list_trainers())

    # runs

    async def train(
        self,
        request: TrainRequest | Mapping[str, Any] | None = None,
        *,
        dataset: str | None = None,
        trainer: str | None = None,
        model_name: str | None = None,
        params: Mapping[str, Any] | None = None,
        preprocessing: Spec | None = None,
        split: Spec | None = None,
        seed: int | None = None,
        dataset_version: int | None = None,
        register_model: bool | None = None,
        description: str | None = None,
    ) -> RunInfo:
        """Queue a training run, from a ``TrainRequest`` (or mapping) or keyword fields."""
        body = train_request(
            request,
            {
                "dataset": dataset,
                "trainer": trainer,
                "model_name": model_name,
                "params": dict(params) if params is not None else None,
                "preprocessing": preprocessing,
                "split": split,
                "seed": seed,
                "dataset_version": dataset_version,
                "register_model": register_model,
                "description": description,
            },
        )
        return await self._send(CALLS.train(body))

    async def list_runs(
        self,
        *,
        model: str | None = None,
        dataset: str | None = None,
        trainer: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> list[RunInfo]:
        call = CALLS.list_runs(
            model=model, dataset=dataset, trainer=trainer, status=status, limit=limit
        )
        return await self._send(call)

    async def get_run(self, run_id: int) -> RunDetail:
        return await self._send(CALLS.get_run(run_id))

    async def cancel_run(self, run_id: int) -> RunInfo:
        return await self._send(CALLS.cancel_run(run_id))

    async def run_logs(self, run_id: int) -> str:
        return await self._send(CALLS.run_logs(run_id))

    async def compare_runs(self, run_ids: Sequence[int]) -> RunComparison:
        return await self._send(CALLS.compare_runs(run_ids))

    async def follow_run(self, run_id: int) -> AsyncIterator[RunEvent]:
        """The run's events as they happen (stored first, then live) until it finishes."""
        call = CALLS.run_events(run_id)
        request = call.request
        parser = SseParser()
        try:
            async with self._http.stream(
                request.method, request.path, headers=request.headers, timeout=STREAM_TIMEOUT
            ) as response:
                if not 200 <= response.status_code < 300:
                    call.handle(response.status_code, await response.aread(), response.headers)
                async for line in response.aiter_lines():
                    event = parser.feed(line.rstrip("\r\n"))
                    if event is not None:
                        yield event
        except httpx.TransportError as exc:
            raise transport_error(exc, self.base_url) from exc
        last = parser.finish()
        if last is not None:
            yield last

    async def wait_run(
        self,
        run_id: int,
        timeout: float = 3600.0,  # noqa: ASYNC109 - mirrors Client.wait_run
    ) -> RunDetail:
        """Poll a run until it finishes (see ``Client.wait_run``)."""
        deadline = anyio.current_time() + timeout
        for delay in poll_delays(0.1, 1.0):
            run = await self.get_run(run_id)
            if check_finished(run):
                return run
            left = deadline - anyio.current_time()
            if left <= 0:
                raise run_not_done(run, timeout)
            await anyio.sleep(min(delay, left))
        raise AssertionError("unreachable: poll_delays never ends")
