"""Deliberately naive reference implementations, written for the tests only."""

import numpy as np


def naive_bin_sizes(class_counts, n_bins):
    """The official DQ code's bin sizes, transcribed literally (quantize_sample.py + balance)."""
    counts = list(class_counts)
    total = sum(counts)
    coreset_size = round(total / n_bins)
    remaining = counts[:]
    sizes = [[0] * n_bins for _ in counts]
    for k in range(n_bins - 1):
        avail = sum(remaining)
        if avail == 0:
            break
        fraction = coreset_size / avail
        for c in range(len(counts)):
            take = min(round(fraction * remaining[c]), remaining[c])
            sizes[c][k] = take
            remaining[c] -= take
    for c in range(len(counts)):
        sizes[c][n_bins - 1] = remaining[c]
    return sizes


def naive_graphcut_pool(sim, budget, lam=1.0, tol=1e-11):
    """O(B^2 n) greedy GraphCut on a dense similarity matrix: the gain of every candidate is
    recomputed from scratch at every step as lam * colsum - 2 * sum over the selected rows.
    Ties (within tol) go to the lowest index."""
    n = sim.shape[0]
    col = sim.sum(axis=0)
    selected = []
    taken = np.zeros(n, dtype=bool)
    for _ in range(budget):
        gains = lam * col - 2.0 * sim[selected].sum(axis=0)
        gains[taken] = -np.inf
        x = int(np.flatnonzero(gains >= gains.max() - tol)[0])
        selected.append(x)
        taken[x] = True
    return selected


def naive_similarity(features):
    f = np.asarray(features, dtype=np.float64)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    unit = np.divide(f, norm, out=np.zeros_like(f), where=norm > 0)
    return 0.5 + 0.5 * unit @ unit.T


def naive_bins(features, n_bins, labels=None, lam=1.0, sim=None):
    """DQ bins by the naive greedy: per class (if labels), repeated GraphCut on what remains."""
    n = len(features) if sim is None else sim.shape[0]
    sim = naive_similarity(features) if sim is None else sim
    if labels is None:
        groups = [np.arange(n)]
    else:
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    sizes = naive_bin_sizes([len(g) for g in groups], n_bins)
    bins = [[] for _ in range(n_bins)]
    for g, g_sizes in zip(groups, sizes):
        remaining = list(g)
        for k in range(n_bins - 1):
            pool = np.array(remaining, dtype=np.int64)
            if g_sizes[k] == 0 or len(pool) == 0:
                continue
            picks = naive_graphcut_pool(sim[np.ix_(pool, pool)], g_sizes[k], lam)
            chosen = set(pool[picks].tolist())
            bins[k].extend(chosen)
            remaining = [i for i in remaining if i not in chosen]
        bins[n_bins - 1].extend(remaining)
    return [np.array(sorted(b), dtype=np.int64) for b in bins]


def explicit_gradients(delta, feats):
    """The C*(d+1)-dim last-layer gradient vectors [delta, vec(delta e^T)], materialised."""
    n = len(delta)
    outer = (delta[:, :, None] * feats[:, None, :]).reshape(n, -1)
    return np.concatenate([delta, outer], axis=1)


# --- coreset-selection baselines (dsquant.core.baselines) ------------------------------------


def naive_kcenter(X, k, first=None, initial=()):
    """Farthest-first traversal on the full float64 distance matrix (O(N^2) memory)."""
    from scipy.spatial.distance import cdist

    X = np.asarray(X, dtype=np.float64)
    dist = cdist(X, X)
    centres = list(initial) if len(initial) else [first]
    picks = [] if len(initial) else [first]
    mind = dist[:, centres].min(axis=1)  # distance of every sample to its nearest centre
    while len(picks) < k:
        mind[centres] = -np.inf
        x = int(np.argmax(mind))
        centres.append(x)
        picks.append(x)
        mind = np.minimum(mind, dist[:, x])
    return picks


def naive_herding(X, k):
    """Literally: the sample whose addition brings the mean of the picks closest to the mean."""
    X = np.asarray(X, dtype=np.float64)
    mu = X.mean(axis=0)
    picks = []
    for _ in range(k):
        best, best_d = None, np.inf
        for x in range(len(X)):
            if x in picks:
                continue
            d = np.linalg.norm(mu - X[picks + [x]].mean(axis=0))
            if d < best_d:
                best, best_d = x, d
        picks.append(best)
    return picks


def naive_facility_location(S, k):
    """Plain greedy on F(A) = sum_i max_{j in A} S_ij, F recomputed from scratch per candidate."""
    n = S.shape[0]
    picks = []
    for _ in range(k):
        base = S[:, picks].max(axis=1).sum() if picks else 0.0
        gains = np.full(n, -np.inf)
        for x in range(n):
            if x not in picks:
                gains[x] = S[:, picks + [x]].max(axis=1).sum() - base
        picks.append(int(np.argmax(gains)))
    return picks


def naive_forgetting(correct, never):
    """Count correct -> wrong transitions epoch by epoch; never-learnt samples get ``never``."""
    T, N = correct.shape
    out = []
    for i in range(N):
        if not any(correct[t, i] for t in range(T)):
            out.append(never)
            continue
        out.append(sum(1 for t in range(T - 1) if correct[t, i] and not correct[t + 1, i]))
    return np.array(out, dtype=np.float64)


def naive_ccs_allocation(sizes, m):
    """CCS Algorithm 1, as printed: while strata remain, take the smallest (lowest index among
    equal sizes), give it min(|B|, floor(m / #strata left)), remove it."""
    left = list(range(len(sizes)))
    out = [0] * len(sizes)
    while left:
        j = min(left, key=lambda i: (sizes[i], i))
        out[j] = min(sizes[j], m // len(left))
        m -= out[j]
        left.remove(j)
    return out
