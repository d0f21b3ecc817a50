"""Dataset bin generation by repeated greedy GraphCut selection (DQ; ALGORITHMS.md section 3).

For one pool ``P_0`` of n samples and K bins, bin k (k < K) is built greedily from the samples
not yet in a bin, ``V = P_{k-1}``, by the GraphCut marginal gain

    gain(x | S) = lam * sum_{i in V} s_ix  -  2 * sum_{j in S} s_jx,   s_ij = 0.5 + 0.5 cos(f_i, f_j)

and the last bin takes whatever remains. With labels, every class is its own pool and the
per-class bin sizes follow the official code (see :func:`bin_sizes`).

How this is fast and exact:

* ``sum_{i in V} s_ix`` is one matrix-vector product over the pool (no n x n matrix);
* the gains of every sample are kept up to date with a running sum,
  ``gain <- gain - (1 + cos(f_x*, f_V))`` after each pick, accumulated in float64,
  so a step costs O(n) instead of the official O(|S| n);
* rows ``cos(f_x, f_V)`` are computed only for a block of the current best candidates
  (at most ``block_size`` rows of length n at a time); when the argmax falls outside the
  block, the block is refilled from the current top of the gains. The argmax is always taken
  over the exact gains of every sample, so the result is the plain greedy's, ties going to the
  lowest index.

Pure numpy, no I/O.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from .similarity import GradientEmbedding, make_kernel

__all__ = ["generate_bins", "bin_sizes"]

ProgressFn = Callable[[int], None]

# Two scores closer than this many float64 ulps of the score scale are a tie (lowest index wins):
# the same score reached by two paths (a running sum, a matrix product) differs in the last bits.
_TIE_ULPS = 64


def _check_features(features) -> int:
    if isinstance(features, GradientEmbedding):
        parts = {"delta": features.delta, "features": features.features}
    else:
        if not hasattr(features, "ndim") or features.ndim != 2:
            shape = getattr(features, "shape", type(features).__name__)
            raise ValueError(f"features: expected a 2-D array (n_samples, dim), got {shape}")
        parts = {"features": features}
    for name, arr in parts.items():
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"{name}: expected a non-empty 2-D array, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    return int(next(iter(parts.values())).shape[0])


def check_finite(features) -> None:
    """Raise ValueError naming the first row of ``features`` with a NaN or inf."""
    parts = (
        [features.delta, features.features]
        if isinstance(features, GradientEmbedding)
        else [features]
    )
    for arr in parts:
        # chunked so that a memory-mapped array is never loaded whole
        step = max(1, (1 << 24) // max(1, arr.shape[1]))
        for start in range(0, arr.shape[0], step):
            block = np.asarray(arr[start : start + step])
            if not np.isfinite(block).all():
                bad = start + int(np.nonzero(~np.isfinite(block).all(axis=1))[0][0])
                raise ValueError(f"features: row {bad} contains NaN or inf; expected finite values")


def bin_sizes(class_counts: Sequence[int], n_bins: int) -> np.ndarray:
    """Per-class sizes of the K bins, exactly as the official DQ code computes them.

    The global bin size is ``B = round(N / K)`` (Python's round, half to even). Before bin
    k < K, the remaining pool has ``R_k`` samples, ``n_{c,k}`` of class c; the bin takes the
    fraction ``B / R_k`` of what remains, per class: ``round(B / R_k * n_{c,k})``, capped at
    ``n_{c,k}``. The last bin takes every remaining sample.

    Args:
        class_counts: samples per class (one entry for an unlabelled pool), ints >= 0.
        n_bins: K >= 1.

    Returns:
        (C, K) int64 array: ``sizes[c, k]`` samples of class c go to bin k; every row sums to
        its class count.

    Raises:
        ValueError: if ``n_bins < 1`` or a count is negative.

    Source: ALGORITHMS.md section 3, "Class-wise bin sizes in the official code".
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    if n_bins < 1:
        raise ValueError(f"n_bins: expected an integer >= 1, got {n_bins}")
    if (counts < 0).any():
        raise ValueError(f"class_counts: expected counts >= 0, got {counts.tolist()}")
    total = int(counts.sum())
    sizes = np.zeros((len(counts), n_bins), dtype=np.int64)
    remaining = counts.copy()
    bin_size = round(total / n_bins)
    for k in range(n_bins - 1):
        left = int(remaining.sum())
        if left == 0:
            break
        fraction = bin_size / left
        for c, n_c in enumerate(remaining.tolist()):
            sizes[c, k] = min(round(fraction * n_c), n_c)
        remaining -= sizes[:, k]
    sizes[:, n_bins - 1] = remaining
    return sizes


class _RowsState:
    """Rows ``cos(f_x, f_i)`` over every column i of the kernel, for up to ``capacity`` samples x.

    Rows are computed ``batch`` at a time for the samples with the highest scores that lack one,
    and kept until the buffer is full; then the rows of the lowest-scoring samples make room.
    """

    def __init__(self, kernel, capacity: int, batch: int = 256) -> None:
        width = len(kernel)
        self.kernel = kernel
        self.capacity = max(1, min(capacity, width))
        self.batch = max(1, min(batch, self.capacity))
        self.rows = np.empty((self.capacity, width), dtype=kernel.dtype)
        self.owner = np.full(self.capacity, -1, dtype=np.int64)  # column held by each slot
        self.slot = np.full(width, -1, dtype=np.int64)  # slot holding each column, or -1
        self.computed = 0

    def refill(self, scores: np.ndarray, n_available: int, first: int) -> None:
        """Compute the rows of ``first`` and of the best-scoring samples that lack one."""
        width = len(scores)
        t = min(self.batch, n_available)
        top = np.argpartition(scores, width - t)[width - t :]
        if not (top == first).any():
            top[np.argmin(scores[top])] = first
        need = top[self.slot[top] < 0]
        free = np.flatnonzero(self.owner < 0)
        if len(free) < len(need):  # evict the held rows of the lowest-scoring samples
            held = np.flatnonzero(self.owner >= 0)
            held = held[self.slot[self.owner[held]] >= 0]
            protect = np.zeros(width, dtype=bool)
            protect[top] = True
            held = held[~protect[self.owner[held]]]
            k = len(need) - len(free)
            evict = held[np.argpartition(scores[self.owner[held]], k - 1)[:k]]
            self.slot[self.owner[evict]] = -1
            self.owner[evict] = -1
            free = np.flatnonzero(self.owner < 0)
        slots = free[: len(need)]
        self.rows[slots] = self.kernel.rows(need)
        self.owner[slots] = need
        self.slot[need] = slots
        self.computed += len(need)

    def compact(self, keep: np.ndarray) -> "_RowsState":
        """The same rows over the columns where ``keep`` is True, for the restricted kernel."""
        kernel = self.kernel.restrict(keep)
        new = _RowsState(kernel, self.capacity, self.batch)
        new.computed = self.computed
        remap = np.full(len(keep), -1, dtype=np.int64)
        remap[keep] = np.arange(len(kernel))
        held = np.flatnonzero(self.owner >= 0)
        held = held[keep[self.owner[held]]][: new.capacity]
        if len(held):
            np.take(self.rows[held], np.flatnonzero(keep), axis=1, out=new.rows[: len(held)])
            new.owner[: len(held)] = remap[self.owner[held]]
            new.slot[new.owner[: len(held)]] = np.arange(len(held))
        return new


class _PoolGreedy:
    """The GraphCut greedy over one pool, with the state it carries from bin to bin.

    Scores are ``score(x) = 0.5 * lam * sum_{i in V} cos_ix - sum_{j in S} cos_jx``: the GraphCut
    gain ``lam * sum_V s_ix - 2 sum_S s_jx`` minus ``0.5 lam |V| - |S|``, which is the same for
    every x, so the argmax is the same. Every sample's score is exact at every step (a running
    float64 sum); the rows ``cos(f_x, f_V)`` it needs come from a :class:`_RowsState`, carried
    from bin to bin. Samples already in a bin keep their column (score -inf) until fewer than half
    the columns are alive; then the rows are compacted.
    """

    def __init__(self, kernel, lam: float, block_size: int) -> None:
        self.lam = float(lam)
        self.index = np.arange(len(kernel), dtype=np.int64)  # column -> position in the pool
        self.alive = np.ones(len(kernel), dtype=bool)
        self.column_sums = np.array(kernel.column_sums(), dtype=np.float64)
        self.rows = _RowsState(kernel, block_size)

    @property
    def remaining(self) -> np.ndarray:
        """Positions in the pool of the samples not yet in a bin, sorted."""
        return self.index[self.alive]

    def select(self, budget: int, progress: ProgressFn | None = None) -> np.ndarray:
        """Greedily pick ``budget`` samples of the remaining pool and remove them from it.

        Returns the picks as positions in the pool, in selection order.
        """
        alive = self.alive
        score0 = np.where(alive, (0.5 * self.lam) * self.column_sums, -np.inf)
        scores = score0.copy()
        n_alive = int(alive.sum())
        # scores reached by different float64 paths differ by rounding: this close is a tie
        scale = float(np.abs(score0[alive]).max()) if n_alive else 0.0
        tol = _TIE_ULPS * np.finfo(np.float64).eps * (scale + budget + 1.0)
        state = self.rows
        rows, slot, owner = state.rows, state.slot, state.owner
        chosen = np.empty(budget, dtype=np.int64)
        reported = 0
        for step in range(budget):
            x = int(scores.argmax())
            if x and scores[:x].max() >= scores[x] - tol:  # a near-tie at a lower index wins
                x = int(np.argmax(scores[:x] >= scores[x] - tol))
            j = slot[x]
            if j < 0:
                state.refill(scores, n_alive - step, x)
                j = slot[x]
            scores -= rows[j]
            scores[x] = -np.inf
            owner[j] = -1
            slot[x] = -1
            chosen[step] = x
            if progress is not None and step + 1 - reported >= 1024:
                progress(step + 1 - reported)
                reported = step + 1
        if progress is not None and budget > reported:
            progress(budget - reported)
        alive[chosen] = False
        # sum_{i in V'} cos_ix = sum_{i in V} cos_ix - sum_{j in S} cos_jx for the next pool V'
        sums = np.zeros_like(self.column_sums)
        sums[alive] = self.column_sums[alive] - (score0[alive] - scores[alive])
        self.column_sums = sums
        picked = self.index[chosen]
        if 0 < 2 * (n_alive - budget) < len(alive):
            self.rows = state.compact(alive)
            self.index = self.index[alive]
            self.column_sums = self.column_sums[alive]
            self.alive = np.ones(len(self.index), dtype=bool)
        return picked


def _bins_of_pool(features, sizes, lam, block_size, dtype, progress) -> list[np.ndarray]:
    """Bins of one pool: local positions (sorted int64) for each of the K bins."""
    greedy = _PoolGreedy(make_kernel(features, dtype=dtype), lam, block_size)
    out: list[np.ndarray] = []
    for budget in sizes[:-1]:
        budget = min(int(budget), int(greedy.alive.sum()))
        out.append(np.sort(greedy.select(budget, progress)))
    rest = greedy.remaining
    out.append(rest)
    if progress is not None and len(rest):
        progress(len(rest))
    return out


def generate_bins(
    features,
    n_bins: int,
    labels: np.ndarray | None = None,
    *,
    lam: float = 1.0,
    block_size: int = 4096,
    dtype: type = np.float64,
    n_jobs: int | None = None,
    progress: ProgressFn | None = None,
) -> list[np.ndarray]:
    """Split a dataset into K non-overlapping bins by repeated greedy GraphCut selection.

    Args:
        features: the embedding, either a (N, d) float array (may be a ``np.memmap``) or a
            :class:`~dsquant.core.similarity.GradientEmbedding` (factorised last-layer gradients).
            Similarity is ``s = 0.5 + 0.5 cos``; zero vectors have cosine 0 with everything.
        n_bins: K, the number of bins, >= 1.
        labels: optional (N,) integer class labels. With labels every class is binned
            separately ("balanced"), with the official per-class bin sizes (:func:`bin_sizes`);
            without, the whole set is one pool.
        lam: GraphCut lambda (the DQ papers use 1).
        block_size: at most this many candidate rows of similarities are held per pool
            (memory ``block_size * n_pool`` values of ``dtype``).
        dtype: precision of the similarity rows. float64 (default) is the exact greedy: gains
            closer than 64 float64 ulps count as ties and go to the lowest index. float32 takes
            about 2/3 of the time and half the memory, but gains closer than float32 rounding
            (about 1e-7 of a gain) may come out in either order. Gains are accumulated in
            float64 either way.
        n_jobs: pools (classes) binned at once, on threads (default: one per CPU core). The
            result does not depend on it.
        progress: optional callable, called with the number of samples placed since its last
            call (sums to N).

    Returns:
        K int64 arrays of sorted indices into ``features``; together they partition
        ``range(N)``. Bin k < K-1 holds the greedy GraphCut selection from what bins 0..k-1 left;
        the last bin holds the remainder.

    Raises:
        ValueError: on a non-2-D or empty feature array, NaN or inf features, ``n_bins < 1``,
            labels whose length differs from N, or a class with fewer samples than bins.

    Source: ALGORITHMS.md sections 2-3; DQ (ICCV 2023) "dataset bin generation".
    """
    n = _check_features(features)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins: expected an integer >= 1, got {n_bins!r}")
    if block_size < 1:
        raise ValueError(f"block_size: expected an integer >= 1, got {block_size!r}")
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype: expected float32 or float64, got {np.dtype(dtype)}")
    check_finite(features)
    if labels is None:
        groups = [np.arange(n, dtype=np.int64)]
    else:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"labels: expected shape ({n},) to match features, got {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels: expected integer class ids, got dtype {labels.dtype}")
        classes, inverse = np.unique(labels, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        splits = np.cumsum(np.bincount(inverse))[:-1]
        groups = np.split(order.astype(np.int64), splits)
        small = [(len(g), int(c)) for c, g in zip(classes, groups) if len(g) < n_bins]
        if small:
            m, c = min(small)
            raise ValueError(
                f"n_bins: {n_bins} bins but class {c} has only {m} samples; "
                f"expected at most as many bins as the smallest class has samples"
            )
    if labels is None and n < n_bins:
        raise ValueError(f"n_bins: {n_bins} bins but only {n} samples")
    sizes = bin_sizes([len(g) for g in groups], n_bins)

    def pool_bins(i: int) -> list[np.ndarray]:
        group = groups[i]
        part = (
            features.take(group)
            if isinstance(features, GradientEmbedding)
            else np.asarray(features[group])
        )
        local = _bins_of_pool(part, sizes[i], lam, block_size, dtype, progress)
        return [group[b] for b in local]

    workers = min(len(groups), n_jobs if n_jobs is not None else (os.cpu_count() or 1))
    if workers > 1:
        # one BLAS thread per pool: the pools fill the cores, and the serial greedy steps of one
        # pool overlap the matrix products of another
        with threadpool_limits(limits=1), ThreadPoolExecutor(workers) as pool:
            per_pool = list(pool.map(pool_bins, range(len(groups))))
    else:
        per_pool = [pool_bins(i) for i in range(len(groups))]
    return [
        np.sort(np.concatenate([p[k] for p in per_pool])).astype(np.int64)
        for k in range(n_bins)
    ]
