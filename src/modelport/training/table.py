"""The in-memory dataset every training step works on: :class:`Table`.

Readers (``formats``, ``builtin``) produce a Table, splits pick rows from it by index, and
the :class:`~modelport.training.preprocess.Preprocessor` turns its columns into the matrix a
trainer sees. Keeping one plain shape (named 1-D numpy columns plus an optional target)
means the trainers never care which file format the data came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Kind = Literal["tabular", "text", "image"]
Task = Literal["classification", "regression"]

KINDS: tuple[Kind, ...] = ("tabular", "text", "image")
TASKS: tuple[Task, ...] = ("classification", "regression")


@dataclass
class Table:
    """Rows of one dataset, column-wise.

    ``columns`` by kind:

    - tabular: feature columns, each 1-D; float64 (NaN = missing) or object (str, None = missing)
    - text: ``{"text": object ndarray of str}``
    - image: ``{"image": float32 [N, H, W] or [N, H, W, C]}``

    ``target`` is 1-D: object (str labels) for classification, float64 for regression, or
    None when the dataset has no target.
    """

    kind: Kind
    columns: dict[str, np.ndarray]
    target: np.ndarray | None = None
    target_name: str | None = None
    task: Task | None = None

    def __len__(self) -> int:
        if self.target is not None:
            return int(self.target.shape[0])
        for column in self.columns.values():
            return int(column.shape[0])
        return 0

    @property
    def feature_names(self) -> list[str]:
        """Column names in their stored order."""
        return list(self.columns)

    def take(self, index: np.ndarray) -> Table:
        """The rows at ``index`` (an int array), as a new Table sharing nothing mutable."""
        index = np.asarray(index, dtype=np.int64)
        return Table(
            kind=self.kind,
            columns={name: column[index] for name, column in self.columns.items()},
            target=None if self.target is None else self.target[index],
            target_name=self.target_name,
            task=self.task,
        )
