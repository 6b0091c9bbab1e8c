"""Models trained by modelport: a bundle of preprocessing + exported model.

The artifact is the tar ``training.bundle`` writes. Serving runs the *same* ``Preprocessor``
code training used (restored from ``preprocess.json``, never a pickle), then the exported
model (``training.exported.load_predictor``: onnxruntime for ONNX, torch for safetensors),
so a request's raw columns get exactly the steps the training split got.

Signature: the preprocessor's raw inputs (``input`` FP32 ``[-1, n_features]`` for numeric
tables, one tensor per column when there are categoricals, ``text`` BYTES ``[-1]``,
``image`` FP32 ``[-1, H, W(, C)]``); outputs ``label`` BYTES ``[-1]`` and ``probabilities``
FP32 ``[-1, C]`` for classifiers, ``prediction`` FP32 ``[-1]`` for regressors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from modelport.errors import ModelLoadError
from modelport.runtimes import reconcile_signature
from modelport.runtimes.base import LoadSpec, Runtime, Tensors
from modelport.runtimes.unpack import unpacked_dir
from modelport.training.bundle import (
    MODEL_DIR,
    BundleManifest,
    check_bundle,
    output_specs,
    read_manifest,
    read_preprocess,
)
from modelport.types.admin import Signature

if TYPE_CHECKING:
    from modelport.training.preprocess import Preprocessor


class TrainedRuntime(Runtime):
    """Serves one trained-model bundle: preprocess the raw inputs, run the model."""

    name: ClassVar[str] = "trained"

    def __init__(self, spec: LoadSpec) -> None:
        super().__init__(spec)
        self._preprocessor: Preprocessor | None = None
        self._predictor: Callable[[np.ndarray], np.ndarray] | None = None
        self._manifest: BundleManifest | None = None
        self._outputs: set[str] = set()

    @classmethod
    def check_artifact(cls, path: Path, artifact_name: str, *, trusted: bool) -> None:
        check_bundle(path, artifact_name)

    def load(self) -> Signature:
        from modelport.training.exported import load_predictor
        from modelport.training.preprocess import Preprocessor

        spec = self.spec
        check_bundle(spec.artifact_path, spec.artifact_name)
        root = unpacked_dir(spec)
        manifest = read_manifest(root)
        try:
            preprocessor = Preprocessor.from_json(read_preprocess(root))
            threads = int(spec.options.get("threads", 1))  # replicas, not threads, scale
            predictor = load_predictor(
                root / MODEL_DIR, manifest.exported.manifest, threads=threads
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(
                f"cannot load bundle {spec.artifact_name!r}: {type(exc).__name__}: {exc}"
            ) from exc
        derived = Signature(
            inputs=preprocessor.input_specs(),
            outputs=output_specs(preprocessor.task, len(preprocessor.classes or ())),
        )
        signature = reconcile_signature(spec.signature, derived, self.name)
        self._preprocessor, self._predictor, self._manifest = preprocessor, predictor, manifest
        self._outputs = {t.name for t in signature.outputs}
        self._signature = signature
        return signature

    def predict(self, inputs: Tensors, params: Mapping[str, Any] | None = None) -> Tensors:
        if self._preprocessor is None or self._predictor is None:
            raise RuntimeError("runtime not loaded")
        preprocessor = self._preprocessor
        x = preprocessor.transform(preprocessor.columns_from_inputs(inputs))
        y = np.asarray(self._predictor(x))
        out: Tensors = {}
        if preprocessor.task == "regression":
            out["prediction"] = y.astype(np.float32).reshape(-1)
            return {k: v for k, v in out.items() if k in self._outputs}
        proba = y.astype(np.float32).reshape(len(x), -1)
        if "probabilities" in self._outputs:
            out["probabilities"] = proba
        if "label" in self._outputs:
            labels = preprocessor.decode_labels(np.argmax(proba, axis=1))
            out["label"] = np.asarray(labels, dtype=object)
        return out

    def unload(self) -> None:
        self._preprocessor = None
        self._predictor = None
