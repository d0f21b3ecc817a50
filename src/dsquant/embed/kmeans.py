"""A classical unsupervised feature learner: single-layer k-means features on whitened patches.

Coates, Lee and Ng, "An Analysis of Single-Layer Networks in Unsupervised Feature Learning",
AISTATS 2011: section 3 (the framework: patch normalisation, whitening, "triangle" k-means,
convolutional extraction and quadrant pooling) with section 4's best single-layer settings
(whitening, 6-pixel receptive field, stride 1), as in the authors' MATLAB code (``kmeans_demo.m``):

1. sample random ``p x p`` patches from the images;
2. normalise each patch's brightness and contrast: subtract its mean, divide by
   ``sqrt(var + 10)`` (pixels on the 0-255 scale, ``var`` with ``N - 1``);
3. ZCA-whiten the normalised patches: ``(x - m) V diag(1 / sqrt(d + 0.1)) V^T``;
4. learn ``K`` centroids of the whitened patches with k-means;
5. map every patch (dense, stride 1) to ``f_k(x) = max(0, mean_j(z_j) - z_k)``, ``z_k`` the
   Euclidean distance of the whitened patch to centroid ``k``;
6. sum ``f`` over the four quadrants of the map of patch positions: ``4 K`` features;
7. standardise each feature (mean and ``sqrt(var + 0.01)`` of the training features), as the
   paper's code does before its linear SVM.

Nothing is trained with labels, so it is a label-free reference between raw pixels and the
proxy network.

Measured (``benchmarks/embedding_quality.py``, defaults: K = 800, p = 6, stride 1; 2 CPU cores
shared with other jobs; kNN is cosine, the probe logistic regression):

| data | kNN k=1 | kNN k=20 | linear probe | embed train + test |
|---|---|---|---|---|
| CIFAR-10 (JPEG) | 55.0 | 57.0 | 70.7 | 395 s (k-means 37 s) + 70 s |
| Fashion-MNIST | 87.6 | 87.4 | 90.7 | 223 s (k-means 43 s) + 31 s |

(raw pixels: 36.7 / 35.3 / 39.1 and 85.8 / 84.1 / 83.8.) The time goes to the squared distances
of every window to every centroid (a (windows, D + 2) x (D + 2, K) product: 6.4 TFLOP for
CIFAR-10 train at K = 800) and the fused triangle-and-pool pass over its result; both grow
linearly in K and in the number of windows (1 / stride^2). On a 10,000-image CIFAR-10 subset
(2,000 test images, raw features), K = 800 probed 61.0 against 59.8 for K = 400; the paper's
accuracy still rises from K = 800 to its 1600, here at twice the time. Standardising the
features lifted cosine kNN from 38.9 / 45.0 to 47.2 / 50.3 (K = 400, 6,000 CIFAR-10 training
images, 1,000 test).
"""

from __future__ import annotations

import hashlib
import numbers
import time

import numpy as np

from .base import Embedding

__all__ = ["KMeansFeatureEncoder", "extract_patches", "normalize_patches", "triangle", "quadrant_pool"]

_VERSION = "kmeans-coates2011-v1"
_STATS_IMAGES = 5000  # images whose features give the standardisation statistics
_MAX_SEED = 2**32


def _int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < lo:
        raise ValueError(f"{name}: expected an integer >= {lo}, got {value!r}")
    return int(value)


def _float(name: str, value, positive: bool) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        raise ValueError(f"{name}: expected a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def extract_patches(images: np.ndarray, patch: int, stride: int = 1) -> np.ndarray:
    """Every ``patch x patch`` window of every image, top-left first, row by row.

    Args:
        images: (B, H, W, C) uint8 or float.
    Returns:
        (B, R, S, patch * patch * C) float32, ``R = (H - patch) // stride + 1`` (``S`` likewise
        for W); the last axis is the window flattened in (row, column, channel) order.
    """
    win = np.lib.stride_tricks.sliding_window_view(images, (patch, patch), axis=(1, 2))
    win = win[:, ::stride, ::stride]  # (B, R, S, C, p, p)
    win = win.transpose(0, 1, 2, 4, 5, 3)
    return win.reshape(*win.shape[:3], -1).astype(np.float32)


def normalize_patches(x: np.ndarray, eps: float) -> np.ndarray:
    """Per-row brightness and contrast normalisation, in place: ``(x - mean) / sqrt(var + eps)``
    with the unbiased variance (``N - 1``, MATLAB's ``var``), as in Coates et al. (2011)."""
    x -= x.mean(axis=-1, keepdims=True)
    var = np.einsum("...i,...i->...", x, x) / max(x.shape[-1] - 1, 1)
    x /= np.sqrt(var + eps)[..., None]
    return x


def triangle(dist2: np.ndarray) -> np.ndarray:
    """The "triangle" k-means activation (Coates et al. 2011, section 3), in place.

    Args:
        dist2: (P, K) squared distances of P points to K centroids (small negative values from
            rounding are taken as 0).
    Returns:
        the same array, now ``max(0, mean_k(z) - z_k)`` with ``z = sqrt(dist2)``.
    """
    np.maximum(dist2, 0.0, out=dist2)
    z = np.sqrt(dist2, out=dist2)
    mu = z.mean(axis=1, keepdims=True)
    np.subtract(mu, z, out=z)
    return np.maximum(z, 0.0, out=z)


def _quadrant_matrix(rows: int, cols: int) -> np.ndarray:
    """(4, rows * cols) float32 0/1: which positions each quadrant sums. Rows split at
    ``ceil(rows / 2)`` (MATLAB's ``round(rows / 2)`` of the authors' code), columns likewise;
    quadrants in the order top-left, top-right, bottom-left, bottom-right."""
    hr, hc = (rows + 1) // 2, (cols + 1) // 2
    r, c = np.divmod(np.arange(rows * cols), cols)
    q = (r >= hr) * 2 + (c >= hc)
    return (q[None, :] == np.arange(4)[:, None]).astype(np.float32)


def quadrant_pool(maps: np.ndarray) -> np.ndarray:
    """Sum-pool (B, R, S, K) maps over the 4 quadrants of the (R, S) grid: (B, 4 * K), the K
    sums of the top-left quadrant first, then top-right, bottom-left, bottom-right."""
    b, r, s, k = maps.shape
    pooled = np.matmul(_quadrant_matrix(r, s), maps.reshape(b, r * s, k))  # (B, 4, K)
    return pooled.reshape(b, 4 * k)


def _triangle_pool_kernel():
    """The numba kernel of :meth:`KMeansFeatureEncoder.transform` (compiled on first use)."""
    global _KERNEL
    if _KERNEL is None:
        from numba import njit

        @njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
        def kernel(dist2, quadrant, per_image, out):  # pragma: no cover - compiled
            # One pass over dist2 (b * per_image, K) float32: the triangle activation of each
            # row, added into out[image, quadrant, :] ((b, 4, K) float32, zeroed by the caller).
            n, k = dist2.shape
            zero = np.float32(0.0)
            for i in range(n):
                img = i // per_image
                q = quadrant[i % per_image]
                row = dist2[i]
                s = 0.0
                for j in range(k):
                    v = np.sqrt(max(row[j], zero))
                    row[j] = v
                    s += v
                mu = np.float32(s / k)
                acc = out[img, q]
                for j in range(k):
                    acc[j] += max(mu - row[j], zero)

        _KERNEL = kernel
    return _KERNEL


_KERNEL = None


def _triangle_pool(dist2: np.ndarray, quadrant: np.ndarray, per_image: int, out: np.ndarray) -> None:
    """``out += quadrant_pool(triangle(dist2))`` in one pass (``dist2`` is overwritten): the
    fused form of :func:`triangle` and :func:`quadrant_pool` (6 passes over the (P, K) array in
    numpy, the larger half of the time at K = 1600)."""
    _triangle_pool_kernel()(dist2, quadrant.astype(np.int64), int(per_image), out)


class KMeansFeatureEncoder:
    """Single-layer k-means features (Coates, Lee and Ng, AISTATS 2011): ``4 * n_clusters``
    float32 features per image, learned without labels.

    ``fit(images)`` learns the patch whitening and the centroids from random patches (and the
    feature standardisation); ``transform(images)`` embeds any images with them (a test split
    with the train split's dictionary); ``encode(dataset)`` fits on the dataset's images unless
    already fitted, then transforms them.

    Args:
        n_clusters: K, the number of centroids (features are ``4 K``-d). Default 800: CIFAR-10
            train (50,000 32x32x3 images) embeds in under 7 minutes on 2 shared CPU cores,
            half the time of the paper's best K = 1600; see the module notes.
        patch_size: p, the side of the square receptive field in pixels (the paper's best: 6).
        stride: step in pixels between the windows of the dense extraction (the paper's best: 1).
        n_patches: random patches that the dictionary is learned from (with replacement).
        norm_eps: added to each patch's variance (pixels on the 0-255 scale) before dividing
            by its square root (the paper: 10).
        whiten_eps: added to the eigenvalues of the patch covariance in ZCA (the paper: 0.1).
        max_iter: k-means passes over the patches (scikit-learn ``MiniBatchKMeans`` epochs of
            batches of 2048).
        standardize: standardise every feature with the mean and ``sqrt(var + 0.01)`` of the
            fitted images' features, as the paper's code does before its classifier
            (``kmeans_demo.m``): the features are then (near) zero-mean, unit-variance, so
            cosine and Euclidean neighbours are not dominated by the features with the largest sums.
            The statistics come from at most 5,000 of the fitted images (a seeded sample).
        seed: seeds the patch sampling, k-means and the standardisation sample, in [0, 2**32).
        batch_images: images per chunk of the dense extraction: bounds memory at about
            ``batch_images * R * S * K * 4`` bytes (R x S windows per image); does not change
            the features.

    Attributes (after ``fit``):
        mean_: (D,) float64 mean of the normalised patches, ``D = p * p * C``.
        whitening_: (D, D) float64 symmetric ZCA matrix.
        centroids_: (K, D) float32 centroids in the whitened space.
        feature_mean_, feature_scale_: (4 K,) float32 standardisation (None without it).

    Raises:
        ValueError: naming the parameter, on a non-integer or too small ``n_clusters`` (< 2),
            ``patch_size``, ``stride``, ``max_iter``, ``batch_images`` (< 1) or ``n_patches``
            (< n_clusters), a negative ``norm_eps``, a non-positive ``whiten_eps``, a seed
            outside [0, 2**32); ``fit``/``transform``: images that are not (N, H, W, C) with
            H and W at least ``patch_size``, or, in ``transform``, whose shape other than N
            differs from the fitted one.
        RuntimeError: ``transform`` before ``fit``.
    """

    name = "kmeans"
    kinds = ("images",)
    summary = "single-layer k-means features on whitened patches (Coates, Lee & Ng 2011), no labels"
    argument = None
    cached = True  # 7 minutes for CIFAR-10 on 2 cores; 640 MB of features in the cache

    def __init__(
        self,
        n_clusters: int = 800,
        patch_size: int = 6,
        stride: int = 1,
        n_patches: int = 200_000,
        norm_eps: float = 10.0,
        whiten_eps: float = 0.1,
        max_iter: int = 10,
        standardize: bool = True,
        seed: int = 0,
        batch_images: int = 16,
    ) -> None:
        self.n_clusters = _int("n_clusters", n_clusters, 2)
        self.patch_size = _int("patch_size", patch_size, 1)
        self.stride = _int("stride", stride, 1)
        self.n_patches = _int("n_patches", n_patches, 1)
        if self.n_patches < self.n_clusters:
            raise ValueError(f"n_patches: expected at least n_clusters ({self.n_clusters}), got {n_patches!r}")
        self.norm_eps = _float("norm_eps", norm_eps, positive=False)
        self.whiten_eps = _float("whiten_eps", whiten_eps, positive=True)
        self.max_iter = _int("max_iter", max_iter, 1)
        if not isinstance(standardize, (bool, np.bool_)):
            raise ValueError(f"standardize: expected True or False, got {standardize!r}")
        self.standardize = bool(standardize)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < _MAX_SEED:
            raise ValueError(f"seed: expected an integer in [0, 2**32), got {seed!r}")
        self.seed = int(seed)
        self.batch_images = _int("batch_images", batch_images, 1)
        self.mean_: np.ndarray | None = None
        self.whitening_: np.ndarray | None = None
        self.centroids_: np.ndarray | None = None
        self.feature_mean_: np.ndarray | None = None
        self.feature_scale_: np.ndarray | None = None
        self.image_shape_: tuple[int, int, int] | None = None
        self.fit_info_: dict = {}

    # ------------------------------------------------------------------ configuration
    @property
    def fitted(self) -> bool:
        return self.centroids_ is not None and (self.feature_scale_ is not None or not self.standardize)

    def config(self) -> dict:
        """Every setting that changes the features (``batch_images`` does not); once fitted,
        also a digest of what was learned (``encode`` then uses it as is)."""
        cfg = {
            "encoder": self.name,
            "version": _VERSION,
            "n_clusters": self.n_clusters,
            "patch_size": self.patch_size,
            "stride": self.stride,
            "n_patches": self.n_patches,
            "norm_eps": self.norm_eps,
            "whiten_eps": self.whiten_eps,
            "max_iter": self.max_iter,
            "standardize": self.standardize,
            "seed": self.seed,
        }
        if self.fitted:
            cfg["dictionary_sha256"] = self._digest()
        return cfg

    def _digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.mean_, self.whitening_, self.centroids_, self.feature_mean_, self.feature_scale_):
            if a is not None:
                h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def _check_images(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"images: expected a 4-D (N, H, W, C) array, got shape {images.shape}")
        h, w = images.shape[1:3]
        if min(h, w) < self.patch_size:
            raise ValueError(f"images: expected H and W >= patch_size ({self.patch_size}), got {h}x{w}")
        if len(images) == 0:
            raise ValueError("images: expected at least one image, got 0")
        return images

    # ------------------------------------------------------------------ learning
    def sample_patches(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n_patches, D) float32 random raw patches (uniform image, row and column), the
        first draws of ``rng``; ``fit`` draws them from ``default_rng(seed)``."""
        n, h, w, c = images.shape
        p = self.patch_size
        idx = rng.integers(0, n, self.n_patches)
        r = rng.integers(0, h - p + 1, self.n_patches)
        s = rng.integers(0, w - p + 1, self.n_patches)
        off = np.arange(p)
        rows = (r[:, None] + off)[:, :, None]  # (n, p, 1)
        cols = (s[:, None] + off)[:, None, :]  # (n, 1, p)
        patches = images[idx[:, None, None], rows, cols]  # (n, p, p, C)
        return patches.reshape(self.n_patches, p * p * c).astype(np.float32)

    def _fit_dictionary(self, images: np.ndarray) -> None:
        """Whitening and centroids (steps 1-4 of the module docstring)."""
        from sklearn.cluster import MiniBatchKMeans

        t0 = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        x = normalize_patches(self.sample_patches(images, rng), self.norm_eps).astype(np.float64)
        mean = x.mean(axis=0)
        x -= mean
        cov = (x.T @ x) / (len(x) - 1)
        d, v = np.linalg.eigh(cov)
        whitening = (v / np.sqrt(np.maximum(d, 0.0) + self.whiten_eps)) @ v.T
        xw = (x @ whitening).astype(np.float32)
        del x
        t1 = time.perf_counter()
        km = MiniBatchKMeans(
            n_clusters=self.n_clusters,
            init="k-means++",
            init_size=min(len(xw), 3 * self.n_clusters),
            batch_size=2048,
            max_iter=self.max_iter,
            n_init=1,
            max_no_improvement=None,
            tol=0.0,
            random_state=int(rng.integers(0, _MAX_SEED)),
        ).fit(xw)
        self.mean_, self.whitening_ = mean, whitening
        self.centroids_ = km.cluster_centers_.astype(np.float32)
        self.image_shape_ = tuple(int(s) for s in images.shape[1:])
        self.feature_mean_ = self.feature_scale_ = None
        self.fit_info_ = {
            "fit_images": int(len(images)),
            "whiten_seconds": round(t1 - t0, 3),
            "kmeans_seconds": round(time.perf_counter() - t1, 3),
            "kmeans_epochs": int(km.n_iter_),
            "kmeans_inertia_per_patch": float(km.inertia_) / len(xw),
        }

    def _stats_sample(self, n: int) -> np.ndarray:
        """Sorted indices of the (at most) 5,000 fitted images the standardisation uses."""
        if n <= _STATS_IMAGES:
            return np.arange(n)
        return np.sort(np.random.default_rng((self.seed, 1)).choice(n, _STATS_IMAGES, replace=False))

    def _set_stats(self, raw: np.ndarray) -> None:
        raw = raw.astype(np.float64)
        self.feature_mean_ = raw.mean(axis=0).astype(np.float32)
        self.feature_scale_ = np.sqrt(raw.var(axis=0) + 0.01).astype(np.float32)

    def fit(self, images: np.ndarray, progress: bool = False) -> "KMeansFeatureEncoder":
        """Learn the ZCA whitening and the k-means dictionary from random patches of ``images``
        ((N, H, W, C), pixels 0-255), and with ``standardize`` the feature statistics (from
        the features of at most 5,000 of them)."""
        images = self._check_images(images)
        self._fit_dictionary(images)
        if self.standardize:
            idx = self._stats_sample(len(images))
            self._set_stats(self._raw_features(images[idx], progress))
        return self

    # ------------------------------------------------------------------ features
    def transform(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        """(N, 4 * n_clusters) float32 features of ``images`` ((N, H, W, C), pixels 0-255, the
        shape the encoder was fitted on except N), with the fitted dictionary: K quadrant sums
        of the triangle activations for the top-left quadrant, then top-right, bottom-left,
        bottom-right (standardised with ``standardize``)."""
        if not self.fitted:
            raise RuntimeError("KMeansFeatureEncoder: call fit (or encode) before transform")
        images = self._check_images(images)
        if tuple(images.shape[1:]) != self.image_shape_:
            raise ValueError(f"images: expected (N, {', '.join(map(str, self.image_shape_))}) like the fitted images, got {images.shape}")
        return self._standardized(self._raw_features(images, progress))

    def _standardized(self, raw: np.ndarray) -> np.ndarray:
        if self.standardize:
            raw -= self.feature_mean_
            raw /= self.feature_scale_
        return raw

    def _raw_features(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        """Steps 5-6 of the module docstring, in chunks of ``batch_images`` images."""
        from tqdm.auto import tqdm

        p, k = self.patch_size, self.n_clusters
        # Whitening folded into one affine map, and squared distances as one matrix product:
        # |W(x - m) - c|^2 = [xw, |xw|^2, 1] . [-2 c, 1, |c|^2], with xw = W(x - m).
        w = self.whitening_.astype(np.float32)
        shift = (self.mean_ @ self.whitening_).astype(np.float32)
        cen = self.centroids_
        rhs = np.concatenate([-2.0 * cen.T, np.ones((1, k), np.float32), (cen * cen).sum(1)[None, :]], axis=0)  # (D + 2, K)
        rows = (images.shape[1] - p) // self.stride + 1
        cols = (images.shape[2] - p) // self.stride + 1
        quadrant = _quadrant_matrix(rows, cols).argmax(0)  # (rows * cols,) quadrant of each window
        out = np.empty((len(images), 4 * k), np.float32)
        bs = self.batch_images
        with tqdm(total=len(images), desc="kmeans features", unit="img", disable=not progress, leave=False) as bar:
            for s in range(0, len(images), bs):
                chunk = images[s : s + bs]
                b = len(chunk)
                x = normalize_patches(extract_patches(chunk, p, self.stride).reshape(b * rows * cols, -1), self.norm_eps)
                xw = x @ w
                xw -= shift
                lhs = np.empty((len(xw), xw.shape[1] + 2), np.float32)
                lhs[:, :-2] = xw
                lhs[:, -2] = np.einsum("ij,ij->i", xw, xw)
                lhs[:, -1] = 1.0
                pooled = out[s : s + b].reshape(b, 4, k)  # a view: the kernel adds into it
                pooled[:] = 0.0
                _triangle_pool(lhs @ rhs, quadrant, rows * cols, pooled)
                bar.update(b)
        return out

    def encode(self, dataset, progress: bool = False) -> Embedding:
        """Fit on ``dataset.images`` (unless already fitted), then transform them:
        (N, 4 * n_clusters) float32 features. Fitting here computes every image's features
        once (the standardisation sample's statistics are taken from them)."""
        images = self._check_images(dataset.images)
        fitted_here = not self.fitted
        t = time.perf_counter()
        if fitted_here:
            self._fit_dictionary(images)
            raw = self._raw_features(images, progress)
            if self.standardize:
                self._set_stats(raw[self._stats_sample(len(images))])
            feats = self._standardized(raw)
        else:
            feats = self.transform(images, progress)
        info = {"fitted_here": fitted_here, **self.fit_info_, "seconds": round(time.perf_counter() - t, 3)}
        return Embedding(feats, info=info)
