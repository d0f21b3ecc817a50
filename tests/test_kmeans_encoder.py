"""The k-means feature encoder (Coates, Lee and Ng 2011): each stage against a hand computation
or a naive reference, and the whole pipeline on a small synthetic task."""

import numpy as np
import pytest

from dsquant.data import from_arrays
from dsquant.embed.base import Embedding, Encoder
from dsquant.embed.kmeans import KMeansFeatureEncoder, extract_patches, normalize_patches, quadrant_pool, triangle


def _smooth_images(rng, n, h=12, w=12, c=3):
    """uint8 images with strongly correlated neighbouring pixels (so whitening has work to do)."""
    x = rng.standard_normal((n, h + 4, w + 4, c))
    k = np.ones(5) / 5
    x = np.apply_along_axis(np.convolve, 1, x, k, mode="valid")
    x = np.apply_along_axis(np.convolve, 2, x, k, mode="valid")
    x = (x - x.min()) / (x.max() - x.min())
    return np.clip(x * 255, 0, 255).astype(np.uint8)


def _stripes(rng, n_per_class, size=16):
    """3 classes of textures with random phase, period, contrast and noise: horizontal stripes,
    vertical stripes, a checkerboard."""
    images, labels = [], []
    yy, xx = np.mgrid[:size, :size]
    for label in range(3):
        for _ in range(n_per_class):
            period = rng.uniform(3, 6)
            py, px = rng.uniform(0, 2 * np.pi, 2)
            hor, ver = np.sin(2 * np.pi * yy / period + py), np.sin(2 * np.pi * xx / period + px)
            pattern = [hor, ver, np.sign(hor * ver)][label]
            img = 128 + rng.uniform(30, 100) * pattern + rng.normal(0, 20, (size, size))
            images.append(np.clip(img, 0, 255).astype(np.uint8)[..., None])
            labels.append(label)
    return np.stack(images), np.array(labels)


def _one_nn(train, train_labels, test):
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    return train_labels[(b @ a.T).argmax(1)]


def _small(**kw):
    opts = dict(n_clusters=8, n_patches=2048, max_iter=2, seed=0, standardize=False)
    opts.update(kw)
    return KMeansFeatureEncoder(**opts)


# ----------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "kw, message",
    [
        ({"n_clusters": 1}, "n_clusters: expected an integer >= 2, got 1"),
        ({"n_clusters": 2.5}, "n_clusters: expected an integer >= 2, got 2.5"),
        ({"patch_size": 0}, "patch_size: expected an integer >= 1, got 0"),
        ({"stride": True}, "stride: expected an integer >= 1, got True"),
        ({"n_clusters": 100, "n_patches": 99}, "n_patches: expected at least n_clusters (100), got 99"),
        ({"norm_eps": -1}, "norm_eps: expected a finite number >= 0, got -1"),
        ({"whiten_eps": 0.0}, "whiten_eps: expected a finite number > 0, got 0.0"),
        ({"whiten_eps": float("nan")}, "whiten_eps: expected a finite number > 0, got nan"),
        ({"max_iter": 0}, "max_iter: expected an integer >= 1, got 0"),
        ({"seed": -1}, "seed: expected an integer in [0, 2**32), got -1"),
        ({"seed": 2**32}, "seed: expected an integer in [0, 2**32), got 4294967296"),
        ({"batch_images": 0}, "batch_images: expected an integer >= 1, got 0"),
        ({"standardize": "yes"}, "standardize: expected True or False, got 'yes'"),
    ],
)
def test_invalid_parameters_name_the_parameter(kw, message):
    with pytest.raises(ValueError) as err:
        KMeansFeatureEncoder(**kw)
    assert str(err.value) == message


def test_images_checked(rng):
    enc = _small(patch_size=6)
    with pytest.raises(RuntimeError, match="fit"):
        enc.transform(np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match=r"images: expected H and W >= patch_size \(6\), got 5x8"):
        enc.fit(np.zeros((2, 5, 8, 1), np.uint8))
    with pytest.raises(ValueError, match="4-D"):
        enc.fit(np.zeros((2, 8, 8), np.uint8))
    enc.fit(rng.integers(0, 256, (10, 8, 8, 1), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"expected \(N, 8, 8, 1\) like the fitted images, got \(2, 8, 8, 3\)"):
        enc.transform(np.zeros((2, 8, 8, 3), np.uint8))


# ----------------------------------------------------------------------------- stages
def test_patch_extraction_and_normalisation_hand_computed():
    img = np.arange(2 * 3 * 4 * 2, dtype=np.uint8).reshape(2, 3, 4, 2)
    p = extract_patches(img, 2)
    assert p.shape == (2, 2, 3, 8) and p.dtype == np.float32
    # image 1, window at row 1, column 2: pixels (1..2, 2..3), channels innermost
    assert np.array_equal(p[1, 1, 2], img[1, 1:3, 2:4].ravel())
    assert extract_patches(img, 2, stride=2).shape == (2, 1, 2, 8)
    # [0, 2, 4, 6]: mean 3, unbiased variance 20/3; norm_eps 10 -> / sqrt(50/3)
    x = normalize_patches(np.array([[0.0, 2.0, 4.0, 6.0]]), 10.0)
    assert np.allclose(x, np.array([[-3, -1, 1, 3]]) / np.sqrt(50 / 3))


def test_triangle_hand_computed():
    # z = [1, 2, 3]: mean 2 -> [1, 0, 0]; z = [0, 4, 2, 6]: mean 3 -> [3, 0, 1, 0]
    assert np.allclose(triangle(np.array([[1.0, 4.0, 9.0]])), [[1.0, 0.0, 0.0]])
    assert np.allclose(triangle(np.array([[0.0, 16.0, 4.0, 36.0]])), [[3.0, 0.0, 1.0, 0.0]])
    # a rounding-negative squared distance counts as 0: z = [0, 1], mean 0.5
    assert np.allclose(triangle(np.array([[-1e-6, 1.0]], np.float32)), [[0.5, 0.0]])


def test_quadrant_pool_matches_loop(rng):
    maps = rng.standard_normal((2, 5, 4, 3))
    got = quadrant_pool(maps)
    ref = np.zeros((2, 4, 3))
    for b in range(2):
        for r in range(5):
            for c in range(4):
                ref[b, 2 * (r >= 3) + (c >= 2)] += maps[b, r, c]  # split at ceil(5/2)=3, ceil(4/2)=2
    assert got.shape == (2, 12)
    assert np.allclose(got, ref.reshape(2, 12), atol=1e-5)


def test_whitening_makes_fitted_patch_covariance_identity(rng):
    images = _smooth_images(rng, 40)
    enc = _small(patch_size=3, n_patches=4000, whiten_eps=1e-6, n_clusters=2, max_iter=1).fit(images)
    # the fitted patches: the encoder's first draws from its seed
    x = normalize_patches(enc.sample_patches(images, np.random.default_rng(0)), 10.0).astype(np.float64)
    assert np.allclose(x.mean(0), enc.mean_)
    raw_cov = np.cov(x, rowvar=False)
    xw = (x - enc.mean_) @ enc.whitening_
    cov = np.cov(xw, rowvar=False)
    d = x.shape[1]
    # per-patch mean subtraction removes the constant direction; every other one has variance 1
    projector = np.eye(d) - np.ones((d, d)) / d
    assert np.abs(raw_cov - projector).max() > 0.5  # neighbouring pixels strongly correlated
    assert np.abs(cov - projector).max() < 1e-3
    assert np.allclose(enc.whitening_, enc.whitening_.T)  # ZCA: the symmetric whitening

    # with the paper's eps 0.1 each eigenvalue d shrinks to exactly d / (d + 0.1)
    enc = _small(patch_size=3, n_patches=4000, n_clusters=2, max_iter=1).fit(images)
    ev = np.linalg.eigvalsh(raw_cov)
    got = np.linalg.eigvalsh(np.cov((x - enc.mean_) @ enc.whitening_, rowvar=False))
    assert np.allclose(got, np.maximum(ev, 0) / (np.maximum(ev, 0) + 0.1), atol=1e-6)


def _naive_features(enc, images):
    """Every step spelled out with loops: windows, normalisation, whitening, distances,
    triangle, and the sum over each quadrant of the map of window positions."""
    p, st = enc.patch_size, enc.stride
    rows = list(range(0, images.shape[1] - p + 1, st))
    cols = list(range(0, images.shape[2] - p + 1, st))
    half_r, half_c = (len(rows) + 1) // 2, (len(cols) + 1) // 2
    out = np.zeros((len(images), 4, enc.n_clusters))
    for b in range(len(images)):
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                x = images[b, r : r + p, c : c + p].astype(np.float64).ravel()
                x = (x - x.mean()) / np.sqrt(x.var(ddof=1) + enc.norm_eps)
                xw = (x - enc.mean_) @ enc.whitening_
                z = np.array([np.sqrt(np.sum((xw - ck) ** 2)) for ck in enc.centroids_.astype(np.float64)])
                out[b, 2 * (i >= half_r) + (j >= half_c)] += np.maximum(0.0, z.mean() - z)
    return out.reshape(len(images), -1)


@pytest.mark.parametrize("stride", [1, 2])
def test_transform_matches_naive_reference(rng, stride):
    # 9x8 images, patch 3: a 7x6 map of positions at stride 1, 4x3 at stride 2
    images = rng.integers(0, 256, (6, 9, 8, 2), dtype=np.uint8)
    enc = _small(patch_size=3, n_clusters=5, stride=stride).fit(images)
    got = enc.transform(images[:2])
    assert np.allclose(got, _naive_features(enc, images[:2]), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- the encoder
@pytest.mark.parametrize("shape", [(7, 12, 12, 3), (7, 28, 28, 1), (5, 10, 14, 1)])
def test_shape_dtype_and_batching(rng, shape):
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    enc = _small(patch_size=4, batch_images=3).fit(images)
    f = enc.transform(images)
    assert f.shape == (shape[0], 32) and f.dtype == np.float32
    assert np.isfinite(f).all() and (f >= 0).all() and f.sum(1).min() > 0  # raw: sums of activations
    enc.batch_images = 100  # execution only: same features
    assert np.allclose(enc.transform(images), f, rtol=1e-5, atol=1e-5)
    assert "batch_images" not in enc.config()


def test_deterministic_by_seed(rng):
    images = rng.integers(0, 256, (12, 10, 10, 3), dtype=np.uint8)
    a = _small(seed=1).fit(images).transform(images)
    b = _small(seed=1).fit(images).transform(images)
    c = _small(seed=2).fit(images).transform(images)
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-2
    assert _small(seed=1).config() != _small(seed=2).config()


def test_config_and_encode(rng):
    enc = _small()
    assert isinstance(enc, Encoder) and enc.name == "kmeans"
    cfg = enc.config()
    assert cfg["version"].startswith("kmeans-") and cfg["n_clusters"] == 8 and cfg["patch_size"] == 6
    assert cfg["norm_eps"] == 10.0 and cfg["whiten_eps"] == 0.1 and "dictionary_sha256" not in cfg
    assert cfg != _small(standardize=True).config()
    ds = from_arrays(rng.integers(0, 256, (10, 8, 8, 1), dtype=np.uint8), np.arange(10) % 2)
    emb = enc.encode(ds)
    assert isinstance(emb, Embedding) and emb.features.shape == (10, 32) and emb.features.dtype == np.float32
    assert emb.info["fitted_here"] is True
    # fitted now: the config names the dictionary, and encode uses it as is
    digest = enc.config()["dictionary_sha256"]
    other = from_arrays(rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8), np.arange(4) % 2)
    emb2 = enc.encode(other)
    assert emb2.info["fitted_here"] is False and enc.config()["dictionary_sha256"] == digest
    assert np.array_equal(emb2.features, enc.transform(other.images))


def test_standardisation_from_the_fitted_images(rng):
    images = rng.integers(0, 256, (20, 10, 10, 1), dtype=np.uint8)
    raw = _small().fit(images).transform(images).astype(np.float64)
    enc = _small(standardize=True).fit(images)
    assert np.allclose(enc.feature_mean_, raw.mean(0), rtol=1e-5)
    assert np.allclose(enc.feature_scale_, np.sqrt(raw.var(0) + 0.01), rtol=1e-4)
    f = enc.transform(images)
    assert f.dtype == np.float32
    assert np.abs(f.mean(0)).max() < 1e-4 and np.allclose(f.std(0), np.sqrt(raw.var(0) / (raw.var(0) + 0.01)), atol=1e-4)
    # encode computes the same features in one pass (statistics from its own transform)
    emb = _small(standardize=True).encode(from_arrays(images, np.arange(20) % 2))
    assert np.allclose(emb.features, f, atol=1e-4)
    # at most 5,000 images give the statistics: a seeded sample, sorted
    idx = enc._stats_sample(12_000)
    assert len(idx) == 5000 and np.all(np.diff(idx) > 0) and np.array_equal(idx, enc._stats_sample(12_000))


def test_features_separate_textures():
    rng = np.random.default_rng(7)
    x_train, y_train = _stripes(rng, 40)
    x_test, y_test = _stripes(rng, 30)
    enc = KMeansFeatureEncoder(n_clusters=32, patch_size=5, n_patches=4096, max_iter=5, seed=0).fit(x_train)
    assert enc.standardize  # the default
    pred = _one_nn(enc.transform(x_train), y_train, enc.transform(x_test))
    assert (pred == y_test).mean() >= 0.9  # chance: 1/3
