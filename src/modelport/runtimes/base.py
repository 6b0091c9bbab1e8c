"""Seam 1: how one model format loads and predicts.

A ``Runtime`` subclass knows one artifact format. It runs inside a worker process (never in
the API server), takes named numpy arrays and returns named numpy arrays. Runtimes import
their heavy libraries lazily inside ``load``/``inspect`` so that importing this package stays
cheap, and they never import a web framework.

Adding a format means: subclass ``Runtime``, add its dotted path to ``RUNTIMES`` below.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelport.codecs.dtypes import to_numpy_dtype
from modelport.errors import DtypeMismatch, InvalidInput, ShapeMismatch
from modelport.types.admin import Signature, TensorSpec

Tensors = dict[str, np.ndarray]

# Runtime name -> "module:Class". Modules are imported only when the runtime is used.
RUNTIMES: dict[str, str] = {
    "sklearn": "modelport.runtimes.sklearn:SklearnRuntime",
    "onnx": "modelport.runtimes.onnx:OnnxRuntime",
    "torch": "modelport.runtimes.torch:TorchRuntime",
    "gguf": "modelport.runtimes.gguf:GgufRuntime",
    "transformers": "modelport.runtimes.transformers:TransformersRuntime",
    "trained": "modelport.runtimes.trained:TrainedRuntime",
}


@dataclass(frozen=True)
class LoadSpec:
    """Everything a worker needs to load one model version."""

    runtime: str
    artifact_path: Path
    artifact_name: str
    sha256: str
    trusted: bool = False
    signature: Signature | None = None
    options: dict[str, Any] = field(default_factory=dict)


class Runtime(ABC):
    """One loaded model. Lifecycle: ``load`` once, ``predict`` many times, ``unload``."""

    name: ClassVar[str]
    # What the runtime can do (``runtimes.text``: tensors, embeddings, classification,
    # generation); the engine routes OpenAI requests by it.
    capabilities: ClassVar[frozenset[str]] = frozenset({"tensors"})

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self._signature: Signature | None = spec.signature

    @classmethod
    @abstractmethod
    def check_artifact(cls, path: Path, artifact_name: str, *, trusted: bool) -> None:
        """Refuse artifacts this runtime must not load (e.g. pickle without ``trusted``).

        Called at registration time in the API process, so it must only read bytes, never
        execute anything from the artifact.
        """

    @classmethod
    def worker_env(cls, options: Mapping[str, Any]) -> dict[str, str]:
        """Environment variables a worker needs *from its start* to run this runtime.

        For settings a library reads once, when it is loaded (OpenMP's spin count for
        llama.cpp): ``load`` would be too late in a warm spare, which imports the runtime's
        libraries before it learns what it will load. Backends put these in the worker's
        environment, and a spare only serves replicas of the same environment
        (``backends.spares``). Called in the API process with the load options.
        """
        return {}

    @abstractmethod
    def load(self) -> Signature:
        """Load the model and return its signature (the given one if the spec had it)."""

    @abstractmethod
    def predict(self, inputs: Tensors, params: Mapping[str, Any] | None = None) -> Tensors:
        """Run the model on a batch; every input and output has the batch as axis 0.

        ``params`` are the request's parameters (equal for every request in a batch), e.g.
        sampling settings for a generator; runtimes that take none ignore them.
        """

    def stream(self, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Stream one generation (see ``runtimes.text``); only generators implement it."""
        raise InvalidInput(f"runtime {self.name!r} does not stream", param="stream")

    def unload(self) -> None:  # noqa: B027 - optional hook, most runtimes need nothing
        """Release resources; the worker exits right after, so this is best effort."""

    @property
    def signature(self) -> Signature:
        if self._signature is None:
            raise RuntimeError("runtime not loaded")
        return self._signature


def validate_inputs(
    signature: Signature, inputs: Mapping[str, np.ndarray], *, cast: bool = False
) -> Tensors:
    """Check named arrays against a signature before they are batched.

    With ``cast`` (untyped JSON such as V1 ``instances``) values are converted to the
    signature's dtype when that loses nothing of their kind; without it (V2, where the
    caller names a datatype) the datatype must match exactly. Raises
    ``InvalidInput``/``ShapeMismatch``/``DtypeMismatch`` naming the tensor.
    """
    expected = {spec.name: spec for spec in signature.inputs}
    unknown = sorted(set(inputs) - set(expected))
    if unknown:
        raise InvalidInput(
            f"unexpected input(s) {unknown}; the model takes {sorted(expected)}", param=unknown[0]
        )
    missing = sorted(set(expected) - set(inputs))
    if missing:
        raise InvalidInput(f"missing input(s) {missing}", param=missing[0])
    out: Tensors = {}
    for name, spec in expected.items():
        out[name] = _check_tensor(spec, inputs[name], cast)
    return out


def _check_tensor(spec: TensorSpec, array: np.ndarray, cast: bool) -> np.ndarray:
    if len(spec.shape) != array.ndim or any(
        want != -1 and want != got for want, got in zip(spec.shape, array.shape, strict=True)
    ):
        raise ShapeMismatch(
            f"input {spec.name!r} has shape {list(array.shape)}, expected {spec.shape}",
            param=spec.name,
        )
    want = to_numpy_dtype(spec.datatype)
    if array.dtype == want:
        return array
    if want.kind == "O":
        if array.dtype.kind in ("U", "S", "O"):
            return array.astype(object)
    elif not cast:
        pass  # V2 callers declare a datatype; a different one is an error
    elif array.dtype.kind in ("U", "S", "O") or (array.dtype.kind == "f" and want.kind in "iub"):
        pass  # strings or lossy float->int: refuse below
    elif np.can_cast(array.dtype, want, casting="same_kind"):
        return array.astype(want)
    raise DtypeMismatch(
        f"input {spec.name!r} has datatype {array.dtype}, expected {spec.datatype}",
        param=spec.name,
    )


def runtime_class(name: str) -> type[Runtime]:
    """Import and return the runtime class registered under ``name``."""
    try:
        target = RUNTIMES[name]
    except KeyError:
        raise InvalidInput(
            f"unknown runtime {name!r}; available: {sorted(RUNTIMES)}", param="runtime"
        ) from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # the extra is not installed
        raise InvalidInput(
            f"runtime {name!r} is not installed ({exc.name} missing); install modelport[{name}]",
            param="runtime",
        ) from exc
    cls: type[Runtime] = getattr(module, class_name)
    return cls
