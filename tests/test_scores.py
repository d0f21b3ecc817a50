import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dsquant.core.sampling import sample_uniform
from dsquant.core.scores import (
    adaptive_counts,
    bin_means,
    contrastive_diversity,
    embedding_representativeness,
    importance_scores,
    sample_adaptive,
    texture_level,
)


def test_texture_level_hand_computed_step_edge():
    # a vertical step 0 | 1 in a 4x4 grayscale image: the 3x3 Sobel gx (weights 1, 2, 1 down
    # the rows) is 4 in the two columns next to the edge and 0 at the mirrored borders; gy = 0
    # -> TL = mean(0.5 * |gx|) = 0.5 * 4 * 8 / 16 = 1.0
    img = np.zeros((1, 4, 4, 1), dtype=np.uint8)
    img[..., 2:, 0] = 255
    assert texture_level(img)[0] == pytest.approx(1.0)
    # the same in RGB: 0.299 + 0.587 + 0.114 = 1
    rgb = np.repeat(img, 3, axis=3)
    assert texture_level(rgb)[0] == pytest.approx(1.0)
    # transposed (a horizontal edge) gives the same through gy; a flat image gives 0
    assert texture_level(img.transpose(0, 2, 1, 3))[0] == pytest.approx(1.0)
    assert texture_level(np.full((1, 4, 4, 3), 77, np.uint8))[0] == 0.0


def test_texture_level_hand_computed_single_pixel():
    # one bright pixel at (1, 1) of a 4x4 image, borders mirrored without repeating the edge
    # (OpenCV's BORDER_REFLECT_101): checked against an explicit 3x3 correlation loop
    img = np.zeros((4, 4))
    img[1, 1] = 1.0
    pad = np.pad(img, 1, mode="reflect")  # reflect without repeating the edge
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    gx = np.array([[np.sum(pad[i : i + 3, j : j + 3] * kx) for j in range(4)] for i in range(4)])
    gy = np.array([[np.sum(pad[i : i + 3, j : j + 3] * kx.T) for j in range(4)] for i in range(4)])
    expected = np.mean(0.5 * np.abs(gx) + 0.5 * np.abs(gy))
    u8 = (img * 255).astype(np.uint8)[None, ..., None]
    assert texture_level(u8)[0] == pytest.approx(expected)


def test_texture_level_averages_32x32_tiles():
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    tiles = [big[:, i * 32 : (i + 1) * 32, j * 32 : (j + 1) * 32] for i in range(2) for j in range(3)]
    expected = np.mean([texture_level(t) for t in tiles], axis=0)
    assert np.allclose(texture_level(big), expected)


def test_importance_normalisation_hand_computed():
    # Rep_hat = [1, 3] / 4, Div_hat = [1, 1] / 2 -> I = [0.75, 1.25] -> I_hat = [0.375, 0.625]
    assert importance_scores([1, 3], [2, 2]).tolist() == pytest.approx([0.375, 0.625])
    with pytest.raises(ValueError, match="rep"):
        importance_scores([0, 0], [1, 1])


def test_contrastive_diversity_equals_the_gram_mean(rng):
    a, b = rng.standard_normal((30, 5)), rng.standard_normal((30, 5))
    bins = [np.arange(0, 12), np.arange(12, 30)]
    got = contrastive_diversity(a, b, bins)
    for k, idx in enumerate(bins):
        e = np.concatenate([a[idx], b[idx]])
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        assert got[k] == pytest.approx(1.0 / (e @ e.T).mean())
    same = np.tile([[1.0, 0.0]], (4, 1))
    assert contrastive_diversity(same, same, [np.arange(4)])[0] == pytest.approx(1.0)


def test_embedding_representativeness_ranks_typical_over_outliers(rng):
    centre = rng.standard_normal(8)
    typical = centre + 0.1 * rng.standard_normal((40, 8))
    outliers = rng.standard_normal((10, 8)) * 3
    feats = np.concatenate([typical, outliers])
    rep = embedding_representativeness(feats, [np.arange(40), np.arange(40, 50)])
    assert rep[0] > rep[1] and np.all((rep >= 0) & (rep <= 1))
    assert bin_means(np.arange(5.0), [np.array([0, 4]), np.array([1])]).tolist() == [2.0, 1.0]


def test_adaptive_counts_hand_computed():
    # sizes [50, 30, 20], ratio 0.2 -> 20; alpha 0.5, I_hat [0.2, 0.3, 0.5]
    # r = 0.5 * I + 0.5 * [0.5, 0.3, 0.2] = [0.35, 0.3, 0.35] -> 7, 6, 7
    shares, counts = adaptive_counts([50, 30, 20], 0.2, [0.2, 0.3, 0.5], alpha=0.5)
    assert shares.tolist() == pytest.approx([0.35, 0.3, 0.35])
    assert counts.tolist() == [7, 6, 7]
    # a bin cannot give more than it has: bin 2 (5 samples) is capped, its excess goes to the
    # others in proportion to their shares
    _, counts = adaptive_counts([50, 45, 5], 0.5, [0.0, 0.0, 1.0], alpha=1.0)
    assert counts.tolist()[2] == 5 and sum(counts) == 50
    with pytest.raises(ValueError, match="alpha"):
        adaptive_counts([5, 5], 0.5, [0.5, 0.5], alpha=1.5)


@settings(max_examples=80, deadline=None)
@example(sizes=[1, 1, 2, 2], ratio=0.875, alpha=0.0, raw=[1.0, 1.0, 0.5] + [1.0] * 5, seed=0, n_classes=1)
@given(
    sizes=st.lists(st.integers(1, 80), min_size=1, max_size=8),
    ratio=st.floats(0.01, 1.0),
    alpha=st.floats(0.0, 1.0),
    raw=st.lists(st.floats(0.01, 10.0), min_size=8, max_size=8),
    seed=st.integers(0, 2**31 - 1),
    n_classes=st.integers(1, 4),
)
def test_adaptive_sampling_properties(sizes, ratio, alpha, raw, seed, n_classes):
    n = sum(sizes)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    bins = np.split(rng.permutation(n), np.cumsum(sizes)[:-1])
    imp = np.array(raw[: len(sizes)])
    imp /= imp.sum()
    idx = sample_adaptive(bins, ratio, imp, alpha, labels, seed)
    # the total is always round(ratio * N); no bin gives more than it has; no duplicates
    assert len(idx) == round(ratio * n) and len(np.unique(idx)) == len(idx)
    shares, counts = adaptive_counts(sizes, ratio, imp, alpha)
    assert np.all(counts <= np.array(sizes)) and counts.sum() == round(ratio * n)
    assert [int(np.isin(b, idx).sum()) for b in bins] == counts.tolist()
    # same seed -> same indices
    assert np.array_equal(idx, sample_adaptive(bins, ratio, imp, alpha, labels, seed))
    # alpha = 0 is DQ: the same counts and, with the same seed, the same indices
    assert np.array_equal(sample_adaptive(bins, ratio, imp, 0.0, labels, seed), sample_uniform(bins, ratio, labels, seed))
    # among bins of the same size, a larger share never means fewer samples (with alpha = 0
    # importance plays no part and ties between equal shares go to the lower index)
    for i in range(len(sizes)):
        for j in range(len(sizes)):
            if sizes[i] == sizes[j] and shares[i] > shares[j]:
                assert counts[i] >= counts[j]
