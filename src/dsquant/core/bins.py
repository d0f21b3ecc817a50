"""Dataset bin generation by repeated greedy GraphCut selection (DQ; ALGORITHMS.md section 3).

For one pool ``P_0`` of n samples and K bins, bin k (k < K) is built greedily from the samples
not yet in a bin, ``V = P_{k-1}``, by the GraphCut marginal gain

    gain(x | S) = lam * sum_{i in V} s_ix  -  2 * sum_{j in S} s_jx,   s_ij = 0.5 + 0.5 cos(f_i, f_j)

and the last bin takes whatever remains. With labels, every class is its own pool and the
per-class bin sizes follow the official code (see :func:`bin_sizes`).

How this is fast and exact:

* ``sum_{i in V} s_ix`` is one matrix-vector product over the pool, not an n x n matrix;
* the score is linear in the unit embeddings, ``score(x) = <u_x, w>``, so a sample's exact score
  costs O(d) and all of them one matrix-vector product;
* running float64 scores are kept for an *active set* A (the best samples at the last exact
  refresh, the bin's picks plus 256), ``score <- score - cos(f_x*, f_A)`` after each pick,
  in one compiled pass (:mod:`dsquant.core._steps`); every other sample has a Cauchy-Schwarz
  upper bound on its score, and when the best of A no longer beats every bound, all scores are
  refreshed exactly and A is chosen again (a lazy greedy in blocks). When the bounds do not
  hold up (flat gains), A is the whole pool;
* the rows ``cos(f_x, f_A)`` are computed by matrix products, a batch at a time, for the
  samples of A with the highest scores, and held in a buffer of bounded size (``memory``);
  rows of samples not picked yet are kept across refreshes and into the next bin;
* nothing is copied per bin: the kernels of :mod:`dsquant.core.similarity` keep the embedding
  as given and narrow an index as the pool shrinks;
* the rows may be float32 and the result is still the exact float64 greedy: samples whose
  running score is within the rounding bound of the best are re-scored exactly before a pick,
  and ties (within 64 float64 ulps) go to the lowest index.

Pure numpy (and a numba-compiled inner loop), no I/O.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from .similarity import GradientEmbedding, make_kernel

__all__ = ["generate_bins", "bin_sizes", "pool_bins", "plan_pools", "assemble_bins"]

ProgressFn = Callable[[int], None]

# Two scores closer than this many float64 ulps of the score scale are a tie (lowest index wins):
# the same score reached by two paths (a running sum, a matrix product) differs in the last bits.
_TIE_ULPS = 64
# Above this many samples within the error band of the best score, re-anchor all scores.
_MAX_RESCORE = 32


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

    Rows are computed ``batch`` at a time (one matrix product) for the samples with the highest
    scores that lack one, and kept until the buffer is full; then the rows of the
    lowest-scoring samples make room. The buffer is one flat array that the caller may pass
    in again for the next kernel: memory stays at ``capacity * width`` values.
    """

    def __init__(self, kernel, capacity: int, batch: int = 256, buffer: np.ndarray | None = None) -> None:
        width = len(kernel)
        self.kernel = kernel
        self.capacity = max(1, min(capacity, width))
        self.batch = max(1, min(batch, self.capacity))
        size = self.capacity * width
        if buffer is None or buffer.size < size or buffer.dtype != kernel.dtype:
            buffer = np.empty(size, dtype=kernel.dtype)
        self.buffer = buffer
        self.rows = buffer[:size].reshape(self.capacity, width)
        self.carried = 0  # rows taken from an earlier state (:meth:`adopt`)
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
            protect = np.zeros(width, dtype=bool)
            protect[top] = True
            held = held[~protect[self.owner[held]]]
            k = len(need) - len(free)
            evict = held[np.argpartition(scores[self.owner[held]], k - 1)[:k]]
            self.slot[self.owner[evict]] = -1
            self.owner[evict] = -1
            free = np.flatnonzero(self.owner < 0)
        slots = free[: len(need)]
        if len(slots) and slots[-1] - slots[0] == len(slots) - 1:  # contiguous: write in place
            self.kernel.rows(need, out=self.rows[slots[0] : slots[-1] + 1])
        else:
            self.rows[slots] = self.kernel.rows(need)
        self.owner[slots] = need
        self.slot[need] = slots
        self.computed += len(need)

    def held_rows(self, index: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows held, to carry past a refresh: (samples (k,), rows (k, width), columns
        (width,)), samples and columns as pool positions (``index`` maps columns to them). A
        copy: at most ``2 * batch`` rows, those of the best ``scores``, so that carrying adds
        little to the memory of the buffer."""
        held = np.flatnonzero(self.owner >= 0)
        limit = 2 * self.batch
        if len(held) > limit:
            held = held[np.argpartition(-scores[self.owner[held]], limit - 1)[:limit]]
        return index[self.owner[held]], self.rows[held], index

    def adopt(self, index: np.ndarray, samples: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> None:
        """Take rows from :meth:`held_rows` of an earlier state (similarities do not depend
        on the pool): the samples in this state's columns ``index`` (sorted pool positions) get
        their rows, the columns the old rows cover are copied and the others computed."""
        at = np.minimum(np.searchsorted(index, samples), len(index) - 1)
        ok = index[at] == samples
        at, rows = at[ok][: self.capacity], rows[ok][: self.capacity]
        k = len(at)
        if k == 0:
            return
        j = np.minimum(np.searchsorted(columns, index), len(columns) - 1)
        shared = columns[j] == index
        block = self.rows[:k]
        block[:, shared] = rows[:, j[shared]]
        fresh = np.flatnonzero(~shared)
        if len(fresh):
            block[:, fresh] = self.kernel.rows(at, cols=fresh)
        self.owner[:k] = at
        self.slot[at] = np.arange(k)
        self.computed += k * len(fresh) / len(index)
        self.carried = k

    def compact(self, keep: np.ndarray, capacity: int) -> "_RowsState":
        """The same rows over the columns where ``keep`` is True, for the restricted kernel,
        moved within the same buffer; at most ``capacity`` rows of the new width are kept."""
        kernel = self.kernel.restrict(keep, rows_only=True)
        m = len(kernel)
        capacity = max(1, min(capacity, m, self.buffer.size // max(1, m)))
        held = np.flatnonzero(self.owner >= 0)
        held = held[keep[self.owner[held]]][:capacity]
        cols = np.flatnonzero(keep)
        flat = self.buffer
        # row s (at s * width) moves to slot j (at j * m), j = 0, 1, ... in increasing s. A chunk
        # is gathered before it is written, and j <= s with m < width, so no write reaches a row
        # of a later chunk.
        for start in range(0, len(held), 256):
            part = np.take(self.rows[held[start : start + 256]], cols, axis=1)
            flat[start * m : start * m + part.size] = part.ravel()
        remap = np.full(len(keep), -1, dtype=np.int64)
        remap[keep] = np.arange(m)
        owners = remap[self.owner[held]]
        new = _RowsState(kernel, capacity, self.batch, buffer=flat)
        new.owner[: len(owners)] = owners
        new.slot[owners] = np.arange(len(owners))
        return new


class _PoolGreedy:
    """The GraphCut greedy over one pool, with the state it carries from bin to bin.

    Scores are ``score(x) = 0.5 * lam * sum_{i in V} cos_ix - sum_{j in S} cos_jx``: the GraphCut
    gain ``lam * sum_V s_ix - 2 sum_S s_jx`` minus ``0.5 lam |V| - |S|``, which is the same for
    every x, so the argmax is the same.

    Running scores are kept for an *active set* A, the samples with the highest exact scores
    at the last refresh (about ``active_factor`` times the bin's picks, plus a margin), with rows
    ``cos(f_x*, f_A)`` from a :class:`_RowsState` (in the kernel's dtype) summed in float64.
    Every other sample has an upper bound on its score (see :mod:`dsquant.core._steps`); a
    pick is taken only when the best of A beats every bound, else all scores are refreshed
    exactly (one matrix-vector product) and A is chosen again. Where the bounds do not hold up
    (flat scores), A becomes the whole pool.

    The result is the exact float64 greedy: each row entry is off by at most
    ``kernel.row_error``, so ``t`` steps after its last exact value a score is within
    ``t * row_error`` of the truth (each sample keeps the step of its last exact value); every
    sample whose running score could be that close to the best is re-scored exactly
    (``sum_S cos_jx = <u_x, sum_S u_j>`` in float64, inside the compiled loop) and keeps the
    exact value, and the best exact score wins, ties (within 64 ulps) going to the lowest index.
    When too many samples are that close, every score is re-anchored to its exact value.
    """

    #: the active set holds this many times the bin's picks (plus ``_ACTIVE_EXTRA``)
    active_factor = 1.0
    _ACTIVE_EXTRA = 256
    #: fewer picks than this per refresh, on average over a bin, and A becomes the whole pool
    _MIN_PICKS_PER_REFRESH = 16
    batch = 128

    def __init__(self, kernel, lam: float, block_size: int | None, memory: int) -> None:
        self.lam = float(lam)
        self.kernel = kernel
        self.index = np.arange(len(kernel), dtype=np.int64)  # column -> position in the pool
        self.column_sums = np.array(kernel.column_sums(), dtype=np.float64)
        self.block_size = block_size
        self.memory = memory
        self.buffer: np.ndarray | None = None
        self.whole_pool = False
        self.carry = None  # rows kept for the next bin: a _RowsState (whole pool) or held_rows()
        # |sum_i u_i| of the coverage term; None: of this pool (the column sums' own). A part
        # of a larger pool (core.partitioned) sets column_sums to <u_x, U_V> and this to |U_V|.
        self.coverage_norm: float | None = None
        self.stats = {"contends": 0, "rescored": 0, "anchors": 0, "refreshes": 0, "rows": 0, "carried": 0, "carried_max": 0}

    def _capacity(self, width: int, dtype) -> int:
        """Rows of ``width`` values that fit: ``block_size`` if given, else the memory budget."""
        if self.block_size is not None:
            return self.block_size
        return max(1, self.memory // (width * np.dtype(dtype).itemsize))

    def select(self, budget: int, progress: ProgressFn | None = None) -> np.ndarray:
        """Greedily pick ``budget`` samples of the remaining pool and remove them from it.

        Returns the picks as positions in the first pool, in selection order.
        """
        # numba is imported on first use: it costs 0.3 s, and most commands never bin
        from ._steps import NEED_ROW, STALE, greedy_steps

        kernel = self.kernel
        n = len(self.index)
        eps = np.finfo(np.float64).eps
        score0 = (0.5 * self.lam) * self.column_sums
        # scores reached by different float64 paths differ by rounding: this close is a tie
        scale = float(np.abs(score0).max()) + budget + 1.0
        tol = _TIE_ULPS * eps * scale
        drift = kernel.row_error + 4 * eps * scale  # per step, at most
        slack = tol + 1e-9 * scale  # rounding of the bounds on the scores outside A
        # the mean direction q = sum_i u_i / |sum_i u_i|: a_x = <u_x, q>, rho_x = |u_x - a_x q|
        total = float(self.column_sums.sum())
        norm = self.coverage_norm if self.coverage_norm is not None else (np.sqrt(total) if total > 0 else 0.0)
        along = self.column_sums / norm if norm > 0 else np.zeros(n)
        selfsim = kernel.self_similarity()
        across = np.sqrt(np.maximum(selfsim - along * along, 0.0)) * (1 + 1e-12) + 1e-12
        # exact float64 sum_{j in S} f_j (or its factors), added to by the compiled loop
        picked_sum = kernel.accumulator()
        counts = np.zeros(3, dtype=np.int64)  # contentions, contender re-scorings, re-anchorings
        chosen = np.empty(budget, dtype=np.int64)
        exact = score0.copy()
        live = np.ones(n, dtype=bool)
        step, reported, refreshes = 0, 0, 0
        state, outside, active = None, None, None
        while step < budget:
            # (re)start: exact scores of the whole pool, a new active set
            if step > 0:
                exact[live] = score0[live] - kernel.cos_sums(picked_sum)[live]
            refreshes += 1
            start = step
            live_at = np.flatnonzero(live)
            m = len(live_at)
            if not self.whole_pool:
                m = min(m, int(self.active_factor * budget) + self._ACTIVE_EXTRA)
            if m < len(live_at):
                top = np.argpartition(-exact[live_at], m - 1)[:m]
                active = np.sort(live_at[top])
            else:
                active = live_at
            inside = np.zeros(n, dtype=bool)
            inside[active] = True
            outside = np.flatnonzero(live & ~inside)
            out_snap = exact[outside]
            out_a, out_rho = along[outside], across[outside]
            coarse = (
                np.array([out_snap.max(), out_a.min(), out_a.max(), out_rho.max()])
                if len(outside)
                else np.zeros(4)
            )
            if isinstance(self.carry, _RowsState) and step == 0 and not len(outside):
                state = self.carry  # the whole-pool rows of the last bin, compacted
            else:
                # rows held for unpicked samples (from this bin before the refresh, or from the
                # last bin) are kept for those that stay active
                if state is not None:
                    kept = state.held_rows(active_at, scores)
                else:  # a whole-pool carry only fits a bin that starts whole-pool
                    kept = self.carry if isinstance(self.carry, tuple) else None
                state = _RowsState(
                    kernel.restrict(inside, rows_only=True), self._capacity(len(active), kernel.dtype),
                    batch=self.batch, buffer=self.buffer,
                )
                self.buffer = state.buffer
                if kept is not None:
                    state.adopt(active, *kept)
            self.carry = None
            active_at = active
            scores = exact[active]
            snap = scores.copy()
            act_a, act_self = along[active], selfsim[active]
            base, stored = score0[active], picked_sum.stored(active)
            acc = np.zeros(3)
            exact_at = np.full(len(active), float(step))  # the step of each score's last exact value
            forced = -1
            while step < budget:
                stop = budget if progress is None else min(budget, reported + 1024)
                step, status, x = greedy_steps(
                    scores, state.rows, state.slot, state.owner, chosen, active, step, stop,
                    forced, exact_at, drift, tol, snap, act_a, act_self, out_snap,
                    out_a, out_rho, coarse, acc, slack, base, stored, picked_sum.first,
                    picked_sum.scale, picked_sum.second, picked_sum.s1, picked_sum.s2, _MAX_RESCORE, counts,
                )
                forced = -1
                if progress is not None and step - reported >= 1024:
                    progress(step - reported)
                    reported = step
                if status == STALE:
                    break
                if status == NEED_ROW:
                    state.refill(scores, len(active) - (step - start), x)
                    forced = x
            live[chosen[start:step]] = False
            self.stats["rows"] += state.computed
            self.stats["carried"] += state.carried
            self.stats["carried_max"] = max(self.stats["carried_max"], state.carried)
            if step < budget and (
                step == start or step < refreshes * self._MIN_PICKS_PER_REFRESH
            ):
                self.whole_pool = True  # the bounds do not hold up on this pool
        self.stats["refreshes"] += refreshes
        for name, count in zip(("contends", "rescored", "anchors"), counts.tolist()):
            self.stats[name] += count
        if progress is not None and budget > reported:
            progress(budget - reported)
        keep = np.ones(n, dtype=bool)
        keep[chosen] = False
        rest = np.flatnonzero(keep)
        picked = self.index[chosen]
        self.index = self.index[rest]
        if len(rest):
            if state is not None and not len(outside):  # whole-pool rows: the next pool's columns
                self.carry = state.compact(keep[active], self._capacity(len(rest), kernel.dtype))
            elif state is not None:  # the held rows, over the columns left, in the next pool's positions
                remap = np.full(n, -1, dtype=np.int64)
                remap[rest] = np.arange(len(rest))
                samples, rows, columns = state.held_rows(active, scores)
                cols = remap[columns] >= 0
                self.carry = (remap[samples], rows[:, cols], remap[columns[cols]])
            self.kernel = kernel.restrict(keep)
            # sum_{i in V'} cos_ix = sum_{i in V} cos_ix - sum_{j in S} cos_jx for the next pool
            self.column_sums = self.column_sums[rest] - self.kernel.cos_sums(picked_sum)
        return picked


def pool_bins(features, sizes, *, lam: float = 1.0, block_size: int | None = None, memory: int = 2**31, dtype: type = np.float32, ordered: bool = False) -> list[np.ndarray]:
    """The bins of one pool given their sizes: what :func:`generate_bins` computes for each
    class, for engines that bin the classes elsewhere (:mod:`dsquant.distributed`).

    Args:
        features: the pool's (n, d) rows or :class:`~dsquant.core.similarity.GradientEmbedding`.
        sizes: (K,) ints summing to n (a row of :func:`bin_sizes`).
        ordered: the first K - 1 bins in the greedy's order instead of sorted.

    Returns:
        K int64 arrays of positions in the pool.
    """
    return _bins_of_pool(features, np.asarray(sizes), lam, block_size, dtype, None, memory, ordered)


def _bins_of_pool(features, sizes, lam, block_size, dtype, progress, memory=2**31, ordered: bool = False) -> list[np.ndarray]:
    """Bins of one pool: local positions for each of the K bins, sorted (or, with ``ordered``,
    the first K - 1 in the order the greedy picked them)."""
    greedy = _PoolGreedy(make_kernel(features, dtype=dtype), lam, block_size, memory)
    out: list[np.ndarray] = []
    for budget in sizes[:-1]:
        budget = min(int(budget), len(greedy.index))
        picked = greedy.select(budget, progress)
        out.append(picked if ordered else np.sort(picked))
    out.append(greedy.index)
    if progress is not None and len(greedy.index):
        progress(len(greedy.index))
    return out


def generate_bins(
    features,
    n_bins: int,
    labels: np.ndarray | None = None,
    *,
    lam: float = 1.0,
    block_size: int | None = None,
    memory: int = 2**31,
    dtype: type = np.float32,
    n_jobs: int | None = None,
    progress: ProgressFn | None = None,
    return_rank: bool = False,
) -> list[np.ndarray] | tuple[list[np.ndarray], np.ndarray]:
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
        block_size: at most this many rows of similarities (each of the pool's length) are held
            per pool; by default as many as ``memory`` allows.
        memory: bytes of similarity rows held per pool when ``block_size`` is None (default
            2 GiB; pools binned at once on ``n_jobs`` threads have one each), plus a copy of at
            most 256 rows carried across a refresh. Nothing else grows faster than n d: no
            n x n matrix is ever built beyond this buffer.
        dtype: precision of the similarity rows, a speed and memory knob only: the result is the
            exact float64 greedy either way. float32 (default) halves the memory and time of
            the rows; float64 needs fewer exact re-scorings.
        n_jobs: pools (classes) binned at once, on threads (default: one per CPU core). The
            result does not depend on it.
        progress: optional callable, called with the number of samples placed since its last
            call (sums to N).
        return_rank: also return every sample's position in its pool's greedy sequence.

    Returns:
        K int64 arrays of sorted indices into ``features``; together they partition
        ``range(N)``. Bin k < K-1 holds the greedy GraphCut selection from what bins 0..k-1 left;
        the last bin holds the remainder. Ties (gains within 64 float64 ulps) go to the lowest
        index. With ``return_rank``, ``(bins, rank)``: rank (N,) int64 is the step at which the
        greedy of the sample's pool (its class) picked it, 0 first; -1 for the last bin, which
        the greedy never ranks. The bins are the same either way.

    Raises:
        ValueError: on a non-2-D or empty feature array, NaN or inf features, ``n_bins < 1``,
            labels whose length differs from N, or a class with fewer samples than bins.

    Source: ALGORITHMS.md sections 2-3; DQ (ICCV 2023) "dataset bin generation".
    """
    n, groups, sizes = plan_pools(features, n_bins, labels, block_size=block_size, memory=memory, dtype=dtype)

    def pool_bins(i: int) -> list[np.ndarray]:
        group = groups[i]
        part = (
            features.take(group)
            if isinstance(features, GradientEmbedding)
            else np.asarray(features[group])
        )
        local = _bins_of_pool(part, sizes[i], lam, block_size, dtype, progress, memory, ordered=return_rank)
        return [group[b] for b in local]

    workers = min(len(groups), n_jobs if n_jobs is not None else (os.cpu_count() or 1))
    if workers > 1:
        # one BLAS thread per pool: the pools fill the cores, and the serial greedy steps of one
        # pool overlap the matrix products of another
        with threadpool_limits(limits=1), ThreadPoolExecutor(workers) as pool:
            per_pool = list(pool.map(pool_bins, range(len(groups))))
    else:
        per_pool = [pool_bins(i) for i in range(len(groups))]
    return assemble_bins(per_pool, n, n_bins, return_rank)


def plan_pools(features, n_bins: int, labels=None, *, block_size=None, memory: int = 2**31, dtype: type = np.float32) -> tuple[int, list[np.ndarray], np.ndarray]:
    """Check :func:`generate_bins`' arguments and split the samples into pools: ``(N, pools,
    sizes)``, pools the (sorted) indices of each class (or one pool without labels) and sizes
    their (pools, K) bin sizes (:func:`bin_sizes`). Engines that bin the pools elsewhere
    (:mod:`dsquant.distributed`) start here and end with :func:`assemble_bins`.

    Raises:
        ValueError: as :func:`generate_bins` documents.
    """
    n = _check_features(features)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins: expected an integer >= 1, got {n_bins!r}")
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size: expected an integer >= 1 or None, got {block_size!r}")
    if memory < 1:
        raise ValueError(f"memory: expected a positive number of bytes, got {memory!r}")
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
    return n, groups, sizes


def assemble_bins(per_pool: list[list[np.ndarray]], n: int, n_bins: int, return_rank: bool = False):
    """The K bins (and ranks) of :func:`generate_bins` from every pool's bins in global indices
    (each pool's first K - 1 bins in greedy order when ``return_rank``)."""
    bins = [
        np.sort(np.concatenate([p[k] for p in per_pool])).astype(np.int64)
        for k in range(n_bins)
    ]
    if not return_rank:
        return bins
    rank = np.full(n, -1, dtype=np.int64)
    for p in per_pool:  # the first K - 1 bins of a pool, in greedy order, one after the other
        ranked = np.concatenate(p[:-1]) if n_bins > 1 else np.empty(0, dtype=np.int64)
        rank[ranked] = np.arange(len(ranked))
    return bins, rank
