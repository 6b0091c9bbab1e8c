"""``Client`` methods of the training API: datasets, trainers, runs and their live events.

A mixin of ``Client``: each method sends a ``Call`` built by ``client.training`` and
returns the wire model (``modelport.types.training``). ``AsyncTrainingMixin`` in
``client.training_async`` mirrors it with ``await``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from modelport.client.calls import Call
from modelport.client.core import poll_delays
from modelport.client.files import ArtifactFile, Progress
from modelport.client.responses import transport_error
from modelport.client.training import (
    CALLS,
    STREAM_TIMEOUT,
    Spec,
    check_finished,
    parse_events,
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


class TrainingMixin:
    """Training methods of ``Client`` (see the module docstring)."""

    _http: httpx.Client

    if TYPE_CHECKING:

        @property
        def base_url(self) -> str: ...

        def _send(self, call: Call[T]) -> T: ...

        def _upload(self, artifact: ArtifactFile, progress: Progress | None) -> ArtifactInfo: ...

    # datasets

    def push_dataset(
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
        """Upload a data file and register it as the next version of dataset ``name``.

        The file goes to the artifact store first (streamed, checksummed); the server then
        reads it, infers its schema and refuses a malformed file with ``InvalidInput``.
        """
        artifact = ArtifactFile.measure(path)
        call = CALLS.create_dataset(
            name,
            artifact,
            target=target,
            task=task,
            text_column=text_column,
            fmt=fmt,
            description=description,
        )  # built first: a bad name or option fails before the upload
        self._upload(artifact, progress)
        return self._send(call)

    def list_datasets(self) -> list[DatasetInfo]:
        """The newest version of every dataset the caller sees, built-ins included."""
        return self._send(CALLS.list_datasets())

    def get_dataset(self, name: str) -> DatasetDetail:
        """One dataset: its newest version, schema and every version."""
        return self._send(CALLS.get_dataset(name))

    def preview_dataset(
        self, name: str, *, version: int | None = None, rows: int | None = None
    ) -> DatasetPreview:
        """The first ``rows`` rows of a dataset (newest version unless ``version``)."""
        return self._send(CALLS.preview_dataset(name, version=version, rows=rows))

    def delete_dataset(self, name: str) -> None:
        self._send(CALLS.delete_dataset(name))

    def list_trainers(self) -> list[TrainerInfo]:
        """The trainers the server offers, with the JSON schema of their hyperparameters."""
        return self._send(CALLS.list_trainers())

    # runs

    def train(
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
        return self._send(CALLS.train(body))

    def list_runs(
        self,
        *,
        model: str | None = None,
        dataset: str | None = None,
        trainer: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> list[RunInfo]:
        """Runs, newest first, filtered by model, dataset, trainer or status."""
        call = CALLS.list_runs(
            model=model, dataset=dataset, trainer=trainer, status=status, limit=limit
        )
        return self._send(call)

    def get_run(self, run_id: int) -> RunDetail:
        """One run with its per-epoch metrics, artifacts and lineage."""
        return self._send(CALLS.get_run(run_id))

    def cancel_run(self, run_id: int) -> RunInfo:
        return self._send(CALLS.cancel_run(run_id))

    def run_logs(self, run_id: int) -> str:
        """The run's job log (the worker's stderr)."""
        return self._send(CALLS.run_logs(run_id))

    def compare_runs(self, run_ids: Sequence[int]) -> RunComparison:
        """Params and metrics of several runs side by side."""
        return self._send(CALLS.compare_runs(run_ids))

    def follow_run(self, run_id: int) -> Iterator[RunEvent]:
        """The run's events as they happen: the stored ones first, then live ones.

        The iterator ends when the run finishes (or the server closes the stream); the
        connection closes when the iterator is closed or garbage-collected.
        """
        call = CALLS.run_events(run_id)
        request = call.request
        try:
            with self._http.stream(
                request.method, request.path, headers=request.headers, timeout=STREAM_TIMEOUT
            ) as response:
                if not 200 <= response.status_code < 300:
                    call.handle(response.status_code, response.read(), response.headers)
                yield from parse_events(response.iter_lines())
        except httpx.TransportError as exc:
            raise transport_error(exc, self.base_url) from exc

    def wait_run(self, run_id: int, timeout: float = 3600.0) -> RunDetail:
        """Poll a run until it finishes; returns it whatever its outcome.

        Raises ``DeadlineExceeded`` if it is still queued or running after ``timeout``
        seconds (the run goes on; cancel it with ``cancel_run``).
        """
        deadline = time.monotonic() + timeout
        for delay in poll_delays(0.1, 1.0):
            run = self.get_run(run_id)
            if check_finished(run):
                return run
            left = deadline - time.monotonic()
            if left <= 0:
                raise run_not_done(run, timeout)
            time.sleep(min(delay, left))
        raise AssertionError("unreachable: poll_delays never ends")
