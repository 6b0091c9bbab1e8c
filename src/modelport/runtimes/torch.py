"""PyTorch models as TorchScript (``torch.jit.save``) or torch.export programs (``.pt2``).

Weights are loaded only through those two formats, never with ``torch.load`` of an
arbitrary pickle: a ``torch.save()`` checkpoint is refused even when trusted, because it
needs the model's Python class to mean anything. A ``.pt2`` archive is accepted untrusted
only after ``safety.pt2_hazards`` found nothing in it that would run code on load.

Signatures: TorchScript keeps no tensor types, so it needs a declared signature; a
torch.export program records them, so its signature is read from the program, with inputs
``input__0``, ``input__1``... and outputs ``output__0``... (Triton's convention) and ``-1``
for dimensions exported as dynamic (``torch.export.Dim``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from modelport.codecs.dtypes import to_numpy_dtype, to_v2_datatype
from modelport.errors import InvalidInput, ModelLoadError, ModelportError
from modelport.runtimes import reconcile_signature
from modelport.runtimes.base import LoadSpec, Runtime, Tensors
from modelport.runtimes.safety import ArtifactFormat, check_not_pickle
from modelport.types.admin import Signature, TensorSpec

if TYPE_CHECKING:
    import torch as torch_types


class TorchRuntime(Runtime):
    """Serves one TorchScript module or torch.export program on CPU."""

    name: ClassVar[str] = "torch"

    def __init__(self, spec: LoadSpec) -> None:
        super().__init__(spec)
        self._module: Any = None

    @classmethod
    def check_artifact(cls, path: Path, artifact_name: str, *, trusted: bool) -> None:
        _check(path, artifact_name, trusted)

    def load(self) -> Signature:
        import torch

        spec = self.spec
        fmt = _check(spec.artifact_path, spec.artifact_name, spec.trusted)
        torch.set_num_threads(int(spec.options.get("threads", 1)))
        try:
            if fmt == ArtifactFormat.TORCHSCRIPT:
                signature = self._load_torchscript()
            else:
                signature = self._load_export()
        except ModelportError:
            raise
        except Exception as exc:  # torch raises RuntimeError and friends for bad archives
            raise ModelLoadError(f"torch cannot load {spec.artifact_name!r}: {exc}") from exc
        self._signature = signature
        return signature

    def _load_torchscript(self) -> Signature:
        import torch

        spec = self.spec
        if spec.signature is None:
            raise ModelLoadError(
                "TorchScript artifacts need a signature: pass --signature "
                "(TorchScript does not record its tensors' dtypes and shapes)"
            )
        for tensor in [*spec.signature.inputs, *spec.signature.outputs]:
            _torch_dtype(tensor.datatype, tensor.name)
        with warnings.catch_warnings():
            # torch 2.10+ deprecates TorchScript, but it is still a format users upload
            warnings.simplefilter("ignore", DeprecationWarning)
            self._module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(spec.artifact_path), map_location="cpu"
            )
        self._module.eval()
        return spec.signature

    def _load_export(self) -> Signature:
        import torch

        program = torch.export.load(str(self.spec.artifact_path))
        derived = _export_signature(program)
        self._module = program.module()
        return reconcile_signature(self.spec.signature, derived, self.name)

    def predict(self, inputs: Tensors) -> Tensors:
        import torch

        signature = self.signature
        args = [_to_torch(inputs[t.name]) for t in signature.inputs]
        try:
            with torch.inference_mode():
                result = self._module(*args)
        except AssertionError as exc:
            if "Guard failed" not in str(exc):
                raise
            # torch.export checks relations between inputs (e.g. equal batch sizes) this way
            raise InvalidInput(f"the inputs do not fit the exported program: {exc}") from None
        values = _leaves(result, [t.name for t in signature.outputs])
        if len(values) != len(signature.outputs):
            raise ModelportError(
                f"the model returned {len(values)} tensors; its signature names "
                f"{len(signature.outputs)}"
            )
        return {
            spec.name: _to_numpy(value, spec)
            for spec, value in zip(signature.outputs, values, strict=True)
        }

    def unload(self) -> None:
        self._module = None


def _check(path: Path, artifact_name: str, trusted: bool) -> ArtifactFormat:
    fmt = check_not_pickle(path, artifact_name, trusted)
    if fmt == ArtifactFormat.TORCH_PICKLE:
        raise InvalidInput(
            f"{artifact_name!r} is a torch.save() checkpoint; the torch runtime never "
            "unpickles those, even when trusted. Export the model with torch.export.save() "
            "(.pt2) or torch.jit.save() (TorchScript)",
            param="runtime",
        )
    if fmt not in (ArtifactFormat.TORCHSCRIPT, ArtifactFormat.TORCH_EXPORT):
        raise InvalidInput(
            f"the torch runtime loads TorchScript and torch.export (.pt2) files; "
            f"{artifact_name!r} looks like {fmt.value!r}",
            param="runtime",
        )
    return fmt


def _export_signature(program: torch_types.export.ExportedProgram) -> Signature:
    """Tensor specs of a program's user inputs and outputs, named Triton-style."""
    args_spec, kwargs_spec = program.call_spec.in_spec.children()
    if kwargs_spec.num_leaves or not all(c.is_leaf() for c in args_spec.children()):
        raise ModelLoadError(
            "the torch.export program takes keyword or nested arguments; export a "
            "forward(*tensors) that takes tensors positionally"
        )
    nodes = {node.name: node for node in program.graph.nodes}
    user_inputs = program.graph_signature.user_inputs
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    user_outputs = [
        arg
        for arg, out in zip(output_node.args[0], program.graph_signature.output_specs, strict=True)
        if out.kind.name == "USER_OUTPUT"
    ]
    return Signature(
        inputs=[_spec(f"input__{i}", nodes[str(n)]) for i, n in enumerate(user_inputs)],
        outputs=[_spec(f"output__{i}", node) for i, node in enumerate(user_outputs)],
    )


def _spec(name: str, node: Any) -> TensorSpec:
    import torch

    value = getattr(node, "meta", {}).get("val")
    if not isinstance(value, torch.Tensor):
        raise ModelLoadError(
            f"{name} of the torch.export program is a {type(value).__name__}, not a tensor"
        )
    shape = [d if isinstance(d, int) else -1 for d in value.shape]  # SymInt: dynamic
    return TensorSpec(name=name, datatype=_v2_datatype(value.dtype, name), shape=shape)


def _v2_datatype(dtype: torch_types.dtype, name: str) -> str:
    import torch

    try:
        return to_v2_datatype(torch.empty(0, dtype=dtype).numpy().dtype)
    except TypeError:  # bfloat16, complex, quantized: numpy has no such dtype
        raise ModelLoadError(f"{name} has dtype {dtype}, which has no V2 datatype") from None


def _torch_dtype(datatype: str, name: str) -> torch_types.dtype:
    import torch

    if datatype == "BYTES":
        raise ModelLoadError(f"tensor {name!r} is declared BYTES; torch tensors hold numbers")
    return torch.from_numpy(np.empty(0, dtype=to_numpy_dtype(datatype))).dtype


def _to_torch(array: np.ndarray) -> torch_types.Tensor:
    import torch

    # torch.from_numpy shares memory and warns on read-only buffers (e.g. np.frombuffer)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


def _leaves(result: Any, names: list[str]) -> list[Any]:
    """The output tensors in signature order: dicts by name, sequences flattened."""
    if isinstance(result, Mapping):
        if set(result) == set(names):
            return [result[name] for name in names]
        return [leaf for value in result.values() for leaf in _leaves(value, [])]
    if isinstance(result, Sequence) and not isinstance(result, str):
        return [leaf for value in result for leaf in _leaves(value, [])]
    return [result]


def _to_numpy(value: Any, spec: TensorSpec) -> np.ndarray:
    array: np.ndarray = value.detach().cpu().numpy()
    want = to_numpy_dtype(spec.datatype)
    if array.dtype != want and array.dtype.kind != want.kind:
        raise ModelportError(
            f"the model returned {array.dtype} for output {spec.name!r}, declared {spec.datatype}"
        )
    return array.astype(want, copy=False)
