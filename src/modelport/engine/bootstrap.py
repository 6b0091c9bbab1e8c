"""First start: build the bundled demo models and deploy them.

Runs once per data dir (a marker file remembers it), so a user who deletes the demo models
does not get them back on the next start.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

from modelport.engine.services import Services
from modelport.types.admin import CreateVersion, DeploySpec

log = logging.getLogger("modelport.bootstrap")

MARKER = ".demo-installed"


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
            await services.deployments.deploy(
                DeploySpec(model=demo.name, replicas=1, max_batch_size=64, max_latency_ms=2.0)
            )
            installed.append(demo.name)
            log.info("demo model %s deployed", demo.name)
    marker.write_text("\n".join(installed) + "\n")
    return installed
