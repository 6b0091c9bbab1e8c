"""The training library: datasets → preprocessing → trainers → exported model bundles.

Pure library code: no web framework, no SQL, no engine imports. Heavy dependencies (pandas,
pyarrow, scikit-learn, torch, sentence-transformers) are imported inside the functions that
need them, so importing this package stays cheap for the API process.
"""

from __future__ import annotations

from modelport.training.builtin import BUILTIN_DATASETS, load_builtin
from modelport.training.formats import FORMATS, detect_format, read_dataset
from modelport.training.metrics import classification_metrics, regression_metrics
from modelport.training.preprocess import Preprocessor
from modelport.training.schema import infer_schema, preview_rows
from modelport.training.splits import Split, kfold_indices, split_indices
from modelport.training.table import KINDS, TASKS, Kind, Table, Task

__all__ = [
    "BUILTIN_DATASETS",
    "FORMATS",
    "KINDS",
    "TASKS",
    "Kind",
    "Preprocessor",
    "Split",
    "Table",
    "Task",
    "classification_metrics",
    "detect_format",
    "infer_schema",
    "kfold_indices",
    "load_builtin",
    "preview_rows",
    "read_dataset",
    "regression_metrics",
    "split_indices",
]
