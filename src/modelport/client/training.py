"""Sans-IO calls of the training API: datasets, trainers, runs, and the run event stream.

``TrainingCalls`` builds the ``Call`` of each route of ``/api/datasets``, ``/api/trainers``
and ``/api/runs``; ``TrainingMixin`` (``client.training_sync``) and ``AsyncTrainingMixin``
(``client.training_async``) only send them, so the blocking and asyncio clients cannot
drift apart. Bodies are checked against the server's own request models
(``modelport.types.training``) before anything is sent: a bad value fails here with
``InvalidInput`` naming the field.

``GET /api/runs/{id}/events`` is a server-sent event stream; ``SseParser`` turns its lines
into ``RunEvent`` objects. It is a small parser of just what the server sends (``event:``,
``data:``, ``id:``, comments), not a general SSE client.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from modelport import errors
from modelport.client.calls import (
    Call,
    Request,
    given,
    json_call,
    path_segment,
    query,
    validated_body,
)
from modelport.client.files import ArtifactFile
from modelport.client.responses import parse_list, parse_model, parse_nothing
from modelport.types.training import (
    CreateDataset,
    DatasetDetail,
    DatasetInfo,
    DatasetPreview,
    PreprocessSpec,
    RunComparison,
    RunDetail,
    RunEvent,
    RunInfo,
    RunStatus,
    SplitSpec,
    TrainerInfo,
    TrainRequest,
)

EVENT_STREAM = "text/event-stream"

STREAM_TIMEOUT = httpx.Timeout(30.0, read=None)
"""Event streams wait as long as a run takes between events (a slow epoch); connecting,
writing and getting a pooled connection still time out."""

Spec = BaseModel | Mapping[str, Any]
"""A preprocessing or split spec: the wire model, or a mapping of its fields."""


class TrainingCalls:
    """Builds the training requests; stateless, shared by the sync and async mixins."""

    # datasets

    def create_dataset(
        self,
        name: str,
        artifact: ArtifactFile,
        *,
        target: str | None = None,
        task: str | None = None,
        text_column: str | None = None,
        fmt: str | None = None,
        description: str | None = None,
    ) -> Call[DatasetInfo]:
        """``POST /api/datasets`` registering an uploaded file as ``name``'s next version."""
        values = given(
            artifact_sha256=artifact.sha256,
            filename=artifact.path.name,
            name=name,
            format=fmt,
            target=target,
            task=task,
            text_column=text_column,
            description=description,
        )
        body = validated_body(CreateDataset, values)
        return json_call("POST", "/api/datasets", body, DatasetInfo, exclude_unset=True)

    def list_datasets(self) -> Call[list[DatasetInfo]]:
        """``GET /api/datasets``: the newest version of each, built-ins included."""
        return Call(Request("GET", "/api/datasets"), parse_list(DatasetInfo))

    def get_dataset(self, name: str) -> Call[DatasetDetail]:
        path = f"/api/datasets/{path_segment(name)}"
        return Call(Request("GET", path), parse_model(DatasetDetail))

    def preview_dataset(
        self, name: str, *, version: int | None = None, rows: int | None = None
    ) -> Call[DatasetPreview]:
        """``GET /api/datasets/{name}/preview``: the first rows, as JSON values."""
        path = f"/api/datasets/{path_segment(name)}/preview"
        params = query(version=version, rows=rows)
        return Call(Request("GET", path, params), parse_model(DatasetPreview))

    def delete_dataset(self, name: str) -> Call[None]:
        """``DELETE /api/datasets/{name}``: every version (built-ins cannot be deleted)."""
        return Call(Request("DELETE", f"/api/datasets/{path_segment(name)}"), parse_nothing)

    def list_trainers(self) -> Call[list[TrainerInfo]]:
        return Call(Request("GET", "/api/trainers"), parse_list(TrainerInfo))

    # runs

    def train(self, request: TrainRequest) -> Call[RunInfo]:
        """``POST /api/runs``: queue a training run."""
        return json_call("POST", "/api/runs", request, RunInfo, exclude_unset=True)

    def list_runs(
        self,
        *,
        model: str | None = None,
        dataset: str | None = None,
        trainer: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> Call[list[RunInfo]]:
        """``GET /api/runs``, newest first, filtered by any of the values given."""
        if status is not None:
            status = _status(status)
        params = query(model=model, dataset=dataset, trainer=trainer, status=status, limit=limit)
        return Call(Request("GET", "/api/runs", params), parse_list(RunInfo))

    def get_run(self, run_id: int) -> Call[RunDetail]:
        return Call(Request("GET", f"/api/runs/{path_segment(run_id)}"), parse_model(RunDetail))

    def cancel_run(self, run_id: int) -> Call[RunInfo]:
        """``POST /api/runs/{id}/cancel``: a queued run stops at once, a running one soon."""
        path = f"/api/runs/{path_segment(run_id)}/cancel"
        return Call(Request("POST", path), parse_model(RunInfo))

    def run_logs(self, run_id: int) -> Call[str]:
        """``GET /api/runs/{id}/logs``: the job log as text."""
        path = f"/api/runs/{path_segment(run_id)}/logs"
        request = Request("GET", path, headers={"Accept": "text/plain"})
        return Call(request, lambda body: body.decode("utf-8", errors="replace"))

    def compare_runs(self, run_ids: Sequence[int]) -> Call[RunComparison]:
        """``GET /api/runs/compare?ids=1,2``: params and metrics side by side."""
        if not run_ids:
            raise errors.InvalidInput("compare needs at least one run id", param="ids")
        ids = ",".join(str(int(run_id)) for run_id in run_ids)
        return Call(Request("GET", "/api/runs/compare", {"ids": ids}), parse_model(RunComparison))

    def run_events(self, run_id: int) -> Call[None]:
        """``GET /api/runs/{id}/events``: the IO layer streams the body through ``SseParser``.

        The parser of the call is unused for a 2xx answer (the body is read line by line);
        ``Call.handle`` still turns an error answer into its exception.
        """
        path = f"/api/runs/{path_segment(run_id)}/events"
        return Call(Request("GET", path, headers={"Accept": EVENT_STREAM}), parse_nothing)


CALLS = TrainingCalls()
"""The shared, stateless request builder of the training routes."""


def _status(value: str) -> str:
    try:
        return RunStatus(value).value
    except ValueError:
        names = ", ".join(status.value for status in RunStatus)
        raise errors.InvalidInput(
            f"unknown run status {value!r}; expected one of {names}", param="status"
        ) from None


def train_request(
    request: TrainRequest | Mapping[str, Any] | None,
    fields: Mapping[str, Any],
) -> TrainRequest:
    """A ``TrainRequest`` from a ready one, a mapping, or keyword fields (not both).

    ``None`` keyword values are left out so the server's defaults apply; ``preprocessing``
    and ``split`` may be given as mappings.
    """
    values = given(**fields)
    if request is not None and values:
        raise errors.InvalidInput(
            f"give a TrainRequest or keyword fields, not both (got {', '.join(sorted(values))})"
        )
    if isinstance(request, TrainRequest):
        return request
    raw = dict(request) if request is not None else values
    for key, model in (("preprocessing", PreprocessSpec), ("split", SplitSpec)):
        spec = raw.get(key)
        if isinstance(spec, BaseModel):
            raw[key] = spec.model_dump(exclude_unset=True)
        elif spec is not None and not isinstance(spec, Mapping):
            raise errors.InvalidInput(f"{key} must be a {model.__name__} or a mapping", param=key)
    return validated_body(TrainRequest, raw)


# --- server-sent events --------------------------------------------------------------------


@dataclass
class SseParser:
    """Turns the lines of a ``text/event-stream`` body into ``RunEvent`` objects.

    Feed it one line at a time (without its line break); a blank line ends an event. The
    ``data`` lines of one event are joined with newlines and parsed as a ``RunEvent``; the
    ``event:`` name, when given, must agree with the payload's ``type``. Comments (``:``
    lines, the server's keep-alives) and events without data are skipped.
    """

    _event: str | None = None
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> RunEvent | None:
        """The event this line completes, if any."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None  # "id", "retry" and unknown fields: nothing the client needs

    def finish(self) -> RunEvent | None:
        """The last event of a stream that ended without a final blank line."""
        return self._dispatch()

    def _dispatch(self) -> RunEvent | None:
        event, data = self._event, self._data
        self._event, self._data = None, []
        if not data:
            return None
        try:
            parsed = RunEvent.model_validate_json("\n".join(data))
        except ValidationError as exc:
            raise errors.ModelportError(
                f"unexpected run event from the server: {exc.errors()[0]['msg']}"
            ) from None
        if event is not None and event != parsed.type:
            raise errors.ModelportError(
                f"run event named {event!r} carries a {parsed.type!r} payload"
            )
        return parsed


def parse_events(lines: Iterable[str]) -> Iterator[RunEvent]:
    """Every ``RunEvent`` of an event-stream body given as lines."""
    parser = SseParser()
    for line in lines:
        event = parser.feed(line.rstrip("\r\n"))
        if event is not None:
            yield event
    last = parser.finish()
    if last is not None:
        yield last


def check_finished(run: RunDetail) -> bool:
    """Whether a run is over (succeeded, failed or cancelled)."""
    return RunStatus(run.status).finished


def run_not_done(run: RunDetail, timeout: float) -> errors.DeadlineExceeded:
    """The error for a run still going when ``wait_run`` gives up."""
    progress = run.progress
    where = f", epoch {progress.epoch}/{progress.epochs}" if progress.epochs else ""
    return errors.DeadlineExceeded(
        f"run {run.id} not finished after {timeout:g}s: {run.status}{where}", param=str(run.id)
    )
