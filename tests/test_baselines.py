import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsquant import sample_uniform
from dsquant.core.baselines import (
    ccs_sample,
    class_quotas,
    el2n_scores,
    entropy,
    facility_location,
    forgetting_events,
    grand_scores,
    herding,
    kcenter_greedy,
    last_layer_grad_norm,
    least_confidence,
    margin,
    moderate_ds,
    prototype_scores,
    prototype_select,
    select_by_score,
    typicality,
    typiclust,
)

from reference import (
    explicit_gradients,
    naive_ccs_allocation,
    naive_facility_location,
    naive_forgetting,
    naive_herding,
    naive_kcenter,
    naive_similarity,
)


def per_class(idx, labels):
    return np.bincount(labels[idx], minlength=labels.max() + 1).tolist()


# --- budgets and score selection -------------------------------------------------------------


def test_select_by_score_hand_computed():
    scores = np.array([3.0, 1.0, 3.0, 2.0, 5.0, 0.0])
    # round(0.5 * 6) = 3: the largest are 5 (4), 3 (0), 3 (2); the smallest 0 (5), 1 (1), 2 (3)
    assert select_by_score(scores, 0.5).tolist() == [0, 2, 4]
    assert select_by_score(scores, 0.5, largest=False).tolist() == [1, 3, 5]
    # ties: the lowest index wins
    assert select_by_score(np.ones(4), 0.5).tolist() == [0, 1]
    assert select_by_score([2.0, 1.0, 2.0, 2.0], 0.5).tolist() == [0, 2]
    # per class: classes of 3 and 3, 1.5 each -> the unit left goes to the lower class
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert select_by_score(scores, 0.5, labels).tolist() == [0, 2, 4]
    # smallest per class: class 0 keeps 1 (index 1) and the lower-index 3 (index 0), class 1 keeps 0
    assert select_by_score(scores, 0.5, labels, largest=False).tolist() == [0, 1, 5]
    with pytest.raises(ValueError, match="ratio"):
        select_by_score(scores, 0.0)
    with pytest.raises(ValueError, match="scores: sample 1 has a NaN"):
        select_by_score([1.0, np.nan], 0.5)
    with pytest.raises(ValueError, match="labels"):
        select_by_score(scores, 0.5, labels[:5])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 80),
    n_classes=st.integers(1, 6),
    ratio=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_class_quotas_are_sample_uniform_quotas(n, n_classes, ratio, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    uniform = sample_uniform([np.arange(n)], ratio, labels, seed=seed)
    want = per_class(uniform, labels)
    idx = select_by_score(rng.standard_normal(n), ratio, labels)
    assert per_class(idx, labels) == want
    assert per_class(ccs_sample(rng.random(n), ratio, labels, cutoff=0.0, n_strata=3, seed=seed), labels) == want
    assert class_quotas(len(idx), labels).tolist() == [want[c] for c in np.unique(labels)]


# --- training dynamics -------------------------------------------------------------------------


def test_el2n_hand_computed_and_averaged_over_runs():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    y = np.array([0, 0])
    want = [np.sqrt(0.3**2 + 0.2**2 + 0.1**2), np.sqrt(0.9**2 + 0.1**2 + 0.8**2)]
    assert np.allclose(el2n_scores(p, y), want)
    # two runs: the mean of the norms (not the norm of the mean probabilities)
    p2 = np.stack([p, np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])])
    assert np.allclose(el2n_scores(p2, y), [(want[0] + 0.0) / 2, (want[1] + np.sqrt(2)) / 2])
    with pytest.raises(ValueError, match=r"labels: expected class indices in \[0, 3\)"):
        el2n_scores(p, [0, 3])
    with pytest.raises(ValueError, match="probs"):
        el2n_scores(np.ones(3), [0])


def _ce_loss(W, b, h, y):
    z = W @ h + b
    z = z - z.max()
    return -(z[y] - np.log(np.exp(z).sum()))


def test_last_layer_grad_norm_identity_against_outer_product_and_finite_differences(rng):
    n, c, d = 6, 4, 5
    W, b = rng.standard_normal((c, d)), rng.standard_normal(c)
    h = rng.standard_normal((n, d))
    y = rng.integers(0, c, n)
    z = h @ W.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    got = last_layer_grad_norm(p, y, h)
    # the explicit gradient vectors [dL/db, vec(dL/dW)] = [delta, vec(delta h^T)]
    delta = p - np.eye(c)[y]
    assert np.allclose(got, np.linalg.norm(explicit_gradients(delta, h), axis=1), rtol=1e-12)
    # central finite differences of the cross-entropy w.r.t. W and b
    eps = 1e-6
    for i in range(n):
        grad = []
        for params in ("W", "b"):
            base = W if params == "W" else b
            for pos in np.ndindex(base.shape):
                plus, minus = base.copy(), base.copy()
                plus[pos] += eps
                minus[pos] -= eps
                args_p = (plus, b) if params == "W" else (W, plus)
                args_m = (minus, b) if params == "W" else (W, minus)
                grad.append((_ce_loss(*args_p, h[i], y[i]) - _ce_loss(*args_m, h[i], y[i])) / (2 * eps))
        assert np.isclose(got[i], np.linalg.norm(grad), rtol=1e-6)
    # runs: (R, N) norms, per-run features; GraNd averages them
    runs = last_layer_grad_norm(np.stack([p, p]), y, np.stack([h, 2 * h]))
    assert runs.shape == (2, n) and np.allclose(runs[0], got)
    assert np.allclose(grand_scores(runs), runs.mean(axis=0))
    assert np.array_equal(grand_scores(got), got)
    with pytest.raises(ValueError, match="features"):
        last_layer_grad_norm(p, y, h[:3])
    with pytest.raises(ValueError, match="grad_norms"):
        grand_scores([-1.0, 2.0])


def test_forgetting_events_hand_computed():
    correct = np.array(
        [
            # s0: forgotten twice; s1: learnt at epoch 2, never forgotten (unforgettable);
            # s2: never learnt; s3: forgotten once, at the end; s4: correct throughout
            [1, 0, 0, 1, 1],
            [0, 0, 0, 1, 1],
            [1, 1, 0, 1, 1],
            [0, 1, 0, 1, 1],
            [1, 1, 0, 0, 1],
        ],
        dtype=bool,
    )
    # the released code's rule: a never-learnt sample counts T = 5 (more than floor(5/2) = 2)
    assert forgetting_events(correct).tolist() == [2, 0, 5, 1, 0]
    assert forgetting_events(correct, never_learned=np.inf).tolist() == [2, 0, np.inf, 1, 0]
    # runs are summed; 0/1 integers are accepted
    assert forgetting_events(np.stack([correct, correct]).astype(int)).tolist() == [4, 0, 10, 2, 0]
    with pytest.raises(ValueError, match="correct"):
        forgetting_events(np.full((3, 2), 2))
    with pytest.raises(ValueError, match="never_learned"):
        forgetting_events(correct, never_learned=-1)


def test_forgetting_events_against_naive(rng):
    correct = rng.random((9, 40)) < 0.6
    correct[:, :3] = False  # a few never-learnt samples
    assert np.array_equal(forgetting_events(correct), naive_forgetting(correct, 9.0))


def test_uncertainty_scores_hand_computed():
    p = np.array([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0], [0.4, 0.4, 0.2]])
    assert np.allclose(least_confidence(p), [0.5, 0.0, 0.6])
    assert np.allclose(entropy(p), [-(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2)), 0.0, -(0.8 * np.log(0.4) + 0.2 * np.log(0.2))])
    assert np.allclose(margin(p), [0.8, 0.0, 1.0])
    # oriented "higher = more uncertain": the top-1 by each is the tie 0.4/0.4 row
    for fn in (least_confidence, entropy, margin):
        assert select_by_score(fn(p), 1 / 3).tolist() == [2]
    with pytest.raises(ValueError, match="C >= 2"):
        margin(np.ones((3, 1)))
    with pytest.raises(ValueError, match="probs"):
        entropy(-p)


# --- geometry --------------------------------------------------------------------------------


def _naive_pools(labels, n):
    return [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]


@pytest.mark.parametrize("with_labels", [False, True])
def test_kcenter_greedy_matches_naive_farthest_first(rng, with_labels):
    X = rng.standard_normal((150, 6))
    labels = rng.integers(0, 3, 150) if with_labels else None
    got = kcenter_greedy(X, 20, seed=7, labels=labels)
    pools = _naive_pools(labels, 150)
    quotas = class_quotas(20, labels, 150)
    want, draw = [], np.random.default_rng(7)
    for p, q in zip(pools, quotas):
        first = int(draw.integers(len(p)))
        want += p[naive_kcenter(X[p], int(q), first=first)].tolist()
    assert got.tolist() == sorted(want)
    # float32 embeddings give the same picks on data without near-ties
    assert np.array_equal(kcenter_greedy(X.astype(np.float32), 20, seed=7, labels=labels), got)


def test_kcenter_greedy_active_set_and_refreshes_match_naive(rng):
    # more samples than the 256 tracked exactly and more picks than one refresh batch (128):
    # certified picks from the active set, refreshes, and the bound are all exercised
    X = rng.standard_normal((1500, 8))
    got = kcenter_greedy(X, 400, seed=4)
    first = int(np.random.default_rng(4).integers(1500))
    assert got.tolist() == sorted(naive_kcenter(X, 400, first=first))
    initial = rng.choice(1500, 300, replace=False)
    assert kcenter_greedy(X, 200, seed=0, initial=initial).tolist() == sorted(naive_kcenter(X, 200, initial=initial.tolist()))


def test_kcenter_greedy_initial_centres_seed_and_memory(rng):
    X = rng.standard_normal((120, 5))
    initial = np.array([3, 50, 77])
    got = kcenter_greedy(X, 10, seed=0, initial=initial)
    assert got.tolist() == sorted(naive_kcenter(X, 10, initial=initial.tolist()))
    assert not np.isin(initial, got).any()
    # with initial centres nothing is random; without, the seed picks the first centre
    assert np.array_equal(got, kcenter_greedy(X, 10, seed=1, initial=initial))
    a = kcenter_greedy(X, 10, seed=3)
    assert np.array_equal(a, kcenter_greedy(X, 10, seed=3))
    assert any(not np.array_equal(a, kcenter_greedy(X, 10, seed=s)) for s in range(4, 8))
    with pytest.raises(ValueError, match="initial: expected distinct"):
        kcenter_greedy(X, 3, seed=0, initial=[1, 1])
    with pytest.raises(ValueError, match=r"n: expected 0 <= n <= 117"):
        kcenter_greedy(X, 118, seed=0, initial=initial)
    # O(N) memory: far below one N x N float64 matrix (32 MB here)
    big = rng.standard_normal((2000, 8))
    tracemalloc.start()
    kcenter_greedy(big, 200, seed=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2000 * 2000 * 8 / 20


def test_herding_hand_computed_and_against_naive(rng):
    # mean 3.25: the closest is 2; then (2 + x) / 2 closest to 3.25 means x closest to 4.5 -> 1
    # (DeepCore's argmax would start from 10)
    X = np.array([[0.0], [1.0], [2.0], [10.0]])
    assert herding(X, 2).tolist() == [1, 2]
    assert herding(X, 1).tolist() == [2]
    Y = rng.standard_normal((60, 4))
    labels = np.repeat([0, 1], 30)
    assert herding(Y, 8).tolist() == sorted(naive_herding(Y, 8))
    got = herding(Y, 8, labels)
    assert got.tolist() == sorted(naive_herding(Y[:30], 4) + [30 + i for i in naive_herding(Y[30:], 4)])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_facility_location_matches_naive_greedy(rng, metric):
    X = rng.standard_normal((90, 5))
    labels = rng.integers(0, 2, 90)

    def similarity(rows):
        if metric == "cosine":
            return naive_similarity(rows)
        dist = np.sqrt(((rows[:, None] - rows[None]) ** 2).sum(-1))
        return dist.max() - dist  # CRAIG: d_max - d over the pool

    want = []
    for p, q in zip(_naive_pools(labels, 90), class_quotas(12, labels)):
        want += p[naive_facility_location(similarity(X[p]), int(q))].tolist()
    assert facility_location(X, 12, labels, metric=metric).tolist() == sorted(want)
    assert facility_location(X, 9, metric=metric).tolist() == sorted(naive_facility_location(similarity(X), 9))


def test_facility_location_hand_computed_and_memory_refusal():
    # points 0, 1, 2, 10, 11 on a line, s = d_max - d = 11 - d. The first pick minimises the sum
    # of distances (24, 21, 20, 28, 31): the point 2. Its cover is [9, 10, 11, 3, 2]; the gains
    # are then 2 (for 0), 2 (for 1), 16 (for 10: [1, 2, 3, 11, 10]) and 16 (for 11:
    # [0, 1, 2, 10, 11]): a tie, the lower index (10, index 3) wins
    X = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    assert facility_location(X, 1, metric="euclidean").tolist() == [2]
    assert facility_location(X, 2, metric="euclidean").tolist() == [2, 3]
    with pytest.raises(ValueError, match="max_bytes: a pool of 5 samples"):
        facility_location(X, 2, max_bytes=100)
    assert len(facility_location(X, 2, np.array([0, 0, 0, 1, 1]), max_bytes=100)) == 2
    with pytest.raises(ValueError, match="metric"):
        facility_location(X, 2, metric="manhattan")


def test_moderate_ds_hand_computed_and_against_naive(rng):
    # one pool on a line: median 3 -> distances [3, 2, 1, 0, 1, 2, 97]; median distance 2;
    # closest to 2: the two 2s (indices 1, 5), then 1 or 3 at gap 1 (indices 0, 2, 4: lowest first)
    X = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [100.0]])
    assert moderate_ds(X, 2 / 7).tolist() == [1, 5]
    assert moderate_ds(X, 3 / 7).tolist() == [0, 1, 5]
    Y = rng.standard_normal((100, 7)).astype(np.float32)
    labels = rng.integers(0, 3, 100)
    want = []
    for p, q in zip(_naive_pools(labels, 100), class_quotas(25, labels)):
        d = np.linalg.norm(Y[p].astype(np.float64) - np.median(Y[p], axis=0), axis=1)
        gap = np.abs(d - np.median(d))
        want += p[sorted(range(len(p)), key=lambda i: (gap[i], i))[: int(q)]].tolist()
    assert moderate_ds(Y, 0.25, labels).tolist() == sorted(want)


def test_prototype_scores_on_separated_blobs(rng):
    centres = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    X = np.concatenate([c + rng.standard_normal((40, 2)) for c in centres])
    scores = prototype_scores(X, n_clusters=3, seed=0, metric="euclidean")
    blob = np.repeat(np.arange(3), 40)
    means = np.array([X[blob == b].mean(axis=0) for b in range(3)])
    assert np.allclose(scores, np.linalg.norm(X - means[blob], axis=1))
    # cosine: spherical k-means on directions; blobs far apart in angle
    Z = np.concatenate([c + 0.05 * rng.standard_normal((30, 3)) for c in np.eye(3)])
    cos = prototype_scores(Z, n_clusters=3, seed=1)
    unit = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    b3 = np.repeat(np.arange(3), 30)
    dirs = np.array([unit[b3 == b].mean(axis=0) for b in range(3)])
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    assert np.allclose(cos, 1 - (unit * dirs[b3]).sum(axis=1))
    # per class (labels): one cluster per class is the class mean
    per = prototype_scores(X, blob, n_clusters=1, seed=5, metric="euclidean")
    assert np.allclose(per, scores)
    # keep='hard' takes the largest distances, 'easy' the smallest; same seed, same indices
    hard = prototype_select(X, 0.1, n_clusters=3, seed=0, keep="hard", metric="euclidean")
    easy = prototype_select(X, 0.1, n_clusters=3, seed=0, keep="easy", metric="euclidean")
    assert hard.tolist() == np.sort(np.argsort(-scores)[:12]).tolist()
    assert easy.tolist() == np.sort(np.argsort(scores)[:12]).tolist()
    W = rng.standard_normal((200, 4))
    assert np.array_equal(prototype_scores(W, n_clusters=5, seed=9), prototype_scores(W, n_clusters=5, seed=9))
    with pytest.raises(ValueError, match=r"n_clusters: expected an integer in \[1, 40\]"):
        prototype_scores(X, blob, n_clusters=41, seed=0)
    with pytest.raises(ValueError, match="keep"):
        prototype_select(X, 0.1, n_clusters=3, seed=0, keep="medium")


# --- CCS -------------------------------------------------------------------------------------


def test_ccs_hand_computed():
    # 20 samples; cutoff 0.1 prunes the 2 hardest (200 and 100). The other 18 span [0, 10]:
    # 3 strata of width 10/3: [0, 3.33) holds the eight 0s (indices 0-7), [3.33, 6.67) the two
    # 5s (8, 9), [6.67, 10] the 9 and the seven 10s (10-17). Budget round(0.45 * 20) = 9.
    # Algorithm 1, smallest stratum first: the 5s get min(2, 9 // 3) = 2; then the two strata of
    # 8 (the lower score range first): min(8, 7 // 2) = 3, and the last min(8, 4) = 4.
    scores = np.array([0.0] * 8 + [5.0, 5.0, 9.0] + [10.0] * 7 + [100.0, 200.0])
    idx = ccs_sample(scores, 0.45, n_strata=3, cutoff=0.1, seed=0)
    assert len(idx) == 9
    assert np.isin([8, 9], idx).all() and not np.isin([18, 19], idx).any()
    assert (idx < 8).sum() == 3 and ((idx >= 10) & (idx < 18)).sum() == 4
    assert naive_ccs_allocation([8, 2, 8], 9) == [3, 2, 4]
    # no cutoff: 100 and 200 may be drawn; the range is then [0, 200] and the 0-10 samples share one stratum
    idx0 = ccs_sample(scores, 0.45, n_strata=3, cutoff=0.0, seed=0)
    assert np.isin([18, 19], idx0).all()
    # same seed, same indices; another seed, other indices
    assert np.array_equal(idx, ccs_sample(scores, 0.45, n_strata=3, cutoff=0.1, seed=0))
    assert any(not np.array_equal(idx, ccs_sample(scores, 0.45, n_strata=3, cutoff=0.1, seed=s)) for s in range(1, 5))
    with pytest.raises(ValueError, match="cutoff: pruning the hardest 0.5 leaves 10 samples"):
        ccs_sample(scores, 0.6, cutoff=0.5, seed=0)
    with pytest.raises(ValueError, match="cutoff"):
        ccs_sample(scores, 0.5, cutoff=1.0, seed=0)
    with pytest.raises(ValueError, match="n_strata"):
        ccs_sample(scores, 0.5, n_strata=0, seed=0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 120),
    n_classes=st.integers(1, 4),
    ratio=st.floats(0.01, 0.9),
    n_strata=st.integers(1, 12),
    cutoff=st.sampled_from([0.0, 0.05, 0.1]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_ccs_strata_counts_follow_algorithm_1(n, n_classes, ratio, n_strata, cutoff, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    scores = np.round(rng.gamma(2.0, size=n), 1)  # ties included
    try:
        idx = ccs_sample(scores, ratio, labels, n_strata=n_strata, cutoff=cutoff, seed=seed)
    except ValueError as err:
        assert "cutoff" in str(err)
        return
    assert len(idx) == round(ratio * n) and len(np.unique(idx)) == len(idx)
    assert np.array_equal(idx, ccs_sample(scores, ratio, labels, n_strata=n_strata, cutoff=cutoff, seed=seed))
    for p, q in zip(_naive_pools(labels, n), class_quotas(len(idx), labels)):
        s = scores[p]
        order = sorted(range(len(p)), key=lambda i: (-s[i], i))
        kept = np.array(sorted(order[int(np.floor(cutoff * len(p))) :]), dtype=int)
        chosen = np.isin(p, idx)
        assert not chosen[np.setdiff1d(np.arange(len(p)), kept)].any()  # the hardest are pruned
        if q == 0:
            continue
        sk = s[kept]
        lo, hi = sk.min(), sk.max()
        strat = np.zeros(len(kept), int) if hi == lo else np.minimum(np.floor((sk - lo) * n_strata / (hi - lo)), n_strata - 1).astype(int)
        sizes = np.bincount(strat, minlength=n_strata).tolist()
        want = naive_ccs_allocation(sizes, int(q))
        assert np.bincount(strat[chosen[kept]], minlength=n_strata).tolist() == want


# --- validation --------------------------------------------------------------------------------


def test_embedding_validation_names_the_parameter():
    X = np.ones((4, 2))
    X[2, 1] = np.nan
    for call in (
        lambda: kcenter_greedy(X, 1, seed=0),
        lambda: herding(X, 1),
        lambda: facility_location(X, 1),
        lambda: moderate_ds(X, 0.5),
        lambda: prototype_scores(X, n_clusters=1, seed=0),
    ):
        with pytest.raises(ValueError, match="X: row 2 contains NaN"):
            call()
    with pytest.raises(ValueError, match="X: expected a non-empty 2-D array"):
        herding(np.ones(5), 1)
    with pytest.raises(ValueError, match="n: expected an integer"):
        herding(np.ones((5, 2)), 1.5)
    with pytest.raises(ValueError, match="seed"):
        kcenter_greedy(np.ones((5, 2)), 1, seed="x")
    with pytest.raises(ValueError, match="n_jobs"):
        herding(np.ones((5, 2)), 1, n_jobs=0)
    # n = 0 selects nothing
    assert herding(np.ones((5, 2)), 0).tolist() == []


def test_threads_do_not_change_the_result(rng):
    X = rng.standard_normal((240, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 240)
    assert np.array_equal(kcenter_greedy(X, 30, seed=2, labels=labels, n_jobs=1), kcenter_greedy(X, 30, seed=2, labels=labels, n_jobs=3))
    assert np.array_equal(herding(X, 30, labels, n_jobs=1), herding(X, 30, labels, n_jobs=3))
    assert np.array_equal(facility_location(X, 30, labels, n_jobs=1), facility_location(X, 30, labels, n_jobs=3))


# --- TypiClust -------------------------------------------------------------------------------


def _naive_typicality(X, k):
    d = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return np.array([1.0 / (np.sort(row)[:k].mean() + 1e-5) for row in d])


def test_typicality_hand_computed_and_against_naive(rng):
    # points 0, 1, 3 on a line, k = 1: nearest distances 1, 1, 2
    X = np.array([[0.0], [1.0], [3.0]])
    assert np.allclose(typicality(X, 1), [1 / (1 + 1e-5), 1 / (1 + 1e-5), 1 / (2 + 1e-5)])
    # k = 2: mean distances (1 + 3) / 2 = 2, (1 + 2) / 2 = 1.5, (2 + 3) / 2 = 2.5
    assert np.allclose(typicality(X, 2), [1 / (2 + 1e-5), 1 / (1.5 + 1e-5), 1 / (2.5 + 1e-5)])
    assert np.allclose(typicality(X, 0), 1e5)
    Y = rng.standard_normal((70, 5))
    assert np.allclose(typicality(Y, 20), _naive_typicality(Y, 20))
    assert np.allclose(typicality(Y.astype(np.float32), 7), _naive_typicality(Y, 7), rtol=1e-5)
    with pytest.raises(ValueError, match="k: expected 0 <= k <= 2"):
        typicality(X, 3)


def _blob(center, rng, n=13, scale=0.1):
    return center + scale * rng.standard_normal((n, len(center)))


def test_typiclust_takes_the_most_typical_of_every_cluster(rng):
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    blobs = [_blob(c, rng) for c in centers]
    X = np.vstack(blobs)
    # three far-apart blobs of 13: k-means finds them from any start; each gives its sample of
    # highest typicality with min(20, 13 // 2) = 6 neighbours (naive)
    want = [13 * i + int(np.argmax(_naive_typicality(b, 6))) for i, b in enumerate(blobs)]
    for seed in range(5):
        assert typiclust(X, 3, seed=seed).tolist() == want
    # q = 1: one cluster of all 39, min(20, 39 // 2) = 19 neighbours
    assert typiclust(X, 1, seed=0).tolist() == [int(np.argmax(_naive_typicality(X, 19)))]
    # per class (blobs 0 and 1 are class 0): quotas as herding's, two clusters in class 0
    labels = np.repeat([0, 0, 1], 13)
    got = typiclust(X, 3, labels, seed=0)
    assert np.bincount(labels[got]).tolist() == class_quotas(3, labels).tolist() == [2, 1]
    assert got.tolist()[:2] == want[:2]
    # max_clusters 3 and q = 6: two rounds over the three clusters; the second gives the most
    # typical of what is left (its typicality among the 12 left, 6 neighbours)
    b0 = blobs[0]
    first = int(np.argmax(_naive_typicality(b0, 6)))
    rest = np.delete(np.arange(13), first)
    second = int(rest[np.argmax(_naive_typicality(b0[rest], 6))])
    assert sorted(set(typiclust(X, 6, seed=0, max_clusters=3).tolist()) & set(range(13))) == sorted([first, second])
    # the same seed, the same indices; q >= the pool keeps it whole
    assert np.array_equal(typiclust(X, 9, seed=4), typiclust(X, 9, seed=4))
    assert typiclust(X, 39, seed=0).tolist() == list(range(39))


def test_typiclust_skips_small_clusters_and_falls_back(rng):
    # a blob of 13 and a pair of outliers far away: with q = 2, k-means puts the pair in a
    # cluster of its own (2 <= min_cluster_size 5), which is skipped: both picks come from the
    # blob, its most typical sample and then the most typical of the 12 left (naive, 6
    # neighbours: min(20, 12 // 2))
    X = np.vstack([_blob(np.zeros(2), rng), [[50.0, 50.0], [50.5, 50.0]]])
    first = int(np.argmax(_naive_typicality(X[:13], 6)))
    rest = np.delete(np.arange(13), first)
    second = int(rest[np.argmax(_naive_typicality(X[rest], 6))])
    assert typiclust(X, 2, seed=0).tolist() == sorted([first, second])
    # with the small clusters kept, one pick comes from each cluster (k = 2 // 2 = 1: a tie, the
    # lower index)
    assert typiclust(X, 2, seed=0, min_cluster_size=0).tolist() == [first, 13]
    # a budget the large clusters cannot hold uses every cluster: 14 of 15
    assert len(set(typiclust(X, 14, seed=0).tolist())) == 14
    for bad, pattern in [({"k_neighbors": 0}, "k_neighbors"), ({"min_cluster_size": -1}, "min_cluster_size"),
                         ({"max_clusters": 0}, "max_clusters")]:
        with pytest.raises(ValueError, match=pattern):
            typiclust(X, 2, seed=0, **bad)
