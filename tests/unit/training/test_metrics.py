"""Metrics equal scikit-learn's values and are plain JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelport.errors import InvalidInput
from modelport.training import classification_metrics, regression_metrics

skm = pytest.importorskip("sklearn.metrics")


def _proba(rng: np.random.Generator, y: np.ndarray, n_classes: int, skill: float) -> np.ndarray:
    logits = rng.normal(size=(len(y), n_classes))
    logits[np.arange(len(y)), y] += skill
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(("n_classes", "seed"), [(2, 0), (3, 1), (5, 2)])
def test_classification_matches_sklearn(n_classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, 300)
    proba = _proba(rng, y, n_classes, skill=1.0)
    classes = [f"c{i}" for i in range(n_classes)]
    m = classification_metrics(y, proba, classes)
    pred = proba.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    for ours, avg in (
        ("precision_macro", "precision"),
        ("recall_macro", "recall"),
        ("f1_macro", "f1"),
    ):
        fn = getattr(skm, f"{avg}_score")
        assert m[ours] == pytest.approx(fn(y, pred, average="macro", zero_division=0), abs=1e-12)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    for i, label in enumerate(classes):
        assert m["per_class"][label] == pytest.approx(
            {"precision": p[i], "recall": r[i], "f1": f[i], "support": int(s[i])}, abs=1e-12
        )
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    if n_classes == 2:
        assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba[:, 1]), abs=1e-12)
    else:
        assert "roc_auc" not in m
    json.dumps(m, allow_nan=False)
    assert all(type(v) is float for k, v in m.items() if k not in ("per_class", "confusion_matrix"))


def test_roc_auc_with_ties_and_class_without_predictions() -> None:
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1, 0])
    score = np.array([0.1, 0.4, 0.4, 0.8, 0.4, 0.9, 0.2, 0.4, 0.3, 0.1], dtype=np.float32)
    proba = np.stack([1 - score, score], axis=1)
    m = classification_metrics(y, proba, ["no", "yes"])
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)
    # a class that is never predicted scores 0 (zero_division=0), not NaN
    never = np.tile(np.array([[0.9, 0.1]], dtype=np.float32), (10, 1))
    m = classification_metrics(y, never, ["no", "yes"])
    assert m["per_class"]["yes"]["precision"] == 0.0
    assert m["precision_macro"] == pytest.approx(
        skm.precision_score(y, np.zeros(10, dtype=int), average="macro", zero_division=0)
    )
    single = classification_metrics(
        np.zeros(4, dtype=int), np.tile([[0.7, 0.3]], (4, 1)), ["a", "b"]
    )
    assert "roc_auc" not in single and single["accuracy"] == 1.0


def test_macro_over_classes_that_occur() -> None:
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])  # class 2 is never true, class 3 never occurs
    pred = np.array([0, 2, 1, 1, 2, 0, 0, 1])
    proba = np.eye(4, dtype=np.float32)[pred]
    m = classification_metrics(y, proba, ["a", "b", "c", "d"])
    for ours, fn in (("precision_macro", skm.precision_score), ("f1_macro", skm.f1_score)):
        assert m[ours] == pytest.approx(fn(y, pred, average="macro", zero_division=0), abs=1e-12)
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_classification_shape_error() -> None:
    with pytest.raises(InvalidInput, match=r"expected \(3, 2\)"):
        classification_metrics(np.array([0, 1, 0]), np.zeros((3, 3)), ["a", "b"])


def test_regression_matches_sklearn() -> None:
    rng = np.random.default_rng(9)
    y = rng.normal(50, 10, 200)
    pred = (y + rng.normal(0, 4, 200)).astype(np.float32)
    m = regression_metrics(y, pred)
    assert m["mse"] == pytest.approx(skm.mean_squared_error(y, pred), rel=1e-12)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), rel=1e-12)
    assert m["r2"] == pytest.approx(skm.r2_score(y, pred), rel=1e-12)
    assert all(type(v) is float for v in m.values())
    with pytest.raises(InvalidInput, match="shape"):
        regression_metrics(y, pred[:5])
