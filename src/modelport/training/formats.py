"""Dataset files → :class:`~modelport.training.table.Table`, with errors that say what is wrong.

Formats (:data:`FORMATS`):

- ``csv``, ``parquet``: tabular; every column but the target is a feature. Numeric columns
  become float64 (NaN = missing), everything else str (None = missing).
- ``jsonl``: text; one JSON object per line, ``{"text": ..., "label": ...}`` by default.
- ``npz``: images; arrays ``x`` ([N, H, W] or [N, H, W, C]) and ``y`` (labels), no pickle.
- ``zip``: images; one folder per class holding PNG/JPEG files (read with Pillow).

Every problem a user can cause (ragged rows, missing target column, wrong label type, empty
or unreadable file, too few rows) is an :class:`~modelport.errors.InvalidInput` naming it, so
an upload answers 400 with a message the user can act on, never a 500.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from modelport.errors import InvalidInput
from modelport.training.table import Table, Task

FORMATS = ("csv", "parquet", "jsonl", "npz", "zip")
MIN_ROWS = 10
MAX_CLASSES = 1000
# Integer-valued numeric targets with at most this many distinct values count as classes.
MAX_INFERRED_CLASSES = 20
MAX_ZIP_MEMBERS = 200_000
MAX_ZIP_BYTES = 4 * 1024**3
_SUFFIXES = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".npz": "npz",
    ".zip": "zip",
}
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


def detect_format(filename: str) -> str:
    """The format of ``filename`` from its extension; InvalidInput if it is not one we read."""
    fmt = _SUFFIXES.get(PurePosixPath(filename).suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(_SUFFIXES))
        raise InvalidInput(
            f"cannot tell the dataset format of {filename!r}: use one of {known} "
            "or name the format",
            param="format",
        )
    return fmt


def read_dataset(
    path: Path,
    fmt: str,
    *,
    target: str | None,
    task: Task | None = None,
    text_column: str | None = None,
) -> Table:
    """Read the dataset file at ``path`` in format ``fmt`` into a Table (see module doc)."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown dataset format {fmt!r}; one of {', '.join(FORMATS)}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InvalidInput(f"cannot read the dataset file: {exc.strerror}") from exc
    if size == 0:
        raise InvalidInput("the dataset file is empty")
    try:
        table = _read(path, fmt, target, task, text_column)
    except OSError as exc:
        raise InvalidInput(f"cannot read the dataset file: {exc.strerror or exc}") from exc
    _check_rows(len(table))
    return table


def _read(
    path: Path, fmt: str, target: str | None, task: Task | None, text_column: str | None
) -> Table:
    if fmt == "csv":
        return _read_csv(path, target, task)
    if fmt == "parquet":
        return _frame_to_table(_read_parquet(path), target, task)
    if fmt == "jsonl":
        return _read_jsonl(path, target or "label", text_column or "text", task)
    if fmt == "npz":
        return _read_npz(path, task)
    return _read_zip(path, task)


def _check_rows(n: int) -> None:
    if n < MIN_ROWS:
        raise InvalidInput(f"the dataset has {n} rows; at least {MIN_ROWS} are needed")


# --- targets ----------------------------------------------------------------------------------


def make_target(values: np.ndarray, name: str, task: Task | None) -> tuple[np.ndarray, Task]:
    """Labels (object str) or a float64 target from raw values, inferring the task if None.

    Strings mean classification; numbers mean regression unless they are integers with at
    most :data:`MAX_INFERRED_CLASSES` distinct values. Missing values are an error.
    """
    missing = [i for i, v in enumerate(values) if _is_missing(v)]
    if missing:
        rows = ", ".join(str(i + 1) for i in missing[:5])
        raise InvalidInput(
            f"target {name!r} is missing in {len(missing)} rows (rows {rows}); "
            "fill or drop them before uploading",
            param="target",
        )
    numeric = _as_numbers(values)
    if task is None:
        task = _infer_task(numeric)
    if task == "regression":
        if numeric is None:
            example = next((v for v in values if _as_numbers(object_array([v])) is None), None)
            raise InvalidInput(
                f"regression target {name!r} is not numeric (e.g. {example!r})", param="target"
            )
        return numeric, task
    labels = _labels(values, numeric, name)
    n_classes = len(set(labels.tolist()))
    if n_classes > MAX_CLASSES:
        raise InvalidInput(
            f"classification target {name!r} has {n_classes} classes; at most {MAX_CLASSES}",
            param="target",
        )
    if n_classes < 2:
        raise InvalidInput(f"classification target {name!r} has only one class", param="target")
    return labels, task


def _infer_task(numeric: np.ndarray | None) -> Task:
    if numeric is None:
        return "classification"
    integral = bool(np.all(numeric == np.round(numeric)))
    if integral and len(np.unique(numeric)) <= MAX_INFERRED_CLASSES:
        return "classification"
    return "regression"


def _labels(values: np.ndarray, numeric: np.ndarray | None, name: str) -> np.ndarray:
    if numeric is None:
        return np.array([str(v) for v in values], dtype=object)
    if not np.all(numeric == np.round(numeric)):
        raise InvalidInput(
            f"classification target {name!r} has non-integer numbers; "
            "use integer or string labels, or task 'regression'",
            param="target",
        )
    return np.array([str(int(v)) for v in numeric], dtype=object)


def _as_numbers(values: np.ndarray) -> np.ndarray | None:
    """float64 values if every value is a finite number (bools are not numbers), else None."""
    if not all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values):
        return None
    out = np.array([float(v) for v in values], dtype=np.float64)
    return out if np.all(np.isfinite(out)) else None


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return bool(np.isnan(value))
    return False


# --- csv / parquet ----------------------------------------------------------------------------


def _read_csv(path: Path, target: str | None, task: Task | None) -> Table:
    import pandas as pd

    _check_csv_shape(path)
    try:
        frame = pd.read_csv(path, encoding="utf-8-sig", skip_blank_lines=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise InvalidInput(f"cannot parse the CSV file: {exc}") from exc
    return _frame_to_table(frame, target, task)


def _check_csv_shape(path: Path) -> None:
    """Every non-blank row must have as many fields as the header (line numbers are 1-based)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header: list[str] | None = None
            for row in reader:
                if not row:
                    continue
                if header is None:
                    header = row
                elif len(row) != len(header):
                    raise InvalidInput(
                        f"ragged CSV: line {reader.line_num} has {len(row)} fields, "
                        f"the header has {len(header)}"
                    )
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the CSV file is not UTF-8 text ({exc.reason})") from exc
    except csv.Error as exc:
        raise InvalidInput(f"cannot parse the CSV file: {exc}") from exc
    if header is None:
        raise InvalidInput("the CSV file has no header row")


def _read_parquet(path: Path) -> Any:
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a damaged file
        raise InvalidInput(f"cannot read the Parquet file: {exc}") from exc


def _frame_to_table(frame: Any, target: str | None, task: Task | None) -> Table:
    """A pandas DataFrame → tabular Table with ``target`` as the target column."""
    names = [str(c) for c in frame.columns]
    if len(set(names)) != len(names):
        raise InvalidInput("the dataset has duplicate column names")
    available = ", ".join(names)
    if target is None:
        raise InvalidInput(f"name the target column; columns: {available}", param="target")
    if target not in names:
        raise InvalidInput(
            f"target column {target!r} not found; columns: {available}", param="target"
        )
    if len(names) < 2:
        raise InvalidInput("the dataset has no feature columns besides the target")
    frame.columns = names
    _check_rows(len(frame))
    labels, task = make_target(_object_values(frame[target]), target, task)
    columns = {name: _feature_column(frame[name]) for name in names if name != target}
    return Table(kind="tabular", columns=columns, target=labels, target_name=target, task=task)


def _feature_column(series: Any) -> np.ndarray:
    import pandas as pd

    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return np.asarray(series.to_numpy(dtype="float64", na_value=np.nan), dtype=np.float64)
    values = _object_values(series)
    return np.array([None if _is_missing(v) else str(v) for v in values], dtype=object)


def _object_values(series: Any) -> np.ndarray:
    """Python values of a pandas column (NA → None; numpy scalars → Python numbers)."""
    import pandas as pd

    values = [v.item() if isinstance(v, np.generic) else v for v in series.tolist()]
    return object_array([None if pd.api.types.is_scalar(v) and pd.isna(v) else v for v in values])


def object_array(values: list[Any]) -> np.ndarray:
    """A 1-D object array of ``values`` (even when the values are lists themselves)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


# --- jsonl (text) -----------------------------------------------------------------------------


def _read_jsonl(path: Path, target: str, text_column: str, task: Task | None) -> Table:
    texts: list[str] = []
    labels: list[Any] = []
    for line_no, record in _jsonl_records(path):
        text = record.get(text_column)
        if not isinstance(text, str):
            raise InvalidInput(
                f"line {line_no}: field {text_column!r} is missing or not a string",
                param="text_column",
            )
        if target not in record:
            raise InvalidInput(f"line {line_no}: label field {target!r} is missing", param="target")
        texts.append(text)
        labels.append(record[target])
    _check_rows(len(texts))
    bad = next((v for v in labels if isinstance(v, dict | list)), None)
    if bad is not None:
        raise InvalidInput(f"label {bad!r} is not a string or number", param="target")
    target_values, task = make_target(object_array(labels), target, task)
    return Table(
        kind="text",
        columns={"text": np.array(texts, dtype=object)},
        target=target_values,
        target_name=target,
        task=task,
    )


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidInput(f"line {line_no} is not valid JSON: {exc.msg}") from exc
                if not isinstance(record, dict):
                    raise InvalidInput(f"line {line_no} is not a JSON object")
                yield line_no, record
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the JSONL file is not UTF-8 text ({exc.reason})") from exc


# --- images -----------------------------------------------------------------------------------


def _read_npz(path: Path, task: Task | None) -> Table:
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = sorted(archive.files)
            if "x" not in keys or "y" not in keys:
                raise InvalidInput(f"the NPZ file needs arrays 'x' and 'y'; it has {keys}")
            x, y = archive["x"], archive["y"]
    except InvalidInput:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"cannot read the NPZ file: {exc}") from exc
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3, 4)):
        raise InvalidInput(f"'x' must be images [N, H, W] or [N, H, W, C<=4]; got {list(x.shape)}")
    if x.dtype.kind not in "biuf":  # bool, signed, unsigned, float
        raise InvalidInput(f"'x' must be numeric; got dtype {x.dtype}")
    _check_rows(x.shape[0])
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise InvalidInput(f"'y' must be 1-D with {x.shape[0]} labels; got shape {list(y.shape)}")
    if task == "regression":
        raise InvalidInput("image datasets support classification only", param="task")
    labels, task = make_target(object_array(y.tolist()), "y", "classification")
    images = np.ascontiguousarray(x, dtype=np.float32)
    return Table(kind="image", columns={"image": images}, target=labels, target_name="y", task=task)


def _read_zip(path: Path, task: Task | None) -> Table:
    if task == "regression":
        raise InvalidInput("image datasets support classification only", param="task")
    try:
        from PIL import Image
    except ImportError as exc:
        raise InvalidInput("zip image datasets need Pillow, which is not installed") from exc
    try:
        with zipfile.ZipFile(path) as archive:
            members = _image_members(archive)
            images = [_decode(Image, archive.read(m), m.filename) for m in members]
    except zipfile.BadZipFile as exc:
        raise InvalidInput(f"cannot read the zip file: {exc}") from exc
    labels = np.array([PurePosixPath(m.filename).parent.name for m in members], dtype=object)
    return Table(
        kind="image",
        columns={"image": _stack(images, [m.filename for m in members])},
        target=labels,
        target_name="label",
        task="classification",
    )


def _image_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_MEMBERS or sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
        raise InvalidInput("the zip file is too large")
    members = []
    for info in sorted(infos, key=lambda i: i.filename):
        p = PurePosixPath(info.filename)
        hidden = any(part.startswith((".", "__MACOSX")) for part in p.parts)
        if info.is_dir() or hidden or p.suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        if len(p.parts) < 2:
            raise InvalidInput(f"{info.filename}: images must sit in one folder per class")
        members.append(info)
    if not members:
        raise InvalidInput("the zip file holds no PNG/JPEG images in class folders")
    return members


def _decode(image_module: Any, data: bytes, name: str) -> np.ndarray:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", image_module.DecompressionBombWarning)
            with image_module.open(io.BytesIO(data)) as img:
                gray = img.mode in ("1", "L", "I", "I;16", "F")
                return np.asarray(img.convert("L" if gray else "RGB"), dtype=np.float32)
    except Exception as exc:  # Pillow raises many types for a damaged image
        raise InvalidInput(f"{name}: cannot decode the image ({exc})") from exc


def _stack(images: list[np.ndarray], names: list[str]) -> np.ndarray:
    """One float32 array; grayscale images are promoted to RGB if any image is in colour."""
    if any(i.ndim == 3 for i in images):
        images = [np.repeat(i[:, :, None], 3, axis=2) if i.ndim == 2 else i for i in images]
    first = images[0].shape
    for image, name in zip(images, names, strict=True):
        if image.shape != first:
            raise InvalidInput(
                f"{name}: image size {list(image.shape)} differs from {list(first)}; "
                "all images must have the same size"
            )
    return np.ascontiguousarray(np.stack(images), dtype=np.float32)
