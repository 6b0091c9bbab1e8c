"""Integration fixtures: a real server process with the demo models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.server_process import ServerProcess


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
