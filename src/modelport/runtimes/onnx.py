"""ONNX models on onnxruntime's CPU provider.

The signature comes from the graph: symbolic or unknown dimensions become ``-1`` and ONNX
element types map to V2 datatypes. Outputs that are not tensors (skl2onnx's ZipMap
sequence of maps, for one) have no V2 form, so such graphs are refused at load.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelport.codecs.dtypes import to_numpy_dtype
from modelport.errors import InvalidInput, ModelLoadError
from modelport.runtimes import reconcile_signature
from modelport.runtimes.base import LoadSpec, Runtime, Tensors
from modelport.runtimes.safety import ArtifactFormat, check_not_pickle
from modelport.types.admin import Signature, TensorSpec

# onnxruntime's NodeArg.type strings for tensors -> V2 datatypes
_ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


class OnnxRuntime(Runtime):
    """Serves one ONNX graph with an onnxruntime ``InferenceSession``."""

    name: ClassVar[str] = "onnx"

    def __init__(self, spec: LoadSpec) -> None:
        super().__init__(spec)
        self._session: Any = None
        self._outputs: list[str] = []

    @classmethod
    def check_artifact(cls, path: Path, artifact_name: str, *, trusted: bool) -> None:
        fmt = check_not_pickle(path, artifact_name, trusted)
        if fmt != ArtifactFormat.ONNX:
            raise InvalidInput(
                f"the onnx runtime loads ONNX models; {artifact_name!r} looks like {fmt.value!r}",
                param="runtime",
            )

    def load(self) -> Signature:
        import onnxruntime as ort

        spec = self.spec
        self.check_artifact(spec.artifact_path, spec.artifact_name, trusted=spec.trusted)
        options = ort.SessionOptions()
        # one thread per replica by default: replicas, not threads, are the unit of scale
        options.intra_op_num_threads = int(spec.options.get("threads", 1))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only; warnings go to stderr otherwise
        try:
            self._session = ort.InferenceSession(
                str(spec.artifact_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
            raise ModelLoadError(f"onnxruntime cannot load {spec.artifact_name!r}: {exc}") from exc
        derived = Signature(
            inputs=[_tensor_spec(arg, "input") for arg in self._session.get_inputs()],
            outputs=[_tensor_spec(arg, "output") for arg in self._session.get_outputs()],
        )
        signature = reconcile_signature(spec.signature, derived, self.name)
        self._outputs = [t.name for t in signature.outputs]
        self._signature = signature
        return signature

    def predict(self, inputs: Tensors, params: Mapping[str, Any] | None = None) -> Tensors:
        feed = {name: _feedable(array) for name, array in inputs.items()}
        results = self._session.run(self._outputs, feed)
        return {name: np.asarray(value) for name, value in zip(self._outputs, results, strict=True)}

    def unload(self) -> None:
        self._session = None


def _tensor_spec(arg: Any, kind: str) -> TensorSpec:
    datatype = _ORT_TYPES.get(arg.type)
    if datatype is None:
        hint = ""
        if arg.type.startswith(("seq(", "map(")):
            hint = (
                "; classifiers converted with skl2onnx need options={id(model): "
                "{'zipmap': False}} (export with zipmap=False)"
            )
        raise ModelLoadError(
            f"{kind} {arg.name!r} has type {arg.type}, which has no V2 datatype{hint}"
        )
    dims = arg.shape if arg.shape is not None else [None]  # unknown rank: serve as 1-D
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in dims]
    return TensorSpec(name=arg.name, datatype=datatype, shape=shape)


def _feedable(array: np.ndarray) -> np.ndarray:
    # onnxruntime takes strings as a numpy object/str array of str, not bytes
    if array.dtype == to_numpy_dtype("BYTES"):
        return np.array(
            [v.decode() if isinstance(v, bytes) else v for v in array.ravel()], dtype=object
        ).reshape(array.shape)
    return array
