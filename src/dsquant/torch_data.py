"""Train on a compressed set directly: a PyTorch ``Dataset`` over the subset and a ``Sampler``
over the full dataset restricted to it."""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["SubsetDataset", "SubsetSampler", "load_subset"]


class SubsetDataset(Dataset):
    """Item ``i`` is ``(image, label)`` of dataset index ``indices[i]``.

    Images are float32 tensors (C, H, W) in [0, 1] (or whatever ``transform`` returns when
    given a uint8 (H, W, C) array); feature datasets give float32 feature vectors.

    Args:
        dataset: an :class:`~dsquant.data.ImageDataset` or :class:`~dsquant.data.FeatureDataset`.
        indices: (M,) int indices into ``dataset`` (e.g. ``CompressResult.indices``).
        transform: optional callable applied to each uint8 (H, W, C) image.
    """

    def __init__(self, dataset, indices: np.ndarray, transform: Callable | None = None) -> None:
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(dataset)):
            raise ValueError(f"indices: expected values in [0, {len(dataset)}), got [{self.indices.min()}, {self.indices.max()}]")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        label = -1 if self.dataset.labels is None else int(self.dataset.labels[j])
        if getattr(self.dataset, "kind", "") == "features":
            return torch.as_tensor(np.asarray(self.dataset.features[j], dtype=np.float32)), label
        img = self.dataset.images[j]
        if self.transform is not None:
            return self.transform(img), label
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0), label


class SubsetSampler(Sampler[int]):
    """Yields the subset's dataset indices (shuffled each epoch with a seeded generator), for a
    ``DataLoader`` over the *full* dataset."""

    def __init__(self, indices: np.ndarray, shuffle: bool = True, seed: int = 0) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(int(seed))

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
        ValueError: if the dataset is not the one the indices refer to.
    """
    from .artifact import read_output
    from .pipeline import read_dataset

    out = read_output(out_dir)
    ds_info = out.manifest["dataset"]
    source = data if data is not None else ds_info["source"]
    dataset = read_dataset(source, split=ds_info.get("split") or "train", image_size=out.manifest["parameters"].get("image_size"))
    if dataset.fingerprint() != ds_info["fingerprint"]:
        raise ValueError(
            f"{out_dir}: the dataset read from {source} is not the one these indices refer to "
            f"(fingerprint {dataset.fingerprint()} != {ds_info['fingerprint']})"
        )
    return SubsetDataset(dataset, out.indices, transform)
