"""Encoders that train nothing: raw pixels and precomputed features."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import DataError, FeatureDataset, load_array
from .base import Embedding

__all__ = ["PixelEncoder", "PrecomputedEncoder", "IdentityEncoder"]


class PixelEncoder:
    """Flattened pixels scaled to [0, 1]: (N, H*W*C) float32."""

    name = "pixels"
    kinds = ("images",)
    summary = "flattened pixels in [0, 1]"
    argument = None
    cached = False  # recomputing is faster than reading a float copy of the images

    def config(self) -> dict:
        return {"encoder": self.name}

    def encode(self, dataset, progress: bool = False) -> Embedding:
        images = dataset.images
        return Embedding(images.reshape(len(images), -1).astype(np.float32) / 255.0)


class PrecomputedEncoder:
    """Features from a ``.npy`` file (or the ``features`` array of a ``.npz``), one row per
    sample, in the dataset's order. Loaded without unpickling."""

    name = "features"
    kinds = ("images", "text", "features")
    summary = "precomputed features, one row per sample (.npy, or the features array of a .npz)"
    argument = "PATH"
    cached = False  # the file is the cache

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def config(self) -> dict:
        st = self.path.stat() if self.path.exists() else None
        return {
            "encoder": self.name,
            "path": str(self.path.resolve()),
            "size": st.st_size if st else None,
            "mtime_ns": st.st_mtime_ns if st else None,
        }

    def encode(self, dataset, progress: bool = False) -> Embedding:
        key = "features" if self.path.suffix == ".npz" else None
        feats = load_array(self.path, key=key)
        if feats.ndim != 2:
            raise DataError(f"{self.path}: features must be 2-D (N, d), got shape {feats.shape}")
        if feats.shape[0] != len(dataset):
            raise DataError(
                f"{self.path}: {feats.shape[0]} feature rows do not match the {len(dataset)} "
                f"samples of {dataset.source}"
            )
        if not np.issubdtype(feats.dtype, np.number):
            raise DataError(f"{self.path}: features must be numeric, got dtype {feats.dtype}")
        return Embedding(feats)


class IdentityEncoder:
    """The features of a :class:`~dsquant.data.FeatureDataset` themselves."""

    name = "identity"
    kinds = ("features",)
    summary = "a feature dataset's own features"
    argument = None
    cached = False

    def config(self) -> dict:
        return {"encoder": self.name}

    def encode(self, dataset: FeatureDataset, progress: bool = False) -> Embedding:
        return Embedding(dataset.features)
