"""Registering scikit-learn's bundled datasets at start survives a failed attempt.

A real SQLite database (migrated) and artifact store; the first attempt is made to fail the
way a busy start can (a database error), the next one registers every set, and reads that
were waiting go on once it is done.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from modelport.engine import datasets as datasets_module
from modelport.engine.datasets import DatasetService
from modelport.storage.artifacts import LocalArtifactStore
from modelport.storage.db import Database
from modelport.training.builtin import BUILTIN_DATASETS


@pytest.fixture
def service(tmp_path: Path) -> DatasetService:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.migrate()
    return DatasetService(db, LocalArtifactStore(tmp_path / "artifacts"))


def test_a_failed_attempt_is_retried(
    service: DatasetService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets_module, "_BUILTIN_RETRY_S", 0.0)
    real = service._install_builtins
    calls = 0

    def flaky() -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real()

    monkeypatch.setattr(service, "_install_builtins", flaky)
    service.expect_builtins()
    assert sorted(service.install_builtins()) == sorted(BUILTIN_DATASETS)
    assert calls == 2
    assert {d.name for d in service.list_datasets()} >= set(BUILTIN_DATASETS)


def test_it_gives_up_after_the_last_attempt_and_reads_do_not_hang(
    service: DatasetService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets_module, "_BUILTIN_RETRY_S", 0.0)

    def broken() -> list[str]:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(service, "_install_builtins", broken)
    service.expect_builtins()
    with pytest.raises(OperationalError):
        service.install_builtins()
    assert service.list_datasets() == []  # the wait is over: nothing registered, no hang
