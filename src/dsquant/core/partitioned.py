"""Bins of one pool larger than a machine, by partitioned greedy (an approximation of
:func:`dsquant.generate_bins`, ALGORITHMS.md section 3).

For bin k with remaining pool V (|V| = R) and bin size B:

1. the exact coverage term of every candidate x, ``sum_{i in V} cos(x, i) = <u_x, U_V>`` with
   ``U_V = sum_{i in V} u_i`` (u the unit embeddings), needs only ``U_V``: one reduction over
   the pool (a d-vector), kept up to date by subtracting each bin's picks;
2. V is split at random into P parts (the same random partition for every bin, a part losing
   its picked samples); on each part the GraphCut greedy (:class:`~dsquant.core.bins._PoolGreedy`,
   exact float64) with that *global* coverage term and the part's own diversity term picks
   ``ceil(oversample * B * |part| / R)`` candidates (its share of the bin, oversampled);
3. the greedy again, on the union of the candidates (about ``oversample * B`` samples), with the
   same global coverage term, picks the bin's B samples; they leave V.

The last bin takes what remains, as in DQ. Each step holds one part (or the union) in memory:
``max(R / P, oversample * B)`` rows; the parts can be binned on different machines
(:mod:`dsquant.distributed` runs them as Ray tasks; here they run one after the other).

Guarantees: for a monotone submodular objective, greedy on a random partition and again on the
union of the parts' picks (RandGreeDi, Barbosa, Ene, Nguyen and Ward, ICML 2015) is within a
constant factor of the optimum in expectation ((1 - 1/e)/2 of it). DQ's GraphCut with lambda = 1
is submodular but not monotone (a sample's gain turns negative once the bin covers its
neighbourhood), so that guarantee does not carry over; the quality is measured instead
(:func:`graphcut_objective` of each bin against the exact bins, ``benchmarks/bench_partitioned.py``).
With ``n_parts=1`` and ``oversample >= 1`` the result is the exact greedy's (tested): the union
then holds the exact picks, and the greedy on it picks them again.

Pure numpy (the greedy's compiled loop), no I/O; ``features`` may be a memory map or any
array-like that returns rows for an index array (the embedding store's
:class:`~dsquant.embed.store.ShardedArray`).
"""

from __future__ import annotations

import math

import numpy as np

from .bins import _PoolGreedy, bin_sizes
from .similarity import make_kernel

__all__ = ["graphcut_objective", "part_greedy", "partitioned_bins", "unit_sum"]

_CHUNK = 1 << 16  # rows per chunk of a pass over the pool


def _unit(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm in float64 (zero rows stay zero), as the cosine kernel does."""
    x = np.asarray(rows, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    return x * np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)[:, None]


def unit_sum(features, index: np.ndarray) -> np.ndarray:
    """``sum_{i in index} u_i`` (d,) float64, u the unit rows of ``features``, read in chunks."""
    total = np.zeros(features.shape[1], dtype=np.float64)
    for start in range(0, len(index), _CHUNK):
        total += _unit(features[index[start : start + _CHUNK]]).sum(axis=0)
    return total


def graphcut_objective(features, selected: np.ndarray, pool: np.ndarray, lam: float = 1.0) -> float:
    """DQ's GraphCut objective of a bin: ``f(S) = lam * sum_{i in V, j in S} s_ij -
    sum_{i, j in S} s_ij`` with ``s = 0.5 + 0.5 cos`` (the set function whose marginal gain,
    up to the constant ``s_xx``, is the greedy's ``lam sum_V s_ix - 2 sum_S s_jx``).

    Computed exactly in O((|V| + |S|) d) from unit sums: ``sum_{V x S} s = 0.5 |V||S| + 0.5
    <U_V, U_S>``, ``sum_{S x S} s = 0.5 |S|^2 + 0.5 |U_S|^2``.

    Args:
        features: (N, d) array(-like); selected: indices of S; pool: indices of V (S within V).
    """
    u_s = unit_sum(features, np.asarray(selected))
    u_v = unit_sum(features, np.asarray(pool))
    ns, nv = len(selected), len(pool)
    cover = 0.5 * nv * ns + 0.5 * float(u_v @ u_s)
    inner = 0.5 * ns * ns + 0.5 * float(u_s @ u_s)
    return lam * cover - inner


def _shares(total: int, sizes: list[int]) -> list[int]:
    """``total`` split over parts in proportion to ``sizes`` (largest remainder; each at most its
    size; they sum to ``total`` when the parts hold that many)."""
    n = sum(sizes)
    if n == 0:
        return [0] * len(sizes)
    exact = [total * s / n for s in sizes]
    out = [min(s, math.floor(e)) for s, e in zip(sizes, exact)]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - math.floor(exact[i])), i))
    short = total - sum(out)
    for i in order * 2:
        if short <= 0:
            break
        if out[i] < sizes[i]:
            out[i] += 1
            short -= 1
    return out


def part_greedy(features, index: np.ndarray, coverage: np.ndarray, budget: int, lam: float = 1.0, dtype=np.float32, memory: int = 2**30) -> np.ndarray:
    """Positions (in ``index``, rows of ``features``) of ``budget`` greedy GraphCut picks whose
    coverage term is ``<u_x, coverage>`` (the unit sum of a larger pool: exact, float64) and
    whose diversity term is over the picks: one part's step of :func:`partitioned_bins`, in
    selection order."""
    kernel = make_kernel(np.asarray(features[index]), dtype=dtype)
    greedy = _PoolGreedy(kernel, lam, None, memory)
    acc = kernel.accumulator()
    acc.s1[:] = coverage
    greedy.column_sums = kernel.cos_sums(acc)  # exact float64 <u_x, U_V>, as the kernel sums
    greedy.coverage_norm = float(np.sqrt(coverage @ coverage))
    return greedy.select(int(budget))


def partitioned_bins(
    features,
    n_bins: int,
    n_parts: int,
    *,
    seed: int = 0,
    lam: float = 1.0,
    oversample: float = 2.0,
    dtype: type = np.float32,
    memory: int = 2**30,
    progress=None,
    return_rank: bool = False,
    map_parts=None,
    sizes=None,
    union_greedy: bool = True,
):
    """Bins of one unlabelled pool by partitioned greedy (module docstring).

    Args:
        features: (N, d) float rows (an array, a memory map, or a row-indexable array-like);
            plain features only (not a factorised gradient embedding).
        n_bins: K >= 1; bin sizes as :func:`dsquant.generate_bins` on one pool.
        n_parts: P >= 1 random parts (1: the exact greedy).
        seed: seeds the partition.
        lam: GraphCut lambda.
        oversample: each part's candidates per bin, as a multiple (>= 1) of its share of the bin.
        dtype, memory: precision and buffer bytes of the greedy's similarity rows.
        progress: optional callable, called with a short text after every bin.
        return_rank: also return every sample's step in its bin's final greedy, counted from
            the first bin (-1 in the last bin), as :func:`dsquant.generate_bins` does.
        map_parts: ``map_parts(fn, tasks) -> results``, how the parts' greedy runs are
            executed (default: one after the other here; :mod:`dsquant.distributed` passes
            Ray's). Each task is ``(features, index, coverage, take, lam, dtype, memory)`` and
            ``fn`` returns the picked positions in ``index``.
        sizes: explicit bin sizes (K,) summing to N instead of DQ's (:func:`bin_sizes`), e.g.
            ``[B, B, N - 2B]`` to compute only the first two greedy bins.
        union_greedy: False skips step 3: each part picks exactly its share of the bin (shares
            by largest remainder, summing to B; ``oversample`` unused) and the bin is the union
            of the parts' picks. Every part then runs at once and nothing is sequential but the
            reductions: what makes bins of millions feasible (the greedy on the union costs
            about the square of the bin's size), at a cost in quality that
            ``benchmarks/bench_partitioned.py`` measures.

    Returns:
        K sorted int64 index arrays partitioning ``range(N)``; with ``return_rank``,
        ``(bins, rank)``.

    Raises:
        ValueError: on ``n_bins < 1``, ``n_parts < 1``, ``oversample < 1``, more bins than
            samples, or features that are not 2-D.
    """
    shape = getattr(features, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] == 0:
        raise ValueError(f"features: expected a non-empty 2-D array (n_samples, dim), got {shape}")
    n = int(shape[0])
    for name, value, low in (("n_bins", n_bins, 1), ("n_parts", n_parts, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    if not oversample >= 1:
        raise ValueError(f"oversample: expected a number >= 1, got {oversample!r}")
    if n < n_bins:
        raise ValueError(f"n_bins: {n_bins} bins but only {n} samples")
    if sizes is None:
        sizes = bin_sizes([n], n_bins)[0]
    elif len(sizes) != n_bins or int(np.sum(sizes)) != n:
        raise ValueError(f"sizes: expected {n_bins} bin sizes summing to {n}, got {list(sizes)}")
    rng = np.random.default_rng(seed)
    parts = [np.sort(p) for p in np.array_split(rng.permutation(n), n_parts)]
    alive = np.ones(n, dtype=bool)
    coverage = unit_sum(features, np.arange(n))
    bins: list[np.ndarray] = []
    rank = np.full(n, -1, dtype=np.int64)
    ranked = 0
    run = map_parts or (lambda fn, tasks: [fn(*t) for t in tasks])
    for k, size in enumerate(sizes[:-1]):
        remaining = int(alive.sum())
        size = min(int(size), remaining)
        tasks = []
        live = [part[alive[part]] for part in parts]
        takes = _shares(size, [len(idx) for idx in live]) if not union_greedy else [
            min(len(idx), math.ceil(oversample * size * len(idx) / max(1, remaining))) for idx in live
        ]
        for idx, take in zip(live, takes):
            if take:
                tasks.append((features, idx, coverage, int(take), lam, dtype, memory))
        picks = run(part_greedy, tasks)
        candidates = [t[1][p] for t, p in zip(tasks, picks)]
        union = np.concatenate(candidates) if candidates else np.empty(0, dtype=np.int64)
        if not union_greedy:  # the parts' picks, interleaved by their place in each part's greedy
            place = np.concatenate([(np.arange(len(c)) + 0.5) / len(c) for c in candidates]) if candidates else np.empty(0)
            chosen = union[np.argsort(place, kind="stable")]
        else:
            union = np.sort(union)
            chosen = union[part_greedy(features, union, coverage, size, lam, dtype, memory)] if size else union[:0]
        rank[chosen] = ranked + np.arange(len(chosen))
        ranked += len(chosen)
        bins.append(np.sort(chosen).astype(np.int64))
        alive[chosen] = False
        coverage = coverage - unit_sum(features, chosen)
        if progress is not None:
            progress(f"bin {k}: {len(chosen)} of {len(union)} candidates from {len(parts)} parts")
    bins.append(np.flatnonzero(alive).astype(np.int64))
    return (bins, rank) if return_rank else bins
