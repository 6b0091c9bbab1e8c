"""Pipelines as graphs: validation at creation, and the pure parts of running them.

Pure functions over signatures and numpy arrays (no I/O, no services), so the rules are
unit-tested directly:

- ``check`` validates a ``PipelineSpec`` against its steps' signatures (unknown step, cycle,
  an input no earlier step produces, ensembles whose steps disagree, bad switch conditions:
  ``InvalidInput`` naming the step as ``steps[i]``) and returns the pipeline's signature.
- ``average``/``vote`` combine the answers of an ensemble's steps; ``switch_rows`` decides
  which step takes each row of a switch; ``merge_rows`` puts the branches' rows back in order.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from modelport.errors import InvalidInput
from modelport.runtimes.base import Tensors
from modelport.types.admin import Signature, TensorSpec
from modelport.types.traffic import Condition, PipelineKind, PipelineSpec

FLOATS = frozenset({"FP16", "FP32", "FP64", "BF16"})
_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt,
    "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}  # fmt: skip

StepSignature = Callable[[str], Signature | None]
"""A step name → its signature (``None``: no such deployment or pipeline)."""
StepChildren = Callable[[str], Sequence[str]]
"""A step name → the steps it runs itself (a pipeline's; empty for a deployment)."""


def _bad(index: int, step: str, message: str) -> InvalidInput:
    return InvalidInput(f"step {index} ({step}): {message}", param=f"steps[{index}]")


def check(spec: PipelineSpec, signature_of: StepSignature, children: StepChildren) -> Signature:
    """Validate ``spec`` and return the signature it is served with (see the module doc)."""
    sigs: list[Signature] = []
    for i, step in enumerate(spec.steps):
        if step.deployment == spec.name or spec.name in _reachable(step.deployment, children):
            raise _bad(i, step.deployment, f"running it would run pipeline {spec.name!r} again")
        sig = signature_of(step.deployment)
        if sig is None:
            raise _bad(i, step.deployment, f"{step.deployment!r} is not deployed")
        if step.inputs and spec.kind != PipelineKind.SEQUENCE:
            raise _bad(i, step.deployment, "input mappings apply to sequence pipelines only")
        if step.when is not None and spec.kind != PipelineKind.SWITCH:
            raise _bad(i, step.deployment, "conditions ('when') apply to switch pipelines only")
        sigs.append(sig)
    if spec.kind == PipelineKind.SEQUENCE:
        return _check_sequence(spec, sigs)
    _same_inputs(spec, sigs)
    if spec.kind == PipelineKind.SWITCH:
        return _check_switch(spec, sigs)
    return _check_ensemble(spec, sigs)


def _reachable(start: str, children: StepChildren) -> set[str]:
    seen: set[str] = set()
    todo = list(children(start))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(children(name))
    return seen


def _check_sequence(spec: PipelineSpec, sigs: list[Signature]) -> Signature:
    """A step's input comes from the previous step's output of the same name, or from what
    its mapping names: any earlier step's output or a pipeline input.

    Like a shell pipe, a step with one input after a step with one output needs no mapping
    even when the names differ (``minilm``'s ``embedding`` → a head's ``input``): the link
    is written into ``spec`` as a mapping, so it is stored and shown like a declared one.
    Anything less clear-cut (several outputs or inputs) must match by name or be mapped.
    """
    available = {t.name: t for t in sigs[0].inputs}
    previous = available
    for i, (step, sig) in enumerate(zip(spec.steps, sigs, strict=True)):
        names = {t.name for t in sig.inputs}
        for target in step.inputs:
            if target not in names:
                raise _bad(i, step.deployment, f"has no input {target!r} (inputs: {sorted(names)})")
        if i > 0 and not step.inputs and len(sig.inputs) == 1 and len(previous) == 1:
            only_in, only_out = sig.inputs[0].name, next(iter(previous))
            if only_in != only_out:
                step.inputs[only_in] = only_out
        for wanted in sig.inputs:
            mapped = step.inputs.get(wanted.name)
            pool = available if mapped is not None else previous
            source = mapped or wanted.name
            found = pool.get(source)
            if found is None:
                where = "no earlier step produces" if mapped else "the previous step lacks"
                raise _bad(
                    i, step.deployment,
                    f"input {wanted.name!r} needs {source!r}, which {where} "
                    f"(available: {sorted(pool)}); map it with inputs",
                )  # fmt: skip
            if (found.datatype == "BYTES") != (wanted.datatype == "BYTES"):
                raise _bad(
                    i, step.deployment,
                    f"input {wanted.name!r} is {wanted.datatype} but {source!r} is "
                    f"{found.datatype}",
                )  # fmt: skip
        previous = {t.name: t for t in sig.outputs}
        available.update(previous)
    return Signature(inputs=list(sigs[0].inputs), outputs=list(sigs[-1].outputs))


def _same_inputs(spec: PipelineSpec, sigs: list[Signature]) -> None:
    first = {t.name: t.datatype for t in sigs[0].inputs}
    for i, (step, sig) in enumerate(zip(spec.steps, sigs, strict=True)):
        mine = {t.name: t.datatype for t in sig.inputs}
        if mine != first:
            raise _bad(
                i, step.deployment,
                f"inputs {mine} differ from step 0's {first}: every step of a {spec.kind.value} "
                "pipeline takes the same inputs",
            )  # fmt: skip


def _shared_outputs(sigs: list[Signature]) -> list[TensorSpec]:
    common = set.intersection(*({t.name for t in sig.outputs} for sig in sigs))
    return [t for t in sigs[0].outputs if t.name in common]


def _check_ensemble(spec: PipelineSpec, sigs: list[Signature]) -> Signature:
    shared = {t.name: t for t in _shared_outputs(sigs)}
    averaging = spec.kind == PipelineKind.ENSEMBLE_AVERAGE
    if spec.outputs:
        for i, (step, sig) in enumerate(zip(spec.steps, sigs, strict=True)):
            missing = set(spec.outputs) - {t.name for t in sig.outputs}
            if missing:
                raise _bad(i, step.deployment, f"has no output {sorted(missing)}")
        chosen = [shared[name] for name in spec.outputs]
    else:
        chosen = [t for t in shared.values() if (t.datatype in FLOATS) == averaging]
    if not chosen:
        what = "float outputs to average" if averaging else "label outputs to vote on"
        raise InvalidInput(f"the steps share no {what}; name them in outputs", param="outputs")
    for t in chosen:
        if averaging and t.datatype not in FLOATS:
            raise InvalidInput(f"output {t.name!r} is {t.datatype}: only floats average",
                               param="outputs")  # fmt: skip
    return Signature(inputs=list(sigs[0].inputs), outputs=chosen)


def _check_switch(spec: PipelineSpec, sigs: list[Signature]) -> Signature:
    inputs = {t.name: t for t in sigs[0].inputs}
    outputs = {t.name for t in sigs[0].outputs}
    last = len(spec.steps) - 1
    for i, (step, sig) in enumerate(zip(spec.steps, sigs, strict=True)):
        if {t.name for t in sig.outputs} != outputs:
            raise _bad(i, step.deployment, f"outputs differ from step 0's {sorted(outputs)}")
        cond = step.when
        if i == last:
            if cond is not None:
                raise _bad(i, step.deployment, "the last step is the default: no 'when'")
            continue
        if cond is None:
            raise _bad(i, step.deployment, "needs a condition ('when'); only the last is default")
        if (cond.parameter is None) == (cond.input is None):
            raise _bad(i, step.deployment, "a condition tests either a parameter or an input")
        if cond.input is not None:
            spec_in = inputs.get(cond.input)
            if spec_in is None:
                raise _bad(i, step.deployment, f"condition names no input {cond.input!r}")
            text = spec_in.datatype == "BYTES"
            if text != isinstance(cond.value, str) or (text and cond.op not in ("==", "!=")):
                raise _bad(i, step.deployment,
                           f"condition on {cond.input!r} ({spec_in.datatype}) cannot use "
                           f"{cond.op} {cond.value!r}")  # fmt: skip
    return Signature(inputs=list(sigs[0].inputs), outputs=list(sigs[0].outputs))


# --- running ------------------------------------------------------------------------------


def average(answers: Sequence[Tensors], names: Sequence[str]) -> Tensors:
    """The mean of each named output over the steps (dtype of the first step's)."""
    out: Tensors = {}
    for name in names:
        arrays = [a[name] for a in answers]
        _same_shapes(name, arrays)
        out[name] = np.mean(np.stack(arrays), axis=0).astype(arrays[0].dtype, copy=False)
    return out


def vote(answers: Sequence[Tensors], names: Sequence[str]) -> Tensors:
    """The most common value of each named output element-wise; ties go to the earliest step."""
    out: Tensors = {}
    for name in names:
        arrays = [a[name] for a in answers]
        _same_shapes(name, arrays)
        stacked = np.stack(arrays)  # (steps, rows, ...)
        # agree[i] counts the steps that answered like step i: k*k comparisons, k is small.
        agree = np.stack([(stacked == stacked[i]).sum(axis=0) for i in range(len(arrays))])
        winner = np.argmax(agree, axis=0)  # the first maximum: the earliest step wins ties
        out[name] = np.take_along_axis(stacked, winner[np.newaxis], axis=0)[0]
    return out


def _same_shapes(name: str, arrays: Sequence[np.ndarray]) -> None:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InvalidInput(f"the steps' {name!r} outputs differ in shape: {sorted(shapes)}",
                           param=name)  # fmt: skip


def switch_rows(
    conditions: Sequence[Condition], inputs: Mapping[str, np.ndarray],
    params: Mapping[str, Any], rows: int,
) -> np.ndarray:  # fmt: skip
    """For each row, the index of the first step whose condition holds (else the last)."""
    choice = np.full(rows, len(conditions), dtype=np.int64)
    open_rows = np.ones(rows, dtype=bool)
    for i, cond in enumerate(conditions):
        hit = _holds(cond, inputs, params, rows) & open_rows
        choice[hit] = i
        open_rows &= ~hit
    return choice


def _holds(
    cond: Condition, inputs: Mapping[str, np.ndarray], params: Mapping[str, Any], rows: int
) -> np.ndarray:
    compare = _OPS[cond.op]
    if cond.parameter is not None:
        value = params.get(cond.parameter)
        result = False
        if value is not None:
            try:
                result = bool(
                    compare(str(value), cond.value) if isinstance(cond.value, str)
                    else compare(float(value), float(cond.value))
                )  # fmt: skip
            except (TypeError, ValueError):
                result = False
        return np.full(rows, result, dtype=bool)
    assert cond.input is not None  # checked at creation
    arr = inputs[cond.input].reshape(rows, -1)
    if cond.index >= arr.shape[1]:
        raise InvalidInput(
            f"the switch tests column {cond.index} of {cond.input!r}, whose rows have "
            f"{arr.shape[1]} values",
            param=cond.input,
        )
    column = arr[:, cond.index]
    if isinstance(cond.value, str):
        text = np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                         for v in column], dtype=object)  # fmt: skip
        return np.asarray(compare(text, cond.value), dtype=bool)
    return np.asarray(compare(column.astype(np.float64), float(cond.value)), dtype=bool)


def merge_rows(parts: Sequence[tuple[np.ndarray, Tensors]], rows: int) -> Tensors:
    """Branch answers ``(row indices, outputs)`` back into one answer in row order."""
    out: Tensors = {}
    for index, answer in parts:
        for name, arr in answer.items():
            if name not in out:
                out[name] = np.empty((rows, *arr.shape[1:]), dtype=arr.dtype)
            target = out[name]
            if target.shape[1:] != arr.shape[1:]:
                raise InvalidInput(f"the switch's branches answer {name!r} in different shapes",
                                   param=name)  # fmt: skip
            target[index] = arr
    return out
