"""First start: build the bundled demo models and deploy them; register the built-in datasets.

Runs once per data dir (a marker file remembers it), so a user who deletes the demo models
does not get them back on the next start.

The text demos (``engine.demo_llm``: ``minilm`` embeddings, ``gemma-3-270m`` GGUF) have
their own marker listing the ones installed, so a data dir from before they existed gets
them once, and one that failed (say a broken package) is retried at the next start. They
are installed concurrently, in the background of a live server (``install_text_demos``).
After them, ``engine.demo_pipeline`` trains the demo pipeline's head (its own marker).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from modelport.engine.llm import TASKS
from modelport.engine.services import Services
from modelport.runtimes.text import EMBEDDINGS
from modelport.types.admin import CreateVersion, DeploySpec

if TYPE_CHECKING:
    from modelport.engine.demo_llm import TextDemo

log = logging.getLogger("modelport.bootstrap")

MARKER = ".demo-installed"
TEXT_MARKER = ".demo-text-installed"
# Embedding requests are tiny: batch them (many per model call); a generator serves one
# request at a time (its stream owns the replica).
_EMBEDDING_BATCHING = {"max_batch_size": 32, "max_latency_ms": 2.0}
_GENERATION_BATCHING = {"max_batch_size": 1, "max_latency_ms": 0.0}


async def install_demo_models(services: Services) -> list[str]:
    """Build, register and deploy the demo models unless this data dir already had them."""
    marker = services.settings.data_dir / MARKER
    if marker.exists():
        return []
    from modelport.engine.demo import build_demo_models  # sklearn is imported only here

    installed = []
    with tempfile.TemporaryDirectory(dir=services.settings.runtime_dir) as tmp:
        demos = await asyncio.to_thread(build_demo_models, Path(tmp))
        for demo in demos:
            stored = await asyncio.to_thread(services.artifacts.put_file, demo.path)
            body = CreateVersion(
                artifact_sha256=stored.sha256,
                artifact_name=demo.artifact_name,
                runtime=demo.runtime,
                metadata=demo.metadata,
                description=demo.description,
                aliases=["production"],
            )
            await services.models.register(demo.name, body)
            await _publish(services, demo.name)
            await services.deployments.deploy(
                DeploySpec(model=demo.name, replicas=1, max_batch_size=64, max_latency_ms=2.0)
            )
            installed.append(demo.name)
            log.info("demo model %s deployed", demo.name)
    marker.write_text("\n".join(installed) + "\n")
    return installed


async def install_text_demos(services: Services) -> list[str]:
    """Register and deploy the bundled text models not installed in this data dir yet."""
    marker = services.settings.data_dir / TEXT_MARKER
    done = set(marker.read_text().split()) if marker.exists() else set()
    from modelport.engine.demo_llm import bundled_text_demos  # imports no ML library

    demos = [d for d in await asyncio.to_thread(bundled_text_demos) if d.name not in done]
    results = await asyncio.gather(
        *(_install_text_demo(services, demo) for demo in demos), return_exceptions=True
    )
    installed = []
    for demo, result in zip(demos, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result  # cancelled (server stopping): leave it for the next start
            log.error("demo model %s could not be installed: %s", demo.name, result)
        else:
            installed.append(demo.name)
            log.info("demo model %s deployed", demo.name)
    if installed:
        marker.write_text("\n".join(sorted(done | set(installed))) + "\n")
    return installed


async def _install_text_demo(services: Services, demo: TextDemo) -> None:
    if demo.path.is_dir():  # a model folder travels as a tar, as `models push DIR` sends it
        from modelport.runtimes.unpack import pack_dir

        stored = await asyncio.to_thread(services.artifacts.put, pack_dir(demo.path))
        artifact_name = f"{demo.name}.tar"
    else:
        stored = await asyncio.to_thread(services.artifacts.put_file, demo.path)
        artifact_name = demo.path.name
    body = CreateVersion(
        artifact_sha256=stored.sha256,
        artifact_name=artifact_name,
        runtime=demo.runtime,
        metadata={**demo.metadata, "task": demo.task},
        description=demo.description,
        aliases=["production"],
    )
    await services.models.register(demo.name, body)
    await _publish(services, demo.name)
    batching = _EMBEDDING_BATCHING if TASKS.get(demo.task) == EMBEDDINGS else _GENERATION_BATCHING
    await services.deployments.deploy(
        DeploySpec.model_validate(
            {"model": demo.name, "replicas": 1, "options": demo.options, **batching}
        )
    )


def install_builtin_datasets(services: Services) -> asyncio.Task[list[str]]:
    """scikit-learn's bundled sets as platform-owned datasets every tenant sees (once each).

    Runs in the background (importing scikit-learn takes seconds); dataset reads wait for it.
    A start after the first finds them all present and only runs one query.
    """
    services.datasets.expect_builtins()
    return asyncio.create_task(_install_builtin_datasets(services))


async def _install_builtin_datasets(services: Services) -> list[str]:
    try:
        installed = await asyncio.to_thread(services.datasets.install_builtins)
    except Exception:  # training on uploads still works: say so loudly, keep serving
        log.exception("the built-in datasets could not be registered")
        return []
    if installed:
        log.info("built-in datasets registered: %s", ", ".join(installed))
    return installed


async def _publish(services: Services, name: str) -> None:
    """Demo models belong to the platform and every tenant may call them."""
    await asyncio.to_thread(services.registry.set_visibility, name, "public", ())
