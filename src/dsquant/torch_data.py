"""Train on a compressed set directly: a PyTorch ``Dataset`` over the subset and a ``Sampler``
over the full dataset restricted to it."""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["SubsetDataset", "SubsetSampler", "load_subset", "check_indices"]


def check_indices(indices, n: int, name: str = "indices") -> np.ndarray:
    """``indices`` as a 1-D int64 array of values in [0, n).

    Raises:
        ValueError: naming ``name``, if they are not 1-D integers in that range.
    """
    arr = np.asarray(indices)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"{name}: expected a 1-D array of integer indices, got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"{name}: expected values in [0, {n}), got [{arr.min()}, {arr.max()}]")
    return arr


class SubsetDataset(Dataset):
    """Item ``i`` is ``(image, label)`` of dataset index ``indices[i]``.

    Images are float32 tensors (C, H, W) in [0, 1] (or whatever ``transform`` returns when
    given a uint8 (H, W, C) array); feature datasets give float32 feature vectors. A streamed
    dataset (:class:`~dsquant.data.StreamedImageDataset`) reads and decodes only the selected
    images, each when asked for, resized (shorter side) and centre-cropped to ``image_size``.

    Args:
        dataset: an :class:`~dsquant.data.ImageDataset`, a streamed one, or a
            :class:`~dsquant.data.FeatureDataset`.
        indices: (M,) int indices into ``dataset`` (e.g. ``CompressResult.indices``).
        transform: optional callable applied to each uint8 (H, W, C) image.
        image_size: a streamed dataset's decoded size (default 224).
    """

    def __init__(self, dataset, indices: np.ndarray, transform: Callable | None = None, image_size: int | None = None) -> None:
        self.dataset = dataset
        self.indices = check_indices(indices, len(dataset))
        self.transform = transform
        self.image_size = image_size or 224

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        label = -1 if self.dataset.labels is None else int(self.dataset.labels[j])
        if getattr(self.dataset, "kind", "") == "features":
            return torch.as_tensor(np.asarray(self.dataset.features[j], dtype=np.float32)), label
        if getattr(self.dataset, "streamed", False):
            img = self.dataset.decode(j, self.image_size, self.image_size)
        else:
            img = self.dataset.images[j]
        if self.transform is not None:
            return self.transform(img), label
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0), label


class SubsetSampler(Sampler[int]):
    """Yields the subset's dataset indices (shuffled each epoch with a seeded generator), for a
    ``DataLoader`` over the *full* dataset."""

    def __init__(self, indices: np.ndarray, shuffle: bool = True, seed: int = 0) -> None:
        from .training import check_seed

        self.indices = np.asarray(indices, dtype=np.int64)
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(check_seed(seed))

    def __iter__(self):
        if not self.shuffle:
            return iter(self.indices.tolist())
        order = torch.randperm(len(self.indices), generator=self.generator).numpy()
        return iter(self.indices[order].tolist())

    def __len__(self) -> int:
        return len(self.indices)


def load_subset(out_dir: str | os.PathLike, data=None, transform: Callable | None = None) -> SubsetDataset:
    """The compressed set of a ``dsquant compress`` output directory as a :class:`SubsetDataset`.

    ``data`` is the dataset (path or object) it was computed from; by default the source path in
    the manifest. Its fingerprint must match the manifest's.

    Raises:
        ValueError: naming ``out_dir``, if the dataset is not the one the indices refer to, or
            the compressed set is empty.
    """
    from .artifact import read_output

    out = read_output(out_dir)
    if len(out.indices) == 0:
        raise ValueError(f"{out_dir}: the compressed set is empty (0 samples)")
    dataset = out.open_dataset(data)  # verifies the fingerprint
    return SubsetDataset(dataset, out.indices, transform, (out.manifest.get("parameters") or {}).get("image_size"))
