"""Content-addressed artifact store: model files named by the SHA-256 of their bytes.

An artifact is written as a stream (``begin()`` → ``write()``... → ``commit()``), hashed as
it arrives, and only then moved to its final name, so a reader never sees a half-written
file and identical uploads are stored once. Nothing here reads a whole file into memory:
artifacts can be many gigabytes.

``verify_file`` is what worker processes call before loading a model, so that bytes
changed on disk since the upload (bit rot, tampering) fail loudly instead of serving a
different model. It lives at module level, and this module imports no SQL library, to
keep worker start-up cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from modelport.errors import (
    ArtifactCorrupted,
    InvalidInput,
    ModelportError,
    NotFound,
    PayloadTooLarge,
)
from modelport.types.admin import ArtifactInfo

_SHA256 = re.compile(r"[0-9a-f]{64}")
_READ_CHUNK = 1024 * 1024


def check_sha256(sha256: str, *, param: str = "sha256") -> str:
    """Return ``sha256`` if it is 64 lowercase hex digits, else raise ``InvalidInput``.

    Digests become file names, so this check also keeps callers out of other folders.
    """
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise InvalidInput(f"not a SHA-256 hex digest: {sha256!r}", param=param)
    return sha256


def verify_file(path: Path, sha256: str) -> None:
    """Re-hash ``path`` in chunks; raise ``ArtifactCorrupted`` unless it matches ``sha256``."""
    check_sha256(sha256)
    try:
        with path.open("rb") as f:
            actual = hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError as exc:
        raise ArtifactCorrupted(f"artifact {sha256} is missing at {path}") from exc
    if actual != sha256:
        raise ArtifactCorrupted(
            f"artifact at {path} is corrupted: expected sha256 {sha256}, found {actual}",
            expected=sha256,
            actual=actual,
        )


class ArtifactWriter(ABC):
    """One artifact being written. Use as a context manager: it aborts unless committed."""

    def __init__(self, max_bytes: int | None) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()
        self._done = False

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; raises ``PayloadTooLarge`` (and aborts) past ``max_bytes``."""
        if self._done:
            raise ModelportError("artifact writer is already committed or aborted")
        if self.max_bytes is not None and self.size + len(chunk) > self.max_bytes:
            self.abort()
            raise PayloadTooLarge(f"artifact exceeds the limit of {self.max_bytes} bytes")
        try:
            self._write(chunk)
        except BaseException:
            self.abort()
            raise
        self._hash.update(chunk)
        self.size += len(chunk)

    def commit(self, expected_sha256: str | None = None) -> ArtifactInfo:
        """Make the artifact visible under its digest and return it.

        If ``expected_sha256`` is given and differs from the digest of the bytes received,
        nothing is stored and ``InvalidInput`` names both digests.
        """
        if self._done:
            raise ModelportError("artifact writer is already committed or aborted")
        digest = self._hash.hexdigest()
        if expected_sha256 is not None and expected_sha256 != digest:
            self.abort()
            raise InvalidInput(
                f"artifact digest mismatch: expected sha256 {expected_sha256}, got {digest}",
                param="sha256",
            )
        try:
            self._commit(digest)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return ArtifactInfo(sha256=digest, size=self.size)

    def abort(self) -> None:
        """Discard everything written; safe to call more than once."""
        if not self._done:
            self._done = True
            self._abort()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()

    @abstractmethod
    def _write(self, chunk: bytes) -> None: ...

    @abstractmethod
    def _commit(self, sha256: str) -> None:
        """Store the bytes written under ``sha256`` (atomically)."""

    @abstractmethod
    def _abort(self) -> None: ...


class ArtifactStore(ABC):
    """Where artifacts live. Digests are validated by every method (``InvalidInput``)."""

    @abstractmethod
    def begin(self, max_bytes: int | None = None) -> ArtifactWriter:
        """Start writing a new artifact of at most ``max_bytes`` bytes."""

    @abstractmethod
    def exists(self, sha256: str) -> bool:
        """Whether an artifact with this digest is stored."""

    @abstractmethod
    def local_path(self, sha256: str) -> Path:
        """A local file with the artifact's bytes, for workers to open (``NotFound``)."""

    @abstractmethod
    def size(self, sha256: str) -> int:
        """Size in bytes of a stored artifact (``NotFound``)."""

    @abstractmethod
    def delete(self, sha256: str) -> bool:
        """Remove an artifact; returns whether there was one."""

    def verify(self, sha256: str) -> None:
        """Re-hash a stored artifact; ``ArtifactCorrupted`` names expected and actual digest."""
        verify_file(self.local_path(sha256), sha256)

    def put(
        self,
        chunks: Iterable[bytes],
        *,
        max_bytes: int | None = None,
        expected_sha256: str | None = None,
    ) -> ArtifactInfo:
        """Store an artifact from an iterable of byte chunks in one call."""
        with self.begin(max_bytes) as writer:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit(expected_sha256)

    def put_file(self, path: Path, *, max_bytes: int | None = None) -> ArtifactInfo:
        """Store a copy of a local file, streaming it in 1 MiB chunks."""
        with path.open("rb") as f:
            return self.put(_chunks(f), max_bytes=max_bytes)


def _chunks(f: BinaryIO) -> Iterable[bytes]:
    while chunk := f.read(_READ_CHUNK):
        yield chunk


class LocalArtifactStore(ArtifactStore):
    """Artifacts as files on a local disk: ``root/sha256/ab/<hex digest>``.

    Uploads go to ``root/tmp`` (same filesystem, so the final ``os.replace`` is an atomic
    rename) and are fsynced before they are renamed. Stored files are made read-only, as
    content-addressed files must never change in place.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.objects_dir = root / "sha256"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.objects_dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"

    def path_for(self, sha256: str) -> Path:
        """Where an artifact with this digest lives (whether or not it exists)."""
        check_sha256(sha256)
        return self.objects_dir / sha256[:2] / sha256

    def begin(self, max_bytes: int | None = None) -> ArtifactWriter:
        if max_bytes is not None and max_bytes < 0:
            raise InvalidInput(f"max_bytes must be >= 0, got {max_bytes}", param="max_bytes")
        return _LocalWriter(self, max_bytes)

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def local_path(self, sha256: str) -> Path:
        path = self.path_for(sha256)
        if not path.is_file():
            raise NotFound(f"artifact {sha256} not found", param="sha256")
        return path

    def size(self, sha256: str) -> int:
        try:
            return self.path_for(sha256).stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"artifact {sha256} not found", param="sha256") from exc

    def delete(self, sha256: str) -> bool:
        try:
            self.path_for(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def cleanup_temp(self, older_than_s: float = 24 * 3600) -> int:
        """Delete upload leftovers of crashed processes; returns how many were removed.

        Only files older than ``older_than_s`` go, so uploads in progress in other
        processes sharing this root are left alone.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        for path in self.tmp_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed += 1
        return removed


class _LocalWriter(ArtifactWriter):
    def __init__(self, store: LocalArtifactStore, max_bytes: int | None) -> None:
        super().__init__(max_bytes)
        self._store = store
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="upload-", suffix=".part")
        self._tmp_path = Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb")

    def _write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    def _commit(self, sha256: str) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self._store.path_for(sha256)
        if final.is_file():
            # Same digest, same bytes: keep the stored copy (dedupe).
            self._tmp_path.unlink()
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_path.chmod(0o444)
        self._tmp_path.replace(final)
        _fsync_dir(final.parent)

    def _abort(self) -> None:
        self._file.close()
        self._tmp_path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Persist a rename: the directory entry itself must reach the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
