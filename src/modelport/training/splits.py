"""Seeded train/validation/test splits and k-fold folds, as sorted row indices.

Splits are a pure function of (n, fractions, seed, labels): the same request always picks
the same rows, which is what makes a run reproducible and comparable to another run on the
same dataset version. Stratified splits keep each class's share in every part (classes are
split one by one, rounding the per-class counts so the totals match the requested sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modelport.errors import InvalidInput


@dataclass(frozen=True)
class Split:
    """Row indices (sorted, disjoint, together all rows) of each part."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def split_indices(
    n: int,
    *,
    validation: float,
    test: float,
    seed: int,
    stratify: np.ndarray | None = None,
) -> Split:
    """Split ``range(n)`` into train/validation/test, deterministically by ``seed``.

    With ``stratify`` (labels, one per row) each class is split separately in the same
    proportions; classes too small to share get their rows in train first.
    """
    _check_fractions(n, validation, test)
    rng = np.random.default_rng(seed)
    groups = _groups(n, stratify, rng)
    n_val, n_test = round(n * validation), round(n * test)
    if n - n_val - n_test < 1:
        raise InvalidInput(f"split leaves no training rows out of {n}", param="split")
    val_counts = _allocate([len(g) for g in groups], n_val)
    rest = [len(g) - c for g, c in zip(groups, val_counts, strict=True)]
    test_counts = _allocate(rest, n_test)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for group, n_v, n_t in zip(groups, val_counts, test_counts, strict=True):
        parts[1].append(group[:n_v])
        parts[2].append(group[n_v : n_v + n_t])
        parts[0].append(group[n_v + n_t :])
    train, val, tst = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return Split(train=train, validation=val, test=tst)


def kfold_indices(
    n: int, k: int, *, seed: int, stratify: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, held-out) index pairs; every row is held out exactly once.

    Rows are shuffled by ``seed``; with ``stratify`` each class is dealt round-robin over
    the folds so each fold keeps the class shares.
    """
    if k < 2 or k > n:
        raise InvalidInput(f"k-fold needs 2 <= folds <= rows ({n}), got {k}", param="split.folds")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(n, dtype=np.int64)
    offset = 0
    for group in _groups(n, stratify, rng):
        fold_of[group] = (np.arange(len(group)) + offset) % k
        offset += len(group)
    everything = np.arange(n, dtype=np.int64)
    return [(everything[fold_of != f], everything[fold_of == f]) for f in range(k)]


def _check_fractions(n: int, validation: float, test: float) -> None:
    if n < 1:
        raise InvalidInput("cannot split an empty dataset", param="split")
    if validation < 0 or test < 0 or validation + test >= 1:
        raise InvalidInput(
            f"split fractions must be >= 0 and sum below 1 (validation={validation}, test={test})",
            param="split",
        )


def _groups(n: int, stratify: np.ndarray | None, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled row groups: one per class (sorted by label) or a single group of all rows."""
    if stratify is None:
        return [rng.permutation(n).astype(np.int64)]
    labels = np.asarray(stratify)
    if labels.shape != (n,):
        raise InvalidInput(f"stratify labels have shape {labels.shape}, expected ({n},)")
    _, inverse = np.unique(labels.astype(str), return_inverse=True)
    groups = []
    for cls in range(int(inverse.max()) + 1 if n else 0):
        rows = np.flatnonzero(inverse == cls).astype(np.int64)
        groups.append(rows[rng.permutation(len(rows))])
    return groups


def _allocate(sizes: list[int], total: int) -> list[int]:
    """Split ``total`` over groups in proportion to ``sizes`` (largest remainders)."""
    available = sum(sizes)
    if available == 0 or total == 0:
        return [0] * len(sizes)
    total = min(total, available)
    exact = [s * total / available for s in sizes]
    counts = [int(np.floor(e)) for e in exact]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order:
        if sum(counts) >= total:
            break
        if counts[i] < sizes[i]:
            counts[i] += 1
    return counts
