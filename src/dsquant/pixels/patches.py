"""Patch importance and the patches kept (ALGORITHMS.md section 6)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["patch_grid", "patch_scores", "keep_masks", "n_kept"]


def patch_grid(image_size: tuple[int, int], patch: int) -> tuple[int, int]:
    """(rows, cols) of ``patch`` x ``patch`` patches tiling an image of ``(H, W)``.

    Raises:
        ValueError: if the patch size does not divide the image.
    """
    h, w = image_size
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"patch: {patch} px patches do not tile {h}x{w} images (choose a divisor, e.g. {math.gcd(h, w) // 2 or 1})")
    return h // patch, w // patch


def patch_scores(maps: np.ndarray, patch: int) -> np.ndarray:
    """(N, rows, cols) mean of the (N, H, W) importance maps inside every patch."""
    n, h, w = maps.shape
    gh, gw = patch_grid((h, w), patch)
    return maps.reshape(n, gh, patch, gw, patch).mean(axis=(2, 4))


def n_kept(n_patches: int, drop_ratio: float) -> int:
    """``floor((1 - theta) * P)``: patches kept per image for drop ratio theta.

    Raises:
        ValueError: if theta is outside [0, 1).
    """
    if not 0.0 <= drop_ratio < 1.0:
        raise ValueError(f"drop_ratio: expected theta in [0, 1), got {drop_ratio!r}")
    return int(math.floor((1.0 - drop_ratio) * n_patches + 1e-9))


def keep_masks(scores: np.ndarray, drop_ratio: float) -> np.ndarray:
    """(N, rows, cols) bool: True for the ``floor((1 - theta) P)`` highest-scoring patches of each
    image (ties to the lower patch index, row-major)."""
    n, gh, gw = scores.shape
    k = n_kept(gh * gw, drop_ratio)
    flat = scores.reshape(n, -1)
    order = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    keep = np.zeros_like(flat, dtype=bool)
    np.put_along_axis(keep, order, True, axis=1)
    return keep.reshape(n, gh, gw)
