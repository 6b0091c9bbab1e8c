"""The Ray cluster and the server on it, shared by the backend tests of this package.

One real single-node Ray cluster (``RayHead``: ``ray start --head --block`` on 127.0.0.1,
bounded, in its own process group) and one server that joins it with ``MODELPORT_BACKEND=ray``
and the demo models (iris, digits, minilm, gemma-3-270m, all ready). Package-scoped: started
by the first test that needs them (test_conformance.py's ``[ray]`` tests, then
test_ray_only.py) and torn down after the package's last test. Only tests that carry
``RAY_MARKS`` ask for them, so without the ``ray`` package neither starts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.helpers import wait_state
from tests.integration.ray_cluster import RayHead, ray_env
from tests.integration.server_process import ServerProcess

DEMO_MODELS = ("iris", "digits", "minilm", "gemma-3-270m")


@pytest.fixture(scope="package")
def ray_head() -> Iterator[RayHead]:
    head = RayHead().start()
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="package")
def ray_server(
    ray_head: RayHead, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server on the Ray backend with the demo models, text models included, all ready."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("ray") / "data",
        env=ray_env(ray_head),
        backend="ray",
        ray_node_id=ray_head.node_id,
    )
    proc.start(timeout=180)
    try:
        for name in DEMO_MODELS:
            wait_state(proc.url, name, "ready", timeout=240)
        yield proc
    finally:
        proc.stop()
