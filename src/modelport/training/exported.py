"""Load a model written by ``Trainer.export`` as a plain ``x → y`` function, for serving.

Two formats, neither of which executes code from the files:

- ``onnx``: onnxruntime on CPU (input "x", output "y");
- ``safetensors``: the architecture JSON rebuilt by ``trainers.torch_models.build_model``
  and the weights loaded from safetensors.

The returned function gives what the trainer's ``predict`` gives on the same input:
classification probabilities float32 [N, C], regression float32 [N].
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import ModelLoadError

Predictor = Callable[[np.ndarray], np.ndarray]

_DTYPES: dict[str, type[np.generic]] = {"float32": np.float32, "int64": np.int64}


def load_predictor(
    directory: Path, exported_manifest: dict[str, Any], *, threads: int = 0
) -> Predictor:
    """The exported model in ``directory`` as a function (``threads`` 0: library default)."""
    fmt = exported_manifest.get("format")
    try:
        if fmt == "onnx":
            return _onnx(directory, exported_manifest, threads)
        if fmt == "safetensors":
            return _torch(directory, exported_manifest, threads)
    except ModelLoadError:
        raise
    except Exception as exc:  # onnxruntime / torch / safetensors errors for bad files
        raise ModelLoadError(f"cannot load the exported {fmt} model: {exc}") from exc
    raise ModelLoadError(f"unknown exported model format {fmt!r}")


def _member(directory: Path, manifest: dict[str, Any], key: str) -> Path:
    """A file the manifest names, refusing anything outside ``directory``."""
    name = manifest.get(key)
    if not isinstance(name, str) or not name or Path(name).name != name or name in {".", ".."}:
        raise ModelLoadError(f"the exported model's manifest has a bad {key!r}: {name!r}")
    path = directory / name
    if not path.is_file():
        raise ModelLoadError(f"the exported model misses its file {name!r}")
    return path


def _shaper(manifest: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    """Input conversion: dtype, and flattening for models trained on flat rows."""
    dtype = _DTYPES.get(str(manifest.get("input_dtype", "float32")))
    if dtype is None:
        raise ModelLoadError(f"unsupported input dtype {manifest.get('input_dtype')!r}")
    flatten = bool(manifest.get("flatten", False))

    def shape(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=dtype)
        return np.ascontiguousarray(x.reshape(len(x), -1) if flatten else x)

    return shape


def _output(manifest: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    regression = manifest.get("task") == "regression"

    def output(y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float32)
        return y.reshape(-1) if regression else y

    return output


def _onnx(directory: Path, manifest: dict[str, Any], threads: int) -> Predictor:
    import onnxruntime as ort

    path = _member(directory, manifest, "file")
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp, out = str(manifest.get("input", "x")), str(manifest.get("output", "y"))
    shape, output = _shaper(manifest), _output(manifest)

    def predict(x: np.ndarray) -> np.ndarray:
        return output(session.run([out], {inp: shape(x)})[0])

    return predict


def _torch(directory: Path, manifest: dict[str, Any], threads: int) -> Predictor:
    import torch
    from safetensors.torch import load_file

    from modelport.training.trainers import torch_loop
    from modelport.training.trainers.torch_models import build_model

    arch = json.loads(_member(directory, manifest, "arch").read_text())
    if not isinstance(arch, dict):
        raise ModelLoadError("the exported model's architecture is not a JSON object")
    model = build_model(arch)
    model.load_state_dict(load_file(str(_member(directory, manifest, "weights"))))
    model.eval()
    if threads > 0:
        torch.set_num_threads(threads)
    shape, output = _shaper(manifest), _output(manifest)

    def predict(x: np.ndarray) -> np.ndarray:
        return output(torch_loop.predict(model, shape(x)))

    return predict
