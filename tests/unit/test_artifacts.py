"""The content-addressed artifact store on a real local filesystem."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest

from modelport.errors import (
    ArtifactCorrupted,
    InvalidInput,
    ModelportError,
    NotFound,
    PayloadTooLarge,
)
from modelport.storage.artifacts import LocalArtifactStore, verify_file

MB = 1024 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stored_files(store: LocalArtifactStore) -> list[Path]:
    return sorted(p for p in store.objects_dir.rglob("*") if p.is_file())


def _temp_files(store: LocalArtifactStore) -> list[Path]:
    return sorted(store.tmp_dir.iterdir())


def test_roundtrip_in_chunks(artifact_store: LocalArtifactStore) -> None:
    parts = [b"hello ", b"", b"model ", os.urandom(100_000)]
    data = b"".join(parts)
    with artifact_store.begin() as writer:
        for part in parts:
            writer.write(part)
        info = writer.commit()

    assert info.sha256 == _sha(data)
    assert info.size == len(data)
    assert artifact_store.exists(info.sha256)
    assert artifact_store.size(info.sha256) == len(data)
    path = artifact_store.local_path(info.sha256)
    assert path == artifact_store.root / "sha256" / info.sha256[:2] / info.sha256
    assert path.read_bytes() == data
    assert path.stat().st_mode & 0o222 == 0, "stored artifacts are read-only"
    artifact_store.verify(info.sha256)
    assert _temp_files(artifact_store) == []


def test_empty_artifact(artifact_store: LocalArtifactStore) -> None:
    info = artifact_store.put([])
    assert info.sha256 == _sha(b"")
    assert info.size == 0
    assert artifact_store.local_path(info.sha256).read_bytes() == b""


def test_put_file(artifact_store: LocalArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    data = os.urandom(3 * MB + 7)
    source.write_bytes(data)
    info = artifact_store.put_file(source)
    assert info.sha256 == _sha(data)
    assert artifact_store.local_path(info.sha256).read_bytes() == data


def test_identical_content_is_stored_once(artifact_store: LocalArtifactStore) -> None:
    first = artifact_store.put([b"same ", b"bytes"])
    second = artifact_store.put([b"same bytes"])
    third = artifact_store.put([b"other bytes"])

    assert first == second
    assert third.sha256 != first.sha256
    assert len(_stored_files(artifact_store)) == 2
    assert _temp_files(artifact_store) == []


def test_nothing_visible_before_commit(artifact_store: LocalArtifactStore) -> None:
    data = b"x" * 1000
    with artifact_store.begin() as writer:
        writer.write(data)
        assert not artifact_store.exists(_sha(data))
        assert len(_temp_files(artifact_store)) == 1
        writer.commit()
    assert artifact_store.exists(_sha(data))


def test_error_midway_leaves_nothing(artifact_store: LocalArtifactStore) -> None:
    data = b"half an artifact"

    with pytest.raises(RuntimeError, match="client went away"), artifact_store.begin() as writer:
        writer.write(data)
        raise RuntimeError("client went away")

    assert not artifact_store.exists(_sha(data))
    assert _stored_files(artifact_store) == []
    assert _temp_files(artifact_store) == []


def test_explicit_abort(artifact_store: LocalArtifactStore) -> None:
    writer = artifact_store.begin()
    writer.write(b"abc")
    writer.abort()
    writer.abort()  # idempotent
    assert _temp_files(artifact_store) == []
    assert not artifact_store.exists(_sha(b"abc"))
    with pytest.raises(ModelportError, match="already committed or aborted"):
        writer.write(b"more")
    with pytest.raises(ModelportError, match="already committed or aborted"):
        writer.commit()


def test_crashed_writer_leaves_only_a_temp_file(artifact_store: LocalArtifactStore) -> None:
    data = b"y" * 4096
    # A real process that dies mid-upload, without any cleanup code running.
    code = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from modelport.storage.artifacts import LocalArtifactStore
        writer = LocalArtifactStore(Path({str(artifact_store.root)!r})).begin()
        writer.write({data!r})
        os._exit(3)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 3, done.stderr

    assert not artifact_store.exists(_sha(data))
    assert _stored_files(artifact_store) == []
    assert len(_temp_files(artifact_store)) == 1
    assert artifact_store.cleanup_temp(older_than_s=3600) == 0, "recent uploads are kept"
    assert artifact_store.cleanup_temp(older_than_s=0) == 1
    assert _temp_files(artifact_store) == []


def test_max_bytes(artifact_store: LocalArtifactStore) -> None:
    exact = artifact_store.put([b"a" * 6, b"b" * 4], max_bytes=10)
    assert exact.size == 10

    writer = artifact_store.begin(max_bytes=10)
    writer.write(b"c" * 6)
    with pytest.raises(PayloadTooLarge, match="10 bytes"):
        writer.write(b"d" * 5)
    assert _temp_files(artifact_store) == []
    assert _stored_files(artifact_store) == [artifact_store.path_for(exact.sha256)]
    with pytest.raises(InvalidInput, match="max_bytes"):
        artifact_store.begin(max_bytes=-1)


def test_expected_sha256(artifact_store: LocalArtifactStore) -> None:
    data = b"declared content"
    wrong = _sha(b"something else")

    with pytest.raises(InvalidInput) as caught:
        artifact_store.put([data], expected_sha256=wrong)
    assert wrong in caught.value.message and _sha(data) in caught.value.message
    assert _stored_files(artifact_store) == []
    assert _temp_files(artifact_store) == []

    assert artifact_store.put([data], expected_sha256=_sha(data)).sha256 == _sha(data)


def test_corrupted_file_is_detected(artifact_store: LocalArtifactStore) -> None:
    data = os.urandom(256 * 1024)
    info = artifact_store.put([data])
    path = artifact_store.local_path(info.sha256)
    path.chmod(0o644)
    with path.open("r+b") as f:  # flip one byte in place, as bit rot would
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))

    with pytest.raises(ArtifactCorrupted) as caught:
        artifact_store.verify(info.sha256)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.sha256 in caught.value.message
    assert actual in caught.value.message
    with pytest.raises(ArtifactCorrupted):
        verify_file(path, info.sha256)


def test_verify_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"weights")
    verify_file(path, _sha(b"weights"))
    with pytest.raises(ArtifactCorrupted, match="missing"):
        verify_file(tmp_path / "absent.bin", _sha(b"weights"))
    with pytest.raises(InvalidInput):
        verify_file(path, "not-a-digest")


def test_missing_and_invalid_digests(artifact_store: LocalArtifactStore) -> None:
    absent = _sha(b"never stored")
    assert not artifact_store.exists(absent)
    with pytest.raises(NotFound, match=absent):
        artifact_store.local_path(absent)
    with pytest.raises(NotFound, match=absent):
        artifact_store.size(absent)
    with pytest.raises(NotFound):
        artifact_store.verify(absent)
    assert artifact_store.delete(absent) is False

    # Digests become file names: nothing else may reach the filesystem.
    for bad in ["../../etc/passwd", absent.upper(), absent[:-1], absent + "0", ""]:
        with pytest.raises(InvalidInput, match="SHA-256"):
            artifact_store.exists(bad)


def test_delete(artifact_store: LocalArtifactStore) -> None:
    info = artifact_store.put([b"to delete"])
    assert artifact_store.delete(info.sha256) is True
    assert not artifact_store.exists(info.sha256)
    assert artifact_store.delete(info.sha256) is False
    # Stored again after deletion: a fresh copy.
    assert artifact_store.put([b"to delete"]) == info
    assert artifact_store.exists(info.sha256)


def test_streaming_keeps_memory_flat(artifact_store: LocalArtifactStore) -> None:
    chunk = os.urandom(MB)
    expected = hashlib.sha256()
    for _ in range(50):
        expected.update(chunk)

    tracemalloc.start()
    try:
        with artifact_store.begin() as writer:
            for _ in range(50):
                writer.write(chunk)
            info = writer.commit()
        artifact_store.verify(info.sha256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert info.sha256 == expected.hexdigest()
    assert info.size == 50 * MB
    # 50 MB went through; the store itself holds well under one chunk's worth at a time.
    assert peak < 4 * MB, f"peak traced memory {peak} bytes"
