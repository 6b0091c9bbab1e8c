"""The "trained" runtime's artifact checks and the bundle format, without training.

Bundles here are built by hand (real tars, real JSON) so that every refusal path of
``check_artifact`` is exercised: it must accept only a bundle and must never run anything.
The serving-equals-training checks, which need real trainers, are in test_run.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from modelport.errors import InvalidInput, UnsafeArtifact
from modelport.runtimes import runtime_class
from modelport.runtimes.base import RUNTIMES
from modelport.runtimes.unpack import pack_dir
from modelport.training.bundle import (
    FORMAT_VERSION,
    check_bundle,
    output_specs,
    read_manifest,
)


def _manifest(**overrides: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": "classification",
        "classes": ["a", "b"],
        "trainer": "logistic_regression",
        "exported": {"format": "onnx", "files": ["model.onnx"], "manifest": {"input": "x"}},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [o.model_dump() for o in output_specs("classification", 2)],
        "feature_names": ["f0", "f1", "f2", "f3"],
    }
    manifest.update(overrides)
    return manifest


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _bundle(path: Path, manifest: dict[str, Any] | None = None, **extra: bytes) -> Path:
    members = {
        "manifest.json": json.dumps(manifest or _manifest()).encode(),
        "preprocess.json": b"{}",
        "model/model.onnx": b"not really onnx, never parsed by the check",
    }
    members.update(extra)
    return _tar(path, members)


def test_trained_is_a_registered_runtime() -> None:
    assert "trained" in RUNTIMES
    assert runtime_class("trained").name == "trained"


def test_check_accepts_a_well_formed_bundle(tmp_path: Path) -> None:
    path = _bundle(tmp_path / "ok.mpbundle")
    runtime_class("trained").check_artifact(path, "ok.mpbundle", trusted=False)
    manifest = check_bundle(path, "ok.mpbundle")
    assert manifest.classes == ["a", "b"]
    assert [t.name for t in manifest.signature.outputs] == ["label", "probabilities"]
    assert manifest.signature.outputs[1].shape == [-1, 2]
    assert read_manifest(path) == manifest


def test_check_refuses_a_non_tar(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07\x12\x04onnx" * 100)
    with pytest.raises(InvalidInput, match="not a readable tar"):
        check_bundle(path, "model.onnx")


def test_check_refuses_a_tar_without_manifest(tmp_path: Path) -> None:
    path = _tar(tmp_path / "plain.tar", {"config.json": b"{}", "weights.bin": b"\0" * 10})
    with pytest.raises(InvalidInput, match="not a trained-model bundle"):
        check_bundle(path, "plain.tar")


def test_check_refuses_a_pickle_slipped_into_the_bundle(tmp_path: Path) -> None:
    path = _bundle(tmp_path / "evil.mpbundle", **{"model/extra.pkl": b"\x80\x04."})
    with pytest.raises(UnsafeArtifact, match="unexpected files"):
        check_bundle(path, "evil.mpbundle")


@pytest.mark.parametrize("name", ["model.pkl", "model.pt", "../model.onnx", "/abs.onnx"])
def test_check_refuses_model_files_that_are_code_or_escape(tmp_path: Path, name: str) -> None:
    manifest = _manifest(exported={"format": "onnx", "files": [name], "manifest": {}})
    path = _bundle(tmp_path / "b.mpbundle", manifest)
    with pytest.raises(UnsafeArtifact):
        check_bundle(path, "b.mpbundle")


def test_check_refuses_a_member_escaping_the_folder(tmp_path: Path) -> None:
    path = _bundle(tmp_path / "b.mpbundle", **{"../../etc/x.json": b"{}"})
    with pytest.raises(InvalidInput, match="unsafe member"):
        check_bundle(path, "b.mpbundle")


def test_check_refuses_missing_model_files(tmp_path: Path) -> None:
    manifest = _manifest(
        exported={"format": "safetensors", "files": ["w.safetensors", "arch.json"], "manifest": {}}
    )
    path = _bundle(tmp_path / "b.mpbundle", manifest)  # has model/model.onnx, not these
    with pytest.raises((InvalidInput, UnsafeArtifact)):
        check_bundle(path, "b.mpbundle")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"format_version": 99}, "bundle format 99"),
        ({"task": "clustering"}, "task"),
        ({"inputs": "x"}, "inputs"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_check_refuses_invalid_manifests(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    path = _bundle(tmp_path / "b.mpbundle", _manifest(**overrides))
    with pytest.raises(InvalidInput, match=message):
        check_bundle(path, "b.mpbundle")


def test_check_refuses_a_manifest_that_is_not_json(tmp_path: Path) -> None:
    path = _tar(
        tmp_path / "b.mpbundle",
        {"manifest.json": b"{nope", "preprocess.json": b"{}", "model/model.onnx": b"x"},
    )
    with pytest.raises(InvalidInput, match=r"invalid manifest\.json"):
        check_bundle(path, "b.mpbundle")


def test_packed_folder_is_a_bundle_and_deterministic(tmp_path: Path) -> None:
    """pack_dir output (what write_bundle uses) passes the check, byte-identical twice."""
    folder = tmp_path / "staging"
    (folder / "model").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(_manifest()))
    (folder / "preprocess.json").write_text("{}")
    (folder / "model" / "model.onnx").write_bytes(b"graph")
    first = b"".join(pack_dir(folder))
    assert first == b"".join(pack_dir(folder))
    path = tmp_path / "packed.mpbundle"
    path.write_bytes(first)
    assert check_bundle(path, "packed.mpbundle").trainer == "logistic_regression"


def test_regression_outputs() -> None:
    (only,) = output_specs("regression", 0)
    assert (only.name, only.datatype, only.shape) == ("prediction", "FP32", [-1])


def test_check_imports_no_ml_library(tmp_path: Path) -> None:
    """check_artifact runs in the API process: it reads bytes and loads no model library."""
    path = _bundle(tmp_path / "ok.mpbundle")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from modelport.runtimes import runtime_class\n"
        f"runtime_class('trained').check_artifact(Path({str(path)!r}), 'ok', trusted=False)\n"
        "heavy = {'torch', 'onnxruntime', 'sklearn', 'pandas'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
