"""Model runtimes: how each artifact format loads and predicts (see ``base``).

Importing this package is cheap: the runtime modules, and the ML libraries they use, are
imported only when a runtime is asked for by name (``runtime_class``).
"""

from __future__ import annotations

from modelport.errors import ModelLoadError
from modelport.runtimes.base import (
    RUNTIMES,
    LoadSpec,
    Runtime,
    Tensors,
    runtime_class,
    validate_inputs,
)
from modelport.types.admin import Signature, TensorSpec

__all__ = [
    "RUNTIMES",
    "LoadSpec",
    "Runtime",
    "Tensors",
    "inspect",
    "reconcile_signature",
    "runtime_class",
    "validate_inputs",
]


def inspect(spec: LoadSpec) -> Signature:
    """Load the model described by ``spec`` and return its signature.

    The worker runs this in a throwaway subprocess when a version is registered, so that a
    model that fails to load (or crashes the interpreter) fails the registration, not the
    server.
    """
    runtime = runtime_class(spec.runtime)(spec)
    try:
        return runtime.load()
    finally:
        runtime.unload()


def reconcile_signature(declared: Signature | None, derived: Signature, runtime: str) -> Signature:
    """The signature to serve when the model itself also describes its tensors.

    Without a declared signature the derived one is used. A declared one may narrow the
    derived one (fix a ``-1`` dimension, keep only some outputs) but must name the same
    inputs with the same datatypes and ranks; anything else would fail at predict time,
    so it fails at load with ``ModelLoadError`` naming the tensor.
    """
    if declared is None:
        return derived
    _check_tensors("input", declared.inputs, derived.inputs, runtime, subset=False)
    _check_tensors("output", declared.outputs, derived.outputs, runtime, subset=True)
    return declared


def _check_tensors(
    kind: str, declared: list[TensorSpec], derived: list[TensorSpec], runtime: str, subset: bool
) -> None:
    have = {t.name: t for t in derived}
    names = [t.name for t in declared]
    unknown = sorted(set(names) - set(have))
    if unknown or (not subset and sorted(names) != sorted(have)):
        raise ModelLoadError(
            f"the declared signature's {kind}s {sorted(names)} do not match the model's "
            f"{sorted(have)} ({runtime} runtime)"
        )
    for spec in declared:
        real = have[spec.name]
        narrows = len(spec.shape) == len(real.shape) and all(
            r in (-1, d) for d, r in zip(spec.shape, real.shape, strict=True)
        )
        if spec.datatype != real.datatype or not narrows:
            raise ModelLoadError(
                f"declared {kind} {spec.name!r} {spec.datatype}{spec.shape} does not fit the "
                f"model's {real.datatype}{real.shape} ({runtime} runtime)"
            )
