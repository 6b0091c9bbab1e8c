"""Large-model services on top of deployments: chat/completions and embeddings.

Protocol-neutral (the OpenAI routes call it; it knows no HTTP). It knows each deployment's
*task* from its version: metadata ``task`` first, else runtime ``gguf`` means generation,
else a signature with an ``embedding`` output means embeddings; requests for another task
are refused naming ``model``.

- **Generation** takes a backend lease for its whole duration. Per deployment, waiting
  generations form one FIFO line (an ``asyncio.Lock`` hands out turns in arrival order and
  only the head of the line waits for a replica), so with one replica concurrent chats run
  one after the other and none starves. The wait is bounded (``llm_queue_wait_s``) and so
  is the line (``llm_max_queue``): both answer 503. A generation is bounded by
  ``llm_request_timeout_s`` (504). See ``llm_generation`` for the stream itself.
- **Embeddings** go through the deployment's adaptive batcher as a ``text`` BYTES tensor
  (token ids: int32 little-endian per row with ``input_format="token_ids"``), so
  concurrent requests share model calls. A long input list is split at the deployment's
  ``max_batch_size`` and its parts run concurrently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelport.backends.base import Backend, Replica
from modelport.engine.deployments import Deployment, DeploymentManager
from modelport.engine.inference import InferenceService
from modelport.engine.llm_generation import Generation, Target
from modelport.engine.usage import UsageEvent, UsageHub, UsageKind, take_compute_ms
from modelport.errors import InvalidInput, ModelportError, Unavailable
from modelport.observability.metrics import Metrics
from modelport.runtimes.text import (
    CLASSIFICATION,
    EMBEDDINGS,
    GENERATION,
    TENSORS,
    GenerationRequest,
)
from modelport.settings import Settings
from modelport.types.admin import VersionInfo

# Version metadata "task" values (Hugging Face pipeline names included) -> capability.
TASKS: dict[str, str] = {
    "embeddings": EMBEDDINGS,
    "feature-extraction": EMBEDDINGS,
    "sentence-similarity": EMBEDDINGS,
    "text-generation": GENERATION,
    "generation": GENERATION,
    "text-classification": CLASSIFICATION,
    "classification": CLASSIFICATION,
}
_TASK_NAMES = {EMBEDDINGS: "embeddings", GENERATION: "text-generation", CLASSIFICATION:
               "text-classification", TENSORS: "tensors"}  # fmt: skip
_KINDS = {EMBEDDINGS: "an embedding model", GENERATION: "a text-generation model",
          CLASSIFICATION: "a text-classification model",
          TENSORS: "a tensor model (V2 or V1 inference only)"}  # fmt: skip


def task_of(version: VersionInfo) -> str:
    """What a model version does (a ``runtimes.text`` capability name)."""
    declared = version.metadata.get("task")
    if isinstance(declared, str) and declared in TASKS:
        return TASKS[declared]
    if version.runtime == "gguf":
        return GENERATION
    if any(t.name == "embedding" for t in version.signature.outputs):
        return EMBEDDINGS
    return TENSORS


def embedding_dim(version: VersionInfo) -> int | None:
    """The length of the model's embedding vectors, when its signature says."""
    for spec in version.signature.outputs:
        if spec.name == "embedding" and len(spec.shape) == 2 and spec.shape[1] > 0:
            return spec.shape[1]
    return None


@dataclass(frozen=True)
class ModelCard:
    """A deployed model as ``/v1/models`` lists it."""

    id: str
    created: int
    task: str
    version: int
    runtime: str


@dataclass(frozen=True)
class Embeddings:
    """The vectors of one embeddings request, one row per input, and its token count."""

    vectors: np.ndarray
    prompt_tokens: int


class _Line:
    """The FIFO line of generations waiting for a replica of one deployment."""

    __slots__ = ("lock", "waiting")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()  # FIFO: no barging while others wait
        self.waiting = 0


class _LineCollector(Collector):
    """``modelport_llm_waiting``: generations waiting for a replica, read at scrape time."""

    def __init__(self, lines: dict[str, _Line]) -> None:
        self._lines = lines

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "modelport_llm_waiting", "Generations waiting for a replica", labels=["model"]
        )
        for name, line in list(self._lines.items()):
            gauge.add_metric([name], line.waiting)
        yield gauge


class LLMService:
    """Chat/completions and embeddings over deployed models (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        deployments: DeploymentManager,
        inference: InferenceService,
        backend: Backend,
        usage: UsageHub,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._deployments = deployments
        self._inference = inference
        self._backend = backend
        self._usage = usage
        self._lines: dict[str, _Line] = {}
        self._generated = Counter(
            "modelport_llm_generated_tokens",
            "Tokens generated by workers and received by the server, sent or not",
            ["model"],
            registry=metrics.registry,
        )
        metrics.registry.register(_LineCollector(self._lines))

    # -- models -------------------------------------------------------------------------------

    def models(self) -> list[ModelCard]:
        """Every deployed model, by name."""
        return [self._card(self._deployments.get(name)) for name in self._deployments.names()]

    def model(self, name: str) -> ModelCard:
        """One deployed model (``DeploymentNotFound`` naming ``model``)."""
        return self._card(self._deployments.get(name))

    @staticmethod
    def _card(live: Deployment) -> ModelCard:
        version = live.version
        return ModelCard(
            id=live.record.name,
            created=int(version.created_at.timestamp()),
            task=_TASK_NAMES[task_of(version)],
            version=version.version,
            runtime=version.runtime,
        )

    # -- embeddings ---------------------------------------------------------------------------

    async def embed(
        self,
        model: str,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        *,
        request_id: str,
        dimensions: int | None = None,
    ) -> Embeddings:
        """Embed texts (or token-id lists), one vector per input, through the batcher."""
        live = self._deployments.get(model)
        _require(live, EMBEDDINGS, "embeddings")
        dim = embedding_dim(live.version)
        if dimensions is not None and dimensions != dim:
            raise InvalidInput(
                f"model {model!r} makes {dim}-dimensional embeddings and cannot shorten them; "
                f"dimensions={dimensions} is not supported",
                param="dimensions",
            )
        rows, params = _rows(inputs)
        size = live.record.max_batch_size
        if len(rows) <= size:  # the common case: no task per part
            parts = [await self._inference.infer(live, {"text": rows}, params)]
        else:
            parts = await asyncio.gather(
                *(
                    self._inference.infer(live, {"text": rows[i : i + size]}, params)
                    for i in range(0, len(rows), size)
                )
            )
        try:
            vectors = np.concatenate([np.asarray(p["embedding"], np.float32) for p in parts])
            tokens = int(sum(int(np.asarray(p["tokens"]).sum()) for p in parts))
        except KeyError as exc:
            raise ModelportError(f"model {model!r} did not return {exc.args[0]!r}") from None
        if vectors.ndim != 2 or vectors.shape[0] != len(rows):
            raise ModelportError(
                f"model {model!r} returned embeddings of shape {list(vectors.shape)} for "
                f"{len(rows)} inputs"
            )
        self._emit(request_id, live, "embedding", tokens, len(rows))
        return Embeddings(vectors=vectors, prompt_tokens=tokens)

    # -- generation ---------------------------------------------------------------------------

    async def generate(
        self,
        model: str,
        requests: Sequence[GenerationRequest],
        *,
        n: int = 1,
        kind: UsageKind,
        streamed: bool,
        request_id: str,
    ) -> Generation:
        """Wait for a turn on a replica and start the first choice.

        ``requests`` holds ``n`` consecutive choices per prompt. The caller must close the
        returned ``Generation`` (iterate ``events()`` to its end, ``collect()`` or
        ``aclose()``): it holds the replica until then.
        """
        if not requests or n < 1 or len(requests) % n:
            raise InvalidInput("a generation needs n >= 1 choices per prompt", param="n")
        live = self._deployments.get(model)
        _require(live, GENERATION, "chat/completions")
        lease, replica = await self._turn(live)
        target = Target(request_id, model, live.record.version, kind, streamed)
        counter = self._generated.labels(model)
        generation = Generation(
            target,
            requests,
            n,
            replica,
            lambda: lease.__aexit__(None, None, None),
            self._settings.llm_request_timeout_s,
            self._usage,
            counter.inc,
        )
        try:
            await generation.open()
        except BaseException:
            await generation.aclose()
            raise
        return generation

    async def _turn(self, live: Deployment) -> tuple[AbstractAsyncContextManager[Replica], Replica]:
        """Wait in the deployment's FIFO line, then for a replica slot (a lease)."""
        name = live.record.name
        line = self._lines.setdefault(name, _Line())
        limit = self._settings.llm_max_queue
        if line.waiting >= limit:
            raise Unavailable(
                f"model {name!r} has {line.waiting} requests waiting (llm_max_queue={limit}); "
                "try again later",
                param="model",
            )
        wait = self._settings.llm_queue_wait_s
        # The lease's own limit is a little longer, so a busy replica times out here, with
        # this message; a failed deployment still fails at once with the backend's reason.
        lease = self._backend.lease(name, wait + 1.0)
        replica: Replica | None = None
        line.waiting += 1
        try:
            async with asyncio.timeout(wait):
                async with line.lock:
                    replica = await lease.__aenter__()
        except TimeoutError:
            raise Unavailable(
                f"model {name!r} is busy: no replica was free within {wait:g} s "
                "(llm_queue_wait_s); try again later",
                param="model",
            ) from None
        except BaseException:
            if replica is not None:
                await lease.__aexit__(None, None, None)
            raise
        finally:
            line.waiting -= 1
        assert replica is not None  # the lock and the lease were both entered
        return lease, replica

    def _emit(
        self, request_id: str, live: Deployment, kind: UsageKind, prompt: int, rows: int
    ) -> None:
        self._usage.emit(
            UsageEvent(
                request_id=request_id,
                model=live.record.name,
                version=live.record.version,
                kind=kind,
                prompt_tokens=prompt,
                completion_tokens=0,
                total_tokens=prompt,
                rows=rows,
                compute_ms=take_compute_ms(),  # the batches' model time (engine.inference)
            )
        )


def _require(live: Deployment, task: str, endpoint: str) -> None:
    found = task_of(live.version)
    if found != task:
        raise InvalidInput(
            f"model {live.record.name!r} is {_KINDS[found]}, but {endpoint} needs {_KINDS[task]}",
            param="model",
        )


def _rows(inputs: Sequence[str] | Sequence[Sequence[int]]) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``text`` tensor (and params) for texts or token-id lists."""
    rows = np.empty(len(inputs), dtype=object)  # filled item by item: numpy keeps the bytes
    if inputs and not isinstance(inputs[0], str):
        for i, ids in enumerate(inputs):
            rows[i] = np.asarray(ids, dtype="<i4").tobytes()
        return rows, {"input_format": "token_ids"}
    for i, text in enumerate(inputs):
        rows[i] = str(text).encode("utf-8")
    return rows, {}
