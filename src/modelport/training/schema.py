"""What a dataset looks like: its inferred schema and a JSON-able preview of its first rows.

Both are computed once at upload (and for the built-ins at start) and stored with the
dataset version, so listing datasets never reads the file again.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from modelport.training.table import Table
from modelport.types.training import ColumnInfo, DatasetSchema


def infer_schema(table: Table) -> DatasetSchema:
    """Kind, task, target, per-column info and (classification) the sorted classes."""
    columns = [_column_info(name, values, table.kind) for name, values in table.columns.items()]
    classes: list[str] | None = None
    if table.target is not None and table.target_name is not None:
        if table.task == "classification":
            classes = sorted({str(v) for v in table.target})
            columns.append(ColumnInfo(name=table.target_name, dtype="label", distinct=len(classes)))
        else:
            columns.append(_column_info(table.target_name, table.target, "tabular"))
    return DatasetSchema(
        kind=table.kind,
        task=table.task,
        target=table.target_name,
        columns=columns,
        classes=classes,
    )


def _column_info(name: str, values: np.ndarray, kind: str) -> ColumnInfo:
    if kind == "image":
        return ColumnInfo(name=name, dtype="image", shape=[int(d) for d in values.shape[1:]])
    if values.dtype == object:
        missing = sum(1 for v in values if v is None)
        distinct = len({v for v in values if v is not None})
        dtype = "text" if kind == "text" else "categorical"
        return ColumnInfo(name=name, dtype=dtype, missing=missing, distinct=distinct)
    floats = np.asarray(values, dtype=np.float64)
    return ColumnInfo(name=name, dtype="numeric", missing=int(np.isnan(floats).sum()))


def preview_rows(table: Table, n: int = 10) -> tuple[list[str], list[dict[str, Any]]]:
    """Column names (features, then the target) and the first ``n`` rows as JSON values.

    Missing values (NaN, None) become None; images become nested lists of numbers.
    """
    names = list(table.columns)
    if table.target is not None and table.target_name is not None:
        names.append(table.target_name)
    count = max(0, min(n, len(table)))
    rows: list[dict[str, Any]] = []
    for i in range(count):
        row = {name: _json_value(column[i]) for name, column in table.columns.items()}
        if table.target is not None and table.target_name is not None:
            row[table.target_name] = _json_value(table.target[i])
        rows.append(row)
    return names, rows


def _json_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return _json_value(value.tolist())
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
