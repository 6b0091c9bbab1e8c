"""The trained-model artifact: one deterministic tar the "trained" runtime serves.

A bundle holds everything serving needs and nothing that executes on load::

    manifest.json     BundleManifest: format version, task, classes, trainer, the exported
                      model's manifest, the serving signature, the feature names
    preprocess.json   Preprocessor.to_json(): the steps fitted on the training split
    model/...         the exported model files (ONNX, or safetensors + JSON)

It is packed with ``runtimes.unpack.pack_dir`` (sorted members, zero mtimes), so the same
training result is always the same bytes, hence the same content-addressed artifact.
:func:`check_bundle` reads headers and ``manifest.json`` only: it is what the runtime's
``check_artifact`` runs in the API process.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelport.errors import InvalidInput, UnsafeArtifact
from modelport.runtimes.unpack import check_archive, pack_dir
from modelport.types.admin import Signature, TensorSpec

if TYPE_CHECKING:
    from modelport.training.preprocess import Preprocessor
    from modelport.training.trainers.base import Exported

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PREPROCESS = "preprocess.json"
MODEL_DIR = "model"
BUNDLE_SUFFIX = ".mpbundle"
# Exported model files a bundle may carry: data formats only, never code or pickles.
_MODEL_SUFFIXES = frozenset({".onnx", ".safetensors", ".json"})
_MAX_JSON_BYTES = 64 * 1024**2  # manifest.json / preprocess.json (a vocabulary can be big)


class ExportedInfo(BaseModel):
    """What the trainer exported: ``load_predictor(model_dir, manifest)`` loads it."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["onnx", "safetensors"]
    files: list[str] = Field(min_length=1)
    manifest: dict[str, Any] = Field(default_factory=dict)


class BundleManifest(BaseModel):
    """``manifest.json`` of a bundle."""

    model_config = ConfigDict(extra="forbid")

    format_version: int
    task: Literal["classification", "regression"]
    classes: list[str] | None = None
    trainer: str
    exported: ExportedInfo
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    feature_names: list[str] = Field(default_factory=list)

    @property
    def signature(self) -> Signature:
        return Signature(inputs=self.inputs, outputs=self.outputs)


def output_specs(task: str, n_classes: int) -> list[TensorSpec]:
    """The serving outputs: label + probabilities (classification) or prediction."""
    if task == "classification":
        return [
            TensorSpec(name="label", datatype="BYTES", shape=[-1]),
            TensorSpec(name="probabilities", datatype="FP32", shape=[-1, n_classes]),
        ]
    return [TensorSpec(name="prediction", datatype="FP32", shape=[-1])]


def build_manifest(
    preprocessor: Preprocessor, exported: Exported, *, trainer: str, feature_names: list[str]
) -> BundleManifest:
    """The manifest of a bundle for this fitted preprocessor and exported model."""
    classes = list(preprocessor.classes) if preprocessor.classes is not None else None
    return BundleManifest(
        format_version=FORMAT_VERSION,
        task=preprocessor.task,
        classes=classes,
        trainer=trainer,
        exported=ExportedInfo(
            format=exported.format, files=list(exported.files), manifest=exported.manifest
        ),
        inputs=preprocessor.input_specs(),
        outputs=output_specs(preprocessor.task, len(classes or ())),
        feature_names=feature_names,
    )


def write_bundle(
    dest: Path,
    *,
    manifest: BundleManifest,
    preprocessor: Preprocessor,
    export_dir: Path,
) -> Path:
    """Pack the bundle into ``dest`` (written to a temporary name, then renamed).

    ``export_dir`` is the folder the trainer exported into; only the files the manifest
    lists are copied, each of which must exist and have a data-format suffix.
    """
    _check_model_files(manifest.exported.files, "bundle")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=dest.parent))
    try:
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=1), encoding="utf-8")
        preprocess = json.dumps(preprocessor.to_json(), sort_keys=True, allow_nan=False)
        (staging / PREPROCESS).write_text(preprocess, encoding="utf-8")
        for name in manifest.exported.files:
            source = export_dir / name
            if not source.is_file():
                raise FileNotFoundError(f"exported file {name!r} missing in {export_dir}")
            target = staging / MODEL_DIR / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        partial = staging.with_suffix(".tar")
        with partial.open("wb") as out:
            for chunk in pack_dir(staging):
                out.write(chunk)
        partial.replace(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        staging.with_suffix(".tar").unlink(missing_ok=True)
    return dest


def check_bundle(path: Path, artifact_name: str) -> BundleManifest:
    """Refuse anything that is not a bundle; reads tar headers and ``manifest.json`` only.

    ``InvalidInput`` for a non-tar, unsafe members, or a missing/invalid manifest;
    ``UnsafeArtifact`` for members that are not the manifest, the preprocessing or the
    listed data-format model files (a pickle slipped into a bundle never gets loaded).
    """
    names = set(check_archive(path, artifact_name))
    if MANIFEST not in names or PREPROCESS not in names:
        raise InvalidInput(
            f"artifact {artifact_name!r} is not a trained-model bundle "
            f"(no {MANIFEST} and {PREPROCESS})",
            param="artifact",
        )
    with tarfile.open(path, "r:") as archive:
        manifest = parse_manifest(_read_member(archive, MANIFEST, artifact_name), artifact_name)
    _check_model_files(manifest.exported.files, artifact_name)
    allowed = {MANIFEST, PREPROCESS} | {f"{MODEL_DIR}/{n}" for n in manifest.exported.files}
    extra = sorted(names - allowed)
    if extra:
        raise UnsafeArtifact(
            f"artifact {artifact_name!r} holds unexpected files {extra[:5]}", param="artifact"
        )
    missing = sorted(allowed - names)
    if missing:
        raise InvalidInput(
            f"artifact {artifact_name!r} lacks the model files {missing[:5]}", param="artifact"
        )
    return manifest


def read_manifest(bundle: Path) -> BundleManifest:
    """The manifest of a bundle: a tar file, or the folder it was unpacked into."""
    if bundle.is_dir():
        raw = (bundle / MANIFEST).read_bytes()
    else:
        with tarfile.open(bundle, "r:") as archive:
            raw = _read_member(archive, MANIFEST, bundle.name)
    return parse_manifest(raw, bundle.name)


def read_preprocess(folder: Path) -> dict[str, Any]:
    """``preprocess.json`` of an unpacked bundle (feed it to ``Preprocessor.from_json``)."""
    data = json.loads((folder / PREPROCESS).read_bytes())
    if not isinstance(data, dict):
        raise InvalidInput(f"{PREPROCESS} is not a JSON object", param="artifact")
    return data


def parse_manifest(raw: bytes, artifact_name: str) -> BundleManifest:
    """Validate ``manifest.json`` bytes; ``InvalidInput`` naming the problem."""
    try:
        manifest = BundleManifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise InvalidInput(
            f"artifact {artifact_name!r} has an invalid {MANIFEST}: {where}: {first['msg']}",
            param="artifact",
        ) from None
    if manifest.format_version != FORMAT_VERSION:
        raise InvalidInput(
            f"artifact {artifact_name!r} is bundle format {manifest.format_version}; "
            f"this server reads format {FORMAT_VERSION}",
            param="artifact",
        )
    return manifest


def _read_member(archive: tarfile.TarFile, name: str, artifact_name: str) -> bytes:
    member = archive.getmember(name)
    if not member.isfile() or member.size > _MAX_JSON_BYTES:
        raise InvalidInput(f"artifact {artifact_name!r} has a bad {name}", param="artifact")
    handle = archive.extractfile(member)
    assert handle is not None  # a regular file always has one
    with handle:
        return handle.read()


def _check_model_files(files: list[str], artifact_name: str) -> None:
    for name in files:
        parts = Path(name).parts
        if name.startswith("/") or ".." in parts or not parts:
            raise UnsafeArtifact(
                f"artifact {artifact_name!r} names an unsafe model file {name!r}",
                param="artifact",
            )
        if Path(name).suffix.lower() not in _MODEL_SUFFIXES:
            raise UnsafeArtifact(
                f"artifact {artifact_name!r}: model file {name!r} is not one of "
                f"{sorted(_MODEL_SUFFIXES)} (bundles never carry code or pickles)",
                param="artifact",
            )
