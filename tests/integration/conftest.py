"""Integration fixtures: a real server process with the demo models.

Every test server starts with the fixed admin key ``TEST_ADMIN_KEY``; the CLI and clients
that take their key from the environment get it through ``MODELPORT_API_KEY``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.server_process import TEST_ADMIN_KEY, ServerProcess


@pytest.fixture(scope="session", autouse=True)
def _api_key_in_environment() -> Iterator[None]:
    """``MODELPORT_API_KEY`` for CLI and client calls that are not given a key."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODELPORT_API_KEY", TEST_ADMIN_KEY)
        yield


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the session, demo models deployed (iris, digits)."""
    server = ServerProcess(
        tmp_path_factory.mktemp("live") / "data",
        env={"MODELPORT_MAX_REQUEST_BYTES": str(1024 * 1024)},
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
