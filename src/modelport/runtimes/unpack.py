"""Directory models travel as tar archives: pack a folder, unpack an artifact once.

A Hugging Face model is a folder (config, tokenizer, weights), but the artifact store and
upload path handle single files. So the client streams the folder as a plain tar
(:func:`pack_dir`, no temporary copy) and a worker unpacks it before loading
(:func:`unpacked_dir`).

Packing is deterministic: members in sorted order, zero mtimes and owners, fixed modes. The
client reads the stream twice (once to hash it, once to upload it) and gets the same bytes,
and the same folder always becomes the same content-addressed artifact.

Unpacking is safe against hostile archives: :func:`check_archive` reads only headers and
refuses absolute paths, ``..``, links pointing outside, devices (tarfile's ``"data"``
filter) and archives whose contents exceed a size bound; extraction then runs with that
same filter. It happens at most once per artifact: into a temporary folder that is renamed
into place, so replicas racing to unpack the same artifact all end up with one complete
copy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from modelport.errors import InvalidInput, ModelLoadError
from modelport.runtimes.base import LoadSpec

# Bounds for what one archive may unpack to; options "max_unpacked_bytes" overrides the size.
DEFAULT_MAX_UNPACKED_BYTES = 64 * 1024**3
MAX_MEMBERS = 100_000

_BLOCK = tarfile.BLOCKSIZE
_CHUNK = 1 << 20
_SKIPPED_DIRS = frozenset({".git", ".cache"})  # VCS data, huggingface_hub's download cache
_CHECK_ROOT = "/nonexistent-modelport-unpack-check"  # where the data filter pretends to extract


# --- packing (client side) --------------------------------------------------------------


def pack_dir(path: str | os.PathLike[str], chunk_size: int = _CHUNK) -> Iterator[bytes]:
    """Stream the folder at ``path`` as a tar archive, in chunks of at most ``chunk_size``.

    Only regular files are packed (symlinks are followed, so a huggingface_hub snapshot
    folder works), with names relative to ``path``; ``.git`` and ``.cache`` folders are
    left out. Nothing is copied to disk and at most one chunk is held in memory.
    """
    root = _folder(path)
    for relative, file_path, size in _files(root):
        yield _header(relative, size)
        sent = 0
        with file_path.open("rb") as f:
            while chunk := f.read(chunk_size):
                sent += len(chunk)
                yield chunk
        if sent != size:
            raise InvalidInput(f"{relative!r} changed size while being packed", param="path")
        if pad := -size % _BLOCK:
            yield b"\0" * pad
    yield b"\0" * (2 * _BLOCK)  # end-of-archive marker


def packed_size(path: str | os.PathLike[str]) -> int:
    """The exact number of bytes :func:`pack_dir` yields for ``path`` (reads no contents)."""
    root = _folder(path)
    total = 2 * _BLOCK
    for relative, _file_path, size in _files(root):
        total += len(_header(relative, size)) + size + (-size % _BLOCK)
    return total


def _folder(path: str | os.PathLike[str]) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise InvalidInput(f"{str(root)!r} is not a folder", param="path")
    return root


def _files(root: Path) -> Iterator[tuple[str, Path, int]]:
    """(name in the archive, path, size) of each regular file under ``root``, sorted."""
    found: list[tuple[str, Path, int]] = []
    for current, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        for name in names:
            file_path = Path(current) / name
            if file_path.is_file():  # follows symlinks; skips sockets, fifos, dangling links
                relative = file_path.relative_to(root).as_posix()
                found.append((relative, file_path, file_path.stat().st_size))
    if not found:
        raise InvalidInput(f"folder {str(root)!r} has no files to pack", param="path")
    return iter(sorted(found))


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    return info.tobuf(format=tarfile.PAX_FORMAT)


# --- checking and unpacking (worker side) -----------------------------------------------


def check_archive(
    path: Path, artifact_name: str, max_bytes: int = DEFAULT_MAX_UNPACKED_BYTES
) -> list[str]:
    """Return the names of the regular files in the tar at ``path``, or refuse it.

    Reads headers only. ``InvalidInput`` when the file is not a tar, when a member would
    land outside the extraction folder or is a device (tarfile's ``"data"`` filter), or
    when the archive holds more than ``max_bytes`` or ``MAX_MEMBERS``.
    """
    try:
        with tarfile.open(path, "r:") as archive:
            return _check_members(archive, artifact_name, max_bytes)
    except tarfile.ReadError as exc:
        raise InvalidInput(
            f"artifact {artifact_name!r} is not a readable tar archive: {exc}", param="artifact"
        ) from exc
    except OSError as exc:
        raise ModelLoadError(f"cannot read artifact {artifact_name!r}: {exc}") from exc


def _check_members(archive: tarfile.TarFile, artifact_name: str, max_bytes: int) -> list[str]:
    names: list[str] = []
    total = 0
    for count, member in enumerate(archive, start=1):
        if count > MAX_MEMBERS:
            raise InvalidInput(
                f"artifact {artifact_name!r} has more than {MAX_MEMBERS} members",
                param="artifact",
            )
        try:
            if member.name.startswith("/"):  # the data filter would strip it; refuse instead
                raise tarfile.AbsolutePathError(member)
            tarfile.data_filter(member, _CHECK_ROOT)
        except tarfile.FilterError as exc:
            raise InvalidInput(
                f"artifact {artifact_name!r} has an unsafe member: {exc}", param="artifact"
            ) from exc
        total += member.size
        if total > max_bytes:
            raise InvalidInput(
                f"artifact {artifact_name!r} unpacks to more than {max_bytes} bytes",
                param="artifact",
            )
        if member.isfile():
            names.append(member.name.removeprefix("./"))
    if not names:
        raise InvalidInput(f"artifact {artifact_name!r} is an empty archive", param="artifact")
    return names


def unpacked_dir(spec: LoadSpec) -> Path:
    """The folder holding the contents of ``spec``'s tar artifact, unpacked on first use.

    The folder is ``options["cache_dir"]/<sha256>`` (without ``cache_dir``, a folder next to
    the artifact). A single top-level folder in the archive is stripped, so the model's
    files sit directly in the returned folder.
    """
    cache = spec.options.get("cache_dir")
    base = Path(cache) if cache else spec.artifact_path.parent / ".unpacked"
    target = base / spec.sha256
    if target.is_dir():
        return target
    max_bytes = int(spec.options.get("max_unpacked_bytes", DEFAULT_MAX_UNPACKED_BYTES))
    check_archive(spec.artifact_path, spec.artifact_name, max_bytes)
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.sha256[:16]}-", dir=base))
    try:
        _extract(spec, staging / "x")
        root = _single_child(staging / "x")
        try:
            root.rename(target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real failure
                raise
    except OSError as exc:
        raise ModelLoadError(f"cannot unpack {spec.artifact_name!r}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _extract(spec: LoadSpec, dest: Path) -> None:
    dest.mkdir()
    try:
        with tarfile.open(spec.artifact_path, "r:") as archive:
            archive.extractall(dest, filter="data")
    except tarfile.TarError as exc:  # FilterError included
        raise InvalidInput(
            f"cannot unpack artifact {spec.artifact_name!r}: {exc}", param="artifact"
        ) from exc


def _single_child(folder: Path) -> Path:
    """``folder``'s only entry when that is a folder (a packed top-level folder), else it."""
    with contextlib.suppress(OSError):
        entries = list(folder.iterdir())
        if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
            return entries[0]
    return folder
