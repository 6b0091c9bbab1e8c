"""Dataset readers, built-ins, schema inference and splits (modelport.training, data half)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from modelport.errors import InvalidInput
from modelport.training import (
    BUILTIN_DATASETS,
    detect_format,
    infer_schema,
    kfold_indices,
    load_builtin,
    preview_rows,
    read_dataset,
    split_indices,
)

pd = pytest.importorskip("pandas")


def _csv(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _rows_csv(tmp_path: Path, n: int = 12) -> Path:
    lines = ["size,color,price,kind"]
    for i in range(n):
        color = "" if i == 3 else ["red", "green", "blue"][i % 3]
        size = "" if i == 5 else str(i * 1.5)
        lines.append(f"{size},{color},{100 + i * 7.25},{'a' if i % 2 else 'b'}")
    return _csv(tmp_path, "\n".join(lines) + "\n")


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "fmt"),
    [
        ("x.csv", "csv"),
        ("X.PARQUET", "parquet"),
        ("a/b.jsonl", "jsonl"),
        ("i.npz", "npz"),
        ("f.zip", "zip"),
        ("t.ndjson", "jsonl"),
    ],
)
def test_detect_format(filename: str, fmt: str) -> None:
    assert detect_format(filename) == fmt


def test_detect_format_unknown() -> None:
    with pytest.raises(InvalidInput, match=r"data\.xlsx"):
        detect_format("data.xlsx")


def test_csv_columns_types_and_missing(tmp_path: Path) -> None:
    table = read_dataset(_rows_csv(tmp_path), "csv", target="kind")
    assert table.kind == "tabular" and table.task == "classification"
    assert list(table.columns) == ["size", "color", "price"]
    assert table.columns["size"].dtype == np.float64
    assert np.isnan(table.columns["size"][5]) and table.columns["size"][2] == 3.0
    assert table.columns["color"].dtype == object
    assert table.columns["color"][3] is None and table.columns["color"][1] == "green"
    assert table.target is not None and table.target.tolist()[:2] == ["b", "a"]
    assert len(table) == 12


def test_csv_task_inference_and_override(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{i % 3},{i * 0.37}" for i in range(15))
    path = _csv(tmp_path, "x,cls,y\n" + rows + "\n")
    integers = read_dataset(path, "csv", target="cls")
    assert integers.task == "classification"
    assert integers.target is not None and set(integers.target.tolist()) == {"0", "1", "2"}
    floats = read_dataset(path, "csv", target="y")
    assert floats.task == "regression" and floats.target is not None
    assert floats.target.dtype == np.float64 and floats.target[2] == pytest.approx(0.74)
    forced = read_dataset(path, "csv", target="cls", task="regression")
    assert forced.task == "regression" and forced.target is not None
    assert forced.target.dtype == np.float64


def test_csv_ragged_names_the_line(tmp_path: Path) -> None:
    body = "\n".join(f"{i},{i}" for i in range(12)).split("\n")
    body[2] = "2,2,extra"  # file line 4 (header is line 1)
    path = _csv(tmp_path, "a,b\n" + "\n".join(body) + "\n")
    with pytest.raises(InvalidInput, match="line 4 has 3 fields, the header has 2"):
        read_dataset(path, "csv", target="b")


def test_csv_short_row_is_ragged_too(tmp_path: Path) -> None:
    lines = ["a,b,c"] + [f"{i},{i},{i}" for i in range(12)]
    lines[7] = "6,6"
    with pytest.raises(InvalidInput, match="line 8 has 2 fields"):
        read_dataset(_csv(tmp_path, "\n".join(lines)), "csv", target="c")


def test_missing_target_column_lists_columns(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="'label' not found; columns: size, color, price, kind"):
        read_dataset(_rows_csv(tmp_path), "csv", target="label")
    with pytest.raises(InvalidInput, match="name the target column"):
        read_dataset(_rows_csv(tmp_path), "csv", target=None)


def test_regression_target_not_numeric(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="regression target 'kind' is not numeric"):
        read_dataset(_rows_csv(tmp_path), "csv", target="kind", task="regression")


def test_classification_with_float_labels(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="non-integer numbers"):
        read_dataset(_rows_csv(tmp_path), "csv", target="price", task="classification")


def test_too_many_classes(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},c{i}" for i in range(1001))
    with pytest.raises(InvalidInput, match="1001 classes; at most 1000"):
        read_dataset(_csv(tmp_path, "x,y\n" + rows), "csv", target="y")


def test_missing_target_values(tmp_path: Path) -> None:
    rows = [f"{i},{'a' if i % 2 else 'b'}" for i in range(12)]
    rows[4] = "4,"
    with pytest.raises(InvalidInput, match=r"missing in 1 rows \(rows 5\)"):
        read_dataset(_csv(tmp_path, "x,y\n" + "\n".join(rows)), "csv", target="y")


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl", "npz", "zip"])
def test_empty_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"empty.{fmt}"
    path.write_bytes(b"")
    with pytest.raises(InvalidInput, match="empty"):
        read_dataset(path, fmt, target="y")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read the dataset file"):
        read_dataset(tmp_path / "nope.csv", "csv", target="y")


def test_too_few_rows(tmp_path: Path) -> None:
    path = _csv(tmp_path, "x,y\n" + "\n".join(f"{i},{i % 2}" for i in range(9)))
    with pytest.raises(InvalidInput, match="9 rows; at least 10"):
        read_dataset(path, "csv", target="y")
    with pytest.raises(InvalidInput, match="0 rows"):
        read_dataset(_csv(tmp_path, "x,y\n", "header.csv"), "csv", target="y")


def test_csv_with_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfx,y\n" + b"".join(b"%d,%d\n" % (i, i % 2) for i in range(12)))
    table = read_dataset(path, "csv", target="y")
    assert list(table.columns) == ["x"] and table.target_name == "y"


def test_npz_complex_pixels(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    np.savez(path, x=np.zeros((12, 4, 4), dtype=np.complex64), y=np.arange(12) % 2)
    with pytest.raises(InvalidInput, match="'x' must be numeric; got dtype complex64"):
        read_dataset(path, "npz", target=None)


def test_csv_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(b"x,y\n" + "\xe9t\xe9,1\n".encode("latin-1") * 12)
    with pytest.raises(InvalidInput, match="not UTF-8"):
        read_dataset(path, "csv", target="y")


def test_parquet_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "n": [float(i) if i != 2 else None for i in range(20)],
            "flag": [i % 2 == 0 for i in range(20)],
            "cat": [None if i == 0 else f"c{i % 4}" for i in range(20)],
            "count": pd.array([None if i == 4 else i for i in range(20)], dtype="Int64"),
            "target": [i * 0.5 + 0.1 for i in range(20)],
        }
    )
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    table = read_dataset(path, "parquet", target="target")
    assert table.task == "regression"
    assert np.isnan(table.columns["n"][2]) and table.columns["n"][3] == 3.0
    assert table.columns["flag"].tolist()[:2] == [1.0, 0.0]
    assert table.columns["cat"][0] is None and table.columns["cat"][5] == "c1"
    assert np.isnan(table.columns["count"][4]) and table.columns["count"][7] == 7.0
    assert table.target is not None and table.target[3] == pytest.approx(1.6)


def test_parquet_damaged(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(InvalidInput, match="cannot read the Parquet file"):
        read_dataset(path, "parquet", target="y")


def _jsonl(tmp_path: Path, records: list[object]) -> Path:
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    return path


def test_jsonl_text(tmp_path: Path) -> None:
    records = [
        {"text": f"review {i} was {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"}
        for i in range(12)
    ]
    table = read_dataset(_jsonl(tmp_path, records), "jsonl", target=None)
    assert table.kind == "text" and table.task == "classification"
    assert table.columns["text"][1] == "review 1 was good"
    assert table.target is not None and table.target[0] == "neg"
    other = [{"body": r["text"], "stars": i % 5 + 0.5} for i, r in enumerate(records)]
    table = read_dataset(_jsonl(tmp_path, other), "jsonl", target="stars", text_column="body")
    assert table.task == "regression" and table.target_name == "stars"


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(InvalidInput, match="line 2 is not valid JSON"):
        read_dataset(path, "jsonl", target=None)
    records: list[object] = [{"text": "x", "label": "a"}] * 5 + [{"label": "b"}]
    with pytest.raises(InvalidInput, match="line 6: field 'text' is missing"):
        read_dataset(_jsonl(tmp_path, records), "jsonl", target=None)
    with pytest.raises(InvalidInput, match="line 1: label field 'label' is missing"):
        read_dataset(_jsonl(tmp_path, [{"text": "x"}]), "jsonl", target=None)
    with pytest.raises(InvalidInput, match="line 1 is not a JSON object"):
        read_dataset(_jsonl(tmp_path, [[1, 2]]), "jsonl", target=None)


def test_npz_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "i.npz"
    np.savez(path, x=rng.integers(0, 255, (20, 6, 5, 3)).astype(np.uint8), y=np.arange(20) % 4)
    table = read_dataset(path, "npz", target=None)
    assert table.kind == "image" and table.task == "classification"
    assert table.columns["image"].shape == (20, 6, 5, 3)
    assert table.columns["image"].dtype == np.float32
    assert table.target is not None and table.target.tolist()[:5] == ["0", "1", "2", "3", "0"]


def test_npz_errors(tmp_path: Path) -> None:
    path = tmp_path / "i.npz"
    np.savez(path, images=np.zeros((12, 4, 4)), labels=np.zeros(12))
    with pytest.raises(
        InvalidInput, match=r"needs arrays 'x' and 'y'; it has \['images', 'labels'\]"
    ):
        read_dataset(path, "npz", target=None)
    np.savez(path, x=np.zeros((12, 16)), y=np.zeros(12))
    with pytest.raises(InvalidInput, match=r"got \[12, 16\]"):
        read_dataset(path, "npz", target=None)
    np.savez(path, x=np.zeros((12, 4, 4)), y=np.zeros(11))
    with pytest.raises(InvalidInput, match="'y' must be 1-D with 12 labels"):
        read_dataset(path, "npz", target=None)
    np.savez(path, x=np.zeros((12, 4, 4)), y=np.array([{"a": 1}] * 12, dtype=object))
    with pytest.raises(InvalidInput, match="cannot read the NPZ file"):
        read_dataset(path, "npz", target=None)


def _png(size: tuple[int, int], mode: str, value: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(buffer, "PNG")
    return buffer.getvalue()


def test_zip_image_folders(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    path = tmp_path / "imgs.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(12):
            cls = "cat" if i % 2 else "dog"
            archive.writestr(f"root/{cls}/{i:02d}.png", _png((5, 4), "L", i * 10))
        archive.writestr("root/cat/.hidden.png", b"junk")
        archive.writestr("__MACOSX/root/cat/._01.png", b"junk")
        archive.writestr("root/README.txt", b"ignored")
    table = read_dataset(path, "zip", target=None)
    assert table.kind == "image" and table.columns["image"].shape == (12, 4, 5)
    assert table.target is not None and table.target.tolist()[:2] == ["cat", "cat"]
    assert float(table.columns["image"][0, 0, 0]) == 10.0  # sorted: root/cat/01.png first


def test_zip_errors(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    path = tmp_path / "imgs.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(12):
            archive.writestr(f"c{i % 2}/{i:02d}.png", _png((5, 4) if i else (6, 6), "RGB", i))
    with pytest.raises(
        InvalidInput, match=r"c0/02.png: image size \[4, 5, 3\] differs from \[6, 6, 3\]"
    ):
        read_dataset(path, "zip", target=None)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", b"x")
    with pytest.raises(InvalidInput, match="no PNG/JPEG images"):
        read_dataset(path, "zip", target=None)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a/broken.png", b"not a png")
    with pytest.raises(InvalidInput, match=r"a/broken\.png: cannot decode"):
        read_dataset(path, "zip", target=None)
    path.write_bytes(b"not a zip file")
    with pytest.raises(InvalidInput, match="cannot read the zip file"):
        read_dataset(path, "zip", target=None)


# --- built-ins and schema -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rows", "width", "task", "classes"),
    [
        ("iris", 150, 4, "classification", 3),
        ("breast_cancer", 569, 30, "classification", 2),
        ("wine", 178, 13, "classification", 3),
        ("diabetes", 442, 10, "regression", None),
    ],
)
def test_builtin_tabular(name: str, rows: int, width: int, task: str, classes: int | None) -> None:
    table = load_builtin(name)
    assert table.kind == "tabular" and table.task == task and len(table) == rows
    assert len(table.columns) == width
    assert all(c.dtype == np.float64 and c.shape == (rows,) for c in table.columns.values())
    schema = infer_schema(table)
    assert schema.kind == "tabular" and schema.target == "target"
    assert (len(schema.classes) if schema.classes else None) == classes


def test_builtin_labels_and_digits() -> None:
    iris = load_builtin("iris")
    assert "sepal length (cm)" in iris.columns
    assert iris.target is not None and iris.target[0] == "setosa"
    cancer = load_builtin("breast_cancer")
    assert infer_schema(cancer).classes == ["benign", "malignant"]
    digits = load_builtin("digits")
    assert digits.kind == "image" and digits.columns["image"].shape == (1797, 8, 8)
    assert digits.columns["image"].dtype == np.float32
    assert float(digits.columns["image"].max()) == 16.0
    assert infer_schema(digits).classes == [str(d) for d in range(10)]
    assert infer_schema(digits).columns[0].shape == [8, 8]
    assert set(BUILTIN_DATASETS) == {"iris", "digits", "breast_cancer", "wine", "diabetes"}
    with pytest.raises(InvalidInput, match="unknown built-in dataset 'mnist'"):
        load_builtin("mnist")


def test_schema_and_preview(tmp_path: Path) -> None:
    table = read_dataset(_rows_csv(tmp_path), "csv", target="kind")
    schema = infer_schema(table)
    by_name = {c.name: c for c in schema.columns}
    assert by_name["size"].dtype == "numeric" and by_name["size"].missing == 1
    assert by_name["color"].dtype == "categorical" and by_name["color"].distinct == 3
    assert by_name["color"].missing == 1
    assert by_name["kind"].dtype == "label" and by_name["kind"].distinct == 2
    assert schema.classes == ["a", "b"] and schema.task == "classification"
    columns, rows = preview_rows(table, 6)
    assert columns == ["size", "color", "price", "kind"]
    assert len(rows) == 6 and rows[5]["size"] is None and rows[3]["color"] is None
    assert rows[1] == {"size": 1.5, "color": "green", "price": 107.25, "kind": "a"}
    json.dumps(rows, allow_nan=False)
    _, image_rows = preview_rows(load_builtin("digits"), 2)
    assert len(image_rows[0]["image"]) == 8 and isinstance(image_rows[0]["image"][0][0], float)
    assert image_rows[0]["label"] == "0"


# --- splits ---------------------------------------------------------------------------------


def test_split_deterministic_disjoint_complete() -> None:
    a = split_indices(100, validation=0.2, test=0.1, seed=7)
    b = split_indices(100, validation=0.2, test=0.1, seed=7)
    c = split_indices(100, validation=0.2, test=0.1, seed=8)
    for x, y in zip((a.train, a.validation, a.test), (b.train, b.validation, b.test), strict=True):
        assert np.array_equal(x, y)
    assert not np.array_equal(a.validation, c.validation)
    assert (len(a.train), len(a.validation), len(a.test)) == (70, 20, 10)
    everything = np.concatenate([a.train, a.validation, a.test])
    assert np.array_equal(np.sort(everything), np.arange(100))
    assert all(np.array_equal(p, np.sort(p)) for p in (a.train, a.validation, a.test))
    none = split_indices(30, validation=0.0, test=0.0, seed=1)
    assert len(none.train) == 30 and len(none.validation) == len(none.test) == 0


def test_split_stratified_keeps_shares() -> None:
    labels = np.array(["a"] * 60 + ["b"] * 30 + ["c"] * 10, dtype=object)
    split = split_indices(100, validation=0.2, test=0.2, seed=3, stratify=labels)
    for part, size in ((split.validation, 20), (split.test, 20), (split.train, 60)):
        counts = {k: int((labels[part] == k).sum()) for k in "abc"}
        assert counts == {"a": size * 6 // 10, "b": size * 3 // 10, "c": size // 10}


def test_split_rejects_bad_fractions() -> None:
    with pytest.raises(InvalidInput, match="sum below 1"):
        split_indices(10, validation=0.5, test=0.5, seed=0)
    with pytest.raises(InvalidInput, match="empty"):
        split_indices(0, validation=0.1, test=0.1, seed=0)


def test_kfold_covers_every_row_once() -> None:
    labels = np.array(["x"] * 25 + ["y"] * 12, dtype=object)
    for stratify in (None, labels):
        folds = kfold_indices(37, 5, seed=4, stratify=stratify)
        assert len(folds) == 5
        held = np.concatenate([test for _, test in folds])
        assert np.array_equal(np.sort(held), np.arange(37))
        for train, test in folds:
            assert np.intersect1d(train, test).size == 0 and len(train) + len(test) == 37
            assert 7 <= len(test) <= 8
    stratified = kfold_indices(37, 5, seed=4, stratify=labels)
    assert all(2 <= int((labels[test] == "y").sum()) <= 3 for _, test in stratified)
    again = kfold_indices(37, 5, seed=4, stratify=labels)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(stratified, again, strict=True))
    with pytest.raises(InvalidInput, match="folds"):
        kfold_indices(3, 5, seed=0)
