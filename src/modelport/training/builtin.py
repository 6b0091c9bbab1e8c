"""The built-in datasets: scikit-learn's bundled toy datasets as Tables (no download).

They let a user train something before uploading anything, and give the tests and the
benchmark real data. Labels are the human names scikit-learn ships ("setosa", "malignant");
digits is an image dataset of 8x8 grayscale pictures (pixel values 0..16).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from modelport.errors import InvalidInput
from modelport.training.table import Table

BUILTIN_DATASETS = ("iris", "digits", "breast_cancer", "wine", "diabetes")

DESCRIPTIONS = {
    "iris": "Iris flowers: 150 rows, 4 measurements, 3 species (classification).",
    "digits": "Handwritten digits: 1797 8x8 grayscale images, 10 classes (classification).",
    "breast_cancer": "Breast cancer Wisconsin: 569 rows, 30 features, malignant/benign.",
    "wine": "Wine recognition: 178 rows, 13 chemical features, 3 cultivars (classification).",
    "diabetes": "Diabetes progression: 442 rows, 10 features, numeric target (regression).",
}


def load_builtin(name: str) -> Table:
    """The built-in dataset ``name`` (one of :data:`BUILTIN_DATASETS`)."""
    if name not in BUILTIN_DATASETS:
        raise InvalidInput(
            f"unknown built-in dataset {name!r}; one of {', '.join(BUILTIN_DATASETS)}",
            param="dataset",
        )
    from sklearn import datasets

    loaders: dict[str, Callable[[], Any]] = {
        "iris": datasets.load_iris,
        "digits": datasets.load_digits,
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
        "diabetes": datasets.load_diabetes,
    }
    bunch = loaders[name]()
    if name == "digits":
        return Table(
            kind="image",
            columns={"image": np.asarray(bunch.images, dtype=np.float32)},
            target=np.array([str(int(t)) for t in bunch.target], dtype=object),
            target_name="label",
            task="classification",
        )
    data = np.asarray(bunch.data, dtype=np.float64)
    columns = {str(f): data[:, i].copy() for i, f in enumerate(bunch.feature_names)}
    if name == "diabetes":
        target = np.asarray(bunch.target, dtype=np.float64)
        return Table("tabular", columns, target, "target", "regression")
    names = [str(n) for n in bunch.target_names]
    labels = np.array([names[int(t)] for t in bunch.target], dtype=object)
    return Table("tabular", columns, labels, "target", "classification")
