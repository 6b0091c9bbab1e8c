"""scikit-learn estimators saved with skops (safe) or pickle/joblib (only when trusted).

The signature is read from the fitted estimator:

- input ``input``: FP32 ``[-1, n_features_in_]``, or BYTES ``[-1]`` for pipelines that
  start with a text vectorizer;
- classifiers: ``label`` ``[-1]`` with the dtype of ``classes_`` (INT64 for integer
  classes, BYTES for strings) and, when ``predict_proba`` exists, ``probabilities`` FP32
  ``[-1, n_classes]``;
- everything else: ``prediction`` ``[-1]`` (or ``[-1, k]`` for k outputs), FP32 for
  regressors.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelport.codecs.dtypes import to_numpy_dtype, to_v2_datatype
from modelport.errors import InvalidInput, ModelLoadError, UnsafeArtifact
from modelport.runtimes import reconcile_signature
from modelport.runtimes.base import LoadSpec, Runtime, Tensors
from modelport.runtimes.safety import ArtifactFormat, check_not_pickle
from modelport.types.admin import Signature, TensorSpec

_FORMATS = (ArtifactFormat.SKOPS, ArtifactFormat.PICKLE)


class SklearnRuntime(Runtime):
    """Serves one fitted scikit-learn estimator (or pipeline)."""

    name: ClassVar[str] = "sklearn"

    def __init__(self, spec: LoadSpec) -> None:
        super().__init__(spec)
        self._model: Any = None
        self._input = "input"
        self._outputs: list[TensorSpec] = []

    @classmethod
    def check_artifact(cls, path: Path, artifact_name: str, *, trusted: bool) -> None:
        _check(path, artifact_name, trusted)

    def load(self) -> Signature:
        spec = self.spec
        fmt = _check(spec.artifact_path, spec.artifact_name, spec.trusted)
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

        # BLAS would start one thread per core in every replica; replicas scale instead
        threadpool_limits(limits=int(spec.options.get("threads", 1)))
        self._model = _load_skops(spec) if fmt == ArtifactFormat.SKOPS else _load_pickle(spec)
        if not callable(getattr(self._model, "predict", None)):
            raise ModelLoadError(
                f"{spec.artifact_name!r} holds a {type(self._model).__name__}, which has no "
                "predict(); the sklearn runtime serves fitted estimators"
            )
        derived = _signature(self._model, spec.signature)
        signature = reconcile_signature(spec.signature, derived, self.name)
        self._input = signature.inputs[0].name
        self._outputs = signature.outputs
        self._signature = signature
        return signature

    def predict(self, inputs: Tensors, params: Mapping[str, Any] | None = None) -> Tensors:
        x = inputs[self._input]
        if x.dtype == object:  # text pipelines want str, V2 BYTES may arrive as bytes
            x = np.array([v.decode() if isinstance(v, bytes) else v for v in x], dtype=object)
        wanted = {t.name for t in self._outputs}
        out: Tensors = {}
        if "label" in wanted or "prediction" in wanted:
            name = "label" if "label" in wanted else "prediction"
            out[name] = _as_output(self._model.predict(x), self._spec_of(name))
        if "probabilities" in wanted:
            proba = self._model.predict_proba(x)
            out["probabilities"] = _as_output(proba, self._spec_of("probabilities"))
        return out

    def _spec_of(self, name: str) -> TensorSpec:
        return next(t for t in self._outputs if t.name == name)


def _check(path: Path, artifact_name: str, trusted: bool) -> ArtifactFormat:
    fmt = check_not_pickle(path, artifact_name, trusted)
    if fmt not in _FORMATS:
        raise InvalidInput(
            f"the sklearn runtime loads .skops files (or trusted pickle/joblib files); "
            f"{artifact_name!r} looks like {fmt.value!r}",
            param="runtime",
        )
    return fmt


def _load_pickle(spec: LoadSpec) -> Any:
    """Unpickle a trusted pickle/joblib file (``_check`` refused it unless trusted)."""
    import joblib

    try:
        # joblib reads plain pickles as well as its own (compressed) files
        return joblib.load(spec.artifact_path)
    except Exception as exc:  # unpickling raises whatever the pickled code raises
        raise ModelLoadError(f"cannot unpickle {spec.artifact_name!r}: {exc!r}") from exc


def _load_skops(spec: LoadSpec) -> Any:
    import skops.io as sio

    path = spec.artifact_path
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # skops raises many types for a damaged or foreign file
        raise ModelLoadError(f"cannot read {spec.artifact_name!r} with skops: {exc}") from exc
    if untrusted and not spec.trusted:
        raise UnsafeArtifact(
            f"{spec.artifact_name!r} contains types skops does not trust by default: "
            f"{', '.join(untrusted)}. A crafted file can use them to run code or, for tree "
            "models, to crash the worker (skops does not bounds-check tree nodes). Re-upload "
            "with trusted=True (CLI: --trusted) if you trust the artifact's author",
            param="trusted",
        )
    try:
        return sio.load(path, trusted=untrusted)
    except Exception as exc:  # skops raises many types for a damaged or foreign file
        raise ModelLoadError(f"cannot load {spec.artifact_name!r} with skops: {exc}") from exc


def _signature(model: Any, declared: Signature | None) -> Signature:
    from sklearn.base import is_classifier, is_regressor

    input_spec = _input_spec(model, declared)
    outputs: list[TensorSpec] = []
    if is_classifier(model) and hasattr(model, "classes_"):
        classes = np.asarray(model.classes_)
        outputs.append(TensorSpec(name="label", datatype=_datatype(classes.dtype), shape=[-1]))
        if hasattr(model, "predict_proba"):  # False when unavailable (e.g. SVC without it)
            shape = [-1, len(classes)]
            outputs.append(TensorSpec(name="probabilities", datatype="FP32", shape=shape))
    else:
        given = [t for t in declared.outputs if t.name == "prediction"] if declared else []
        outputs.append(
            given[0] if given else _prediction_spec(model, input_spec, is_regressor(model))
        )
    return Signature(inputs=[input_spec], outputs=outputs)


def _input_spec(model: Any, declared: Signature | None) -> TensorSpec:
    n_features = getattr(model, "n_features_in_", None)
    if isinstance(n_features, int | np.integer):
        return TensorSpec(name="input", datatype="FP32", shape=[-1, int(n_features)])
    steps = getattr(model, "steps", None)
    first = steps[0][1] if steps else model
    if callable(getattr(first, "build_analyzer", None)):  # text vectorizers
        return TensorSpec(name="input", datatype="BYTES", shape=[-1])
    if declared is not None and len(declared.inputs) == 1:
        return declared.inputs[0]
    raise ModelLoadError(
        f"cannot tell the input of a {type(model).__name__} (no n_features_in_); "
        "pass a signature with one input (CLI: --signature)"
    )


def _prediction_spec(model: Any, input_spec: TensorSpec, regressor: bool) -> TensorSpec:
    """``prediction``'s spec, from one probe row: models do not declare their output width."""
    if input_spec.datatype == "BYTES":
        row = np.array([""], dtype=object)
    else:
        row = np.zeros((1, *input_spec.shape[1:]), dtype=np.float32)
    try:
        probe = np.asarray(model.predict(row))
    except Exception as exc:  # the estimator's own error, whatever its type
        raise ModelLoadError(
            f"a {type(model).__name__} could not predict one probe row of {input_spec.datatype}"
            f"{input_spec.shape}: {exc!r}; pass a signature (CLI: --signature)"
        ) from exc
    datatype = "FP32" if regressor or probe.dtype.kind == "f" else _datatype(probe.dtype)
    return TensorSpec(name="prediction", datatype=datatype, shape=[-1, *probe.shape[1:]])


def _datatype(dtype: np.dtype[Any]) -> str:
    if dtype.kind in "iu":
        return "INT64"  # class ids of any width travel as INT64
    return to_v2_datatype(dtype)


def _as_output(values: Any, spec: TensorSpec) -> np.ndarray:
    array = np.asarray(values)
    if spec.datatype == "BYTES":
        return np.array([str(v) for v in array.ravel()], dtype=object).reshape(array.shape)
    return array.astype(to_numpy_dtype(spec.datatype), copy=False)
