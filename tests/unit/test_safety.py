"""Format sniffing and the refusal of artifacts that would run code when loaded."""

from __future__ import annotations

import bz2
import copyreg
import gzip
import io
import json
import lzma
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pytest
import skops.io as sio

from modelport.errors import UnsafeArtifact
from modelport.runtimes.safety import ArtifactFormat, check_not_pickle, pickle_globals, sniff_format
from modelport.runtimes.torch import TorchRuntime, pt2_hazards
from tests.fixtures import models

F = ArtifactFormat


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


class _Evil:
    """Pickles to a call of os.system: what a malicious pickle looks like (never loaded)."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


# --- sniff_format -----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickles_of_every_protocol(tmp_path: Path, protocol: int) -> None:
    data = pickle.dumps({"weights": [1.5, 2.5], "name": "m"}, protocol=protocol)
    assert sniff_format(_write(tmp_path, "m.bin", data), "m.bin") == F.PICKLE


@pytest.mark.parametrize("compress", [0, 3, ("gzip", 3), ("bz2", 3), ("lzma", 3), ("xz", 3)])
def test_joblib_files_are_pickles_compressed_or_not(tmp_path: Path, compress: object) -> None:
    path = tmp_path / "model.joblib"
    joblib.dump({"coef": np.arange(50.0)}, path, compress=compress)
    assert sniff_format(path, path.name) == F.PICKLE


@pytest.mark.parametrize(
    "compress", [zlib.compress, gzip.compress, bz2.compress, lzma.compress]
)  # fmt: skip
def test_compressed_pickles_and_compressed_other_things(
    tmp_path: Path, compress: Callable[[bytes], bytes]
) -> None:
    pickled = compress(pickle.dumps(_Evil(), protocol=0))
    assert sniff_format(_write(tmp_path, "a", pickled), "a") == F.PICKLE
    text = compress(b"just some text, nothing to unpickle\n" * 20)
    assert sniff_format(_write(tmp_path, "b", text), "b") == F.COMPRESSED


def test_legacy_joblib_zfile_is_a_pickle(tmp_path: Path) -> None:
    from joblib.numpy_pickle_compat import write_zfile

    with (tmp_path / "old.pkl").open("wb") as fh:
        write_zfile(fh, pickle.dumps(_Evil(), protocol=2))
    assert sniff_format(tmp_path / "old.pkl", "old.pkl") == F.PICKLE


def test_lz4_stream_counts_as_pickle_only_under_a_pickle_name(tmp_path: Path) -> None:
    data = b"\x04\x22\x4d\x18" + os.urandom(64)  # lz4 frame magic: joblib's lz4 codec
    assert sniff_format(_write(tmp_path, "m.joblib", data), "m.joblib") == F.PICKLE
    assert sniff_format(_write(tmp_path, "m.bin", data), "m.bin") == F.COMPRESSED


def test_zip_formats_are_told_apart_by_member_names(tmp_path: Path) -> None:
    model, _ = models.iris_model()
    sio.dump(model, tmp_path / "m.skops")
    assert sniff_format(tmp_path / "m.skops", "m.skops") == F.SKOPS
    assert sniff_format(models.build_torchscript(tmp_path).path, "m") == F.TORCHSCRIPT
    assert sniff_format(models.build_torch_save(tmp_path), "m") == F.TORCH_PICKLE
    np.savez(tmp_path / "arrays.npz", a=np.arange(3))
    assert sniff_format(tmp_path / "arrays.npz", "a") == F.NUMPY
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert sniff_format(tmp_path / "other.zip", "o") == F.ZIP


def test_torch_save_state_dict_is_a_torch_pickle(tmp_path: Path) -> None:
    import torch

    torch.save({"w": torch.zeros(3)}, tmp_path / "sd.pt")
    assert sniff_format(tmp_path / "sd.pt", "sd.pt") == F.TORCH_PICKLE


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.build_zipmap_onnx(tmp_path_factory.mktemp("onnx"))


def test_onnx_is_recognised_and_truncated_onnx_is_not(tmp_path: Path, onnx_path: Path) -> None:
    path = onnx_path
    assert sniff_format(path, path.name) == F.ONNX
    cut = _write(tmp_path, "cut.onnx", path.read_bytes()[:-10])
    assert sniff_format(cut, cut.name) != F.ONNX


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", F.EMPTY),
        (b"hello world\nplain text\n", F.TEXT),
        (b'{"not": "a model"}', F.TEXT),
        ("naïve unicode text".encode(), F.TEXT),
        (b"GGUF\x03\x00\x00\x00" + bytes(32), F.GGUF),
        (b"\x89HDF\r\n\x1a\n" + bytes(32), F.HDF5),
        (struct.pack("<Q", 2) + b"{}" + bytes(16), F.SAFETENSORS),
        (bytes(range(256)) * 4, F.UNKNOWN),
    ],
)
def test_other_formats(tmp_path: Path, data: bytes, expected: ArtifactFormat) -> None:
    assert sniff_format(_write(tmp_path, "x", data), "x") == expected


def test_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(4))
    assert sniff_format(tmp_path / "a.npy", "a.npy") == F.NUMPY


# --- check_not_pickle -------------------------------------------------------------------


def test_untrusted_pickle_is_refused_with_advice(tmp_path: Path) -> None:
    path = _write(tmp_path, "evil.pkl", pickle.dumps(_Evil()))
    with pytest.raises(UnsafeArtifact) as info:
        check_not_pickle(path, "evil.pkl", trusted=False)
    message = info.value.message
    assert "'evil.pkl' is a pickle" in message
    assert "run arbitrary code" in message and "trusted=True" in message
    assert "--trusted" in message and "skops/ONNX" in message
    assert check_not_pickle(path, "evil.pkl", trusted=True) == F.PICKLE


def test_torch_save_is_refused_unless_trusted(tmp_path: Path) -> None:
    path = models.build_torch_save(tmp_path)
    with pytest.raises(UnsafeArtifact, match=r"torch\.save\(\) checkpoint"):
        check_not_pickle(path, path.name, trusted=False)
    assert check_not_pickle(path, path.name, trusted=True) == F.TORCH_PICKLE


def test_safe_formats_pass_untrusted(tmp_path: Path, onnx_path: Path) -> None:
    assert check_not_pickle(onnx_path, onnx_path.name, trusted=False) == F.ONNX
    text = _write(tmp_path, "notes.txt", b"hello")
    assert check_not_pickle(text, "notes.txt", trusted=False) == F.TEXT


# --- pickle_globals ---------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_pickle_globals_finds_the_callable(protocol: int) -> None:
    found = pickle_globals(pickle.dumps([_Evil(), _Evil()], protocol=protocol))
    assert found == {f"{os.system.__module__} system"}


def test_pickle_globals_gives_up_on_extension_codes() -> None:
    copyreg.add_extension("collections", "OrderedDict", 0xF00)
    try:
        data = pickle.dumps(__import__("collections").OrderedDict(), protocol=2)
    finally:
        copyreg.remove_extension("collections", "OrderedDict", 0xF00)
    assert pickle_globals(data) is None
    assert pickle_globals(b"not a pickle") is None


# --- torch.export archives (vetted by the torch runtime) --------------------------------


@pytest.fixture(scope="module")
def pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.build_torch_export(tmp_path_factory.mktemp("pt2")).path


def _edit(src: Path, dest: Path, member: str, change: Callable[[bytes], bytes]) -> Path:
    """Copy a zip, passing the member whose name ends with ``member`` through ``change``."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dest, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            new.writestr(info, change(data) if info.filename.endswith(member) else data)
    return dest


def _edit_json(src: Path, dest: Path, member: str, change: Callable[[dict], None]) -> Path:
    def apply(data: bytes) -> bytes:
        doc = json.loads(data)
        change(doc)
        return json.dumps(doc).encode()

    return _edit(src, dest, member, apply)


def test_plain_export_has_no_hazards(pt2: Path) -> None:
    assert sniff_format(pt2, pt2.name) == F.TORCH_EXPORT
    assert pt2_hazards(pt2) == []
    TorchRuntime.check_artifact(pt2, pt2.name, trusted=False)


def _set_guard(doc: dict) -> None:
    doc["guards_code"] = ["__import__('os').system('echo pwned')"]


def _set_target(doc: dict) -> None:
    doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.ops.load_library.__func__"


def _set_expr(doc: dict) -> None:
    sizes = next(iter(doc["graph_module"]["graph"]["tensor_values"].values()))["sizes"]
    sizes[0] = {"as_expr": {"expr_str": "eval(chr(49))"}}


def _pickle_weight(doc: dict) -> None:
    next(iter(doc["config"].values()))["use_pickle"] = True


@pytest.mark.parametrize(
    ("member", "change", "hazard"),
    [
        ("models/model.json", _set_guard, "guard"),
        ("models/model.json", _set_target, "not a torch operator"),
        ("models/model.json", _set_expr, "shape expression"),
        ("weights_config.json", _pickle_weight, "stored as a pickle"),
    ],
)
def test_code_in_an_export_archive_is_found(
    pt2: Path, tmp_path: Path, member: str, change: Callable[[dict], None], hazard: str
) -> None:
    bad = _edit_json(pt2, tmp_path / "bad.pt2", member, change)
    hazards = pt2_hazards(bad)
    assert len(hazards) >= 1 and hazard in hazards[0]
    with pytest.raises(UnsafeArtifact, match=r"torch\.export archive 'bad\.pt2' can run code"):
        TorchRuntime.check_artifact(bad, bad.name, trusted=False)
    TorchRuntime.check_artifact(bad, bad.name, trusted=True)


def test_sample_inputs_must_be_tensors_only(pt2: Path, tmp_path: Path) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(((torch.zeros(2), _Evil()), {}), buffer)
    bad = _edit(pt2, tmp_path / "bad.pt2", "sample_inputs/model.pt", lambda _: buffer.getvalue())
    assert any("sample inputs" in h for h in pt2_hazards(bad))


def test_compiled_code_members_are_hazards(pt2: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(pt2.read_bytes())
    with zipfile.ZipFile(bad, "a") as archive:
        root = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
    assert any("aotinductor" in h for h in pt2_hazards(bad))
