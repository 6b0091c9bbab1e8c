"""Tell artifact formats apart from their bytes, and refuse the ones that run code on load.

Registration happens in the API process, so everything here reads bytes and never executes
anything from the artifact: no unpickling, no protobuf or torch import, no ``eval``.

Why it matters: a pickle (``pickle``, ``joblib``, ``torch.save``) runs arbitrary code when it
is loaded, so such artifacts are accepted only with ``trusted=True``. Containers that
embed pickles or code are vetted by their runtime with the helpers here (the torch runtime
does so for torch.export archives).
"""

from __future__ import annotations

import bz2
import io
import lzma
import pickletools
import zipfile
import zlib
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from modelport.errors import ModelLoadError, UnsafeArtifact


class ArtifactFormat(StrEnum):
    """What :func:`sniff_format` can tell from an artifact's bytes."""

    PICKLE = "pickle"  # plain or joblib pickle, possibly compressed
    TORCH_PICKLE = "torch_pickle"  # torch.save() zip: a pickle plus tensor storages
    SKOPS = "skops"
    TORCHSCRIPT = "torchscript"
    TORCH_EXPORT = "torch_export"
    ONNX = "onnx"
    SAFETENSORS = "safetensors"
    GGUF = "gguf"
    NUMPY = "npy"
    HDF5 = "hdf5"
    ZIP = "zip"  # some other zip archive
    TAR = "tar"  # an uncompressed tar archive (how directory models travel)
    COMPRESSED = "compressed"  # a compressed stream whose content we could not identify
    TEXT = "text"
    EMPTY = "empty"
    UNKNOWN = "unknown"


PICKLE_FORMATS = frozenset({ArtifactFormat.PICKLE, ArtifactFormat.TORCH_PICKLE})

_HEAD = 1 << 20  # bytes looked at for magic numbers and pickle opcodes
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".jl", ".sav")


def sniff_format(path: Path, artifact_name: str) -> ArtifactFormat:
    """Identify the format of the artifact at ``path`` from its bytes alone.

    ``artifact_name`` (the uploaded file name) only breaks one tie: a compressed stream we
    cannot decompress here (lz4 without the ``lz4`` package) counts as a pickle when the
    name says joblib/pickle, since joblib is what writes such files.
    """
    try:
        with path.open("rb") as f:
            head = f.read(_HEAD)
            complete = len(head) < _HEAD
            if not head:
                return ArtifactFormat.EMPTY
            # before zip and pickle: a tar may end with a zip member, and a tar whose first
            # member is "./" starts with pickle's STOP opcode
            if _is_tar(head):
                return ArtifactFormat.TAR
            if zipfile.is_zipfile(f):
                with zipfile.ZipFile(f) as archive:
                    return _sniff_zip(archive.namelist())
            if _is_onnx(f):
                return ArtifactFormat.ONNX
    except OSError as exc:
        raise ModelLoadError(f"cannot read artifact {artifact_name!r}: {exc}") from exc
    return _sniff_head(head, complete, artifact_name)


def check_not_pickle(path: Path, name: str, trusted: bool) -> ArtifactFormat:
    """Raise ``UnsafeArtifact`` if loading ``path`` could run code and ``trusted`` is false.

    Returns the sniffed format so callers can go on checking it is theirs.
    """
    fmt = sniff_format(path, name)
    if trusted:
        return fmt
    if fmt == ArtifactFormat.TORCH_PICKLE:
        raise UnsafeArtifact(
            f"artifact {name!r} is a torch.save() checkpoint, which is a pickle; pickles run "
            "arbitrary code when loaded. Export the model with torch.export.save() (.pt2) "
            "or torch.jit.save() instead",
            param="trusted",
        )
    if fmt in PICKLE_FORMATS:
        raise UnsafeArtifact(
            f"artifact {name!r} is a pickle; pickles run arbitrary code when loaded. "
            "Re-upload with trusted=True (CLI: --trusted) if you trust its author, "
            "or export it to skops/ONNX",
            param="trusted",
        )
    return fmt


# --- single-stream formats ------------------------------------------------------------


def _sniff_head(head: bytes, complete: bool, name: str) -> ArtifactFormat:
    if _is_pickle(head, complete):
        return ArtifactFormat.PICKLE
    inner = _decompress_head(head)
    if inner is not None:
        if inner and _is_pickle(inner, complete=False):
            return ArtifactFormat.PICKLE
        return ArtifactFormat.COMPRESSED
    if head.startswith(b"ZF0x"):  # joblib < 0.9.3 "z-file": always a zlib'd pickle
        return ArtifactFormat.PICKLE
    if head.startswith(b"\x04\x22\x4d\x18"):  # lz4 frame, joblib's only other codec
        is_joblib = name.lower().endswith(_PICKLE_SUFFIXES)
        return ArtifactFormat.PICKLE if is_joblib else ArtifactFormat.COMPRESSED
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if _is_safetensors(head):
        return ArtifactFormat.SAFETENSORS
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            # a multi-byte character cut by the read window is still text
            if complete or exc.start < len(head) - 4:
                return ArtifactFormat.UNKNOWN
        return ArtifactFormat.TEXT
    return ArtifactFormat.UNKNOWN


_MAGIC: tuple[tuple[bytes, ArtifactFormat], ...] = (
    (b"GGUF", ArtifactFormat.GGUF),
    (b"\x93NUMPY", ArtifactFormat.NUMPY),
    (b"\x89HDF\r\n\x1a\n", ArtifactFormat.HDF5),
)


def _is_pickle(data: bytes, complete: bool) -> bool:
    """True if ``data`` starts a pickle stream.

    Protocol 2+ pickles open with PROTO (0x80, version). Protocols 0 and 1 have no header,
    so the bytes must parse as pickle opcodes up to STOP (or to the end of the window when
    we only have a prefix); ordinary text fails that within a few bytes.
    """
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return True
    try:
        for opcode, _arg, _pos in pickletools.genops(data):
            if opcode.name == "STOP":
                return True
    except (ValueError, UnicodeDecodeError):
        return False
    return not complete and len(data) > 64  # a long valid prefix cut by the window


def _decompress_head(head: bytes) -> bytes | None:
    """Up to 64 KiB decompressed from a zlib/gzip/bz2/lzma/xz stream, None if not one."""
    out = 1 << 16
    decoders: list[tuple[bool, Callable[[], Any]]] = [
        (head[:2] == b"\x1f\x8b", lambda: zlib.decompressobj(wbits=31)),
        (_is_zlib(head), lambda: zlib.decompressobj()),
        (head[:3] == b"BZh", bz2.BZ2Decompressor),
        (head[:6] == b"\xfd7zXZ\x00", lzma.LZMADecompressor),
        (head[:3] == b"\x5d\x00\x00", lambda: lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)),
    ]
    for matches, make in decoders:
        if not matches:
            continue
        try:
            data: bytes = make().decompress(head, out)
        except (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError):
            continue
        return data
    return None


def _is_zlib(head: bytes) -> bool:
    return len(head) >= 2 and head[0] & 0x0F == 8 and ((head[0] << 8) | head[1]) % 31 == 0


def _is_tar(head: bytes) -> bool:
    """True if ``head`` starts with a ustar/GNU tar header whose checksum is right."""
    if len(head) < 512 or head[257:262] != b"ustar":
        return False
    try:
        stored = int(head[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    # the checksum is the byte sum of the header with its own field read as spaces
    return stored == sum(head[:148]) + 8 * 0x20 + sum(head[156:512])


def _is_safetensors(head: bytes) -> bool:
    if len(head) < 10:
        return False
    size = int.from_bytes(head[:8], "little")
    return 2 <= size < (1 << 30) and head[8:9] == b"{"


# --- ONNX: walk the top level of the ModelProto without a protobuf library ---------------

# ModelProto field number -> protobuf wire type (0 varint, 2 length-delimited)
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def _is_onnx(f: IO[bytes]) -> bool:
    """True if the file parses as a protobuf message with ONNX's ir_version and graph.

    Only field tags are read; length-delimited fields (the graph, usually nearly all of
    the file) are skipped with a seek, so this is cheap on multi-GB models.
    """
    f.seek(0, io.SEEK_END)
    end = f.tell()
    f.seek(0)
    seen: set[int] = set()
    for _ in range(100_000):
        if f.tell() == end:
            return 1 in seen and 7 in seen
        tag = _read_varint(f)
        if tag is None:
            return False
        number, wire = tag >> 3, tag & 7
        if number == 0 or _ONNX_FIELDS.get(number, wire) != wire:
            return False
        if wire == 0:
            if _read_varint(f) is None:
                return False
        elif wire == 2:
            length = _read_varint(f)
            if length is None or f.tell() + length > end:
                return False
            f.seek(length, io.SEEK_CUR)
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, io.SEEK_CUR)
        else:
            return False
        seen.add(number)
    return False


def _read_varint(f: IO[bytes]) -> int | None:
    value = 0
    for shift in range(0, 64, 7):
        byte = f.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
    return None


# --- zip archives -----------------------------------------------------------------------


def _sniff_zip(names: list[str]) -> ArtifactFormat:
    """Tell zip-based formats apart by their member names.

    skops: ``schema.json`` at the root. torch archives put everything under one folder:
    TorchScript has ``code/`` and ``constants.pkl``; torch.export has ``archive_format``
    and ``models/``; a torch.save() checkpoint has ``data.pkl`` and neither.
    """
    if "schema.json" in names:
        return ArtifactFormat.SKOPS
    inner = {n.split("/", 1)[1] for n in names if "/" in n}
    if "archive_format" in inner and any(n.startswith("models/") for n in inner):
        return ArtifactFormat.TORCH_EXPORT
    if "data.pkl" in inner or "constants.pkl" in inner:
        if "constants.pkl" in inner and any(n.startswith("code/") for n in inner):
            return ArtifactFormat.TORCHSCRIPT
        return ArtifactFormat.TORCH_PICKLE
    if names and all(n.endswith(".npy") for n in names):
        return ArtifactFormat.NUMPY
    return ArtifactFormat.ZIP


def pickle_globals(data: bytes) -> set[str] | None:
    """The ``module name`` globals a pickle would import, or None if that cannot be known.

    Statically reads opcodes, never unpickles. STACK_GLOBAL takes its two names from the
    stack; they are resolved only when the two opcodes before it (memo puts aside) push
    strings, which is what every pickler writes. Anything else (extension registry codes,
    computed names, a broken stream) gives None so callers treat the pickle as unsafe.
    """
    found: set[str] = set()
    memo: dict[int, Any] = {}
    pushed: list[Any] = []  # values of the latest stack-pushing opcodes, None if not str
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                found.add(str(arg))
                pushed.append(None)
            elif name == "STACK_GLOBAL":
                if len(pushed) < 2 or not all(isinstance(v, str) for v in pushed[-2:]):
                    return None
                found.add(f"{pushed[-2]} {pushed[-1]}")
                pushed.append(None)
            elif name.startswith("EXT"):
                return None
            elif name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                memo[len(memo) if arg is None else int(arg)] = pushed[-1] if pushed else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(int(arg or 0)))
            elif "UNICODE" in name or name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
                pushed.append(str(arg))
            else:
                pushed.append(None)
    except (ValueError, UnicodeDecodeError):
        return None
    return found
