"""Precomputed feature matrices as datasets: ``.npy`` (features) or ``.npz`` (``features`` and
optional ``labels`` / ``classes``).

Rules: features must be real numbers, integers or floats (complex values are refused rather than
losing their imaginary part; bool, object and structured arrays are refused too). Labels must be
integers; their classes follow :func:`~dsquant.data.images.label_classes` (negative labels are
refused). Files must be regular files, and an array's header (shape and dtype) must fit in the
bytes the file, or the ``.npz`` member, holds before anything is read. Errors are
:class:`~dsquant.data.DataError` with a one-line message naming the file.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import DataError, check_regular_file, label_classes

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
        if not (np.issubdtype(f.dtype, np.integer) or np.issubdtype(f.dtype, np.floating)):
            raise DataError(
                f"{self.source}: features must be real numbers (integers or floats), got dtype {f.dtype}"
            )
        if self.labels is not None:
            lab = np.asarray(self.labels)
            if lab.shape != (f.shape[0],):
                raise DataError(
                    f"{self.source}: {lab.shape} labels do not match {f.shape[0]} feature rows"
                )
            if not np.issubdtype(lab.dtype, np.integer):
                raise DataError(f"{self.source}: labels must be integers, got dtype {lab.dtype}")
            if not self.classes:
                lab, self.classes = label_classes(lab, self.source)
            elif lab.min() < 0 or lab.max() >= len(self.classes):
                raise DataError(
                    f"{self.source}: labels must lie in [0, {len(self.classes)}) for the "
                    f"{len(self.classes)} classes, got [{lab.min()}, {lab.max()}]"
                )
            self.labels = lab.astype(np.int64, copy=False)

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


def _check_header(f, available: int, name: str) -> None:
    """Read a ``.npy`` header from ``f`` and refuse a shape whose data ``available`` bytes
    cannot hold (before numpy allocates it)."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(f)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise DataError(f"{name}: not a numpy .npy array ({' '.join(str(exc).split())})") from None
    need = math.prod(shape) * dtype.itemsize
    room = available - f.tell()
    if need > room:
        raise DataError(f"{name}: header announces shape {shape} of {dtype} ({need} bytes) but holds {room}")


def _npz_array(z, key: str, path: Path) -> np.ndarray:
    """Array ``key`` of an open ``.npz``, its header checked against the member's size first."""
    member = key + ".npy" if key + ".npy" in z.zip.namelist() else key
    with z.zip.open(member) as f:
        _check_header(f, z.zip.getinfo(member).file_size, f"{path}:{member}")
    return z[key]


def load_array(path: str | os.PathLike, key: str | None = None, mmap: bool = True) -> np.ndarray:
    """Load a ``.npy`` (memory-mapped, read-only) or one array of a ``.npz``, never unpickling.

    Raises:
        DataError: if the file is missing or not a regular file, corrupt, holds Python objects,
            announces more data than it holds, or lacks ``key``.
    """
    path = Path(path)
    size = check_regular_file(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if key is None:
                    if len(z.files) != 1:
                        raise DataError(f"{path}: holds {z.files}; say which array to use")
                    key = z.files[0]
                if key not in z.files:
                    raise DataError(f"{path}: no array '{key}' (has {z.files})")
                return _npz_array(z, key, path)
        with open(path, "rb") as f:
            _check_header(f, size, str(path))
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{path}: cannot read as a numpy array ({' '.join(str(exc).split())})") from None


def read_features(path: str | os.PathLike, labels: str | os.PathLike | np.ndarray | None = None) -> FeatureDataset:
    """Read a feature matrix: ``.npy`` (+ optional labels), or ``.npz`` with ``features`` and
    optionally ``labels`` and ``classes``.

    Raises:
        DataError: on a missing, non-regular or corrupt file, features that are not real
            numbers, or labels that do not match, are not integers or are negative (the message
            names the labels file).
    """
    path = Path(path)
    classes: list[str] = []
    if path.suffix == ".npz":
        check_regular_file(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if "features" not in z.files:
                    raise DataError(f"{path}: expected an array named 'features' (has {z.files})")
                feats = _npz_array(z, "features", path)
                lab = _npz_array(z, "labels", path) if "labels" in z.files else None
                if "classes" in z.files:
                    classes = [str(c) for c in _npz_array(z, "classes", path)]
        except DataError:
            raise
        except FileNotFoundError:
            raise DataError(f"{path}: no such file") from None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise DataError(f"{path}: cannot read as a numpy archive ({' '.join(str(exc).split())})") from None
    else:
        feats = load_array(path)
        lab = None
    label_source = str(path)
    if labels is not None:
        if isinstance(labels, np.ndarray):
            lab, label_source = labels, "labels"
        else:
            lab = load_array(labels, key="labels" if str(labels).endswith(".npz") else None, mmap=False)
            label_source = str(labels)
        lab = np.asarray(lab)
    if lab is not None and not classes and lab.ndim == 1 and feats.ndim == 2 and len(lab) == len(feats):
        lab, classes = label_classes(lab, label_source)  # names the labels file on bad labels
    return FeatureDataset(feats, lab, classes, str(path))
