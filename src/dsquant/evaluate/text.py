"""Evidence for text data: a classifier trained on the selected records, and coverage of the
selection (how much of the data the subset still represents)."""

from __future__ import annotations

import numpy as np

__all__ = ["align_labels", "logreg_accuracy", "coverage", "nearest_distance"]


def align_labels(train, test) -> np.ndarray:
    """Test labels re-indexed to the training set's class order (classes matched by name).

    Raises:
        ValueError: if the test set has a class the training set lacks.
    """
    index = {c: k for k, c in enumerate(train.classes)}
    missing = sorted(set(test.classes) - set(index))
    if missing:
        raise ValueError(f"test: classes {missing[:5]} are not in the training set")
    return np.array([index[test.classes[y]] for y in test.labels], dtype=np.int64)


def logreg_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, c: float = 10.0, seed: int = 0) -> float:
    """Accuracy of a multinomial logistic regression (L2, ``C = c``) on fixed embeddings."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=1000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(train_x, train_y)
    return float((model.predict(test_x) == test_y).mean())


def nearest_distance(features: np.ndarray, selected: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(N,) cosine distance ``1 - cos`` from every sample to its nearest selected sample (0 for
    the selected ones), in chunks (no N x M matrix)."""
    unit = np.asarray(features, dtype=np.float32)
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    sel = unit[np.asarray(selected, dtype=np.int64)]
    out = np.empty(len(unit))
    for start in range(0, len(unit), chunk):
        out[start : start + chunk] = 1.0 - (unit[start : start + chunk] @ sel.T).max(axis=1)
    return np.maximum(out, 0.0)


def coverage(features: np.ndarray, selected: np.ndarray, groups: np.ndarray | None = None) -> dict:
    """How well ``selected`` covers the data: the mean and 95th percentile of the distance from
    every sample to its nearest selected sample, and per group (e.g. ``source``) the share kept.

    Returns:
        ``{"mean_nn_distance", "p95_nn_distance", "kept_share": {group: fraction}, "groups_kept",
        "groups"}``.
    """
    d = nearest_distance(features, selected)
    out = {"mean_nn_distance": float(d.mean()), "p95_nn_distance": float(np.quantile(d, 0.95))}
    if groups is not None:
        groups = np.asarray(groups)
        names, inverse = np.unique(groups, return_inverse=True)
        total = np.bincount(inverse, minlength=len(names))
        kept = np.bincount(inverse[np.asarray(selected, dtype=np.int64)], minlength=len(names))
        out["kept_share"] = {str(n): float(k / t) for n, k, t in zip(names, kept, total)}
        out["groups_kept"] = int((kept > 0).sum())
        out["groups"] = int(len(names))
    return out
