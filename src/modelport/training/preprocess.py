"""Preprocessing fitted on the training split, saved with the model, replayed when serving.

A :class:`Preprocessor` learns everything it needs from the training rows only (scaling
constants, imputation values, category lists, the token vocabulary, the pixel scale) and
turns raw columns into the matrix a trainer sees:

- tabular → float32 [N, D]: numeric columns imputed and scaled, categoricals one-hot (unknown
  or missing → all zeros) or ordinal (unknown → 0, known → 1..K);
- text "tokens" → int64 [N, max_length] word ids (0 pad, 1 unknown, vocabulary from 2);
- text "minilm" → float32 [N, 384] MiniLM sentence embeddings;
- image → float32 [N, C, H, W], scaled.

Serving runs the very same :meth:`Preprocessor.transform` on the V2 request tensors (see
:meth:`~Preprocessor.columns_from_inputs`), so a served model sees exactly the features it was
trained on. Numeric values go through float32 first in both places, because that is what a
V2 FP32 tensor can carry. State is saved as plain JSON (:meth:`~Preprocessor.to_json`), floats
as Python floats, which round-trips exactly; never pickle.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from modelport.errors import InvalidInput, ModelLoadError, ShapeMismatch
from modelport.training.table import KINDS, TASKS, Kind, Table, Task
from modelport.training.text import MINILM_DIM, fit_vocab, minilm_embed, text_of, tokenize
from modelport.types.admin import TensorSpec
from modelport.types.training import PreprocessSpec

InputKind = Literal["features", "tokens", "embeddings", "image"]
FORMAT_VERSION = 1
PAD, UNKNOWN = 0, 1
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class _Numeric:
    """One numeric column: value → (fill if NaN) → (value - center) / scale."""

    name: str
    fill: float
    center: float
    scale: float


@dataclass
class _Categorical:
    """One categorical column: its known categories (sorted) in one-hot or ordinal form."""

    name: str
    categories: list[str]
    onehot: bool
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {c: i for i, c in enumerate(self.categories)}

    def code(self, value: Any) -> int:
        """The category's index; -1 for missing or unknown values."""
        category = _category(value)
        return -1 if category is None else self.index.get(category, -1)

    @property
    def width(self) -> int:
        return len(self.categories) if self.onehot else 1


class Preprocessor:
    """Fitted preprocessing for one dataset kind and task (see module doc)."""

    def __init__(self, spec: PreprocessSpec, kind: Kind, task: Task, classes: list[str] | None):
        self.spec = spec
        self.kind: Kind = kind
        self.task: Task = task
        self.classes = classes
        self.numeric: list[_Numeric] = []
        self.categorical: list[_Categorical] = []
        self.column_order: list[str] = []  # raw feature columns, in the dataset's order
        self.vocab: list[str] = []
        self.image_hwc: tuple[int, ...] | None = None  # per-row raw shape: (H, W) or (H, W, C)
        self.pixel_center = 0.0
        self.pixel_scale = 1.0

    # --- fitting ------------------------------------------------------------------------------

    @classmethod
    def fit(cls, spec: PreprocessSpec, table: Table) -> Preprocessor:
        """Learn the preprocessing from ``table`` (the training rows only)."""
        if table.task is None or table.target is None:
            raise InvalidInput("the dataset has no target to train on", param="target")
        if len(table) == 0:
            raise InvalidInput("no training rows to fit preprocessing on")
        classes = sorted({str(v) for v in table.target}) if table.task == "classification" else None
        pre = cls(spec, table.kind, table.task, classes)
        kept = table.take(np.flatnonzero(pre.drop_mask(table)))
        if len(kept) == 0:
            raise InvalidInput("every training row has a missing value (missing='drop')")
        if table.kind == "tabular":
            pre._fit_tabular(kept)
        elif table.kind == "text":
            if spec.text == "tokens":
                pre.vocab = fit_vocab(kept.columns["text"], spec)
        else:
            pre._fit_image(kept.columns["image"])
        return pre

    def _fit_tabular(self, table: Table) -> None:
        self.column_order = list(table.columns)
        for name, values in table.columns.items():
            if values.dtype == object:
                cats = _top_categories(values, self.spec.max_categories)
                self.categorical.append(_Categorical(name, cats, self.spec.categorical == "onehot"))
            else:
                self.numeric.append(_fit_numeric(name, _as_f32(values), self.spec))

    def _fit_image(self, images: np.ndarray) -> None:
        self.image_hwc = tuple(int(d) for d in images.shape[1:])
        pixels = np.asarray(images, dtype=np.float32)  # float64 accumulators, no float64 copy
        if self.spec.image_scale == "max":
            top = float(np.max(np.abs(pixels))) if pixels.size else 0.0
            self.pixel_scale = top if top > 0 else 1.0
        elif self.spec.image_scale == "standardize":
            std = float(pixels.std(dtype=np.float64))
            mean = float(pixels.mean(dtype=np.float64))
            self.pixel_center, self.pixel_scale = mean, std if std > 0 else 1.0

    def drop_mask(self, table: Table) -> np.ndarray:
        """True for rows to train on: with missing='drop', rows without numeric gaps."""
        keep = np.ones(len(table), dtype=bool)
        if self.spec.missing == "drop" and table.kind == "tabular":
            for values in table.columns.values():
                if values.dtype != object:
                    keep &= ~np.isnan(np.asarray(values, dtype=np.float64))
        return keep

    # --- shape of the output ------------------------------------------------------------------

    @property
    def input_kind(self) -> InputKind:
        if self.kind == "tabular":
            return "features"
        if self.kind == "image":
            return "image"
        return "tokens" if self.spec.text == "tokens" else "embeddings"

    @property
    def feature_dim(self) -> int | None:
        if self.kind == "tabular":
            return len(self.numeric) + sum(c.width for c in self.categorical)
        return MINILM_DIM if self.input_kind == "embeddings" else None

    @property
    def vocab_size(self) -> int | None:
        """Embedding table size for tokens: the vocabulary plus pad and unknown."""
        return len(self.vocab) + 2 if self.input_kind == "tokens" else None

    @property
    def seq_len(self) -> int | None:
        return self.spec.max_length if self.input_kind == "tokens" else None

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) of the transformed images."""
        if self.image_hwc is None:
            return None
        h, w = self.image_hwc[0], self.image_hwc[1]
        return (self.image_hwc[2] if len(self.image_hwc) == 3 else 1, h, w)

    @property
    def feature_names(self) -> list[str]:
        """Names of the output features (tabular): numeric columns, then categories."""
        names = [n.name for n in self.numeric]
        for c in self.categorical:
            names.extend([f"{c.name}={v}" for v in c.categories] if c.onehot else [c.name])
        return names

    # --- transforming -------------------------------------------------------------------------

    def transform(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Raw columns (as in a Table, or from :meth:`columns_from_inputs`) → model input."""
        if self.kind == "tabular":
            return self._transform_tabular(columns)
        values = _column(columns, self.kind)
        if self.kind == "image":
            return self._transform_image(values)
        texts = [text_of(v) for v in values]
        if self.input_kind == "embeddings":
            return minilm_embed(texts)
        return self._tokens(texts)

    def _transform_tabular(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        n = _rows(columns, self.column_order)
        out = np.zeros((n, self.feature_dim or 0), dtype=np.float32)
        for j, num in enumerate(self.numeric):
            x = _as_f32(_column(columns, num.name)).astype(np.float64)
            x = np.where(np.isnan(x), num.fill, x)
            out[:, j] = ((x - num.center) / num.scale).astype(np.float32)
        j = len(self.numeric)
        for cat in self.categorical:
            values = _column(columns, cat.name)
            codes = np.array([cat.code(v) for v in values], dtype=np.int64)
            if cat.onehot:
                known = codes >= 0
                out[np.flatnonzero(known), j + codes[known]] = 1.0
            else:
                out[:, j] = (codes + 1).astype(np.float32)
            j += cat.width
        return out

    def _transform_image(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, dtype=np.float32)
        if self.image_hwc is None or tuple(x.shape[1:]) != self.image_hwc:
            expected = [-1, *(self.image_hwc or ())]
            raise ShapeMismatch(f"images must have shape {expected}; got {list(x.shape)}")
        x64 = (x.astype(np.float64) - self.pixel_center) / self.pixel_scale
        x64 = x64[:, None, :, :] if x64.ndim == 3 else x64.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x64, dtype=np.float32)

    def _tokens(self, texts: list[str]) -> np.ndarray:
        ids = {word: i + 2 for i, word in enumerate(self.vocab)}
        length = self.spec.max_length
        out = np.full((len(texts), length), PAD, dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = tokenize(text, lowercase=self.spec.lowercase)[:length]
            out[row, : len(tokens)] = [ids.get(t, UNKNOWN) for t in tokens]
        return out

    # --- targets ------------------------------------------------------------------------------

    def encode_target(self, target: np.ndarray) -> np.ndarray:
        """Classification: int64 class indices; regression: float32 values."""
        if self.classes is None:
            return np.asarray(target, dtype=np.float32)
        index = {c: i for i, c in enumerate(self.classes)}
        try:
            return np.array([index[str(v)] for v in target], dtype=np.int64)
        except KeyError as exc:
            raise InvalidInput(f"label {exc.args[0]!r} was not seen in training") from exc

    def decode_labels(self, index: np.ndarray) -> np.ndarray:
        """Class indices → their labels (object array of str)."""
        if self.classes is None:
            raise InvalidInput("a regression model has no class labels")
        labels = np.empty(len(self.classes), dtype=object)
        labels[:] = self.classes
        return labels[np.asarray(index, dtype=np.int64)]

    # --- serving ------------------------------------------------------------------------------

    def input_specs(self) -> list[TensorSpec]:
        """The raw V2 inputs a served model takes (see :meth:`columns_from_inputs`)."""
        if self.kind == "text":
            return [TensorSpec(name="text", datatype="BYTES", shape=[-1])]
        if self.kind == "image":
            return [TensorSpec(name="image", datatype="FP32", shape=[-1, *(self.image_hwc or ())])]
        if not self.categorical:
            return [TensorSpec(name="input", datatype="FP32", shape=[-1, len(self.column_order)])]
        kinds = {c.name: "BYTES" for c in self.categorical}
        names = self._tensor_names()
        return [
            TensorSpec(name=names[c], datatype=kinds.get(c, "FP32"), shape=[-1])
            for c in self.column_order
        ]

    def _tensor_names(self) -> dict[str, str]:
        """Column → V2 tensor name: sanitised to [A-Za-z0-9_.-], made unique."""
        taken: set[str] = set()
        names = {}
        for column in self.column_order:
            base = _UNSAFE.sub("_", column) or "column"
            name, k = base, 2
            while name in taken:
                name, k = f"{base}_{k}", k + 1
            taken.add(name)
            names[column] = name
        return names

    def columns_from_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """V2 request tensors (named as in :meth:`input_specs`) → raw columns for transform."""
        if self.kind in ("text", "image"):
            return {self.kind: _tensor(inputs, self.kind)}
        if not self.categorical:
            x = np.asarray(_tensor(inputs, "input"))
            if x.ndim != 2 or x.shape[1] != len(self.column_order):
                n = len(self.column_order)
                raise ShapeMismatch(f"input 'input' must have shape [-1, {n}]; got {list(x.shape)}")
            return {c: x[:, j].astype(np.float32) for j, c in enumerate(self.column_order)}
        names, categorical = self._tensor_names(), {c.name for c in self.categorical}
        out: dict[str, np.ndarray] = {}
        for column in self.column_order:
            x = np.asarray(_tensor(inputs, names[column]))
            if x.ndim != 1:
                raise ShapeMismatch(f"input {names[column]!r} must have shape [-1]")
            out[column] = _strings(x) if column in categorical else x.astype(np.float32)
        _rows(out, self.column_order)
        return out

    # --- persistence --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """All fitted state as JSON values (floats as Python floats: exact round trip)."""
        return {
            "version": FORMAT_VERSION,
            "spec": self.spec.model_dump(mode="json"),
            "kind": self.kind,
            "task": self.task,
            "classes": self.classes,
            "column_order": self.column_order,
            "numeric": [[n.name, n.fill, n.center, n.scale] for n in self.numeric],
            "categorical": [[c.name, c.categories] for c in self.categorical],
            "vocab": self.vocab,
            "image_hwc": list(self.image_hwc) if self.image_hwc is not None else None,
            "pixel_center": self.pixel_center,
            "pixel_scale": self.pixel_scale,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Preprocessor:
        """Rebuild a Preprocessor saved by :meth:`to_json`; ModelLoadError if it is damaged."""
        try:
            if data["version"] != FORMAT_VERSION:
                raise ValueError(f"unsupported version {data['version']!r}")
            if data["kind"] not in KINDS or data["task"] not in TASKS:
                raise ValueError("bad kind or task")
            spec = PreprocessSpec.model_validate(data["spec"])
            classes = None if data["classes"] is None else [str(c) for c in data["classes"]]
            pre = cls(spec, data["kind"], data["task"], classes)
            pre.column_order = [str(c) for c in data["column_order"]]
            pre.numeric = [
                _Numeric(str(n), float(f), float(c), float(s)) for n, f, c, s in data["numeric"]
            ]
            onehot = spec.categorical == "onehot"
            pre.categorical = [
                _Categorical(str(n), [str(v) for v in cats], onehot)
                for n, cats in data["categorical"]
            ]
            pre.vocab = [str(w) for w in data["vocab"]]
            hwc = data["image_hwc"]
            pre.image_hwc = None if hwc is None else tuple(int(d) for d in hwc)
            pre.pixel_center = float(data["pixel_center"])
            pre.pixel_scale = float(data["pixel_scale"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"damaged preprocessing state: {exc}") from exc
        return pre


# --- helpers ----------------------------------------------------------------------------------


def _fit_numeric(name: str, values: np.ndarray, spec: PreprocessSpec) -> _Numeric:
    x = values.astype(np.float64)
    seen = x[~np.isnan(x)]
    mean = float(seen.mean()) if seen.size else 0.0
    fill = {"median": float(np.median(seen)) if seen.size else 0.0, "zero": 0.0}.get(
        spec.missing, mean
    )
    center, scale = 0.0, 1.0
    if spec.numeric == "standardize" and seen.size:
        std = float(seen.std())
        center, scale = mean, std if std > 0 else 1.0
    elif spec.numeric == "normalize" and seen.size:
        low, high = float(seen.min()), float(seen.max())
        center, scale = low, high - low if high > low else 1.0
    return _Numeric(name, fill, center, scale)


def _top_categories(values: np.ndarray, limit: int) -> list[str]:
    """Up to ``limit`` most frequent non-missing values (ties alphabetical), sorted."""
    counts = Counter(str(v) for v in values if v is not None)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return sorted(word for word, _ in ranked)


def _as_f32(values: np.ndarray) -> np.ndarray:
    """Numeric values as float32: what a V2 FP32 tensor carries, so train and serve agree."""
    try:
        return np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"a numeric column holds non-numbers: {exc}") from exc


def _category(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _strings(values: np.ndarray) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = [_category(v) for v in values]
    return out


def _column(columns: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    if name not in columns:
        raise InvalidInput(f"column {name!r} is missing", param=name)
    return columns[name]


def _tensor(inputs: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    if name not in inputs:
        raise InvalidInput(f"input tensor {name!r} is missing; expected it", param=name)
    return inputs[name]


def _rows(columns: Mapping[str, np.ndarray], names: list[str]) -> int:
    """The common row count of ``names``; ShapeMismatch when they differ."""
    counts = {len(_column(columns, n)) for n in names}
    if len(counts) > 1:
        raise ShapeMismatch(f"input columns have different row counts: {sorted(counts)}")
    return counts.pop() if counts else 0
