import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsquant import largest_remainder, sample_uniform, sample_with_counts
from dsquant.core.sampling import budget, split_over_classes


def test_largest_remainder_hand_computed():
    # quotas 10 * [1, 2, 3] / 6 = 1.67, 3.33, 5.0 -> floors 1, 3, 5 (9); the unit left goes to
    # the largest fraction (0.67)
    assert largest_remainder(10, [1, 2, 3]).tolist() == [2, 3, 5]
    # equal fractions: ties go to the lower position
    assert largest_remainder(2, [1, 1, 1]).tolist() == [1, 1, 0]
    # caps: part 0 can take 1, its excess is split over the others in proportion
    assert largest_remainder(6, [4, 1, 1], caps=[1, 10, 10]).tolist() == [1, 3, 2]
    assert largest_remainder(0, [1, 2]).tolist() == [0, 0]


def test_largest_remainder_errors():
    with pytest.raises(ValueError, match="weights"):
        largest_remainder(3, [1, -1])
    with pytest.raises(ValueError, match="caps"):
        largest_remainder(5, [1, 1], caps=[2, 2])


def test_budget_is_round_half_even():
    assert budget(0.125, 500) == 62  # 62.5 -> 62 (Python round)
    assert budget(0.1, 50000) == 5000
    for bad in (0, -0.1, 1.01, float("nan"), "x"):
        with pytest.raises(ValueError, match="ratio"):
            budget(bad, 10)


def test_uniform_sampling_is_class_balanced_per_bin_and_exact():
    labels = np.repeat(np.arange(10), 5000)
    bins = [np.concatenate([np.arange(c * 5000 + k * 500, c * 5000 + (k + 1) * 500) for c in range(10)]) for k in range(10)]
    idx = sample_uniform(bins, 0.1, labels, seed=3)
    assert len(idx) == 5000 and len(np.unique(idx)) == 5000
    assert np.bincount(labels[idx]).tolist() == [500] * 10
    for b in bins:
        chosen = np.isin(b, idx)
        assert chosen.sum() == 500
        assert np.bincount(labels[b][chosen], minlength=10).tolist() == [50] * 10


def test_unequal_classes_get_exact_bin_and_class_totals():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 1000)
    bins = np.array_split(rng.permutation(1000), 6)
    idx = sample_uniform(bins, 0.13, labels, seed=1)
    assert len(idx) == round(0.13 * 1000)
    # each class gets its largest-remainder share of the budget, within one sample
    per_class = np.bincount(labels[idx], minlength=7)
    quota = 0.13 * np.bincount(labels, minlength=7)
    assert np.all(np.abs(per_class - quota) < 1)
    # each bin gets its share of the budget, within one sample
    for b in bins:
        assert abs(np.isin(b, idx).sum() - 0.13 * len(b)) < 1


def test_split_over_classes_meets_both_margins():
    sizes = np.array([[18, 18, 18, 18, 18, 18, 18, 18, 17, 18], [17, 19, 18, 18, 18, 18, 18, 18, 17, 17]])
    out = split_over_classes(np.array([18, 18]), sizes)
    assert out.sum(axis=1).tolist() == [18, 18]
    # every class's target is 3.6 in all (1.8 per bin): 4 to six classes, 3 to four, never all
    # the remainders to the same classes
    assert sorted(out.sum(axis=0).tolist()) == [3] * 4 + [4] * 6
    assert np.all((out >= 1) & (out <= 2))


def test_same_seed_same_indices_and_different_seed_differs():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 600)
    bins = np.array_split(np.arange(600), 4)
    a = sample_uniform(bins, 0.2, labels, seed=11)
    b = sample_uniform(bins, 0.2, labels, seed=11)
    c = sample_uniform(bins, 0.2, labels, seed=12)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == np.int64 and np.all(np.diff(a) > 0)


def test_ratio_one_keeps_everything_and_counts_are_checked():
    bins = [np.arange(5), np.arange(5, 12)]
    assert sample_uniform(bins, 1.0).tolist() == list(range(12))
    with pytest.raises(ValueError, match="bin 1 has 7 samples"):
        sample_with_counts(bins, [1, 8])
    with pytest.raises(ValueError, match="non-overlapping"):
        sample_uniform([np.arange(5), np.arange(3, 6)], 0.5)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=8),
    n_classes=st.integers(1, 5),
    ratio=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_exact_total_and_determinism(sizes, n_classes, ratio, seed):
    n = sum(sizes)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    perm = rng.permutation(n)
    bins = np.split(perm, np.cumsum(sizes)[:-1])
    idx = sample_uniform(bins, ratio, labels, seed=seed)
    assert len(idx) == round(ratio * n)
    assert len(np.unique(idx)) == len(idx)
    assert np.array_equal(idx, sample_uniform(bins, ratio, labels, seed=seed))
    for b in bins:  # every bin gives its share within one sample, never more than it has
        assert abs(np.isin(b, idx).sum() - round(ratio * n) * len(b) / n) < 1 + 1e-9
