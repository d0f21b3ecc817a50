"""Bin sampling: how many samples each bin (and each class inside it) gives, and which.

* DQ (ALGORITHMS.md section 4): every bin gives the same fraction ``ratio`` of itself.
* ADQ (section 5): bin n gives a share ``r_n`` of the budget (see :mod:`dsquant.core.scores`).

Both share one rule, so that ADQ with alpha = 0 *is* DQ, counts and indices: the budget
``round(ratio * N)`` is split over the bins by the largest-remainder method (capped at each bin's
size, the overflow going to the other bins in proportion to their shares), then each bin's count
is split over its classes in proportion to the class counts there (largest remainder again),
then each (bin, class) cell draws its count uniformly without replacement from one seeded
``numpy.random.Generator``, cells in the order (bin 0, class 0), (bin 0, class 1), ...

Pure numpy, no I/O.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["largest_remainder", "split_over_classes", "sample_uniform", "sample_with_counts", "skewed_bin_counts", "budget", "validation_indices"]


def budget(ratio: float, n: int) -> int:
    """``round(ratio * n)`` (Python's round: half to even), the size of the compressed set.

    Raises:
        ValueError: if ``ratio`` is not in (0, 1].
    """
    check_ratio(ratio)
    return int(round(float(ratio) * int(n)))


def check_ratio(ratio: float) -> None:
    """Raise ValueError unless ``0 < ratio <= 1``."""
    try:
        ok = 0.0 < float(ratio) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"ratio: expected a keep ratio in (0, 1], got {ratio!r}")


def largest_remainder(
    total: int, weights: Sequence[float], caps: Sequence[int] | None = None
) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weights`` (Hamilton's method).

    Every part gets the floor of its quota ``total * w / sum(w)``; the units left go to the
    largest fractional parts, ties to the lower position. With ``caps``, no part exceeds its cap:
    the excess of capped parts is split again over the others in proportion to their weights.

    Args:
        total: integer >= 0 to split.
        weights: (m,) non-negative weights, not all zero unless ``total`` is 0.
        caps: optional (m,) integer upper bounds with ``sum(caps) >= total``.

    Returns:
        (m,) int64 array summing to ``total``.

    Raises:
        ValueError: on negative or non-finite weights, all-zero weights with ``total > 0``, or
            caps that cannot hold ``total``.
    """
    w = np.asarray(weights, dtype=np.float64)
    total = int(total)
    if w.ndim != 1 or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights: expected finite non-negative numbers, got {w.tolist()}")
    cap = None if caps is None else np.asarray(caps, dtype=np.int64)
    if cap is not None and int(cap.sum()) < total:
        raise ValueError(f"caps: {int(cap.sum())} in all cannot hold a total of {total}")
    out = np.zeros(len(w), dtype=np.int64)
    open_ = np.ones(len(w), dtype=bool) if cap is None else cap > 0
    left = total
    while left > 0:
        wo = np.where(open_, w, 0.0)
        if wo.sum() <= 0:
            # only zero-weight parts can still take units: give them out evenly
            wo = open_.astype(np.float64)
        quota = left * wo / wo.sum()
        part = np.floor(quota).astype(np.int64)
        rest = left - int(part.sum())
        if rest > 0:
            frac = np.where(open_, quota - part, -1.0)
            order = np.lexsort((np.arange(len(w)), -frac))
            part[order[:rest]] += 1
        if cap is None:
            return out + part
        room = cap - out
        over = part > room
        if not over.any():
            return out + part
        # fill the capped parts, then split what they could not take over the rest
        out[over] = cap[over]
        open_ &= ~over
        left = total - int(out.sum())
    return out


def _cells(bins: Sequence[np.ndarray], labels: np.ndarray | None):
    """(K, C) cell sizes and, per bin, its members per class (class order)."""
    bins = [np.asarray(b, dtype=np.int64) for b in bins]
    if labels is None:
        return np.array([[len(b)] for b in bins], dtype=np.int64), [[b] for b in bins]
    classes = np.unique(np.concatenate([labels[b] for b in bins]))
    members = []
    for b in bins:
        lab = labels[b]
        members.append([b[lab == c] for c in classes])
    sizes = np.array([[len(m) for m in row] for row in members], dtype=np.int64)
    return sizes, members


def split_over_classes(bin_counts: np.ndarray, cell_sizes: np.ndarray) -> np.ndarray:
    """Split every bin's count over its classes in proportion to their sizes there, with exact
    bin totals *and* exact class totals (controlled rounding).

    The real target of cell (b, c) is ``t = bin_counts[b] * n_bc / n_b``. Class c's total is the
    largest-remainder rounding of ``sum_b t_bc``; each cell gets ``floor(t)`` or ``ceil(t)``
    (never more than ``n_bc``), chosen by the transportation linear program that meets both sets
    of totals and gives the +1s to the largest fractional parts. (Rounding each bin on its own
    would hand every tie to the same classes in every bin.)

    Args:
        bin_counts: (K,) ints, ``0 <= bin_counts[b] <= n_b``.
        cell_sizes: (K, C) ints ``n_bc``.

    Returns:
        (K, C) int64 counts; rows sum to ``bin_counts``.

    Source: Cox & Ernst (1982), controlled rounding of two-way tables; our choice, beyond the
    papers (ALGORITHMS.md section 4 asks for class balance per bin and exact totals).
    """
    counts = np.asarray(bin_counts, dtype=np.int64)
    sizes = np.asarray(cell_sizes, dtype=np.int64)
    n_b = sizes.sum(axis=1)
    target = np.divide(
        counts[:, None] * sizes, n_b[:, None], out=np.zeros(sizes.shape), where=n_b[:, None] > 0
    )
    lo = np.minimum(np.floor(target + 1e-9), sizes).astype(np.int64)
    hi = np.minimum(np.ceil(target - 1e-9), sizes).astype(np.int64)
    if sizes.shape[1] == 1 or (lo == hi).all():
        return np.where(lo == hi, lo, counts[:, None])
    col_total = largest_remainder(int(counts.sum()), target.sum(axis=0), caps=hi.sum(axis=0))
    col_total = np.clip(col_total, lo.sum(axis=0), hi.sum(axis=0))
    free = hi > lo
    k, c = sizes.shape
    rows, cols = np.nonzero(free)
    nvar = len(rows)
    row_need = counts - lo.sum(axis=1)
    col_need = col_total - lo.sum(axis=0)
    if nvar == 0 or (row_need.sum() == 0 and col_need.sum() == 0):
        return lo
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    a_eq = coo_matrix(
        (np.ones(2 * nvar), (np.concatenate([rows, k + cols]), np.tile(np.arange(nvar), 2))),
        shape=(k + c, nvar),
    )
    frac = (target - lo)[rows, cols]
    # prefer large fractional parts; a tiny position term makes the optimum unique
    cost = -frac - 1e-7 * (np.arange(nvar)[::-1] / max(1, nvar))
    res = linprog(cost, A_eq=a_eq, b_eq=np.concatenate([row_need, col_need]), bounds=(0, 1), method="highs")
    x = np.rint(res.x).astype(np.int64) if res.status == 0 else None
    if x is None or np.abs(res.x - x).max() > 1e-6:
        raise RuntimeError("controlled rounding failed: no integral split of the bin counts over classes")
    out = lo.copy()
    out[rows, cols] += x
    return out


def _check_bins(bins: Sequence[np.ndarray], labels: np.ndarray | None) -> tuple[int, np.ndarray | None]:
    if len(bins) == 0:
        raise ValueError("bins: expected at least one bin, got none")
    flat = np.concatenate([np.asarray(b, dtype=np.int64).ravel() for b in bins])
    if len(flat) == 0:
        raise ValueError("bins: expected at least one sample in the bins, got none")
    if len(np.unique(flat)) != len(flat):
        raise ValueError("bins: expected non-overlapping bins, but an index appears twice")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels: expected a 1-D array, got shape {labels.shape}")
        if flat.min() < 0 or flat.max() >= len(labels):
            raise ValueError(
                f"bins: indices must lie in [0, {len(labels)}) to match labels, got "
                f"[{flat.min()}, {flat.max()}]"
            )
    return len(flat), labels


def sample_with_counts(
    bins: Sequence[np.ndarray],
    bin_counts: Sequence[int],
    labels: np.ndarray | None = None,
    seed: int | np.random.Generator | None = 0,
    rank: np.ndarray | None = None,
) -> np.ndarray:
    """Draw ``bin_counts[k]`` samples from bin k, split over its classes in proportion to their
    counts there (:func:`split_over_classes`: exact bin and class totals), uniformly without
    replacement, cells in the order (bin 0, class 0), (bin 0, class 1), ...

    With ``rank`` ((N,) ints: the greedy step of each sample, :func:`dsquant.generate_bins`
    with ``return_rank``), a cell whose members are all ranked (rank >= 0) takes its lowest
    ranks, the greedy's first picks, instead of drawing; unranked cells still draw uniformly.

    Args:
        bins: K int arrays of dataset indices (as from :func:`dsquant.generate_bins`).
        bin_counts: (K,) ints, ``0 <= bin_counts[k] <= len(bins[k])``.
        labels: optional (N,) class labels of the whole dataset.
        seed: int seed (or a Generator) of the one ``numpy.random.Generator`` used.

    Returns:
        Sorted int64 array of the selected dataset indices.

    Raises:
        ValueError: on overlapping or empty bins, or a count outside [0, len(bin)].
    """
    _check_bins(bins, labels)
    counts = np.asarray(bin_counts, dtype=np.int64)
    if counts.shape != (len(bins),):
        raise ValueError(f"bin_counts: expected {len(bins)} counts, got shape {counts.shape}")
    for k, (c, b) in enumerate(zip(counts, bins)):
        if not 0 <= c <= len(b):
            raise ValueError(f"bin_counts: bin {k} has {len(b)} samples, cannot give {int(c)}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    sizes, members = _cells(bins, labels)
    per_cell = split_over_classes(counts, sizes)
    if rank is not None:
        rank = np.asarray(rank)
        if rank.ndim != 1 or (len(rank) and len(rank) <= max(int(np.max(b)) for b in bins if len(b))):
            raise ValueError(f"rank: expected one rank per sample of the dataset, got shape {rank.shape}")
    picked = []
    for row, row_counts in zip(members, per_cell):
        for m, q in zip(row, row_counts):
            if q and rank is not None and len(m) and (rank[m] >= 0).all():
                picked.append(m[np.argsort(rank[m], kind="stable")[: int(q)]])
            elif q:
                picked.append(rng.choice(m, size=int(q), replace=False))
    if not picked:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(picked)).astype(np.int64)


def sample_uniform(
    bins: Sequence[np.ndarray],
    ratio: float,
    labels: np.ndarray | None = None,
    seed: int | np.random.Generator | None = 0,
) -> np.ndarray:
    """DQ's uniform bin sampling: the fraction ``ratio`` of every bin, class-balanced.

    The total is exactly ``round(ratio * N)``; bin k gives its largest-remainder share of it in
    proportion to its size, split over its classes in proportion to their counts. The same seed
    gives the same indices.

    Args:
        bins: K int arrays of dataset indices that do not overlap.
        ratio: keep ratio in (0, 1].
        labels: optional (N,) class labels of the whole dataset.
        seed: int seed (or a Generator).

    Returns:
        Sorted int64 array of ``round(ratio * N)`` dataset indices.

    Raises:
        ValueError: if ``ratio`` is outside (0, 1] or the bins are empty or overlap.

    Source: ALGORITHMS.md section 4 (the official code's per-cell Python round() and reseeding
    are not copied: totals here are exact).
    """
    n, labels = _check_bins(bins, labels)
    sizes = [len(b) for b in bins]
    counts = largest_remainder(budget(ratio, n), sizes, caps=sizes)
    return sample_with_counts(bins, counts, labels, seed)


def skewed_bin_counts(sizes: Sequence[int], total: int, skew: float = 0.0, drop_last: bool = False) -> np.ndarray:
    """How many of ``total`` samples each of K bins gives when the shares lean towards the
    early (representative) bins (``skew > 0``) or the late (diverse) ones (``skew < 0``).

    Bin k's weight is ``|B_k| * exp(skew * (1 - 2 k / (K - 1)))`` (the factor runs from
    ``e^skew`` for bin 0 to ``e^-skew`` for the last bin); the counts are the largest-remainder
    split of ``total`` by these weights, capped at the bin sizes (:func:`largest_remainder`).
    ``drop_last`` gives the last bin (the greedy's remainder: outliers, mislabelled samples)
    nothing, unless the other bins cannot hold ``total``. With ``skew = 0`` and no drop these are
    exactly DQ's counts (:func:`sample_uniform`).

    Args:
        sizes: (K,) bin sizes.
        total: samples to split, ``0 <= total <= sum(sizes)``.
        skew: finite float.
        drop_last: leave out the last bin.

    Returns:
        (K,) int64 counts summing to ``total``.

    Raises:
        ValueError: on a non-finite skew, or a total the bins cannot hold.

    Source: dsquant's budget-following allocation (docs/selection.md), beyond the DQ/ADQ papers.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    k = len(sizes)
    try:
        skew = float(skew)
    except (TypeError, ValueError):
        skew = float("nan")
    if not np.isfinite(skew):
        raise ValueError(f"skew: expected a finite number, got {skew!r}")
    if not 0 <= int(total) <= int(sizes.sum()):
        raise ValueError(f"total: expected 0 <= total <= {int(sizes.sum())} (the bins' samples), got {total}")
    position = np.linspace(1.0, -1.0, k) if k > 1 else np.zeros(1)
    weights = sizes * np.exp(skew * position)  # exp(0) = 1 exactly: skew 0 gives the sizes
    caps = sizes.copy()
    if drop_last and k > 1 and int(sizes[:-1].sum()) >= int(total):
        caps[-1] = 0
        weights[-1] = 0.0
    return largest_remainder(int(total), weights, caps=caps)


def validation_indices(labels: np.ndarray, fraction: float = 1 / 6, seed: int = 0, classes: Sequence[str] | None = None) -> np.ndarray:
    """(V,) sorted int64 indices of a class-balanced validation split held out of a training
    set: every class gives ``round(fraction * its size)`` samples (at least one, and at least
    one stays out), drawn without replacement with ``seed``, classes in increasing id order.

    Args:
        labels: (N,) int class ids.
        fraction: share of every class held out, in (0, 1).
        seed: the split's seed.
        classes: class names, for the error message.

    Raises:
        ValueError: on a fraction outside (0, 1) or a class of one sample.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction: expected a share in (0, 1), got {fraction!r}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            name = repr(classes[c]) if classes is not None else int(c)
            raise ValueError(f"class {name} has {len(members)} sample; a validation split needs 2 per class")
        k = min(len(members) - 1, max(1, int(round(fraction * len(members)))))
        held.append(rng.choice(members, k, replace=False))
    return np.sort(np.concatenate(held)).astype(np.int64)
