"""The compiled inner loop of the GraphCut greedy (used by :mod:`dsquant.core.bins`).

One greedy step subtracts the picked sample's row of similarities from every running score and
finds the next best score: two passes over n floats that numpy would spread over half a dozen
calls (and the GIL). Here both happen in one compiled pass, with the GIL released so that pools
binned on threads run in parallel. Near-ties within the error of the running scores are
re-scored exactly here too, from float64 sums of the picked embeddings. The loop hands control
back to Python only when it needs a matrix product: a row that is not computed yet, or exact
scores for the whole pool.

The running scores cover an *active set* A of the pool; every other sample x has an exact score
``snap_x`` from the last refresh and an upper bound on its score since then (Cauchy-Schwarz
around the pool's mean direction q, ALGORITHMS.md section 3 with ``s = 0.5 + 0.5 cos``):

    score(x) = snap_x - <u_x, D>  <=  snap_x - a_x P + rho_x R

where D is the sum of the unit embeddings picked since the refresh, ``a_x = <u_x, q>``,
``rho_x = sqrt(|u_x|^2 - a_x^2)``, ``P = <D, q>`` and ``R = sqrt(|D|^2 - P^2)``. Both P and
``|D|^2`` are kept as running scalars (``|D|^2`` grows by ``2 sum_{j picked} cos(x, j) + |u_x|^2``
per pick, and that sum is the drop of x's own running score), so the bound costs O(1) per step
in the common case and O(|pool \\ A|) otherwise. A pick is taken only when the best running
score of A beats every bound by more than the tie tolerance; else the loop asks for a refresh.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["DONE", "NEED_ROW", "STALE", "greedy_steps", "add_rows", "picked_sums", "scaled_rows"]

#: ``stop`` steps were taken
DONE = 0
#: the best sample has no row yet: compute it, then call again with ``forced`` = that sample
NEED_ROW = 2
#: a sample outside the active set might beat the best inside it: refresh every score
STALE = 3


@njit(nogil=True, cache=True)
def _best_and_other(scores, exact_at, drift):
    """The best running score's index, and the largest ``scores - exact_at * drift`` among
    the other samples (the lowest index wins a tie for the best)."""
    best = -np.inf
    arg = -1
    for i in range(scores.shape[0]):
        if scores[i] > best:
            best = scores[i]
            arg = i
    other = -np.inf
    for i in range(scores.shape[0]):
        if i != arg:
            w = scores[i] - exact_at[i] * drift
            if w > other:
                other = w
    return arg, other


@njit(nogil=True, cache=True)
def _coarse_bound(coarse, p, r):
    """O(1) upper bound on every outside score, from the extremes of snap, a and rho."""
    ap = -p * coarse[1] if p >= 0 else -p * coarse[2]
    return coarse[0] + ap + coarse[3] * r


@njit(nogil=True, cache=True)
def _outside_bound(out_snap, out_a, out_rho, p, r):
    """O(n) upper bound: the largest ``snap_x - a_x P + rho_x R`` outside the active set."""
    best = -np.inf
    for i in range(out_snap.shape[0]):
        v = out_snap[i] - out_a[i] * p + out_rho[i] * r
        if v > best:
            best = v
    return best


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _exact_drop(r, first, scale, second, s1, s2):
    """``sum_{j picked} cos(j, x)`` in float64 for the sample stored at row r (see
    :class:`dsquant.core.similarity._Accumulator`): ``<p_r, s1> + p_r^T s2 q_r`` with
    ``p_r = scale_r first_r``."""
    v = 0.0
    for c in range(first.shape[1]):
        t = s1[c]
        for k in range(second.shape[1]):
            t += s2[c, k] * np.float64(second[r, k])
        v += np.float64(first[r, c]) * t
    return v * scale[r]


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def picked_sums(rows, first, scale, second, s1, s2, out):
    """``out[i] = sum_{j picked} cos(j, x_i)`` (float64) for the samples stored at ``rows[i]``,
    reading only those rows."""
    for i in range(rows.shape[0]):
        out[i] = _exact_drop(rows[i], first, scale, second, s1, s2)


@njit(nogil=True, cache=True)
def add_rows(rows, first, scale, second, s1, s2):
    """Add the unit embeddings of the samples stored at ``rows`` to the exact sums."""
    for i in range(rows.shape[0]):
        r = rows[i]
        for c in range(first.shape[1]):
            f = np.float64(first[r, c]) * scale[r]
            s1[c] += f
            for k in range(second.shape[1]):
                s2[c, k] += f * np.float64(second[r, k])


@njit(nogil=True, cache=True)
def scaled_rows(rows, first, scale, out):
    """``out[i] = scale[rows[i]] * first[rows[i]]`` in float64, rounded to out's dtype."""
    for i in range(rows.shape[0]):
        r = rows[i]
        for c in range(first.shape[1]):
            out[i, c] = np.float64(first[r, c]) * scale[r]


@njit(nogil=True, cache=True)
def _resolve(scores, exact_at, step, drift, tol, x, base, stored, first, scale, second, s1, s2, max_rescore, counts):
    """The exact best among the contenders of the running best x (the lowest index on a tie).

    Every sample whose score could be within ``tol`` of x's, given both errors, is re-scored
    exactly (``base - sum_S cos``) and keeps that value; above ``max_rescore`` contenders,
    every score of the active set is."""
    m = scores.shape[0]
    low = scores[x] - (step - exact_at[x]) * drift - tol
    count = 0
    for i in range(m):
        if scores[i] + (step - exact_at[i]) * drift >= low:
            count += 1
    best = -np.inf
    if count > max_rescore:  # re-anchor every score to its exact value
        counts[2] += 1
        for i in range(m):
            if scores[i] > -np.inf:
                scores[i] = base[i] - _exact_drop(stored[i], first, scale, second, s1, s2)
                exact_at[i] = step
                if scores[i] > best:
                    best = scores[i]
    else:
        counts[1] += 1
        for i in range(m):
            if scores[i] + (step - exact_at[i]) * drift >= low:
                scores[i] = base[i] - _exact_drop(stored[i], first, scale, second, s1, s2)
                exact_at[i] = step
                if scores[i] > best:
                    best = scores[i]
    # a sample that was not re-scored has an exact score below best - tol (it was below low)
    for i in range(m):
        if exact_at[i] == step and scores[i] >= best - tol:
            return i
    return x


@njit(nogil=True, cache=True)
def greedy_steps(
    scores, rows, slot, owner, chosen, index, step, stop, forced, exact_at, drift,
    tol, snap, a, selfsim, out_snap, out_a, out_rho, coarse, acc, slack,
    base, stored, first, scale, second, s1, s2, max_rescore, counts,
):
    """Greedy steps ``step, step + 1, ...`` until ``stop`` or until Python is needed.

    Args:
        scores: (m,) float64 running scores of the active set, updated in place; picked
            samples become -inf.
        rows: (capacity, m) float32/float64 rows of similarities; ``rows[slot[x]]`` is x's row.
        slot: (m,) int64, the row slot of each sample or -1; a picked sample's slot is freed.
        owner: (capacity,) int64, the sample of each slot or -1.
        chosen: (budget,) int64, the picks in order, written as ``index[x]``.
        index: (m,) int64, the position in the pool of each active sample.
        step: picks made so far; ``stop``: pick until this many.
        forced: a sample to pick first (its contenders already resolved), or -1.
        exact_at: (m,) float64, the step at which each score was last exact: score x is within
            ``(step - exact_at[x]) * drift`` of the truth. When another sample's score is within
            both errors plus ``tol`` of the best, the contenders are re-scored exactly.
        drift: per-step error bound of a running score; ``tol``: the tie tolerance.
        snap, a, selfsim: (m,) float64 exact scores at the last refresh, ``<u_x, q>`` and
            ``|u_x|^2`` of the active samples.
        out_snap, out_a, out_rho: the same for the samples outside the active set, with
            ``rho_x`` (may be empty).
        coarse: (4,) float64: max of out_snap, min and max of out_a, max of out_rho.
        acc: (3,) float64, updated in place: P, ``|D|^2`` and a bound on the error of ``|D|^2``.
        slack: margin for the rounding of the bound.
        base: (m,) float64 score of each active sample with nothing picked.
        stored, first, scale, second, s1, s2: the exact float64 sums over the picks (updated
            in place) and the rows they need, see :class:`dsquant.core.similarity._Accumulator`;
            ``stored`` (m,) int64 gives each active sample's row in ``first`` and ``second``.
        max_rescore: above this many contenders, re-score all of the active set.
        counts: (3,) int64, updated: contentions, contender re-scorings, full re-anchorings.

    Returns:
        (step, status, x): status is DONE, NEED_ROW (x, the next pick, has no
        row; call again with ``forced = x``) or STALE.
    """
    x = forced
    other = -np.inf  # max over samples other than x of scores - exact_at * drift
    if x < 0:
        x, other = _best_and_other(scores, exact_at, drift)
    while step < stop:
        if forced < 0 and other + step * drift >= scores[x] - (step - exact_at[x]) * drift - tol:
            counts[0] += 1
            x = _resolve(scores, exact_at, step, drift, tol, x, base, stored, first, scale, second, s1, s2, max_rescore, counts)
        forced = x  # resolved: a NEED_ROW return comes back with it
        err_x = (step - exact_at[x]) * drift
        if out_snap.shape[0] > 0:
            low = scores[x] - err_x - slack
            p = acc[0]
            r = np.sqrt(max(0.0, acc[1] + acc[2] - p * p + slack))
            if not low > _coarse_bound(coarse, p, r):
                if not low > _outside_bound(out_snap, out_a, out_rho, p, r):
                    return step, STALE, x
        j = slot[x]
        if j < 0:
            return step, NEED_ROW, x
        forced = -1
        # |D|^2 grows by 2 sum_{j picked since the refresh} cos(x, j) + |u_x|^2
        acc[1] += 2.0 * (snap[x] - scores[x]) + selfsim[x]
        acc[2] += 2.0 * err_x
        acc[0] += a[x]
        add_rows(stored[x : x + 1], first, scale, second, s1, s2)
        scores[x] = -np.inf
        owner[j] = -1
        slot[x] = -1
        chosen[step] = index[x]
        step += 1
        # subtract x's row, find the next best and the best of the others by their upper
        # error bounds, in one pass
        best = -np.inf
        x = -1
        w1 = -np.inf
        w2 = -np.inf
        a1 = -1
        for i in range(scores.shape[0]):
            v = scores[i] - rows[j, i]
            scores[i] = v
            if v > best:
                best = v
                x = i
            w = v - exact_at[i] * drift
            if w > w1:
                w2 = w1
                w1 = w
                a1 = i
            elif w > w2:
                w2 = w
        other = w2 if a1 == x else w1
    return step, DONE, -1
