"""dq-budget (issue 14): DQ's bins with shares that follow the budget. Hand-computed counts, the
greedy ranks against the naive greedy, and the exact reduction to DQ."""

import numpy as np
import pytest

import dsquant
from dsquant import data as _data  # noqa: F401  (dsquant.data below)
from dsquant.core.baselines import herding, herding_cell_rank, herding_drop_last
from dsquant.core.bins import generate_bins
from dsquant.core.sampling import largest_remainder, sample_uniform, sample_with_counts, skewed_bin_counts
from dsquant.methods import DQ, DQBudget, make_method
from dsquant.methods.budget import RULE, budget_rule

from reference import naive_bin_sizes, naive_graphcut_pool, naive_similarity


def test_skewed_counts_hand_computed():
    # K = 3, sizes 10 each, skew ln 2: factors 2, 1, 1/2 -> weights 20, 10, 5; 7 samples:
    # quotas 4, 2, 1 exactly
    assert skewed_bin_counts([10, 10, 10], 7, np.log(2)).tolist() == [4, 2, 1]
    # negative skew mirrors it
    assert skewed_bin_counts([10, 10, 10], 7, -np.log(2)).tolist() == [1, 2, 4]
    # weights 8, 4, 3: quotas 4.8, 2.4, 1.8 round to 5, 2, 2, but bin 0 holds 4; the other 5
    # go to bins 1 and 2 by weights 4 : 3 (quotas 2.86, 2.14) -> 3, 2
    assert skewed_bin_counts([4, 4, 6], 9, np.log(2)).tolist() == [4, 3, 2]
    # drop_last: the last bin gives nothing while the others can hold the total
    assert skewed_bin_counts([10, 10, 10], 7, 0.0, drop_last=True).tolist() == [4, 3, 0]
    assert skewed_bin_counts([3, 3, 10], 8, 0.0, drop_last=True).tolist() == largest_remainder(8, [3, 3, 10], caps=[3, 3, 10]).tolist()
    with pytest.raises(ValueError, match="skew: expected a finite number"):
        skewed_bin_counts([1, 2], 1, float("nan"))
    with pytest.raises(ValueError, match="total: expected 0 <= total <= 3"):
        skewed_bin_counts([1, 2], 4)


def test_zero_skew_is_dq_counts(rng):
    for _ in range(50):
        sizes = rng.integers(1, 40, size=rng.integers(1, 12))
        total = int(rng.integers(0, sizes.sum() + 1))
        assert np.array_equal(skewed_bin_counts(sizes, total, 0.0), largest_remainder(total, sizes, caps=sizes))


def test_ranks_are_the_naive_greedy_order(rng):
    x = rng.normal(size=(90, 5))
    labels = np.repeat([0, 1, 2], 30)
    bins, rank = generate_bins(x, 4, labels, return_rank=True, dtype=np.float64)
    assert all(np.array_equal(a, b) for a, b in zip(bins, generate_bins(x, 4, labels, dtype=np.float64)))
    sim = naive_similarity(x)
    sizes = naive_bin_sizes([30, 30, 30], 4)
    for c in range(3):
        remaining = list(np.flatnonzero(labels == c))
        order = []
        for k in range(3):
            pool = np.array(remaining)
            picks = pool[naive_graphcut_pool(sim[np.ix_(pool, pool)], sizes[c][k])]
            order.extend(picks.tolist())
            remaining = [i for i in remaining if i not in set(picks.tolist())]
        assert rank[order].tolist() == list(range(len(order)))  # picked at steps 0, 1, 2, ...
        assert (rank[remaining] == -1).all()  # the last bin is never ranked


def test_greedy_order_takes_the_first_picks_and_draws_the_last_bin(rng):
    bins = [np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7])]
    labels = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    rank = np.array([3, 1, 0, 2, -1, -1, -1, -1])
    picked = sample_with_counts(bins, [2, 2], labels, seed=0, rank=rank)
    assert picked[:2].tolist() == [1, 2]  # the lowest rank of class 0 (sample 1) and of class 1 (sample 2)
    assert len(set(picked[2:].tolist()) & {4, 5}) == 1 and len(set(picked[2:].tolist()) & {6, 7}) == 1
    with pytest.raises(ValueError, match="rank: expected one rank per sample"):
        sample_with_counts(bins, [2, 2], labels, seed=0, rank=rank[:5])


def test_herding_cell_rank_hand_computed_and_reduces_to_herding(rng):
    # one cell, 1-D: mean 3.25; first pick 2 (closest), then the x that brings (2 + x) / 2 closest
    # to 3.25: 1 (1.5, off by 1.75) beats 0 (1.0) and 10 (6.0); the others rank q = 2
    X = np.array([[0.0], [1.0], [2.0], [10.0]])
    assert herding_cell_rank(X, [np.arange(4)], [2]).tolist() == [2, 1, 0, 2]
    # two bins, two classes: every cell's picks are herding's on that cell alone
    X = rng.normal(size=(60, 4))
    labels = np.repeat([0, 1], 30)
    bins = [np.arange(0, 60, 3), np.setdiff1d(np.arange(60), np.arange(0, 60, 3))]
    rank = herding_cell_rank(X, bins, [6, 3], labels)
    picked = set(sample_with_counts(bins, [6, 3], labels, seed=0, rank=rank).tolist())
    for b, q_cells in zip(bins, ((3, 3), (2, 1))):  # 6 over two classes of 10: 3 + 3; 3 over 20 + 20: 2 + 1 (controlled rounding)
        for c, q in zip((0, 1), q_cells):
            cell = b[labels[b] == c]
            assert set(cell[herding(X[cell], q)].tolist()) == picked & set(cell.tolist())
    assert len(picked) == 9 and (rank[np.setdiff1d(np.arange(60), np.concatenate(bins))] == -1).all()
    # a single bin: stratified herding is herding per class
    one = [np.arange(60)]
    assert np.array_equal(sample_with_counts(one, [11], labels, 0, herding_cell_rank(X, one, [11], labels)), herding(X, 11, labels))
    with pytest.raises(ValueError, match="bin_counts"):
        herding_cell_rank(X, bins, [21, 0], labels)


def test_herding_drop_last_hand_computed_and_against_naive(rng):
    # one class, bins {0, 1, 2} and {3}: 10 is left out; herding on 0, 1, 2 (mean 1) picks 1, then
    # the x with (1 + x) / 2 closest to 1: 0 and 2 tie at 0.5 off, the lower index wins
    X = np.array([[0.0], [1.0], [2.0], [10.0]])
    assert herding_drop_last(X, [np.arange(3), np.array([3])], 2).tolist() == [0, 1]
    assert herding(X, 2).tolist() == [1, 2]  # with 10 in the pool (mean 3.25) the picks differ
    # naive: herding on every class's rows outside the last bin, the whole set's class quotas
    X = rng.normal(size=(90, 5)).astype(np.float32)
    labels = np.repeat([0, 1, 2], 30)
    bins = [rng.permutation(90)[:30], None, None]
    rest = np.setdiff1d(np.arange(90), bins[0])
    bins[1], bins[2] = rest[:40], rest[40:]
    for n in (3, 10, 31):
        got = herding_drop_last(X, bins, n, labels)
        quotas = np.bincount(labels[herding(X, n, labels)], minlength=3)  # herding's own quotas
        want = []
        for c, q in zip(range(3), quotas):
            kept = np.setdiff1d(np.flatnonzero(labels == c), bins[2])
            want += kept[herding(X[kept], int(q))].tolist()
        assert got.tolist() == sorted(want) and len(got) == n and not set(got.tolist()) & set(bins[2].tolist())
    # one bin: herding exactly; a quota larger than a class's rows outside the last bin: the class
    # herds over all its rows
    assert np.array_equal(herding_drop_last(X, [np.arange(90)], 12, labels), herding(X, 12, labels))
    big = herding_drop_last(X, [np.arange(0, 90, 10), np.setdiff1d(np.arange(90), np.arange(0, 90, 10))], 30, labels)
    assert np.array_equal(big, herding(X, 30, labels))
    with pytest.raises(ValueError, match="bins: expected"):
        herding_drop_last(X, [np.array([0, 95])], 3, labels)


def test_herding_drop_method_uses_the_runs_bins():
    ds = dsquant.data.load_digits()
    feats = ds.images.reshape(len(ds), -1).astype(np.float32)
    fds = dsquant.data.FeatureDataset(feats, ds.labels, ds.classes, "digits-pixels")
    run = dsquant.compress(fds, ratio=0.05, seed=0, method="herding-drop")
    bins = dsquant.compress(fds, ratio=0.05, seed=0, method="dq").bins
    assert all(np.array_equal(a, b) for a, b in zip(run.bins, bins)) and len(run.bins) == 10
    assert np.array_equal(run.indices, herding_drop_last(feats, bins, len(run.indices), ds.labels))
    assert np.array_equal(run.indices, dsquant.compress(fds, ratio=0.05, seed=5, method="herding-drop").indices)


def test_herding_order_in_dq_budget():
    ds = dsquant.data.load_digits()
    feats = ds.images.reshape(len(ds), -1).astype(np.float32)
    fds = dsquant.data.FeatureDataset(feats, ds.labels, ds.classes, "digits-pixels")
    m = DQBudget(n_bins=5, skew=1.0, drop_last=True, order="herding")
    a, b = dsquant.compress(fds, ratio=0.1, seed=0, method=m), dsquant.compress(fds, ratio=0.1, seed=3, method=m)
    assert np.array_equal(a.indices, b.indices)  # deterministic: no draw anywhere
    counts = a.manifest["dq-budget"]["counts"]
    assert counts == skewed_bin_counts([len(x) for x in a.bins], len(a.indices), 1.0, True).tolist() and counts[-1] == 0
    chosen = set(a.indices.tolist())
    for k, bk in enumerate(a.bins):  # naive: every (bin, class) cell gives herding's first picks on the cell
        for c in range(10):
            cell = bk[ds.labels[bk] == c]
            q = sum(i in chosen for i in cell.tolist())
            assert set(cell[herding(feats[cell], q)].tolist()) == chosen & set(cell.tolist())


def test_without_skew_it_is_dq_to_the_bit():
    ds = dsquant.data.load_digits()
    feats = ds.images.reshape(len(ds), -1).astype(np.float32)
    path_ds = dsquant.data.FeatureDataset(feats, ds.labels, ds.classes, "digits-pixels")
    for ratio in (0.01, 0.1, 0.5):
        for seed in (0, 7):
            a = dsquant.compress(path_ds, ratio=ratio, seed=seed, method=DQ(n_bins=10))
            b = dsquant.compress(path_ds, ratio=ratio, seed=seed, method=DQBudget(n_bins=10, skew=0, drop_last=False, order="uniform"))
            assert np.array_equal(a.indices, b.indices) and all(np.array_equal(x, y) for x, y in zip(a.bins, b.bins))


def test_auto_rule_and_its_record():
    # the frozen rules, by hand. proxy: full skew to 50 per class, 0 from 500, log-linear between;
    # greedy order below 3.2, herding order from there to 500, drop the last bin below 500
    assert budget_rule(1) == {"skew": 2.0, "drop_last": True, "order": "greedy"}
    assert budget_rule(10) == {"skew": 2.0, "drop_last": True, "order": "herding"} == budget_rule(50)
    assert budget_rule(100)["skew"] == pytest.approx(2.0 * np.log(500 / 100) / np.log(10))
    assert budget_rule(500) == {"skew": 0.0, "drop_last": False, "order": "uniform"}
    assert budget_rule(3)["order"] == "greedy" and budget_rule(4)["order"] == "herding" and RULE["greedy_below"] == 3.2
    # pretrained: full skew to 2 per class, 0 from 5; DQ from 5 per class up
    assert budget_rule(1, "pretrained") == {"skew": 2.0, "drop_last": True, "order": "greedy"}
    assert budget_rule(3, "pretrained")["skew"] == pytest.approx(2.0 * np.log(5 / 3) / np.log(5 / 2))
    assert budget_rule(5, "pretrained") == {"skew": 0.0, "drop_last": False, "order": "uniform"} == budget_rule(40, "pretrained")
    with pytest.raises(ValueError, match="embedding: expected one of"):
        budget_rule(1, "clip")
    with pytest.raises(ValueError, match="per_class: expected a positive number"):
        budget_rule(0)
    ds = dsquant.data.load_digits()
    feats = ds.images.reshape(len(ds), -1).astype(np.float32)
    fds = dsquant.data.FeatureDataset(feats, ds.labels, ds.classes, "digits-pixels")
    run = dsquant.compress(fds, ratio=20 / len(ds), method="dq-budget")  # 20 samples, 2 per class
    rec = run.manifest["dq-budget"]
    assert rec["per_class"] == 2.0 and rec["embedding"] == "pretrained" and rec["rule"] == 2  # features given: the pretrained rule
    assert {k: rec[k] for k in ("skew", "drop_last", "order")} == budget_rule(2.0, "pretrained")
    # greedy order at 2 per class: the class's first greedy picks, whatever the seed
    other = dsquant.compress(fds, ratio=20 / len(ds), method="dq-budget", seed=5)
    if rec["order"] == "greedy":
        assert np.array_equal(run.indices, other.indices)
    _, rank = generate_bins(feats, 10, ds.labels, return_rank=True)
    chosen = set(run.indices.tolist())
    for k, b in enumerate(run.bins[:-1]):  # each (bin, class) cell gives its first greedy picks
        for c in range(10):
            cell = b[ds.labels[b] == c]
            q = sum(i in chosen for i in cell.tolist())
            assert set(cell[np.argsort(rank[cell])[:q]].tolist()) <= chosen
    assert rec["counts"] == skewed_bin_counts([len(b) for b in run.bins], 20, rec["skew"], rec["drop_last"]).tolist()


def test_parameters_checked_once():
    for bad, match in [({"skew": "big"}, "skew: expected a finite number or 'auto'"), ({"skew": float("inf")}, "skew"), ({"drop_last": 1}, "drop_last: expected True, False or 'auto'"), ({"order": "random"}, "order: expected 'uniform', 'greedy', 'herding' or 'auto'")]:
        with pytest.raises(ValueError, match=match):
            DQBudget(**bad)
    m = make_method("dq-budget", n_bins=5, alpha=0.3)
    assert m.config() == {"n_bins": 5, "precision": "float32", "block_size": None, "skew": "auto", "drop_last": "auto", "order": "auto", "rule": 2}
    assert "rule" not in DQBudget(skew=1.0, drop_last=True, order="uniform").config()
