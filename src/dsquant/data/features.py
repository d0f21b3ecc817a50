"""Precomputed feature matrices as datasets: ``.npy`` (features) or ``.npz`` (``features`` and
optional ``labels`` / ``classes``)."""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import DataError

__all__ = ["FeatureDataset", "read_features", "load_array"]


@dataclass
class FeatureDataset:
    """A dataset that is already an embedding.

    Attributes:
        features: (N, d) float array (may be a read-only memory map).
        labels: (N,) int64 class ids, or None for an unlabelled pool.
        classes: class names (empty without labels).
        source: the file it came from.
    """

    features: np.ndarray
    labels: np.ndarray | None
    classes: list[str]
    source: str = "<arrays>"
    split: str = "train"
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    kind = "features"

    def __post_init__(self) -> None:
        f = self.features
        if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0:
            raise DataError(f"{self.source}: features must be a non-empty 2-D array (N, d), got shape {f.shape}")
        if not np.issubdtype(f.dtype, np.number):
            raise DataError(f"{self.source}: features must be numeric, got dtype {f.dtype}")
        if self.labels is not None:
            lab = np.asarray(self.labels)
            if lab.shape != (f.shape[0],):
                raise DataError(
                    f"{self.source}: {lab.shape} labels do not match {f.shape[0]} feature rows"
                )
            if not np.issubdtype(lab.dtype, np.integer):
                raise DataError(f"{self.source}: labels must be integers, got dtype {lab.dtype}")
            self.labels = lab.astype(np.int64, copy=False)
            if not self.classes:
                self.classes = [str(c) for c in range(int(lab.max()) + 1)]

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def fingerprint(self) -> str:
        """Hex BLAKE2b digest of the features and labels."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(repr((self.features.shape, str(self.features.dtype), self.classes)).encode())
            if self.labels is not None:
                h.update(np.ascontiguousarray(self.labels).tobytes())
            step = max(1, (1 << 24) // self.features.shape[1])
            for start in range(0, self.features.shape[0], step):
                h.update(np.ascontiguousarray(self.features[start : start + step]).tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


def load_array(path: str | os.PathLike, key: str | None = None, mmap: bool = True) -> np.ndarray:
    """Load a ``.npy`` (memory-mapped, read-only) or one array of a ``.npz``, never unpickling.

    Raises:
        DataError: if the file is missing, corrupt, holds Python objects, or lacks ``key``.
    """
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if key is None:
                    if len(z.files) != 1:
                        raise DataError(f"{path}: holds {z.files}; say which array to use")
                    key = z.files[0]
                if key not in z.files:
                    raise DataError(f"{path}: no array '{key}' (has {z.files})")
                return z[key]
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read as a numpy array ({exc})") from None


def read_features(path: str | os.PathLike, labels: str | os.PathLike | np.ndarray | None = None) -> FeatureDataset:
    """Read a feature matrix: ``.npy`` (+ optional labels), or ``.npz`` with ``features`` and
    optionally ``labels`` and ``classes``.

    Raises:
        DataError: on a missing or corrupt file or labels that do not match.
    """
    path = Path(path)
    classes: list[str] = []
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                if "features" not in z.files:
                    raise DataError(f"{path}: expected an array named 'features' (has {z.files})")
                feats = z["features"]
                lab = z["labels"] if "labels" in z.files else None
                if "classes" in z.files:
                    classes = [str(c) for c in z["classes"]]
        except DataError:
            raise
        except FileNotFoundError:
            raise DataError(f"{path}: no such file") from None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: cannot read as a numpy archive ({exc})") from None
    else:
        feats = load_array(path)
        lab = None
    if labels is not None:
        lab = labels if isinstance(labels, np.ndarray) else load_array(labels, key="labels" if str(labels).endswith(".npz") else None, mmap=False)
        lab = np.asarray(lab)
    return FeatureDataset(feats, lab, classes, str(path))
