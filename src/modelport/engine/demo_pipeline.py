"""The demo pipeline: text → ``minilm`` embedding → ``sentiment-head``, built at first start.

Issue 6's example of a pipeline whose last step the training service made. Once the text
demos are installed, the server (in the background, once per data dir) does what a user
would do by hand, through the same services:

1. embeds the bundled reviews (``engine/data/reviews.jsonl``: 160 short English reviews,
   80 positive and 80 negative, written for modelport and shipped under its license) with
   the deployed ``minilm`` through ``InferenceService`` — validation and the batcher, as a
   request — so the head learns from exactly the vectors the pipeline will feed it;
2. registers them as dataset ``demo-review-embeddings`` (CSV: 384 features + ``label``);
3. trains ``sentiment-head`` (logistic regression, a real run with its metrics recorded),
   which the training service registers as a model version; it gets the ``production``
   alias, is made public like the other demos and deployed;
4. creates pipeline ``review-sentiment`` = sequence [minilm, sentiment-head], the head's
   ``input`` fed by minilm's ``embedding`` (a step mapping: the names differ), public like
   its two steps, so every tenant may call it.

A marker file remembers success, so a user who deletes the pipeline does not get it back.
Any failure is logged and retried at the next start; it never stops the server. A run left
unfinished by a stopped server is re-queued by the scheduler and waited for, not repeated.

Data dirs built before pipelines had a visibility hold a private ``review-sentiment`` that
only admins could see: the first start after the upgrade makes it public, once (a second
marker remembers it, so an admin who makes it private again is not overruled).
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from modelport.engine.services import Services
from modelport.errors import ModelportError
from modelport.types.admin import DeploymentState, DeploySpec
from modelport.types.traffic import PipelineSpec, StepSpec
from modelport.types.training import (
    CreateDataset,
    RunDetail,
    RunStatus,
    SplitSpec,
    TrainRequest,
)

log = logging.getLogger("modelport.bootstrap")

MARKER = ".demo-pipeline-installed"
PUBLISHED = ".demo-pipeline-public"  # the pipeline was made public (new, or at the upgrade)
PIPELINE = "review-sentiment"
HEAD = "sentiment-head"
EMBEDDER = "minilm"
DATASET = "demo-review-embeddings"
REVIEWS = Path(__file__).parent / "data" / "reviews.jsonl"

_CHUNK = 32  # rows per embedding call: minilm's batch size, so other callers interleave
_TRAINING_TIMEOUT_S = 900.0
_SERVING = frozenset({DeploymentState.READY, DeploymentState.IDLE})
_HEAD_DESCRIPTION = (
    "Demo sentiment classifier (positive/negative) for English review sentences. Logistic "
    "regression trained by modelport's training service on all-MiniLM-L6-v2 embeddings "
    "(the 'minilm' demo's 'embedding' output) of {rows} hand-written short reviews bundled "
    "with modelport (engine/data/reviews.jsonl: restaurants, products, films, hotels, "
    "services; half positive). Input: 'input' FP32 [-1, 384], a minilm embedding; outputs: "
    "'label' and 'probabilities' ([negative, positive]). Too small a training set for real "
    "use: it shows the pipeline, not a production model."
)
_PIPELINE_DESCRIPTION = (
    "Demo: review text → minilm sentence embedding → sentiment-head (trained at first start "
    "on bundled reviews) → label positive/negative with probabilities."
)


def start_demo_pipeline(
    services: Services, after: asyncio.Task[list[str]]
) -> asyncio.Task[bool] | None:
    """Install the demo pipeline in the background once ``after`` (the text demos) ends.

    ``None`` when the settings turn it off or this data dir already has it (public).
    """
    settings = services.settings
    if not settings.demo_pipeline or (settings.data_dir / PUBLISHED).exists():
        return None
    if (settings.data_dir / MARKER).exists():  # built before pipelines had a visibility
        return asyncio.create_task(_after(services, after, publish_demo_pipeline),
                                   name="demo-pipeline-publish")  # fmt: skip
    return asyncio.create_task(_after(services, after, install_demo_pipeline), name="demo-pipeline")


async def _after(
    services: Services, after: asyncio.Task[list[str]], work: Callable[[Services], Awaitable[bool]]
) -> bool:
    await asyncio.wait({after})
    return await work(services)


async def install_demo_pipeline(services: Services) -> bool:
    """Build the demo pipeline (module docstring); True once it exists. Never raises."""
    marker = services.settings.data_dir / MARKER
    try:
        if marker.exists():
            return False
        if not _may_build(services):
            return False
        await _build(services)
    except asyncio.CancelledError:
        raise  # the server is stopping: try again at the next start
    except Exception as exc:  # a demo must never break the server: log it, retry next start
        message = exc.message if isinstance(exc, ModelportError) else repr(exc)
        log.error("the demo pipeline %r could not be built: %s", PIPELINE, message)
        return False
    marker.write_text(f"{PIPELINE}\n")
    (services.settings.data_dir / PUBLISHED).write_text(f"{PIPELINE}\n")
    log.info("demo pipeline %s ready (%s → %s)", PIPELINE, EMBEDDER, HEAD)
    return True


async def publish_demo_pipeline(services: Services) -> bool:
    """Make an older data dir's private platform ``review-sentiment`` public, once.

    True if it did. Never raises; a failure is logged and tried again at the next start.
    """
    try:
        pipeline = next(
            (p for p in services.pipelines.list_pipelines() if p.name == PIPELINE), None
        )
        if pipeline is not None and pipeline.owner is None and pipeline.visibility == "private":
            await services.pipelines.set_visibility(PIPELINE, "public", ())
            log.info("demo pipeline %s is now public", PIPELINE)
            done = True
        else:
            done = False  # deleted, made by a tenant, or already changed by an admin
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a demo must never break the server: log it, retry next start
        message = exc.message if isinstance(exc, ModelportError) else repr(exc)
        log.error("the demo pipeline %r could not be made public: %s", PIPELINE, message)
        return False
    (services.settings.data_dir / PUBLISHED).write_text(f"{PIPELINE}\n")
    return done


def _may_build(services: Services) -> bool:
    """Whether the embedder is deployed and our names are free (or already the platform's)."""
    if EMBEDDER not in services.deployments.names():
        log.info("no %r deployment: the demo pipeline is not built", EMBEDDER)
        return False
    if PIPELINE in {p.name for p in services.pipelines.list_pipelines()}:
        return False  # made by hand before the demo got to it
    owner = services.registry.access.owner(HEAD)
    if owner is not None and owner.tenant_id is not None:
        log.warning("model %r belongs to a tenant: the demo pipeline is not built", HEAD)
        return False
    return True


async def _build(services: Services) -> None:
    run_id = await _unfinished_run(services)
    if run_id is None:
        await _wait_ready(services, EMBEDDER)
        texts, labels = await asyncio.to_thread(load_reviews)
        vectors = await embed(services, texts)
        await asyncio.to_thread(_register_dataset, services, vectors, labels)
        run_id = await _submit(services, len(texts))
    run = await _finished(services, run_id)
    version = run.model_version
    if version is None:  # a succeeded run that registers its model has one
        raise RuntimeError(f"training run {run_id} succeeded but registered no model")
    log.info(
        "demo model %s v%s trained: validation %s", HEAD, version, run.metrics.get("validation")
    )
    await asyncio.to_thread(services.registry.set_alias, HEAD, "production", version)
    await asyncio.to_thread(services.registry.set_visibility, HEAD, "public", ())
    await services.deployments.deploy(
        DeploySpec(model=HEAD, version=version, replicas=1, max_batch_size=32, max_latency_ms=2.0)
    )
    await _wait_ready(services, HEAD)
    steps = [
        StepSpec(deployment=EMBEDDER),
        StepSpec(deployment=HEAD, inputs={"input": "embedding"}),
    ]
    await services.pipelines.create(
        PipelineSpec(
            name=PIPELINE, steps=steps, description=_PIPELINE_DESCRIPTION, visibility="public"
        )
    )


def load_reviews(path: Path = REVIEWS) -> tuple[list[str], list[str]]:
    """The bundled reviews: texts and their labels (``positive``/``negative``)."""
    texts, labels = [], []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                texts.append(str(record["text"]))
                labels.append(str(record["label"]))
    return texts, labels


async def embed(services: Services, texts: list[str]) -> np.ndarray:
    """``minilm``'s embeddings of ``texts``, computed as V2 requests would be (float32)."""
    live = services.inference.resolve(EMBEDDER)
    parts = []
    for start in range(0, len(texts), _CHUNK):
        rows = np.array([t.encode() for t in texts[start : start + _CHUNK]], dtype=object)
        answer = await services.inference.infer(live, {"text": rows})
        parts.append(np.asarray(answer["embedding"], dtype=np.float32))
    return np.concatenate(parts)


def _register_dataset(services: Services, vectors: np.ndarray, labels: list[str]) -> None:
    """The embeddings as a CSV dataset: columns ``e0`` … ``e383`` and ``label``."""
    with tempfile.TemporaryDirectory(dir=services.settings.runtime_dir) as tmp:
        path = Path(tmp) / f"{DATASET}.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([*(f"e{j}" for j in range(vectors.shape[1])), "label"])
            for row, label in zip(vectors, labels, strict=True):
                # 9 significant digits: every float32 reads back bit-identical.
                writer.writerow([*(f"{v:.9g}" for v in row.tolist()), label])
        stored = services.artifacts.put_file(path)
    services.datasets.create(
        CreateDataset(
            artifact_sha256=stored.sha256,
            filename=f"{DATASET}.csv",
            name=DATASET,
            format="csv",
            target="label",
            task="classification",
            description=(
                f"all-MiniLM-L6-v2 embeddings of the {len(labels)} bundled demo reviews "
                "(engine/data/reviews.jsonl) with their sentiment label"
            ),
        )
    )


async def _unfinished_run(services: Services) -> int | None:
    """A run of the head that a stopped server left queued or running (re-queued at start)."""
    runs = await asyncio.to_thread(services.training.list_runs, model=HEAD, dataset=DATASET)
    return next((r.id for r in runs if not r.status.finished), None)


async def _submit(services: Services, rows: int) -> int:
    request = TrainRequest(
        dataset=DATASET,
        trainer="logistic_regression",
        params={"C": 0.1},  # 10-fold CV on the reviews: 0.92 accuracy vs 0.91 at C=1
        split=SplitSpec(validation=0.2, test=0.2, seed=0),
        model_name=HEAD,
        description=_HEAD_DESCRIPTION.format(rows=rows),
    )
    return (await services.training.submit(request)).id


async def _finished(services: Services, run_id: int) -> RunDetail:
    """Wait for run ``run_id`` to end; its record if it succeeded."""
    async with asyncio.timeout(_TRAINING_TIMEOUT_S):
        async for _ in services.training.events(run_id):
            pass  # the stream ends when the run has finished
    run = await asyncio.to_thread(services.training.get, str(run_id))
    if run.status != RunStatus.SUCCEEDED:
        raise RuntimeError(f"training run {run_id} {run.status.value}: {run.error}")
    return run


async def _wait_ready(services: Services, name: str) -> None:
    """Wait for ``name`` to serve (bounded by ``worker_start_timeout_s``)."""
    async with asyncio.timeout(services.settings.worker_start_timeout_s):
        # IDLE: scaled to zero; a call starts a replica (cold start), so it serves too.
        while (state := services.deployments.status(name).state) not in _SERVING:
            if state == DeploymentState.FAILED:
                raise RuntimeError(f"deployment {name!r} failed to load")
            await asyncio.sleep(0.1)
