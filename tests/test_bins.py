import numpy as np
import pytest

from dsquant import GradientEmbedding, bin_sizes, generate_bins
from dsquant.embed import softmax_delta

from reference import explicit_gradients, naive_bin_sizes, naive_bins, naive_similarity


def test_hand_computed_four_points():
    # unit vectors e0, e0, e1, -e0: s = 0.5 + 0.5 cos
    f = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # column sums over V: 2.5, 2.5, 2.5, 1.5 -> first pick: tie of 0, 1, 2 -> index 0
    # then gain(x) = colsum - 2 s_0x: x=1: 0.5, x=2: 1.5, x=3: 1.5 -> tie -> index 2
    bins = generate_bins(f, 2)
    assert [b.tolist() for b in bins] == [[0, 2], [1, 3]]


def test_hand_computed_three_bins_no_ties():
    f = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8], [-1.0, 0.0], [0.6, -0.8]])
    sim = naive_similarity(f)
    # bin size round(6/3) = 2; first pick = largest column sum
    col = sim.sum(0)
    first = int(np.argmax(col))
    gains = col - 2 * sim[first]
    gains[first] = -np.inf
    second = int(np.argmax(gains))
    bins = generate_bins(f, 3)
    assert sorted([first, second]) == bins[0].tolist()
    assert sum(len(b) for b in bins) == 6 and [len(b) for b in bins] == [2, 2, 2]


def test_bin_sizes_hand_computed():
    # N = 10, K = 3: B = round(3.33) = 3; bin 0 takes 3/10 of [7, 3] -> round(2.1), round(0.9)
    # = [2, 1]; bin 1 takes 3/7 of [5, 2] -> [2, 1]; the last bin the rest [3, 1]
    assert bin_sizes([7, 3], 3).tolist() == [[2, 2, 3], [1, 1, 1]]
    # Python's round is half-to-even: 5 / 2 = 2.5 -> 2
    assert bin_sizes([5], 2).tolist() == [[2, 3]]
    assert bin_sizes([5000] * 10, 10).tolist() == [[500] * 10] * 10


@pytest.mark.parametrize("seed", range(6))
def test_bin_sizes_match_official_formula(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(5, 300, size=rng.integers(1, 12)).tolist()
    k = int(rng.integers(1, 6))
    got = bin_sizes(counts, k)
    assert got.tolist() == naive_bin_sizes(counts, k)
    assert got.sum(axis=1).tolist() == counts


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("block_size", [1, 7, 4096])
def test_matches_naive_greedy_random_features(seed, block_size):
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(30, 160)), int(rng.integers(2, 24))
    feats = rng.standard_normal((n, d))
    if seed % 2:
        feats = np.maximum(feats, 0)  # one-signed, like ReLU features
    k = int(rng.integers(1, 6))
    expected = naive_bins(feats, k)
    for dtype in (np.float64, np.float32):
        got = generate_bins(feats, k, block_size=block_size, dtype=dtype)
        assert [b.tolist() for b in got] == [b.tolist() for b in expected]


@pytest.mark.parametrize("seed", range(5))
def test_matches_naive_with_unequal_classes(seed):
    rng = np.random.default_rng(100 + seed)
    sizes = rng.integers(8, 70, size=4)
    labels = rng.permutation(np.repeat(np.arange(4), sizes))
    feats = rng.standard_normal((len(labels), 6)) + labels[:, None] * 0.3
    expected = naive_bins(feats, 4, labels)
    got = generate_bins(feats, 4, labels, block_size=5, n_jobs=2)
    assert [b.tolist() for b in got] == [b.tolist() for b in expected]
    # per-class sizes follow the official formula
    per_class = np.array([[np.sum(labels[b] == c) for b in got] for c in range(4)])
    assert per_class.tolist() == naive_bin_sizes(np.bincount(labels).tolist(), 4)


def test_matches_naive_on_real_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    feats, labels = digits.data[:700], digits.target[:700]
    expected = naive_bins(feats, 5, labels)
    got = generate_bins(feats, 5, labels, block_size=16, dtype=np.float64)
    assert [b.tolist() for b in got] == [b.tolist() for b in expected]


def test_duplicates_and_zero_rows_tie_to_lowest_index(rng):
    feats = rng.standard_normal((60, 5))
    feats[[7, 19, 33]] = feats[2]  # exact duplicates
    feats[11] = 0.0  # no direction: cosine 0 with everything
    expected = naive_bins(feats, 3)
    for block in (1, 4, 100):
        got = generate_bins(feats, 3, block_size=block, dtype=np.float64)
        assert [b.tolist() for b in got] == [b.tolist() for b in expected]


def test_factorised_gradient_embedding_matches_explicit_vectors(rng):
    n, c, d = 90, 4, 7
    labels = rng.integers(0, c, n)
    delta = softmax_delta(rng.standard_normal((n, c)).astype(np.float32), labels).astype(np.float64)
    feats = np.maximum(rng.standard_normal((n, d)), 0)
    explicit = explicit_gradients(delta, feats)
    assert explicit.shape == (n, c * (d + 1))
    expected = naive_bins(explicit, 3, labels)
    got = generate_bins(GradientEmbedding(delta, feats), 3, labels, block_size=6, dtype=np.float64)
    assert [b.tolist() for b in got] == [b.tolist() for b in expected]
    assert GradientEmbedding(delta, feats).shape == (n, c * (d + 1))


def test_bins_partition_the_dataset_and_memmap_gives_the_same(tmp_path, rng):
    feats = rng.standard_normal((400, 16)).astype(np.float32)
    labels = rng.integers(0, 5, 400)
    np.save(tmp_path / "f.npy", feats)
    mm = np.load(tmp_path / "f.npy", mmap_mode="r")
    a = generate_bins(feats, 6, labels)
    b = generate_bins(mm, 6, labels)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    flat = np.concatenate(a)
    assert np.array_equal(np.sort(flat), np.arange(400))
    assert all(x.dtype == np.int64 and np.all(np.diff(x) > 0) for x in a)


def test_progress_reports_every_sample_once(rng):
    feats = rng.standard_normal((300, 8))
    seen = []
    generate_bins(feats, 4, rng.integers(0, 3, 300), progress=seen.append, n_jobs=1)
    assert sum(seen) == 300


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"features": np.zeros(5), "n_bins": 2}, "2-D"),
        ({"features": np.zeros((0, 3)), "n_bins": 2}, "non-empty"),
        ({"features": np.array([[1.0, np.nan], [1.0, 2.0]]), "n_bins": 2}, "row 0 contains NaN"),
        ({"features": np.array([[1.0, 1.0], [np.inf, 2.0]]), "n_bins": 2}, "row 1 contains NaN or inf"),
        ({"features": np.ones((4, 2)), "n_bins": 0}, "n_bins"),
        ({"features": np.ones((4, 2)), "n_bins": 5}, "only 4 samples"),
        ({"features": np.ones((4, 2)), "n_bins": 2, "labels": np.zeros(3, int)}, "labels: expected shape"),
        ({"features": np.ones((6, 2)), "n_bins": 3, "labels": np.array([0, 0, 0, 1, 1, 2])}, "class 2 has only 1 samples"),
    ],
)
def test_bad_input_is_rejected_with_a_named_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_bins(**kwargs)


def test_float32_rows_still_give_the_exact_float64_greedy(rng):
    # pairs of samples 1e-7 apart (relative): their gains differ by far less than float32
    # rounding of a similarity but far more than float64's; only exact re-scoring orders them
    base = np.maximum(rng.standard_normal((40, 12)), 0)
    twins = base * (1 + 1e-7 * rng.standard_normal(base.shape))
    feats = np.concatenate([base, twins])
    expected = naive_bins(feats, 4)
    for block in (3, 80):
        got = generate_bins(feats, 4, block_size=block, dtype=np.float32)
        assert [b.tolist() for b in got] == [b.tolist() for b in expected]


@pytest.fixture
def small_active_set(monkeypatch):
    """Active sets far smaller than the pool, so that the bounds outside them decide."""
    from dsquant.core.bins import _PoolGreedy

    monkeypatch.setattr(_PoolGreedy, "active_factor", 1.2)
    monkeypatch.setattr(_PoolGreedy, "_ACTIVE_EXTRA", 2)
    monkeypatch.setattr(_PoolGreedy, "_MIN_PICKS_PER_REFRESH", 2)
    monkeypatch.setattr(_PoolGreedy, "batch", 8)
    return _PoolGreedy


def _pool_run(feats, n_bins, dtype):
    from dsquant.core.bins import _PoolGreedy
    from dsquant.core.similarity import make_kernel

    sizes = bin_sizes([len(feats)], n_bins)[0]
    greedy = _PoolGreedy(make_kernel(feats, dtype=dtype), 1.0, None, 2**31)
    bins = [np.sort(greedy.select(int(b))).tolist() for b in sizes[:-1]]
    return bins + [greedy.index.tolist()], greedy


@pytest.mark.parametrize("seed", range(4))
def test_active_set_bounds_keep_the_exact_greedy(small_active_set, seed):
    # one-signed clustered features (like ReLU embeddings): the bounds outside the active
    # set hold, so bins are built with refreshes inside a bin, never from the whole pool
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, 16))
    feats = np.maximum(centres[rng.integers(0, 5, 300)] + 0.7 * rng.standard_normal((300, 16)), 0)
    expected = [b.tolist() for b in naive_bins(feats, 4)]
    for dtype in (np.float64, np.float32):
        got, greedy = _pool_run(feats, 4, dtype)
        assert got == expected
        assert greedy.stats["refreshes"] > 3  # more than one active set per bin
        assert not greedy.whole_pool
        # rows of samples not picked yet were carried past refreshes, at most 2 batches at once
        assert 0 < greedy.stats["carried_max"] <= 2 * small_active_set.batch


def test_active_set_falls_back_to_the_whole_pool_on_flat_scores(small_active_set, rng, monkeypatch):
    monkeypatch.setattr(small_active_set, "_MIN_PICKS_PER_REFRESH", 16)
    feats = rng.standard_normal((200, 40))  # mixed signs, near-orthogonal: flat gains
    expected = [b.tolist() for b in naive_bins(feats, 3)]
    got, greedy = _pool_run(feats, 3, np.float32)
    assert got == expected
    assert greedy.whole_pool


def test_active_set_with_gradients_ties_and_zero_rows(small_active_set, rng):
    n, c, d = 160, 3, 6
    labels = rng.integers(0, c, n)
    delta = softmax_delta(rng.standard_normal((n, c)).astype(np.float32), labels).astype(np.float64)
    feats = np.maximum(rng.standard_normal((n, d)), 0)
    delta[[5, 40, 77]] = delta[3]
    feats[[5, 40, 77]] = feats[3]  # exact duplicates: ties across the active-set boundary
    delta[9] = 0.0  # a zero gradient
    expected = naive_bins(explicit_gradients(delta, feats), 4, labels)
    for dtype in (np.float64, np.float32):
        got = generate_bins(GradientEmbedding(delta, feats), 4, labels, dtype=dtype, n_jobs=1)
        assert [b.tolist() for b in got] == [b.tolist() for b in expected]
