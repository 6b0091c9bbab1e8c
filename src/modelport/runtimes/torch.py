"""PyTorch models as TorchScript (``torch.jit.save``) or torch.export programs (``.pt2``).

Weights are loaded only through those two formats, never with ``torch.load`` of an
arbitrary pickle: a ``torch.save()`` checkpoint is refused even when trusted, because it
needs the model's Python class to mean anything.

A ``.pt2`` archive looks like data, but ``torch.export.load`` unpickles some of its members,
evaluates its shape expressions with sympy and its guards as Python, and resolves graph
targets by attribute path from ``torch``. So untrusted ``.pt2`` files are accepted only when
every one of those parts matches what ``torch.export.save`` writes for a plain tensor
program (``pt2_hazards``, which reads the archive and executes nothing).

Signatures: TorchScript keeps no tensor types, so it needs a declared signature; a
torch.export program records them, so its signature is read from the program, with inputs
``input__0``, ``input__1``... and outputs ``output__0``... (Triton's convention) and ``-1``
for dimensions exported as dynamic (``torch.export.Dim``).
"""

from __future__ import annotations

import io
import json
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from modelport.codecs.dtypes import to_numpy_dtype, to_v2_datatype
from modelport.errors import InvalidInput, ModelLoadError, ModelportError, UnsafeArtifact
from modelport.runtimes import reconcile_signature
from modelport.runtimes.base import LoadSpec, Runtime, Tensors
from modelport.runtimes.safety import ArtifactFormat, check_not_pickle, pickle_globals
from modelport.types.admin import Signature, TensorSpec

if TYPE_CHECKING:
    import torch as torch_types


class TorchRuntime(Runtime):
    """Serves one TorchScript module or torch.export program on CPU."""

    name: ClassVar[str] = "torch"

    def __init__(self, spec: LoadSpec) -> None:
        super().__init__(spec)
        self._module: Any = None
        self._picked: list[int] | None = None  # served outputs' positions among the program's

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
        signature = reconcile_signature(self.spec.signature, derived, self.name)
        names = [t.name for t in derived.outputs]
        self._picked = [names.index(t.name) for t in signature.outputs]
        return signature

    def predict(self, inputs: Tensors, params: Mapping[str, Any] | None = None) -> Tensors:
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
        if self._picked is not None:  # a declared signature may serve a subset of outputs
            values = [values[i] for i in self._picked]
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
    if fmt == ArtifactFormat.TORCH_EXPORT and not trusted:
        hazards = pt2_hazards(path)
        if hazards:
            raise UnsafeArtifact(
                f"torch.export archive {artifact_name!r} can run code when loaded: "
                f"{'; '.join(hazards[:5])}. Re-upload with trusted=True (CLI: --trusted) "
                "if you trust its author",
                param="trusted",
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


# --- vetting torch.export archives -----------------------------------------------------

# What torch.save() writes for tensors, tuples and dicts of tensors: nothing executable.
_TENSOR_GLOBALS = re.compile(
    r"^(torch\._utils _rebuild_(tensor_v2|tensor_v3|parameter)|collections OrderedDict"
    r"|torch \w*Storage|torch (float|bfloat|int|uint|bool|complex)\d*|torch device)$"
)


def _tensors_only(data: bytes) -> bool:
    """True if ``data`` is a torch.save() zip whose pickle only rebuilds tensors."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            pickles = [n for n in archive.namelist() if n.endswith(".pkl")]
            if len(pickles) != 1 or not pickles[0].endswith("/data.pkl"):
                return False
            found = pickle_globals(archive.read(pickles[0]))
    except (zipfile.BadZipFile, OSError):
        return False
    return found is not None and all(_TENSOR_GLOBALS.match(g) for g in found)


_PY_TARGET = re.compile(
    r"_operator\.(getitem|add|sub|mul|truediv|floordiv|mod|pow|neg|pos|abs|eq|ne|lt|le|gt|ge"
    r"|and_|or_|xor|not_|invert|lshift|rshift)|math\.(ceil|floor|trunc|sqrt)"
)
# aten operators whose names are dunders; any other dunder in a target walks out of torch.ops
_DUNDER_OPS = re.compile(r"__i?(and|or|xor|lshift|rshift)__")
# Names the sympy shape expressions of an exported program use. sympify evaluates its
# input with Python builtins in scope, so any other name makes the archive unsafe.
_SYMPY_NAMES = re.compile(
    r"Symbol|Integer|Rational|Float|Add|Mul|Pow|Max|Min|Abs|Mod|FloorDiv|CeilDiv|PythonMod"
    r"|ModularIndexing|CleanDiv|IntTrueDiv|FloatTrueDiv|TruncToInt|FloorToInt|CeilToInt"
    r"|RoundToInt|RoundDecimal|ToFloat|TruncToFloat|Identity|LShift|RShift|floor|ceiling"
    r"|Eq|Ne|Ge|Gt|Le|Lt|Equality|Unequality|StrictLessThan|StrictGreaterThan|LessThan"
    r"|GreaterThan|And|Or|Not|Where|true|false|True|False|oo|zoo|nan|int_oo|Infinity"
    r"|NegativeInfinity|IntInfinity|NegativeIntInfinity|(OpaqueUnaryFn|BitwiseFn)_[a-z_]+"
    r"|positive|negative|nonnegative|integer|real|finite"  # Symbol() assumptions
    r"|[a-z]+\d+"  # symbol names such as s0, u3
)
_GUARD_NAMES = re.compile(r"L|size|stride|storage_offset|dim|numel|and|or|not|None|True|False")
_EXPR_CHARS = re.compile(r"^[\w\s+\-*/%(),<>=!.\[\]]*$")
_QUOTED = re.compile(r"'[A-Za-z_]\w*'")


def pt2_hazards(path: Path) -> list[str]:
    """Reasons a torch.export archive could run code when loaded (empty if none).

    An allowlist of what ``torch.export.save`` writes for a plain tensor program: raw
    weights and constants, a tensors-only sample-input pickle, graph targets that are
    ``torch.ops`` operators, and shape expressions and guards over a small vocabulary.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return _archive_hazards(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:  # ValueError: bad JSON
        return [f"the archive cannot be read ({exc})"]


def _archive_hazards(archive: zipfile.ZipFile) -> list[str]:
    names = archive.namelist()
    hazards = [f"member {n!r} is not part of a plain program" for n in names if _odd(n)]
    for name in names:
        inner = name.split("/", 1)[-1]
        if inner.startswith("data/") and inner.endswith("_config.json"):
            hazards.extend(_payload_hazards(inner, json.loads(archive.read(name))))
        elif inner.startswith("data/sample_inputs/"):
            blob = archive.read(name)
            if blob and not _tensors_only(blob):
                hazards.append(f"sample inputs {inner!r} are a pickle of more than tensors")
        elif inner.startswith("models/") and inner.endswith(".json"):
            hazards.extend(_program_hazards(json.loads(archive.read(name))))
    return hazards


def _odd(name: str) -> bool:
    inner = name.split("/", 1)[-1]
    if inner in ("archive_format", "archive_version", "byteorder") or inner.startswith(
        (".data/", "extra/", "models/", "data/sample_inputs/")
    ):
        return False
    if inner.startswith(("data/weights/", "data/constants/")):
        # raw payloads and their configs; legacy "<model>.pt" files are whole pickles
        return inner.endswith(".pt")
    return True  # aotinductor/ (compiled .so), executorch/, anything unknown


def _payload_hazards(member: str, config: dict[str, Any]) -> list[str]:
    hazards = []
    for fqn, meta in (config.get("config") or {}).items():
        path_name = str(meta.get("path_name", ""))
        if meta.get("use_pickle"):
            hazards.append(f"{member}: {fqn!r} is stored as a pickle")
        elif member.startswith("data/constants/") and not path_name.startswith("tensor_"):
            hazards.append(f"{member}: constant {fqn!r} is a pickled object")
    return hazards


def _program_hazards(program: dict[str, Any]) -> list[str]:
    hazards = []
    for key, value in _strings(program):
        if key == "target" and not _is_operator(value):
            hazards.append(f"graph calls {value!r}, which is not a torch operator")
        elif key == "expr_str" and not _vocabulary_ok(value, _SYMPY_NAMES):
            hazards.append(f"shape expression {value[:80]!r} is not a plain formula")
    for guard in program.get("guards_code") or []:
        if not _vocabulary_ok(str(guard), _GUARD_NAMES):
            hazards.append(f"guard {str(guard)[:80]!r} is not a plain shape check")
    for symbol in program.get("range_constraints") or {}:
        if not re.fullmatch(r"[A-Za-z]\w*", str(symbol)) or "__" in str(symbol):
            hazards.append(f"range constraint on {str(symbol)[:80]!r}")
    return hazards


def _is_operator(target: str) -> bool:
    """True for ``torch.ops.<namespace>.<op>[.<overload>]`` and a few Python operators.

    The deserializer resolves targets with getattr from ``torch``, so a dunder or a
    longer path could reach any Python object (``torch.ops.load_library``, ``os``...).
    """
    if _PY_TARGET.fullmatch(target):
        return True
    parts = target.split(".")
    if parts[:2] != ["torch", "ops"] or len(parts) not in (4, 5):
        return False
    namespace, op, *overload = parts[2:]
    return (
        all(p.isidentifier() for p in parts)
        and not namespace.startswith("__")
        and (not op.startswith("__") or bool(_DUNDER_OPS.fullmatch(op)))
        and not any(o.startswith("__") for o in overload)
    )


def _vocabulary_ok(text: str, allowed: re.Pattern[str]) -> bool:
    """True if ``text`` only uses ``allowed`` names (plus quoted symbol names and numbers)."""
    bare = _QUOTED.sub("0", text)  # quoted names are inert literals; no other quote may stay
    if not _EXPR_CHARS.match(bare):
        return False
    words = re.findall(r"[A-Za-z_]\w*", bare)
    return all(allowed.fullmatch(w) for w in words)


def _strings(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, key)
    elif isinstance(node, str):
        yield key, node
