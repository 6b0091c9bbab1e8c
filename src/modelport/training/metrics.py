"""Evaluation metrics as plain JSON-able dicts (stored on the run, shown and compared).

Computed with numpy directly so the numbers do not depend on which trainer produced the
predictions; the tests check them against scikit-learn's values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelport.errors import InvalidInput


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, per-class scores, confusion matrix, binary ROC AUC.

    ``y_true`` holds class indices (int) into ``classes``; ``proba`` is [N, C] probabilities.
    Classes with no predictions (or no rows) score 0 rather than NaN, like scikit-learn's
    ``zero_division=0``.
    """
    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    p = np.asarray(proba, dtype=np.float64)
    n_classes = len(classes)
    if p.ndim != 2 or p.shape != (y.shape[0], n_classes):
        raise InvalidInput(
            f"probabilities have shape {p.shape}, expected ({y.shape[0]}, {n_classes})"
        )
    pred = p.argmax(axis=1) if len(y) else np.zeros(0, dtype=np.int64)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    support = confusion.sum(axis=1)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support.astype(np.float64))
    f1 = _ratio(2 * precision * recall, precision + recall)
    per_class = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(classes)
    }
    # Macro averages over the classes that occur (true or predicted), as scikit-learn does.
    present = (support > 0) | (predicted > 0)
    if not present.any():
        present = np.ones(n_classes, dtype=bool)
    result: dict[str, Any] = {
        "accuracy": float(tp.sum() / len(y)) if len(y) else 0.0,
        "precision_macro": float(precision[present].mean()),
        "recall_macro": float(recall[present].mean()),
        "f1_macro": float(f1[present].mean()),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }
    if n_classes == 2:
        auc = _roc_auc(y == 1, p[:, 1])
        if auc is not None:
            result["roc_auc"] = auc
    return result


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Mean squared error, mean absolute error and R² (0.0 when the target is constant)."""
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise InvalidInput(f"predictions have shape {p.shape}, expected {y.shape}")
    if not len(y):
        return {"mse": 0.0, "mae": 0.0, "r2": 0.0}
    residual = y - p
    ss_res = float(np.sum(residual**2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return {
        "mse": float(np.mean(residual**2)),
        "mae": float(np.mean(np.abs(residual))),
        "r2": r2,
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _roc_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve via the rank statistic (ties count half); None if undefined."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    ranks = np.empty(len(score), dtype=np.float64)
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = float(ranks[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
