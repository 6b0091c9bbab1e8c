"""Artifact files for upload: measure them (size, SHA-256), stream them, check the result.

A file is read in chunks and never held in memory; a folder (a Hugging Face model dir)
travels as the deterministic tar stream of ``runtimes.unpack.pack_dir``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

from modelport import errors
from modelport.types.admin import ArtifactInfo

CHUNK_SIZE = 1024 * 1024
"""Upload chunk size: big enough to keep syscalls rare, small enough to stream smoothly."""

Progress = Callable[[int], None]
"""Upload progress callback; receives the total number of bytes sent so far."""


@dataclass(frozen=True)
class ArtifactFile:
    """An artifact on disk, measured before upload so the server can verify it.

    A folder (a Hugging Face model directory) is an artifact too: it travels as the
    deterministic tar stream of ``runtimes.unpack.pack_dir``, hashed in a first pass and
    streamed again for the upload, never copied to disk.
    """

    path: Path
    size: int
    sha256: str
    folder: bool = False

    @property
    def name(self) -> str:
        """The artifact's name on the server (``<folder>.tar`` for a folder)."""
        return f"{self.path.name}.tar" if self.folder else self.path.name

    @classmethod
    def measure_path(cls, path: str | os.PathLike[str]) -> ArtifactFile:
        """``measure`` a file, or the tar stream of a folder."""
        if Path(path).is_dir():
            return cls._measure_folder(Path(path))
        return cls.measure(path)

    @classmethod
    def measure(cls, path: str | os.PathLike[str]) -> ArtifactFile:
        """Size and SHA-256 of ``path``, read in chunks (the file never sits in memory)."""
        file_path = Path(path)
        if not file_path.is_file():
            raise errors.InvalidInput(f"artifact {str(file_path)!r} is not a file", param="path")
        try:
            with file_path.open("rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            size = file_path.stat().st_size
        except OSError as exc:
            raise errors.InvalidInput(
                f"cannot read artifact {str(file_path)!r}: {exc.strerror}", param="path"
            ) from None
        return cls(file_path, size, digest)

    @classmethod
    def _measure_folder(cls, folder: Path) -> ArtifactFile:
        from modelport.runtimes.unpack import pack_dir, packed_size

        digest = hashlib.sha256()
        try:
            for chunk in pack_dir(folder):
                digest.update(chunk)
            size = packed_size(folder)
        except OSError as exc:
            raise errors.InvalidInput(
                f"cannot read folder {str(folder)!r}: {exc.strerror}", param="path"
            ) from None
        return cls(folder, size, digest.hexdigest(), folder=True)


def iter_file(path: Path, progress: Progress | None = None) -> Generator[bytes, None, None]:
    """The file's bytes in chunks, calling ``progress(total_sent)`` after each chunk is sent.

    The callback runs when the HTTP layer asks for the next chunk, i.e. once the previous
    one has been handed to the socket, so it counts bytes sent rather than bytes read.
    """
    sent = 0
    for chunk in _chunks(path):
        yield chunk
        sent += len(chunk)
        if progress is not None:
            progress(sent)


def _chunks(path: Path) -> Iterator[bytes]:
    if path.is_dir():  # a model folder: the same tar stream ArtifactFile.measure hashed
        from modelport.runtimes.unpack import pack_dir

        yield from pack_dir(path, CHUNK_SIZE)
        return
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            yield chunk


def check_uploaded(artifact: ArtifactFile, info: ArtifactInfo) -> None:
    """Refuse an upload the server stored under a different digest or size."""
    if info.sha256 != artifact.sha256 or info.size != artifact.size:
        raise errors.ArtifactCorrupted(
            f"server stored {info.sha256} ({info.size} bytes) for {artifact.path.name}, "
            f"expected {artifact.sha256} ({artifact.size} bytes)"
        )
