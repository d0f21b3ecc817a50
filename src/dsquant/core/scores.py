"""ADQ bin scores and adaptive per-bin sampling (ALGORITHMS.md section 5).

* Representativeness: the texture level of images (:func:`texture_level`), averaged per bin; for
  data without images, an embedding-space stand-in (:func:`embedding_representativeness`) or any
  per-sample score the user supplies (:func:`bin_means`).
* Diversity: ``Div_n = 1 / mean(E E^T)`` over the L2-normalised embeddings of two augmented views
  of every sample of bin n (:func:`contrastive_diversity`; the views come from an encoder outside
  the core).
* Importance: ``I_hat = normalise(Rep / sum Rep + Div / sum Div)`` (:func:`importance_scores`).
* Shares and counts: ``r_n = alpha I_hat_n + (1 - alpha) N(n) / sum N``, ``q_n`` = the
  largest-remainder split of ``round(ratio * N)`` by ``r``, capped at ``N(n)``
  (:func:`adaptive_counts`), sampled by :func:`sample_adaptive`.

Pure numpy (scipy for the Sobel filter), no I/O.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from .sampling import budget, largest_remainder, sample_with_counts

__all__ = [
    "texture_level",
    "bin_means",
    "embedding_representativeness",
    "contrastive_diversity",
    "importance_scores",
    "adaptive_counts",
    "sample_adaptive",
]

_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _texture_batch(gray: np.ndarray) -> np.ndarray:
    """(B, h, w) float32 in [0, 1] -> (B,) mean of 0.5|gx| + 0.5|gy| (3x3 Sobel, mirrored
    borders as OpenCV's default BORDER_REFLECT_101)."""
    deriv = np.array([-1.0, 0.0, 1.0], dtype=np.float32)
    smooth = np.array([1.0, 2.0, 1.0], dtype=np.float32)
    gx = ndimage.correlate1d(ndimage.correlate1d(gray, deriv, axis=2, mode="mirror"), smooth, axis=1, mode="mirror")
    gy = ndimage.correlate1d(ndimage.correlate1d(gray, deriv, axis=1, mode="mirror"), smooth, axis=2, mode="mirror")
    np.abs(gx, out=gx)
    np.abs(gy, out=gy)
    gx += gy
    return gx.reshape(len(gx), -1).mean(axis=1, dtype=np.float64) * 0.5


def texture_level(images: np.ndarray, crop: int = 32, chunk: int = 4096) -> np.ndarray:
    """ADQ's representativeness of each image: its texture level.

    ``TL(x) = mean over pixels of (0.5 |gx| + 0.5 |gy|)``, with gx, gy the 3x3 Sobel derivatives
    of the grayscale image ``0.299 R + 0.587 G + 0.114 B`` scaled to [0, 1] (borders mirrored
    without repeating the edge, OpenCV's default). Images larger than ``crop`` x ``crop`` are cut
    into non-overlapping ``crop`` x ``crop`` tiles (the remainder at the right and bottom edges
    is dropped) and their texture levels averaged.

    Args:
        images: (N, H, W, C) uint8 with C = 1 or 3 (or (N, H, W)).
        crop: tile size for large images.
        chunk: images processed at once (bounds the temporary memory).

    Returns:
        (N,) float64 texture levels (0 for a flat image; the Sobel response of a unit step is 4,
        so values lie in [0, 4]).

    Raises:
        ValueError: if ``images`` is not a uint8 array of 1 or 3 channels.

    Source: ALGORITHMS.md section 5, "Representativeness"; ADQ's texture_level.py (cv2.Sobel).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise ValueError(f"images: expected uint8 (N, H, W, 1 or 3), got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    tiles_y = h // crop if h > crop else 1
    tiles_x = w // crop if w > crop else 1
    th, tw = (crop if h > crop else h), (crop if w > crop else w)
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        x = images[start : start + chunk, : tiles_y * th, : tiles_x * tw]
        if c == 3:
            gray = np.tensordot(x.astype(np.float32), _GRAY / 255.0, axes=([3], [0]))
        else:
            gray = x[..., 0].astype(np.float32) / 255.0
        b = len(gray)
        # (b, ty, th, tx, tw) -> (b * ty * tx, th, tw): every tile is filtered on its own
        tiles = gray.reshape(b, tiles_y, th, tiles_x, tw).transpose(0, 1, 3, 2, 4).reshape(-1, th, tw)
        out[start : start + b] = _texture_batch(np.ascontiguousarray(tiles)).reshape(b, -1).mean(axis=1)
    return out


def bin_means(values: np.ndarray, bins: Sequence[np.ndarray]) -> np.ndarray:
    """(K,) float64: the mean of per-sample ``values`` over each bin (e.g. user-supplied
    representativeness scores).

    Raises:
        ValueError: on non-finite values, an empty bin, or an index out of range.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or not np.isfinite(values).all():
        raise ValueError("values: expected a 1-D array of finite per-sample scores")
    out = np.empty(len(bins))
    for k, b in enumerate(bins):
        b = np.asarray(b, dtype=np.int64)
        if len(b) == 0:
            raise ValueError(f"bins: bin {k} is empty; its mean score is undefined")
        if b.max() >= len(values) or b.min() < 0:
            raise ValueError(f"bins: bin {k} has indices outside [0, {len(values)})")
        out[k] = values[b].mean()
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def embedding_representativeness(features: np.ndarray, bins: Sequence[np.ndarray], labels: np.ndarray | None = None) -> np.ndarray:
    """A representativeness score for data without images (our extension beyond the paper).

    ``Rep_n`` = the mean, over the members i of bin n, of their mean similarity to their pool:
    ``(1 / |P|) sum_{j in P} (0.5 + 0.5 cos(f_i, f_j))``, where P is i's class (with labels) or
    the whole set. It is high for bins of typical samples and low for bins of outliers, the
    role texture plays for images. O(N d): ``sum_j cos(f_i, f_j) = <u_i, sum_j u_j>``.

    Args:
        features: (N, d) embedding.
        bins: K index arrays.
        labels: optional (N,) class labels.

    Returns:
        (K,) float64 in [0, 1].
    """
    unit = _unit(features)
    n = len(unit)
    typical = np.empty(n)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for g in groups:
        total = unit[g].sum(axis=0)
        typical[g] = 0.5 + 0.5 * (unit[g] @ total) / len(g)
    return bin_means(typical, bins)


def contrastive_diversity(view_a: np.ndarray, view_b: np.ndarray, bins: Sequence[np.ndarray]) -> np.ndarray:
    """ADQ's diversity of each bin: ``Div_n = 1 / mean(E E^T)``.

    E stacks the L2-normalised embeddings of both augmented views of every sample of bin n
    (2 |S_n| rows); the mean runs over all (2 |S_n|)^2 entries, diagonal included, as in the
    released code. It equals ``||sum_i e_i||^2 / (2 |S_n|)^2``, so no Gram matrix is formed.

    Args:
        view_a, view_b: (N, d) embeddings of the two views of every sample.
        bins: K index arrays.

    Returns:
        (K,) float64, >= 1 (1 when all views coincide; large for spread-out bins).

    Raises:
        ValueError: on mismatched views, an empty bin, or a bin whose mean similarity is not
            positive (its diversity is undefined).

    Source: ALGORITHMS.md section 5, "Diversity"; ADQ's diversity.py.
    """
    a, b = _unit(view_a), _unit(view_b)
    if a.shape != b.shape:
        raise ValueError(f"views: shapes differ, {a.shape} vs {b.shape}")
    out = np.empty(len(bins))
    for k, idx in enumerate(bins):
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == 0:
            raise ValueError(f"bins: bin {k} is empty; its diversity is undefined")
        total = a[idx].sum(axis=0) + b[idx].sum(axis=0)
        mean_sim = float(total @ total) / (2 * len(idx)) ** 2
        if mean_sim <= 0:
            raise ValueError(f"bins: bin {k} has mean similarity {mean_sim:.3g} <= 0; 1/mean is undefined")
        out[k] = 1.0 / mean_sim
    return out


def importance_scores(rep: Sequence[float], div: Sequence[float]) -> np.ndarray:
    """ADQ's importance of each bin: ``I_hat = I / sum(I)``, ``I = Rep / sum(Rep) + Div / sum(Div)``.

    Args:
        rep: (K,) representativeness scores, >= 0, not all 0.
        div: (K,) diversity scores, >= 0, not all 0.

    Returns:
        (K,) float64 summing to 1.

    Raises:
        ValueError: on mismatched lengths, negative or non-finite scores, or all-zero scores.

    Source: ALGORITHMS.md section 5, "Normalisation" (the paper leaves it open; our choice).
    """
    rep = np.asarray(rep, dtype=np.float64)
    div = np.asarray(div, dtype=np.float64)
    if rep.shape != div.shape or rep.ndim != 1:
        raise ValueError(f"rep, div: expected two 1-D arrays of one score per bin, got {rep.shape} and {div.shape}")
    for name, v in (("rep", rep), ("div", div)):
        if not np.isfinite(v).all() or (v < 0).any() or v.sum() <= 0:
            raise ValueError(f"{name}: expected finite scores >= 0, not all 0, got {v.tolist()}")
    imp = rep / rep.sum() + div / div.sum()
    return imp / imp.sum()


def adaptive_counts(bin_sizes: Sequence[int], ratio: float, importance: Sequence[float], alpha: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """ADQ's per-bin sample counts.

    Shares ``r_n = alpha * I_hat_n + (1 - alpha) * N(n) / sum_m N(m)`` (they sum to 1); counts
    ``q_n`` split ``round(ratio * N)`` by ``r`` with the largest-remainder method, never above
    ``N(n)`` (the excess goes to the other bins in proportion to their shares). With alpha = 0
    these are exactly DQ's uniform counts.

    Args:
        bin_sizes: (K,) N(n).
        ratio: keep ratio in (0, 1].
        importance: (K,) I_hat (normalised to sum 1 here if it does not already).
        alpha: weight of importance in [0, 1] (the paper's best: 0.6-0.7).

    Returns:
        (shares r as float64 (K,), counts q as int64 (K,) summing to ``round(ratio * N)``).

    Raises:
        ValueError: on alpha outside [0, 1], a bad ratio, or mismatched lengths.

    Source: ALGORITHMS.md section 5, "Share of bin n" and "Count of bin n" (the paper's
    ``floor(r_n N(n))`` ignores rho; this is the evident meaning).
    """
    sizes = np.asarray(bin_sizes, dtype=np.int64)
    imp = np.asarray(importance, dtype=np.float64)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha: expected a weight in [0, 1], got {alpha!r}")
    if imp.shape != sizes.shape:
        raise ValueError(f"importance: expected {len(sizes)} scores (one per bin), got {imp.shape}")
    if not np.isfinite(imp).all() or (imp < 0).any() or imp.sum() <= 0:
        raise ValueError(f"importance: expected finite scores >= 0, not all 0, got {imp.tolist()}")
    total = int(sizes.sum())
    shares = alpha * imp / imp.sum() + (1 - alpha) * sizes / total
    # alpha = 0: split by the sizes themselves, bit for bit what DQ's uniform sampling does
    weights = sizes if alpha == 0 else shares
    counts = largest_remainder(budget(ratio, total), weights, caps=sizes)
    return shares, counts


def sample_adaptive(
    bins: Sequence[np.ndarray],
    ratio: float,
    importance: Sequence[float],
    alpha: float = 0.6,
    labels: np.ndarray | None = None,
    seed: int | np.random.Generator | None = 0,
) -> np.ndarray:
    """ADQ's adaptive bin sampling: bin n gives ``q_n`` samples (:func:`adaptive_counts`),
    spread over its classes in proportion to their counts there, drawn as
    :func:`~dsquant.core.sampling.sample_uniform` draws (same generator use, so alpha = 0 gives
    DQ's indices for the same seed).

    Returns:
        Sorted int64 array of ``round(ratio * N)`` dataset indices.
    """
    sizes = [len(b) for b in bins]
    _, counts = adaptive_counts(sizes, ratio, importance, alpha)
    return sample_with_counts(bins, counts, labels, seed)
