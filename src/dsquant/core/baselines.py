"""Coreset-selection baselines that data-selection papers compare with: the algorithmic core.

Pure functions over numpy arrays (numpy and scipy, plus what the rest of ``core/`` uses: one
numba-compiled loop for the facility-location greedy and threadpoolctl to run class pools on
threads; no I/O, no torch, no scikit-learn). Scores that need
training dynamics take the arrays a training loop records; the loop itself lives elsewhere.

* Selection by score: :func:`select_by_score` (top-k per class), :func:`ccs_sample`
  (Coverage-centric Coreset Selection, stratified by score).
* Scores from training dynamics: :func:`el2n_scores`, :func:`last_layer_grad_norm` and
  :func:`grand_scores` (Paul et al. 2021), :func:`forgetting_events` (Toneva et al. 2019).
* Uncertainty scores (Coleman et al. 2020): :func:`least_confidence`, :func:`entropy`,
  :func:`margin`. Every score here is oriented "higher = harder / more uncertain".
* Geometry in an embedding X of shape (N, d): :func:`kcenter_greedy` (Sener & Savarese 2018),
  :func:`herding` (Welling 2009; the running-mean rule of iCaRL / DeepCore),
  :func:`facility_location` (CRAIG-style greedy, Mirzasoleiman et al. 2020),
  :func:`moderate_ds` (Xia et al. 2023), :func:`prototype_scores` and
  :func:`prototype_select` (Sorscher et al. 2022), :func:`typiclust` and :func:`typicality`
  (Hacohen, Dekel & Weinshall 2022).

Budgets and class balance follow :func:`dsquant.core.sampling.sample_uniform` exactly: a keep
ratio gives ``budget(ratio, N) = round(ratio * N)`` samples; with ``labels``, a total is split
over the classes by :func:`~dsquant.core.sampling.split_over_classes` (largest remainder in
proportion to the class sizes, the rule ``sample_uniform`` applies to a single bin), and the
method runs inside each class (the classes in ``np.unique(labels)`` order). Without labels the
method runs on the whole pool. Every selector returns a sorted int64 array of dataset indices.
Ties go to the lowest index.
"""

from __future__ import annotations

import heapq
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
from numba import njit
from scipy import sparse, special
from threadpoolctl import threadpool_limits

from .sampling import _cells, budget, split_over_classes

__all__ = [
    "class_quotas",
    "herding_cell_rank",
    "herding_drop_last",
    "select_by_score",
    "el2n_scores",
    "last_layer_grad_norm",
    "grand_scores",
    "forgetting_events",
    "least_confidence",
    "entropy",
    "margin",
    "kcenter_greedy",
    "herding",
    "facility_location",
    "moderate_ds",
    "prototype_scores",
    "prototype_select",
    "typiclust",
    "typicality",
    "ccs_sample",
]

# Temporaries of blocked distance computations stay under this many bytes.
_BLOCK_BYTES = 1 << 26


# ---------------------------------------------------------------------------------------------
# validation and pools


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed: expected an int, a numpy Generator or None, got {seed!r}")
    return np.random.default_rng(seed)


def _check_embedding(X, name: str = "X") -> np.ndarray:
    """(N, d) float32 stays float32, float64 stays float64; other numbers become float64."""
    if not hasattr(X, "ndim"):
        X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D array (n_samples, dim), got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError(f"{name}: expected a real numeric array, got dtype {X.dtype}")
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    step = max(1, _BLOCK_BYTES // (X.shape[1] * X.itemsize))
    for start in range(0, X.shape[0], step):
        block = np.asarray(X[start : start + step])
        if not np.isfinite(block).all():
            bad = start + int(np.nonzero(~np.isfinite(block).all(axis=1))[0][0])
            raise ValueError(f"{name}: row {bad} contains NaN or inf; expected finite values")
    return X


def _check_labels(labels, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"labels: expected a 1-D array of {n} class labels, got shape {labels.shape}")
    return labels


def _pools(labels: np.ndarray | None, n: int) -> list[np.ndarray]:
    """The sorted dataset indices of every class (``np.unique`` order), or the whole pool."""
    if labels is None:
        return [np.arange(n, dtype=np.int64)]
    _, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    return [p.astype(np.int64) for p in np.split(order, np.cumsum(counts)[:-1])]


def _check_count(n, available: int, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer number of samples to select, got {n!r}")
    if not 0 <= int(n) <= available:
        raise ValueError(f"{name}: expected 0 <= {name} <= {available} (the samples available), got {int(n)}")
    return int(n)


def _quotas(total: int, sizes: Sequence[int]) -> np.ndarray:
    sizes = np.asarray(sizes, dtype=np.int64)
    if len(sizes) == 1:
        return np.array([int(total)], dtype=np.int64)
    return split_over_classes(np.array([int(total)], dtype=np.int64), sizes[None, :])[0]


def class_quotas(total: int, labels: np.ndarray | None, n: int | None = None) -> np.ndarray:
    """How many of ``total`` samples each class gives: the rule of
    :func:`~dsquant.core.sampling.sample_uniform` (largest remainder in proportion to the class
    sizes; :func:`~dsquant.core.sampling.split_over_classes` on a single bin).

    Args:
        total: samples to select, ``0 <= total <= N``.
        labels: (N,) class labels, or None for one pool (then ``n`` gives N).
        n: the pool size when ``labels`` is None.

    Returns:
        (C,) int64 counts in ``np.unique(labels)`` order, summing to ``total``, each at most its
        class size; ``[total]`` without labels.

    Raises:
        ValueError: if ``total`` is outside [0, N].
    """
    if labels is None:
        if n is None:
            raise ValueError("n: expected the pool size when labels is None, got None")
        _check_count(total, int(n), "total")
        return np.array([int(total)], dtype=np.int64)
    labels = np.asarray(labels)
    sizes = [len(p) for p in _pools(labels, len(labels))]
    _check_count(total, len(labels), "total")
    return _quotas(total, sizes)


def _ordered_top(scores: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """Positions of the k best scores: by score (descending if ``largest``), ties lowest index."""
    if k == 0:
        return np.empty(0, dtype=np.int64)
    key = -scores if largest else scores
    return np.lexsort((np.arange(len(scores)), key))[:k]


def _check_scores(scores, name: str = "scores") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or len(s) == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array of one score per sample, got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError(f"{name}: sample {int(np.flatnonzero(np.isnan(s))[0])} has a NaN score; expected numbers")
    return s


def _finish(picked: list[np.ndarray]) -> np.ndarray:
    if not picked:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _take(X: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """X's rows ``idx`` as a C-contiguous array (X itself when ``idx`` is the whole pool)."""
    if len(idx) == X.shape[0]:
        return np.ascontiguousarray(X)
    return X[idx]


def _sq_norms(X: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", X, X)


def _check_jobs(n_jobs) -> None:
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs < 1):
        raise ValueError(f"n_jobs: expected an integer >= 1 or None, got {n_jobs!r}")


def _map_pools(fn: Callable, items: list, n_jobs: int | None, one_blas_thread: bool) -> list:
    """``[fn(item) for item in items]``, pools on up to ``n_jobs`` threads (default: one per
    core) with one BLAS thread each (as :func:`dsquant.core.bins.generate_bins`). A single pool
    keeps BLAS's threads unless ``one_blas_thread``: the greedy loops below do one
    matrix-vector product per pick, memory-bound work that a second BLAS thread barely speeds
    up and that slows down badly (thread hand-offs) when the cores are busy."""
    workers = min(len(items), n_jobs if n_jobs is not None else (os.cpu_count() or 1))
    if workers > 1:
        with threadpool_limits(limits=1), ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, items))
    if one_blas_thread:
        with threadpool_limits(limits=1):
            return [fn(item) for item in items]
    return [fn(item) for item in items]


# ---------------------------------------------------------------------------------------------
# selection by score


def select_by_score(scores, ratio: float, labels=None, *, largest: bool = True) -> np.ndarray:
    """Keep the ``round(ratio * N)`` samples with the largest (or smallest) scores, per class.

    The rule behind every score-based baseline (EL2N, GraNd, forgetting, uncertainty, prototype
    distance): rank by score and keep the top ``k``. With labels, class c keeps its quota
    (:func:`class_quotas`) of its own best scores. Ties go to the lowest index.

    Args:
        scores: (N,) real scores (float64 after conversion); +-inf allowed, NaN not.
        ratio: keep ratio in (0, 1].
        labels: optional (N,) class labels.
        largest: keep the largest scores (True: "hard" for EL2N, GraNd, forgetting, uncertainty)
            or the smallest (False: "easy").

    Returns:
        Sorted int64 array of ``round(ratio * N)`` dataset indices.

    Raises:
        ValueError: on a bad ratio, NaN scores, or labels of another length.

    Source: Paul et al. (NeurIPS 2021), Toneva et al. (ICLR 2019), Coleman et al. (ICLR 2020):
    all keep the highest-scoring samples; DeepCore's ``balance=True`` ranks within each class.
    """
    s = _check_scores(scores)
    labels = _check_labels(labels, len(s))
    k = budget(ratio, len(s))
    pools = _pools(labels, len(s))
    quotas = _quotas(k, [len(p) for p in pools])
    return _finish([p[_ordered_top(s[p], int(q), largest)] for p, q in zip(pools, quotas)])


# ---------------------------------------------------------------------------------------------
# scores from training dynamics


def _check_probs(probs, name: str = "probs", runs: bool = True) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    ok_ndim = (2, 3) if runs else (2,)
    if p.ndim not in ok_ndim or 0 in p.shape:
        want = "(N, C) or (R, N, C)" if runs else "(N, C)"
        raise ValueError(f"{name}: expected a non-empty {want} array of class probabilities, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"{name}: contains NaN or inf; expected finite probabilities")
    return p


def _check_targets(labels, n: int, n_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"labels: expected a 1-D array of {n} class indices, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y))):
            raise ValueError(f"labels: expected integer class indices, got dtype {y.dtype}")
        y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels: expected class indices in [0, {n_classes}), got [{int(y.min())}, {int(y.max())}]")
    return y.astype(np.int64)


def _error_vectors(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``p - onehot(y)`` over the last axis (a copy)."""
    delta = p.copy()
    delta[..., np.arange(p.shape[-2]), y] -= 1.0
    return delta


def el2n_scores(probs, labels) -> np.ndarray:
    """EL2N: the L2 norm of the error vector, averaged over training runs.

    ``EL2N(x, y) = E_w || p(w, x) - onehot(y) ||_2``, the expectation taken over the R runs
    (weights ``w`` after a few epochs of independent trainings). Higher = harder.

    Args:
        probs: (N, C) softmax outputs of one run or (R, N, C) of R runs; finite.
        labels: (N,) integer class indices in [0, C).

    Returns:
        (N,) float64 scores in [0, sqrt(2)] for probability vectors.

    Raises:
        ValueError: on bad shapes, non-finite probabilities, or labels outside [0, C).

    Source: Paul, Ganguli & Dziugaite, "Deep Learning on a Data Diet: Finding Important
    Examples Early in Training", NeurIPS 2021, the EL2N score (averaged over 10 runs there).
    """
    p = _check_probs(probs)
    y = _check_targets(labels, p.shape[-2], p.shape[-1])
    norms = np.linalg.norm(_error_vectors(p, y), axis=-1)
    return norms.mean(axis=0) if norms.ndim == 2 else norms


def last_layer_grad_norm(probs, labels, features) -> np.ndarray:
    """Norm of the cross-entropy gradient w.r.t. the weights and bias of a linear head.

    For logits ``z = W h + b`` (W: C x d, b: C) and ``L = -log softmax(z)_y``, the gradient is
    ``dL/dW = delta h^T``, ``dL/db = delta`` with ``delta = p - onehot(y)``, so

        || (dL/dW, dL/db) ||_F = sqrt(||delta||^2 ||h||^2 + ||delta||^2)
                               = ||p - onehot(y)||_2 * sqrt(||h||_2^2 + 1)

    exactly (``||delta h^T||_F = ||delta|| ||h||``). This is the last-layer stand-in for GraNd
    that DeepCore uses; the paper's GraNd takes the gradient over all parameters.

    Args:
        probs: (N, C) or (R, N, C) softmax outputs.
        labels: (N,) integer class indices in [0, C).
        features: the penultimate features h fed to the head: (N, d), or (R, N, d) matching
            ``probs`` run for run ((N, d) is used for every run).

    Returns:
        float64 norms, (N,) or (R, N) like ``probs``.

    Raises:
        ValueError: on mismatched shapes, non-finite values, or labels outside [0, C).

    Source: Paul et al., NeurIPS 2021 (GraNd); the identity is the chain rule for a
    linear layer (cf. ALGORITHMS.md section 1: ``||g||^2 = ||delta||^2 (1 + ||e||^2)``).
    """
    p = _check_probs(probs)
    y = _check_targets(labels, p.shape[-2], p.shape[-1])
    h = np.asarray(features, dtype=np.float64)
    if h.ndim not in (2, 3) or h.shape[-2] != p.shape[-2] or (h.ndim == 3 and h.shape[:-1] != p.shape[:-1]):
        raise ValueError(
            f"features: expected (N, d) or (R, N, d) matching probs {p.shape[:-1]}, got shape {h.shape}"
        )
    if not np.isfinite(h).all():
        raise ValueError("features: contains NaN or inf; expected finite values")
    err = np.linalg.norm(_error_vectors(p, y), axis=-1)
    return err * np.sqrt(np.einsum("...j,...j->...", h, h) + 1.0)


def grand_scores(grad_norms) -> np.ndarray:
    """GraNd: the expected gradient norm ``E_w ||g(w, x, y)||_2``, the mean over runs.

    Args:
        grad_norms: (N,) norms of one run or (R, N) of R runs (e.g. from
            :func:`last_layer_grad_norm`), finite and >= 0.

    Returns:
        (N,) float64 scores. Higher = harder.

    Raises:
        ValueError: on a bad shape or negative / non-finite norms.

    Source: Paul et al., NeurIPS 2021, the GraNd score (at initialisation or early in
    training, averaged over 10 runs there).
    """
    g = np.asarray(grad_norms, dtype=np.float64)
    if g.ndim not in (1, 2) or 0 in g.shape:
        raise ValueError(f"grad_norms: expected a non-empty (N,) or (R, N) array, got shape {g.shape}")
    if not np.isfinite(g).all() or (g < 0).any():
        raise ValueError("grad_norms: expected finite norms >= 0")
    return g.mean(axis=0) if g.ndim == 2 else g.copy()


def forgetting_events(correct, *, never_learned: float | None = None) -> np.ndarray:
    """Number of forgetting events of every sample: correct at one epoch, wrong at the next.

    A forgetting event of sample i is an epoch t with ``acc_i^t > acc_i^{t+1}`` (correct at t,
    misclassified at t + 1). Samples learnt at some point and never forgotten score 0
    ("unforgettable"). Samples never classified correctly have no event to count; the paper
    ranks them with the most forgettable, and its released code
    (``order_examples_by_forgetting.py``) gives them ``T`` (the number of presentations) per run,
    more than any learnt sample can reach (at most ``floor(T / 2)`` events). That is the default
    here; ``never_learned=np.inf`` gives them infinity instead. With several runs the counts are
    summed over runs, as in the released code. Higher = harder.

    Args:
        correct: (T, N) or (R, T, N) per-epoch correctness (bool, or 0/1 integers), T >= 1.
        never_learned: the count of a never-learnt sample in one run; None for T.

    Returns:
        (N,) float64 counts (float so that ``inf`` fits).

    Raises:
        ValueError: on a bad shape or values other than 0/1, or a negative/NaN ``never_learned``.

    Source: Toneva et al., "An Empirical Study of Example Forgetting during Deep Neural Network
    Learning", ICLR 2019 (forgetting events, unforgettable examples); the released
    ``order_examples_by_forgetting.py`` for never-learnt samples and several runs.
    """
    c = np.asarray(correct)
    if c.ndim not in (2, 3) or 0 in c.shape:
        raise ValueError(f"correct: expected a non-empty (T, N) or (R, T, N) array, got shape {c.shape}")
    if c.dtype != bool:
        if not np.isin(c, (0, 1)).all():
            raise ValueError("correct: expected booleans or 0/1 values (correct at that epoch)")
        c = c.astype(bool)
    if c.ndim == 2:
        c = c[None]
    t = c.shape[1]
    if never_learned is None:
        never = float(t)
    else:
        never = float(never_learned)
        if math.isnan(never) or never < 0:
            raise ValueError(f"never_learned: expected a count >= 0 (or inf), got {never_learned!r}")
    events = (c[:, :-1] & ~c[:, 1:]).sum(axis=1).astype(np.float64)
    learnt = c.any(axis=1)
    return np.where(learnt, events, never).sum(axis=0)


def least_confidence(probs) -> np.ndarray:
    """Least-confidence uncertainty ``1 - max_c p_c``. Higher = more uncertain.

    Args:
        probs: (N, C) class probabilities (of a proxy model).

    Returns:
        (N,) float64.

    Raises:
        ValueError: on a bad shape or non-finite values.

    Source: Coleman et al., "Selection via Proxy: Efficient Data Selection for Deep Learning",
    ICLR 2020 (the least-confidence metric).
    """
    p = _check_probs(probs, runs=False)
    return 1.0 - p.max(axis=1)


def entropy(probs) -> np.ndarray:
    """Predictive entropy ``-sum_c p_c log p_c`` (natural log, ``0 log 0 = 0``). Higher = more
    uncertain.

    Args:
        probs: (N, C) class probabilities, >= 0.

    Returns:
        (N,) float64 in [0, log C] for probability vectors.

    Raises:
        ValueError: on a bad shape, non-finite or negative values.

    Source: Coleman et al., ICLR 2020 (the entropy metric).
    """
    p = _check_probs(probs, runs=False)
    if (p < 0).any():
        raise ValueError("probs: expected probabilities >= 0 for the entropy")
    return special.entr(p).sum(axis=1)


def margin(probs) -> np.ndarray:
    """Margin uncertainty ``1 - (p_(1) - p_(2))``: one minus the gap between the two largest
    probabilities. Higher = more uncertain (oriented like the other scores, so that the top of
    :func:`select_by_score` is the smallest margin, as DeepCore's ``Margin`` selects).

    Args:
        probs: (N, C) class probabilities, C >= 2.

    Returns:
        (N,) float64 in [0, 1] for probability vectors.

    Raises:
        ValueError: on a bad shape (C < 2 included) or non-finite values.

    Source: Scheffer et al. (2001), margin sampling; the uncertainty baselines of Coleman et al.
    (ICLR 2020) and DeepCore (Guo et al., 2022).
    """
    p = _check_probs(probs, runs=False)
    if p.shape[1] < 2:
        raise ValueError(f"probs: the margin needs C >= 2 classes, got shape {p.shape}")
    top2 = -np.partition(-p, 1, axis=1)[:, :2]
    return 1.0 - (top2[:, 0] - top2[:, 1])


# ---------------------------------------------------------------------------------------------
# k-center greedy


def _min_sq_dist_to(Xp: np.ndarray, sq: np.ndarray, centers: np.ndarray, out: np.ndarray) -> None:
    """``out = min(out, min_j ||x_i - c_j||^2)``, centres a block at a time (bounded memory)."""
    step = max(1, _BLOCK_BYTES // (Xp.shape[0] * Xp.itemsize))
    for s in range(0, len(centers), step):
        c = centers[s : s + step]
        d = Xp @ c.T
        d *= -2.0
        d += sq[:, None]
        d += _sq_norms(c)[None, :]
        np.minimum(out, d.min(axis=1), out=out)


# k-center greedy tracks this many candidates exactly between two refreshes of every distance,
# and applies at most this many new centres in one refresh (one matrix product of N x batch).
_KCENTER_ACTIVE = 256
_KCENTER_BATCH = 128


def _kcenter_pool(Xp: np.ndarray, k: int, start: np.ndarray, first: int | None) -> np.ndarray:
    """Farthest-first traversal of one pool: ``k`` new positions (not in ``start``); without
    ``start``, the first pick is ``first``.

    Exact, and cheaper than one matrix-vector product over the pool per pick: ``mind`` holds
    every sample's squared distance to its nearest centre as of the last *refresh*; since
    then it can only have decreased, so the largest value outside an active set A (the
    ``_KCENTER_ACTIVE`` farthest samples at the refresh) bounds every sample outside A. A's
    distances are kept exact after every pick (|A| x d work); the best of A is the next centre
    whenever it beats that bound strictly. Otherwise (or after ``_KCENTER_BATCH`` picks) all
    pending centres are applied to every sample in one matrix product and the exact argmax
    is taken. Ties go to the lowest index (A is sorted; a tie with the bound forces a refresh).
    """
    n = Xp.shape[0]
    sq = _sq_norms(Xp)
    mind = np.full(n, np.inf)
    taken = np.zeros(n, dtype=bool)
    picks = np.empty(k, dtype=np.int64)
    t = 0
    pending = [int(i) for i in start]
    taken[start] = True
    if not len(start) and k:
        # no centre yet: the first one was drawn uniformly (DeepCore), the rest are greedy
        picks[0] = first
        taken[first] = True
        pending = [int(first)]
        t = 1
    active = None
    while t < k:
        if active is not None:
            ia = int(np.argmax(dist_a))
            if dist_a[ia] > bound:
                x = int(active[ia])
                picks[t] = x
                t += 1
                taken[x] = True
                pending.append(x)
                dist_a[ia] = -np.inf
                if t == k:
                    break
                _min_sq_dist_to(rows_a, sq_a, Xp[x : x + 1], dist_a)
                if len(pending) < _KCENTER_BATCH:
                    continue
        # refresh: every pending centre applied to every sample (matrix products in blocks)
        _min_sq_dist_to(Xp, sq, Xp[np.array(pending, dtype=np.int64)], mind)
        mind[taken] = -np.inf
        x = int(np.argmax(mind))
        picks[t] = x
        t += 1
        taken[x] = True
        mind[x] = -np.inf
        pending = [x]
        if t == k:
            break
        m = min(_KCENTER_ACTIVE, n)
        active = np.sort(np.argpartition(-mind, m - 1)[:m]) if m < n else np.arange(n)
        outside = mind.copy()
        outside[active] = -np.inf
        bound = float(outside.max())
        rows_a, sq_a = Xp[active], sq[active]
        dist_a = mind[active]
        _min_sq_dist_to(rows_a, sq_a, Xp[x : x + 1], dist_a)
    return picks


def kcenter_greedy(X, n: int, *, seed, labels=None, initial=None, n_jobs: int | None = None) -> np.ndarray:
    """k-center greedy (farthest-first traversal) in the embedding X.

    Starting from the centres ``initial`` (or, without any, one sample drawn uniformly with
    ``seed``), repeatedly add the sample farthest from its nearest centre,

        u = argmax_{i not in S} min_{j in S} ||x_i - x_j||_2 ,   S <- S + {u},

    a 2-approximation of the minimax facility location (k-center) problem. Euclidean distances
    (squared, ``||x||^2 - 2 <x, c> + ||c||^2``). Time O(n N d), in matrix products over blocks
    of up to 128 new centres (the 256 farthest samples are kept exact in between; see
    ``_kcenter_pool``); memory O(N) beyond X (no N x N matrix: N x 128 distances at most).
    Ties go to the lowest index. With labels every class is its own pool, gets its
    quota of ``n`` (:func:`class_quotas`, in proportion to the samples not in ``initial``), and
    uses the members of ``initial`` of its class as its centres.

    Args:
        X: (N, d) embedding, float32 (distances in float32) or float64; finite.
        n: number of new samples to select, ``0 <= n <= N - len(initial)``.
        seed: int seed or Generator for the random first centre of pools without initial
            centres (one Generator, pools in class order); the same seed gives the same indices.
        labels: optional (N,) class labels.
        initial: optional dataset indices already selected (e.g. a labelled set): centres from
            the start, never returned.
        n_jobs: pools (classes) run at once, on threads (default: one per CPU core); the
            result does not depend on it.

    Returns:
        Sorted int64 array of ``n`` new dataset indices.

    Raises:
        ValueError: on a bad X, n out of range, bad or duplicate ``initial`` indices.

    Source: Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set
    Approach", ICLR 2018, Algorithm 1 (k-Center-Greedy); DeepCore's ``kCenterGreedy`` (random
    first centre).
    """
    X = _check_embedding(X)
    N = X.shape[0]
    labels = _check_labels(labels, N)
    rng = _rng(seed)
    init = np.zeros(N, dtype=bool)
    if initial is not None:
        ini = np.asarray(initial)
        if ini.ndim != 1 or (len(ini) and not np.issubdtype(ini.dtype, np.integer)):
            raise ValueError(f"initial: expected a 1-D array of dataset indices, got {ini.dtype} shape {ini.shape}")
        if len(ini) and (ini.min() < 0 or ini.max() >= N):
            raise ValueError(f"initial: indices must lie in [0, {N}), got [{int(ini.min())}, {int(ini.max())}]")
        if len(np.unique(ini)) != len(ini):
            raise ValueError("initial: expected distinct indices, but an index appears twice")
        init[ini] = True
    n = _check_count(n, N - int(init.sum()))
    _check_jobs(n_jobs)
    pools = _pools(labels, N)
    quotas = _quotas(n, [int((~init[p]).sum()) for p in pools])
    tasks = []
    for p, q in zip(pools, quotas):
        if q:
            start = np.flatnonzero(init[p])
            # the random first centres are drawn here, in class order: the result does not
            # depend on the threads
            first = None if len(start) else int(rng.integers(len(p)))
            tasks.append((p, int(q), start, first))

    def run(task) -> np.ndarray:
        p, q, start, first = task
        return p[_kcenter_pool(_take(X, p), q, start, first)]

    return _finish(_map_pools(run, tasks, n_jobs, one_blas_thread=True))


# ---------------------------------------------------------------------------------------------
# herding


def _herding_pool(Xp: np.ndarray, k: int) -> np.ndarray:
    n = Xp.shape[0]
    sq = _sq_norms(Xp).astype(np.float64)
    mu = Xp.mean(axis=0, dtype=np.float64)
    total = np.zeros(Xp.shape[1], dtype=np.float64)
    taken = np.zeros(n, dtype=bool)
    picks = np.empty(k, dtype=np.int64)
    for t in range(k):
        # argmin_x ||mu - (total + x) / (t + 1)||^2 = argmin_x ||x||^2 - 2 <(t + 1) mu - total, x>
        w = ((t + 1) * mu - total).astype(Xp.dtype)
        score = sq - 2.0 * (Xp @ w)
        score[taken] = np.inf
        x = int(np.argmin(score))
        picks[t] = x
        taken[x] = True
        total += Xp[x]
    return picks


def _count_pools(X, n, labels, n_jobs):
    """The checked embedding, count, per-class pools and their quotas of a count-based
    selection (herding, facility location)."""
    X = _check_embedding(X)
    N = X.shape[0]
    labels = _check_labels(labels, N)
    n = _check_count(n, N)
    _check_jobs(n_jobs)
    pools = _pools(labels, N)
    return X, n, pools, _quotas(n, [len(p) for p in pools])


def herding(X, n: int, labels=None, *, n_jobs: int | None = None) -> np.ndarray:
    """Herding: greedily pick the sample that brings the mean of the picks closest to the mean.

    With ``mu`` the mean of the pool (the class, with labels) and ``S_t`` the first t picks,

        x_{t+1} = argmin_{x not in S_t} || mu - (x + sum_{s in S_t} s) / (t + 1) ||_2 ,

    one matrix-vector product per pick (O(n N d) time, O(N) memory). Deterministic; ties go to
    the lowest index. Note: Welling's herding / Chen et al.'s kernel herding with a linear
    kernel is ``argmax_x <(t + 1) mu - sum S_t, x>``, which drops the ``||x||^2`` term of this
    rule; the two agree on unit-norm embeddings. DeepCore's ``herding.py`` takes the *argmax* of
    this distance (the sample that moves the mean farthest) and, with ``balance=True``, returns
    positions inside the class instead of dataset indices; we follow the stated rule (argmin).

    Args:
        X: (N, d) embedding, float32 or float64; finite.
        n: number of samples to select, ``0 <= n <= N``.
        labels: optional (N,) class labels (class means; per-class quotas, :func:`class_quotas`).
        n_jobs: pools (classes) run at once, on threads (default: one per CPU core); the
            result does not depend on it.

    Returns:
        Sorted int64 array of ``n`` dataset indices.

    Raises:
        ValueError: on a bad X or n out of range.

    Source: Welling, "Herding Dynamical Weights to Learn", ICML 2009; Chen, Welling & Smola,
    "Super-Samples from Kernel Herding", UAI 2010; the running-mean rule as in Rebuffi et al.,
    iCaRL (CVPR 2017), Algorithm 4, and DeepCore (Guo et al., 2022).
    """
    X, n, pools, quotas = _count_pools(X, n, labels, n_jobs)
    tasks = [(p, int(q)) for p, q in zip(pools, quotas) if q]
    return _finish(_map_pools(lambda t: t[0][_herding_pool(_take(X, t[0]), t[1])], tasks, n_jobs, one_blas_thread=True))


def herding_drop_last(X, bins: Sequence[np.ndarray], n: int, labels=None) -> np.ndarray:
    """Herding per class over every bin but the last: the greedy GraphCut's remainder (the
    samples it never picked: outliers, atypical and mislabelled ones) is left out, and
    :func:`herding` picks from the rest of each class, towards the mean of that rest.

    Class quotas are :func:`herding`'s on the whole dataset (:func:`class_quotas`); a class
    whose quota exceeds its rows outside the last bin herds over all its rows instead (large
    budgets; never at the small per-class budgets this is for). With one bin nothing is left
    out: it is :func:`herding` exactly.

    Args:
        X: (N, d) embedding of the whole dataset, float32 or float64; finite.
        bins: K int arrays of dataset indices (as from :func:`dsquant.generate_bins`), the last
            one the greedy's remainder.
        n: number of samples to select, ``0 <= n <= N``.
        labels: optional (N,) class labels.

    Returns:
        Sorted int64 array of ``n`` dataset indices.

    Raises:
        ValueError: on a bad X, n out of range, or bins that do not fit X.

    Source: dsquant (docs/selection.md, ``herding-drop``; beyond the papers): DQ's bins
    (Zhou et al., ICCV 2023) and herding as :func:`herding`.
    """
    X = _check_embedding(X)
    N = X.shape[0]
    labels = _check_labels(labels, N)
    n = _check_count(n, N)
    bins = [np.asarray(b, dtype=np.int64) for b in bins]
    if not bins or any(len(b) and (b.min() < 0 or b.max() >= N) for b in bins):
        raise ValueError(f"bins: expected at least one bin of dataset indices in [0, {N}) of X's rows")
    out_of_last = np.zeros(N, dtype=bool)
    if len(bins) > 1:
        out_of_last[np.concatenate(bins[:-1])] = True
    else:
        out_of_last[:] = True
    pools = _pools(labels, N)
    picks = []
    for pool, q in zip(pools, _quotas(n, [len(p) for p in pools])):
        kept = pool[out_of_last[pool]]
        rows = kept if len(kept) >= q else pool
        if q:
            picks.append(rows[_herding_pool(_take(X, rows), int(q))])
    return _finish(picks)


def herding_cell_rank(X, bins: Sequence[np.ndarray], bin_counts: Sequence[int], labels=None) -> np.ndarray:
    """Herding order inside every (bin, class) cell, as ranks for
    :func:`dsquant.core.sampling.sample_with_counts`.

    The cell counts are those ``sample_with_counts`` gives (``bin_counts`` split over each bin's
    classes by :func:`~dsquant.core.sampling.split_over_classes`); a cell that gives q samples
    runs :func:`herding` on its own members (towards the cell's mean) for q picks: they get ranks
    0..q-1 in pick order, its other members rank q. ``sample_with_counts(bins, bin_counts,
    labels, seed, rank)`` then takes exactly the herding picks of every cell; cells that give
    nothing are ranked 0 throughout (never read). Cost O(sum over cells of q n_cell d).

    Args:
        X: (N, d) embedding of the whole dataset, float32 or float64; finite.
        bins: K int arrays of dataset indices (as from :func:`dsquant.generate_bins`).
        bin_counts: (K,) ints, ``0 <= bin_counts[k] <= len(bins[k])``.
        labels: optional (N,) class labels.

    Returns:
        (N,) int64 ranks (samples in no bin: -1).

    Raises:
        ValueError: on a bad X, bins that do not fit X, or a count out of range.

    Source: dsquant's ``dq-budget`` extension (docs/selection.md); herding as :func:`herding`.
    """
    X = _check_embedding(X)
    N = X.shape[0]
    labels = _check_labels(labels, N)
    bins = [np.asarray(b, dtype=np.int64) for b in bins]
    counts = np.asarray(bin_counts, dtype=np.int64)
    if counts.shape != (len(bins),) or any(not 0 <= c <= len(b) for c, b in zip(counts, bins)):
        raise ValueError(f"bin_counts: expected {len(bins)} counts, each within its bin's size, got {counts.tolist()}")
    if any(len(b) and (b.min() < 0 or b.max() >= N) for b in bins):
        raise ValueError(f"bins: expected dataset indices in [0, {N}) of X's rows")
    sizes, members = _cells(bins, labels)
    per_cell = split_over_classes(counts, sizes)
    rank = np.full(N, -1, dtype=np.int64)
    for row, row_counts in zip(members, per_cell):
        for m, q in zip(row, row_counts):
            if not len(m):
                continue
            rank[m] = int(q)
            if q:
                rank[m[_herding_pool(_take(X, m), int(q))]] = np.arange(int(q))
    return rank


# ---------------------------------------------------------------------------------------------
# facility location


def _similarity_matrix(Xp: np.ndarray, metric: str) -> tuple[np.ndarray, float]:
    """The dense (n, n) similarity of one pool in X's dtype, and its floor (the value of
    "nothing covered yet", at or below every entry).

    Cosine: the matrix holds ``cos`` itself with floor -1: ``F`` with ``s = 0.5 + 0.5 cos`` is
    ``0.5 n + 0.5 sum_i max(-1, max_{j in S} cos_ij)``, so gains differ by the factor 0.5 only
    and the greedy is the same, without three passes over the n x n matrix."""
    if metric == "cosine":
        norm = np.sqrt(_sq_norms(Xp))
        unit = np.divide(Xp, norm[:, None], out=np.zeros_like(Xp), where=norm[:, None] > 0)
        return unit @ unit.T, -1.0
    # euclidean: s_ij = d_max - ||x_i - x_j||, non-negative (CRAIG)
    sq = _sq_norms(Xp)
    S = Xp @ Xp.T
    S *= -2.0
    S += sq[:, None]
    S += sq[None, :]
    np.maximum(S, 0.0, out=S)
    np.sqrt(S, out=S)
    np.fill_diagonal(S, 0.0)
    np.subtract(S.max(), S, out=S)
    return S, 0.0


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _coverage_gain(row: np.ndarray, cover: np.ndarray) -> float:
    """``sum_i max(row_i - cover_i, 0)``, accumulated in float64 (one vectorised pass)."""
    g = 0.0
    for i in range(row.shape[0]):
        g += max(row[i] - cover[i], 0.0)
    return g


@njit(nogil=True, cache=True)
def _facility_location_pool(S: np.ndarray, k: int, floor: float) -> np.ndarray:
    """Lazy greedy maximisation of ``F(A) = sum_i max(floor, max_{j in A} S_ij)`` over one pool
    (S symmetric, every entry >= floor), with the exact greedy result.

    A heap of (-upper bound of the marginal gain, index): the top is re-evaluated exactly,
    ``gain(x) = sum_i max(S_xi - cover_i, 0)`` (O(n)), until the top is exact for the current
    step; stale gains stay upper bounds by submodularity. The heap orders equal bounds by index,
    so ties go to the lowest index, as in the plain greedy."""
    n = S.shape[0]
    cover = np.full(n, floor, dtype=S.dtype)  # max(floor, max_{j in A} S_ij): values of S, exact
    fresh_at = np.zeros(n, dtype=np.int64)  # the step at which the bound was last computed
    heap = [(-_coverage_gain(S[x], cover), x) for x in range(n)]
    heapq.heapify(heap)
    picks = np.empty(k, dtype=np.int64)
    for t in range(k):
        while True:
            _, x = heapq.heappop(heap)
            if fresh_at[x] == t:
                break
            fresh_at[x] = t
            heapq.heappush(heap, (-_coverage_gain(S[x], cover), x))
        picks[t] = x
        for i in range(n):
            if S[x, i] > cover[i]:
                cover[i] = S[x, i]
    return picks


def facility_location(
    X,
    n: int,
    labels=None,
    *,
    metric: str = "cosine",
    max_bytes: int = 2**31,
    n_jobs: int | None = None,
) -> np.ndarray:
    """Facility location, maximised greedily: the picks that best "cover" their pool.

    ``F(S) = sum_{i in V} max_{j in S} s_ij`` over the pool V (the class, with labels) is
    monotone submodular for ``s >= 0``; the greedy ``x = argmax_x F(S + x) - F(S)``
    (1 - 1/e approximation) is run lazily (Minoux): a stale gain is an upper bound, so only
    the best stale candidates are re-evaluated (O(n) each), with the exact greedy result; ties
    go to the lowest index. Similarity: ``metric='cosine'``: ``s_ij = 0.5 + 0.5 cos(x_i, x_j)``
    (the project's kernel, ALGORITHMS.md section 2); ``metric='euclidean'``:
    ``s_ij = d_max - ||x_i - x_j||`` with ``d_max`` the largest distance in the pool (CRAIG).

    Memory: the dense similarity of one pool, ``n_c^2`` values in X's dtype (CIFAR-10, 5,000 per
    class in float32: 100 MB), one per pool in progress (``n_jobs``); a pool that would need
    more than ``max_bytes`` is refused.

    Args:
        X: (N, d) embedding, float32 or float64; finite.
        n: number of samples to select, ``0 <= n <= N``.
        labels: optional (N,) class labels (per-class pools and quotas, :func:`class_quotas`).
        metric: ``'cosine'`` or ``'euclidean'``.
        max_bytes: the most bytes one pool's similarity matrix may take (default 2 GiB).
        n_jobs: pools (classes) run at once, on threads (default: one per CPU core), each
            holding its own matrix; the result does not depend on it.

    Returns:
        Sorted int64 array of ``n`` dataset indices.

    Raises:
        ValueError: on a bad X, n out of range, an unknown metric, or a pool whose matrix
            exceeds ``max_bytes``.

    Source: Mirzasoleiman, Bilmes & Leskovec, "Coresets for Data-efficient Training of Machine
    Learning Models" (CRAIG), ICML 2020 (facility location with ``s = const - d``);
    Nemhauser et al. (1978) greedy; Minoux (1978) lazy greedy.
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric: expected 'cosine' or 'euclidean', got {metric!r}")
    X, n, pools, quotas = _count_pools(X, n, labels, n_jobs)
    biggest = max(len(p) for p, q in zip(pools, quotas) if q) if n else 0
    if biggest**2 * X.itemsize > max_bytes:
        raise ValueError(
            f"max_bytes: a pool of {biggest} samples needs a {biggest}x{biggest} similarity matrix of "
            f"{biggest**2 * X.itemsize / 2**30:.2f} GiB, over max_bytes={max_bytes}; pass labels or raise max_bytes"
        )

    def run(task) -> np.ndarray:
        p, q = task
        S, floor = _similarity_matrix(_take(X, p), metric)
        return p[_facility_location_pool(S, q, floor)]

    tasks = [(p, int(q)) for p, q in zip(pools, quotas) if q]
    return _finish(_map_pools(run, tasks, n_jobs, one_blas_thread=False))


# ---------------------------------------------------------------------------------------------
# Moderate-DS


def _dist_to(Xp: np.ndarray, center: np.ndarray) -> np.ndarray:
    """||x_i - center||_2 in float64, rows a block at a time."""
    out = np.empty(Xp.shape[0], dtype=np.float64)
    step = max(1, _BLOCK_BYTES // (Xp.shape[1] * 8))
    for s in range(0, Xp.shape[0], step):
        diff = Xp[s : s + step].astype(np.float64) - center
        out[s : s + step] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def moderate_ds(X, ratio: float, labels=None) -> np.ndarray:
    """Moderate-DS: keep the samples whose distance to their class's median is the most typical.

    In every class (or the whole pool), ``m`` = the coordinate-wise median of the features,
    ``d_i = ||x_i - m||_2``, and the class keeps its quota of samples with the smallest
    ``|d_i - median_j(d_j)|`` (ties: lowest index): neither the easiest (closest) nor the hardest
    (farthest) samples.

    Decision: the paper states the rule ("scores closer to the score median"); its released code
    keeps the middle band of the *global* ranking of distances (by rank, all classes together).
    Here the budget is split per class (:func:`class_quotas`) and each class keeps the
    distances nearest its own median distance.

    Args:
        X: (N, d) embedding, float32 or float64; finite.
        ratio: keep ratio in (0, 1].
        labels: (N,) class labels (None: one pool, one median).

    Returns:
        Sorted int64 array of ``round(ratio * N)`` dataset indices.

    Raises:
        ValueError: on a bad X, ratio or labels.

    Source: Xia et al., "Moderate Coreset: A Universal Method of Data Selection for Real-world
    Data-efficient Deep Learning", ICLR 2023 (distance to the class median feature; keep the
    distances closest to their median).
    """
    X = _check_embedding(X)
    N = X.shape[0]
    labels = _check_labels(labels, N)
    k = budget(ratio, N)
    pools = _pools(labels, N)
    quotas = _quotas(k, [len(p) for p in pools])
    picked = []
    for p, q in zip(pools, quotas):
        if q:
            Xp = _take(X, p)
            d = _dist_to(Xp, np.median(Xp, axis=0).astype(np.float64))
            picked.append(p[_ordered_top(np.abs(d - np.median(d)), int(q), largest=False)])
    return _finish(picked)


# ---------------------------------------------------------------------------------------------
# self-supervised prototypes


def _nearest(Xp: np.ndarray, sq: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest centre of every row (squared euclidean), rows a block at a time."""
    out = np.empty(Xp.shape[0], dtype=np.int64)
    csq = _sq_norms(centers)
    step = max(1, _BLOCK_BYTES // (max(1, len(centers)) * Xp.itemsize))
    for s in range(0, Xp.shape[0], step):
        d = Xp[s : s + step] @ centers.T
        d *= -2.0
        d += csq[None, :]
        out[s : s + step] = np.argmin(d, axis=1)  # ||x||^2 is the same for every centre
    return out


def _kmeans(Xp: np.ndarray, k: int, rng: np.random.Generator, max_iter: int, spherical: bool) -> tuple[np.ndarray, np.ndarray]:
    """Seeded k-means++ initialisation, then Lloyd's iterations until the assignment is stable.
    Returns (centres (k, d) in Xp's dtype, assignment (n,))."""
    n, dim = Xp.shape
    sq = _sq_norms(Xp)
    centers = np.empty((k, dim), dtype=Xp.dtype)
    first = int(rng.integers(n))
    centers[0] = Xp[first]
    closest = np.full(n, np.inf, dtype=np.float64)
    _min_sq_dist_to(Xp, sq, centers[:1], closest)
    for j in range(1, k):
        w = np.maximum(closest, 0.0)
        total = w.sum()
        nxt = int(rng.integers(n)) if total <= 0 else int(rng.choice(n, p=w / total))
        centers[j] = Xp[nxt]
        _min_sq_dist_to(Xp, sq, centers[j : j + 1], closest)
    assign = None
    for _ in range(max_iter):
        new = _nearest(Xp, sq, centers)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        sums = np.zeros((k, dim))
        step = max(1, _BLOCK_BYTES // (dim * 8))
        for s in range(0, n, step):  # float64 sums, rows a block at a time
            m = min(step, n - s)
            onehot = sparse.csr_matrix((np.ones(m), (assign[s : s + m], np.arange(m))), shape=(k, m))
            sums += onehot @ Xp[s : s + m].astype(np.float64)
        counts = np.bincount(assign, minlength=k)
        full = counts > 0  # an empty cluster keeps its centre
        means = sums[full] / counts[full, None]
        if spherical:
            norm = np.linalg.norm(means, axis=1, keepdims=True)
            means = np.divide(means, norm, out=np.zeros_like(means), where=norm > 0)
        centers[full] = means
    return centers, _nearest(Xp, sq, centers)


def prototype_scores(
    X, labels=None, *, n_clusters: int, seed, metric: str = "cosine", max_iter: int = 100
) -> np.ndarray:
    """Self-supervised prototype metric: distance of every sample to its nearest k-means centroid.

    k-means (seeded k-means++ then Lloyd's iterations, numpy only) with ``n_clusters``
    clusters in the embedding; the score is the distance to the nearest centroid (prototype).
    Small = easy / prototypical, large = hard. ``metric='cosine'`` (the paper: cosine distance
    in the normalised embedding of a self-supervised model) runs spherical k-means on the
    L2-normalised rows and scores ``1 - cos(x, c)``; ``metric='euclidean'`` runs plain k-means
    and scores ``||x - c||_2``. With labels, k-means runs inside each class (``n_clusters``
    per class; a supervised variant, our choice: the paper clusters the whole unlabelled set).

    Args:
        X: (N, d) embedding, float32 or float64; finite.
        labels: optional (N,) class labels.
        n_clusters: clusters per pool, ``1 <= n_clusters <=`` the smallest pool.
        seed: int seed or Generator (one Generator, pools in class order).
        metric: ``'cosine'`` or ``'euclidean'``.
        max_iter: the most Lloyd iterations per pool.

    Returns:
        (N,) float64 scores.

    Raises:
        ValueError: on a bad X, an unknown metric, or ``n_clusters`` out of range.

    Source: Sorscher et al., "Beyond neural scaling laws: beating power law scaling via data
    pruning", NeurIPS 2022 (the self-supervised prototype metric).
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric: expected 'cosine' or 'euclidean', got {metric!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter: expected an integer >= 1, got {max_iter!r}")
    X = _check_embedding(X)
    N = X.shape[0]
    labels = _check_labels(labels, N)
    rng = _rng(seed)
    pools = _pools(labels, N)
    smallest = min(len(p) for p in pools)
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or not 1 <= n_clusters <= smallest:
        raise ValueError(f"n_clusters: expected an integer in [1, {smallest}] (the smallest pool), got {n_clusters!r}")
    out = np.empty(N, dtype=np.float64)
    for p in pools:
        Xp = _take(X, p)
        if metric == "cosine":
            norm = np.sqrt(_sq_norms(Xp))
            Xp = np.divide(Xp, norm[:, None], out=np.zeros_like(Xp), where=norm[:, None] > 0)
        centers, assign = _kmeans(Xp, int(n_clusters), rng, int(max_iter), metric == "cosine")
        c = centers.astype(np.float64)
        if metric == "cosine":
            c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), np.finfo(np.float64).tiny)
        d = np.empty(len(p))
        step = max(1, _BLOCK_BYTES // (Xp.shape[1] * 8))
        for s in range(0, len(p), step):  # float64, rows a block at a time
            rows, near = Xp[s : s + step].astype(np.float64), c[assign[s : s + step]]
            if metric == "cosine":
                d[s : s + step] = 1.0 - np.einsum("ij,ij->i", rows, near)
            else:
                diff = rows - near
                d[s : s + step] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        out[p] = d
    return out


def prototype_select(
    X,
    ratio: float,
    labels=None,
    *,
    n_clusters: int,
    seed,
    keep: str = "hard",
    metric: str = "cosine",
) -> np.ndarray:
    """Prune by the self-supervised prototype metric (:func:`prototype_scores`).

    The paper's rule: with abundant data (large keep ratio) keep the hard samples (far from
    their prototype, ``keep='hard'``); with scarce data (small keep ratio) keep the easy ones
    (``keep='easy'``). The choice is the caller's.

    Args:
        X, labels, n_clusters, seed, metric: as :func:`prototype_scores` (with labels, the
            scores are per-class k-means and the budget is split per class).
        ratio: keep ratio in (0, 1].
        keep: ``'hard'`` (largest distances) or ``'easy'`` (smallest).

    Returns:
        Sorted int64 array of ``round(ratio * N)`` dataset indices.

    Raises:
        ValueError: as :func:`prototype_scores`, or on an unknown ``keep``.

    Source: Sorscher et al., NeurIPS 2022 (keep hard examples when data is abundant, easy
    ones when it is scarce).
    """
    if keep not in ("hard", "easy"):
        raise ValueError(f"keep: expected 'hard' or 'easy', got {keep!r}")
    budget(ratio, 1)  # validate the ratio before the clustering
    scores = prototype_scores(X, labels, n_clusters=n_clusters, seed=seed, metric=metric)
    return select_by_score(scores, ratio, labels, largest=keep == "hard")


# ---------------------------------------------------------------------------------------------
# TypiClust


def typicality(X, k: int) -> np.ndarray:
    """Typicality of every row: the inverse of its mean euclidean distance to its ``k`` nearest
    other rows, ``1 / (mean_{j in kNN(i)} ||x_i - x_j||_2 + 1e-5)``.

    Args:
        X: (n, d) embedding, float32 or float64; finite.
        k: neighbours, ``0 <= k < n``; with ``k = 0`` every row's typicality is ``1e5``.

    Returns:
        (n,) float64 typicalities (higher = in a denser region).

    Raises:
        ValueError: on a bad X or k out of range.

    Source: Hacohen, Dekel & Weinshall, "Active Learning on a Budget: Opposite Strategies Suit
    High and Low Budgets", ICML 2022, Eq. (1) (the +1e-5 guards duplicates, as their code).
    """
    X = _check_embedding(X)
    n = X.shape[0]
    k = _check_count(k, max(n - 1, 0), "k")
    if k == 0:
        return np.full(n, 1e5)
    X64 = X.astype(np.float64)
    sq = _sq_norms(X64)
    out = np.empty(n)
    step = max(1, _BLOCK_BYTES // (max(n, 1) * 8))
    for s in range(0, n, step):  # a block of rows against all rows, float64
        d2 = sq[s : s + step, None] + sq[None, :] - 2.0 * (X64[s : s + step] @ X64.T)
        rows = np.arange(s, min(s + step, n))
        d2[rows - s, rows] = np.inf  # not its own neighbour
        near = np.partition(d2, k - 1, axis=1)[:, :k]
        out[s : s + step] = 1.0 / (np.sqrt(np.maximum(near, 0.0)).mean(axis=1) + 1e-5)
    return out


def _typiclust_pool(Xp: np.ndarray, q: int, rng: np.random.Generator, k_neighbors: int, min_cluster_size: int, max_clusters: int) -> np.ndarray:
    n = Xp.shape[0]
    if q >= n:
        return np.arange(n, dtype=np.int64)
    _, assign = _kmeans(Xp, min(q, max_clusters), rng, 100, False)
    sizes = np.bincount(assign, minlength=min(q, max_clusters))
    order = np.lexsort((np.arange(len(sizes)), -sizes))  # largest first, ties: lower id
    eligible = order[sizes[order] > min_cluster_size]
    if sizes[eligible].sum() < q:  # too few large clusters to hold the budget: use them all
        eligible = order[sizes[order] > 0]
    members = {int(c): np.flatnonzero(assign == c) for c in eligible}
    picks: list[int] = []
    while len(picks) < q:  # round robin over the clusters, largest first
        for c in eligible:
            rows = members[int(c)]
            if len(rows) == 0 or len(picks) == q:
                continue
            k = min(k_neighbors, len(rows) // 2)  # small clusters: half of the cluster
            best = int(np.argmax(typicality(Xp[rows], k)))  # ties: the lowest index
            picks.append(int(rows[best]))
            members[int(c)] = np.delete(rows, best)
    return np.asarray(picks, dtype=np.int64)


def typiclust(
    X, n: int, labels=None, *, seed, k_neighbors: int = 20, min_cluster_size: int = 5, max_clusters: int = 500
) -> np.ndarray:
    """TypiClust: k-means into as many clusters as the budget, then the most typical sample of
    every cluster.

    In every pool (the class, with labels) with quota q (:func:`class_quotas`): k-means
    (seeded k-means++ and Lloyd's iterations, euclidean) into ``min(q, max_clusters)``
    clusters; clusters of at most ``min_cluster_size`` samples are left out (all clusters are
    used when the others cannot hold q); then, round robin over the clusters from the largest
    (ties: the lower cluster id), each gives the not yet picked sample of highest
    :func:`typicality` among its not yet picked samples, with ``min(k_neighbors, size // 2)``
    neighbours. With q >= the pool's size the pool is kept whole.

    Args:
        X: (N, d) embedding, float32 or float64; finite.
        n: number of samples to select, ``0 <= n <= N``.
        labels: optional (N,) class labels (per-class k-means and quotas; the paper clusters
            the unlabelled pool: the per-class split is dsquant's, as for :func:`herding`).
        seed: int seed or Generator (k-means++; one Generator, pools in class order).
        k_neighbors: neighbours of the typicality (the paper's 20), ``>= 1``.
        min_cluster_size: clusters this small or smaller are skipped (the paper's code: 5).
        max_clusters: the most clusters per pool (the paper's code: 500).

    Returns:
        Sorted int64 array of ``n`` dataset indices.

    Raises:
        ValueError: on a bad X, n out of range or a bad parameter.

    Source: Hacohen, Dekel & Weinshall, ICML 2022, Algorithm 1 (TypiClust, the low-budget
    strategy), without its self-supervised representation learning: the embedding is the run's.
    """
    for name, v, low in (("k_neighbors", k_neighbors, 1), ("min_cluster_size", min_cluster_size, 0), ("max_clusters", max_clusters, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {v!r}")
    X = _check_embedding(X)
    N = X.shape[0]
    labels = _check_labels(labels, N)
    n = _check_count(n, N)
    rng = _rng(seed)
    pools = _pools(labels, N)
    picks = []
    for p, q in zip(pools, _quotas(n, [len(p) for p in pools])):
        if q:
            picks.append(p[_typiclust_pool(_take(X, p), int(q), rng, int(k_neighbors), int(min_cluster_size), int(max_clusters))])
    return _finish(picks)


# ---------------------------------------------------------------------------------------------
# Coverage-centric Coreset Selection


def _strata_budgets(sizes: np.ndarray, m: int) -> np.ndarray:
    """CCS Algorithm 1's allocation: strata from the smallest to the largest (ties: lower score
    range first), each taking ``min(size, floor(remaining budget / remaining strata))``."""
    out = np.zeros(len(sizes), dtype=np.int64)
    rest = int(m)
    for i, j in enumerate(np.argsort(sizes, kind="stable")):
        take = min(int(sizes[j]), rest // (len(sizes) - i))
        out[j] = take
        rest -= take
    return out


def _ccs_pool(s: np.ndarray, m: int, n_strata: int, cutoff: float, rng: np.random.Generator, where: str) -> np.ndarray:
    n = len(s)
    n_cut = int(math.floor(cutoff * n))
    # the n_cut hardest (largest scores; among equal scores the lowest index first) are pruned
    kept = np.sort(np.lexsort((np.arange(n), -s))[n_cut:])
    if m > len(kept):
        raise ValueError(
            f"cutoff: pruning the hardest {cutoff:g} leaves {len(kept)} samples{where}, fewer than "
            f"the {m} to select; lower cutoff or ratio"
        )
    if m == 0:
        return np.empty(0, dtype=np.int64)
    sk = s[kept]
    lo, hi = float(sk.min()), float(sk.max())
    if hi > lo:
        # stratum j holds [lo + j w, lo + (j + 1) w), w = (hi - lo) / n_strata; hi is in the last
        stratum = np.minimum(np.floor((sk - lo) * n_strata / (hi - lo)), n_strata - 1).astype(np.int64)
    else:
        stratum = np.zeros(len(sk), dtype=np.int64)
    sizes = np.bincount(stratum, minlength=n_strata)
    take = _strata_budgets(sizes, m)
    picked = []
    for j in range(n_strata):
        if take[j]:
            members = kept[stratum == j]
            picked.append(rng.choice(members, size=int(take[j]), replace=False))
    return np.concatenate(picked)


def ccs_sample(
    scores, ratio: float, labels=None, *, n_strata: int = 50, cutoff: float = 0.1, seed
) -> np.ndarray:
    """Coverage-centric Coreset Selection (CCS): stratified sampling over the difficulty score.

    Per pool (the class with labels, else everything): prune the ``floor(cutoff * n)`` hardest
    samples (largest scores, among equal scores the lowest index first; the paper's hard cutoff
    rate beta), split the range
    ``[min, max]`` of the remaining scores into ``n_strata`` strata of equal width, and allocate
    the budget m by the paper's Algorithm 1: visit the strata from the smallest to the largest
    (ties: the lower score range first); each takes ``min(|B|, floor(m_left / strata_left))``.
    Each stratum then gives its count uniformly at random (one seeded Generator; strata in score
    order, pools in class order). The total is exactly the budget.

    Scores must be oriented "higher = harder" (EL2N, forgetting, GraNd; negate AUM).

    Args:
        scores: (N,) difficulty scores; NaN not allowed.
        ratio: keep ratio in (0, 1] of the whole pool (before the cutoff).
        labels: optional (N,) class labels. The paper is not class-balanced (labels=None);
            with labels, each class gets its quota (:func:`class_quotas`) and its own cutoff
            and strata.
        n_strata: number of strata k >= 1 (paper: 50).
        cutoff: hard cutoff rate beta in [0, 1) (paper: tuned per ratio; 0.1 default here).
        seed: int seed or Generator.

    Returns:
        Sorted int64 array of ``round(ratio * N)`` dataset indices.

    Raises:
        ValueError: on a bad ratio, n_strata, cutoff, NaN or infinite scores, or when a pool
            keeps fewer samples after the cutoff than its budget.

    Source: Zheng et al., "Coverage-centric Coreset Selection for High Pruning Rates",
    ICLR 2023, Algorithm 1.
    """
    s = _check_scores(scores)
    if not np.isfinite(s).all():
        raise ValueError("scores: expected finite scores for equal-width strata, got inf")
    if isinstance(n_strata, bool) or not isinstance(n_strata, (int, np.integer)) or n_strata < 1:
        raise ValueError(f"n_strata: expected an integer >= 1, got {n_strata!r}")
    try:
        ok = 0.0 <= float(cutoff) < 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"cutoff: expected a hard cutoff rate in [0, 1), got {cutoff!r}")
    labels = _check_labels(labels, len(s))
    k = budget(ratio, len(s))
    rng = _rng(seed)
    pools = _pools(labels, len(s))
    quotas = _quotas(k, [len(p) for p in pools])
    classes = None if labels is None else np.unique(labels)
    picked = []
    for c, (p, q) in enumerate(zip(pools, quotas)):
        where = "" if classes is None else f" in class {classes[c]!r}"
        picked.append(p[_ccs_pool(s[p], int(q), int(n_strata), float(cutoff), rng, where)])
    return _finish(picked)
