"""Fixtures shared by every test folder. Keep this small: bigger fixtures live in fixtures/."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.storage.artifacts import LocalArtifactStore
from tests.fixtures.postgres import fresh_postgres_url, module_postgres_url, postgres_url

__all__ = ["artifact_store", "fresh_postgres_url", "module_postgres_url", "postgres_url"]


@pytest.fixture
def artifact_store(tmp_path: Path) -> LocalArtifactStore:
    """An empty local artifact store in the test's temporary directory."""
    return LocalArtifactStore(tmp_path / "artifacts")
