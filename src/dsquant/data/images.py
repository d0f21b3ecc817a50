"""Readers for labelled image datasets. Every reader gives an :class:`ImageDataset`:
uint8 images (N, H, W, C), int64 labels (N,) and the class names.

Formats: an ImageFolder directory (``root/<class>/<image>``, optionally under ``train/`` and
``test/``), a tar archive of one (read in place, never extracted), IDX files (MNIST,
Fashion-MNIST; gzipped or not), the official CIFAR-10/100 python archive (read with a restricted
unpickler), scikit-learn's digits, and in-memory arrays.

Order: classes sort by name (label i is the i-th name), images by path inside their class, as
torchvision's ImageFolder does. Indices everywhere in dsquant refer to this order.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import os
import pickle
import posixpath
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

__all__ = [
    "ImageDataset",
    "DataError",
    "IMAGE_EXTENSIONS",
    "from_arrays",
    "load_digits",
    "read_cifar_archive",
    "read_idx",
    "read_image_folder",
    "read_image_tar",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLITS = ("train", "test", "val", "valid", "validation")


class DataError(ValueError):
    """A dataset file or directory that cannot be read; the message names it."""


@dataclass
class ImageDataset:
    """A labelled image dataset held in memory.

    Attributes:
        images: (N, H, W, C) uint8 array.
        labels: (N,) int64 array of class ids in ``[0, len(classes))``.
        classes: class names; label i is ``classes[i]``.
        source: where it was read from (a path or a name such as ``"digits"``).
        split: which split of the source (``"train"``, ``"test"``, ...).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    source: str = "<arrays>"
    split: str = "train"
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    kind = "images"

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        labels = np.asarray(self.labels)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.dtype != np.uint8:
            raise DataError(
                f"{self.source}: images must be a uint8 array (N, H, W, C), got "
                f"{images.dtype} {images.shape}"
            )
        if images.shape[-1] not in (1, 3):
            raise DataError(f"{self.source}: images must have 1 or 3 channels, got {images.shape[-1]}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(
                f"{self.source}: labels must be 1-D with one entry per image; got {labels.shape} "
                f"labels for {len(images)} images"
            )
        if len(images) == 0:
            raise DataError(f"{self.source}: the dataset is empty (no images)")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{self.source}: labels must be integers, got dtype {labels.dtype}")
        if labels.min() < 0 or labels.max() >= len(self.classes):
            raise DataError(
                f"{self.source}: labels must lie in [0, {len(self.classes)}) for "
                f"{len(self.classes)} classes, got [{labels.min()}, {labels.max()}]"
            )
        self.images = images
        self.labels = labels.astype(np.int64, copy=False)
        self.classes = [str(c) for c in self.classes]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """Hex BLAKE2b digest of the images, labels and class names (identifies the content)."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(repr((self.images.shape, self.classes)).encode())
            h.update(np.ascontiguousarray(self.labels).tobytes())
            images = np.ascontiguousarray(self.images)
            flat = images.reshape(-1)
            step = 1 << 26
            for start in range(0, len(flat), step):
                h.update(flat[start : start + step].tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def subset(self, indices: np.ndarray) -> "ImageDataset":
        """A new dataset of the rows ``indices`` (same classes)."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageDataset(
            self.images[indices], self.labels[indices], list(self.classes), self.source, self.split
        )


def from_arrays(
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    classes: Sequence[str] | None = None,
    source: str = "<arrays>",
) -> ImageDataset:
    """An :class:`ImageDataset` over arrays already in memory.

    Args:
        images: (N, H, W) or (N, H, W, C) uint8.
        labels: (N,) integer class ids.
        classes: names of the classes (default: ``"0"``, ``"1"``, ... up to the largest label).

    Raises:
        DataError: on a shape, dtype or label mismatch.
    """
    labels = np.asarray(labels)
    if classes is None:
        n_classes = int(labels.max()) + 1 if labels.size else 0
        classes = [str(i) for i in range(n_classes)]
    return ImageDataset(np.asarray(images), labels, list(classes), source)


DIGITS_TRAIN = 1437  # the first 80 % of scikit-learn's digits; the last 360 are the test split


def load_digits(split: str = "train") -> ImageDataset:
    """scikit-learn's digits (8x8 grayscale, 10 classes), scaled from 0..16 to 0..255. Ships
    with scikit-learn: no download. ``"train"`` is the first 1,437 images (80 %), ``"test"`` the
    last 360.

    Raises:
        DataError: on another split name.
    """
    from sklearn.datasets import load_digits as _load

    if split not in ("train", "test"):
        raise DataError(f"digits: no '{split}' split (expected 'train' or 'test')")
    bunch = _load()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    part = slice(0, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
    return ImageDataset(
        images[part].copy(), bunch.target[part].astype(np.int64), [str(c) for c in bunch.target_names], "digits", split
    )


# ----------------------------------------------------------------------------- image files


def _decode(data: bytes, name: str, image_size: int | None) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode not in ("L", "RGB"):
                im = im.convert("L" if im.mode in ("1", "I", "I;16", "F", "LA") else "RGB")
            if image_size is not None:
                im = _resize_center_crop(im, image_size)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{name}: cannot decode image ({exc})") from None


def _resize_center_crop(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    scale = size / min(w, h)
    if scale != 1:
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def _stack(arrays: list[np.ndarray], names: list[str], source: str) -> np.ndarray:
    """Stack decoded images, all to RGB if any is RGB; every image must have one size."""
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape[:2]
        odd = next(n for a, n in zip(arrays, names) if a.shape[:2] != first)
        raise DataError(
            f"{source}: images differ in size ({names[0]} is {first[1]}x{first[0]}, {odd} is "
            f"not); pass image_size (CLI: --image-size) to resize them"
        )
    color = any(a.ndim == 3 for a in arrays)
    if color:
        arrays = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2) for a in arrays]
        return np.stack(arrays)
    return np.stack(arrays)[..., None]


def _decode_chunk(items: list[tuple[str, bytes]], image_size: int | None) -> list[np.ndarray]:
    return [_decode(data, name, image_size) for name, data in items]


def _decode_all(
    items: list[tuple[str, Callable[[], bytes]]], source: str, image_size: int | None, progress: bool
) -> np.ndarray:
    """Decode every image; big sets are split over one process per core (Pillow holds the GIL
    for much of a small image's decode, so threads do not help)."""
    from tqdm.auto import tqdm

    names = [name for name, _ in items]
    workers = min(os.cpu_count() or 1, 8)
    chunk = 2000
    bar = tqdm(total=len(items), desc=f"decode {Path(source).name}", unit="img", disable=not progress, leave=False)
    arrays: list[np.ndarray] = []
    if workers > 1 and len(items) > 2 * chunk:
        import multiprocessing as mp

        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as pool:
            futures = [
                pool.submit(_decode_chunk, [(n, read()) for n, read in items[i : i + chunk]], image_size)
                for i in range(0, len(items), chunk)
            ]
            for fut in futures:
                part = fut.result()
                arrays.extend(part)
                bar.update(len(part))
    else:
        for name, read in items:
            arrays.append(_decode(read(), name, image_size))
            bar.update(1)
    bar.close()
    return _stack(arrays, names, source)


def _safe_parts(name: str) -> list[str] | None:
    """The components of an archive member name, or None if it is absolute or climbs out."""
    norm = posixpath.normpath(name.replace("\\", "/"))
    if norm.startswith("/") or norm == ".." or norm.startswith("../") or ":" in norm.split("/")[0]:
        return None
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    return parts


def _layout(paths: Iterable[list[str]], split: str | None, source: str) -> tuple[list[tuple[list[str], str]], str]:
    """Pick the images of ``split``: returns [(parts, class)], the split used."""
    paths = [p for p in paths if len(p) >= 2 and p[-1].lower().endswith(IMAGE_EXTENSIONS)]
    if not paths:
        raise DataError(f"{source}: no images found (expected <class>/<image> with one of {IMAGE_EXTENSIONS})")
    present = {s for p in paths for s in p[:-2] if s.lower() in SPLITS}
    if present:
        want = split or "train"
        if want not in present:
            raise DataError(f"{source}: no '{want}' split; found {sorted(present)}")
        chosen = [p for p in paths if want in p[:-2]]
    else:
        if split not in (None, "train"):
            raise DataError(f"{source}: has no '{split}' split (no train/ or test/ folders)")
        want = "train"
        chosen = paths
    return [(p, p[-2]) for p in chosen], want


def _index(entries: list[tuple[list[str], str]]) -> tuple[list[int], list[str], np.ndarray]:
    """Order entries by (class, path); return the order, class names and labels."""
    classes = sorted({c for _, c in entries})
    class_id = {c: i for i, c in enumerate(classes)}
    order = sorted(range(len(entries)), key=lambda i: (entries[i][1], "/".join(entries[i][0])))
    labels = np.array([class_id[entries[i][1]] for i in order], dtype=np.int64)
    return order, classes, labels


def read_image_folder(
    root: str | os.PathLike, split: str | None = None, image_size: int | None = None, progress: bool = False
) -> ImageDataset:
    """Read ``root/<class>/<image>`` (or ``root/<split>/<class>/<image>``).

    Args:
        root: the directory.
        split: ``"train"`` (default) or another split folder name, when there are split folders.
        image_size: resize (shorter side) and centre-crop every image to this size; required
            when the images differ in size.
        progress: show a progress bar while decoding.

    Raises:
        DataError: if the directory has no images, lacks the split, or an image cannot be read.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    found = []
    for dirpath, _, files in os.walk(root, followlinks=False):
        rel = Path(dirpath).relative_to(root).parts
        for f in files:
            found.append(list(rel) + [f])
    entries, split = _layout(found, split, str(root))
    order, classes, labels = _index(entries)

    def reader(parts: list[str]) -> Callable[[], bytes]:
        return lambda: (root.joinpath(*parts)).read_bytes()

    items = [("/".join(entries[i][0]), reader(entries[i][0])) for i in order]
    images = _decode_all(items, str(root), image_size, progress)
    return ImageDataset(images, labels, classes, str(root), split)


def read_image_tar(
    path: str | os.PathLike, split: str | None = None, image_size: int | None = None, progress: bool = False
) -> ImageDataset:
    """Read a tar archive (plain, .gz, .bz2 or .xz) of an ImageFolder, in place.

    Members are filtered: only regular files whose names stay inside the archive (no absolute
    paths, no ``..``) are read; nothing is written to disk.

    Raises:
        DataError: if the archive is corrupt or has no images of the split.
    """
    path = Path(path)
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {}
            for m in tar:
                if not m.isfile():
                    continue
                parts = _safe_parts(m.name)
                if parts is not None:
                    members["/".join(parts)] = m
            entries, split = _layout([k.split("/") for k in members], split, str(path))
            order, classes, labels = _index(entries)
            blobs = []
            from tqdm.auto import tqdm

            for i in tqdm(order, desc=f"read {path.name}", unit="file", disable=not progress, leave=False):
                key = "/".join(entries[i][0])
                f = tar.extractfile(members[key])
                blobs.append((f"{path}:{key}", (lambda data: lambda: data)(f.read())))
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read tar archive ({exc})") from None
    images = _decode_all(blobs, str(path), image_size, progress)
    return ImageDataset(images, labels, classes, str(path), split)


# ----------------------------------------------------------------------------- IDX


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        return raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def parse_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (gzipped or not) into an array.

    Raises:
        DataError: on a bad magic number, unknown type code or a size that does not match the
            header.
    """
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header announces {dims} ({expected} bytes of data) but the file holds "
            f"{len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _idx_pair(path: Path, split: str) -> tuple[Path, Path]:
    """Find the images and labels IDX files for a path (a file of the pair or a directory)."""
    if path.is_dir():
        prefix = {"train": "train", "test": "t10k"}.get(split, split)
        imgs = sorted(p for p in path.iterdir() if p.name.startswith(prefix) and "idx3" in p.name)
        if not imgs:
            raise DataError(f"{path}: no {prefix}-images-idx3-ubyte[.gz] file for split '{split}'")
        images = imgs[0]
    else:
        images = path
    if "labels-idx1" in images.name:
        labels, images = images, images.with_name(images.name.replace("labels-idx1", "images-idx3"))
    else:
        labels = images.with_name(images.name.replace("images-idx3", "labels-idx1"))
    for p in (images, labels):
        if not p.exists():
            raise DataError(f"{p}: missing (IDX images and labels come in pairs)")
    return images, labels


def read_idx(path: str | os.PathLike, split: str = "train", classes: Sequence[str] | None = None) -> ImageDataset:
    """Read an IDX pair (``*-images-idx3-ubyte[.gz]`` + ``*-labels-idx1-ubyte[.gz]``).

    Args:
        path: the images file, the labels file, or a directory holding ``train-*`` and
            ``t10k-*`` files.
        split: ``"train"`` or ``"test"`` (``t10k``), when ``path`` is a directory.
        classes: class names (default ``"0"``..``"9"``).

    Raises:
        DataError: on a missing partner file, a malformed file or a count mismatch.
    """
    images_path, labels_path = _idx_pair(Path(path), split)
    images = parse_idx(images_path)
    labels = parse_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{labels_path}: {labels.shape} labels do not match {len(images)} images in {images_path.name}")
    labels = labels.astype(np.int64)
    names = list(classes) if classes is not None else [str(i) for i in range(int(labels.max()) + 1)]
    split_name = "test" if images_path.name.startswith("t10k") else split
    return ImageDataset(images[..., None].copy(), labels, names, str(images_path), split_name)


# ----------------------------------------------------------------------------- CIFAR python


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; any other global is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a dataset file")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1)
        return getattr(importlib.import_module(module), name)


def restricted_loads(data: bytes, name: str = "<pickle>"):
    """Unpickle ``data`` allowing only builtin containers and numpy arrays (CIFAR's batches).

    Raises:
        DataError: if the pickle refers to any other global or is malformed.
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError) as exc:
        raise DataError(f"{name}: not a valid CIFAR batch ({exc})") from None


def _cifar_batches(files: dict[str, Callable[[], bytes]], split: str, source: str) -> ImageDataset:
    names = sorted(files)
    c10 = [n for n in names if posixpath.basename(n).startswith(("data_batch_", "test_batch"))]
    if c10:
        want = [n for n in c10 if ("test_batch" in n) == (split == "test")]
        meta_key, label_key, names_key = "batches.meta", "labels", "label_names"
    else:
        want = [n for n in names if posixpath.basename(n) == ("test" if split == "test" else "train")]
        meta_key, label_key, names_key = "meta", "fine_labels", "fine_label_names"
    if not want:
        raise DataError(f"{source}: no CIFAR batches for split '{split}'")
    want.sort(key=lambda n: (len(n), n))  # data_batch_1 .. data_batch_5
    meta = [n for n in names if posixpath.basename(n) == meta_key]
    classes: list[str] | None = None
    if meta:
        m = restricted_loads(files[meta[0]](), f"{source}:{meta[0]}")
        if isinstance(m, dict) and names_key in m:
            classes = [c.decode() if isinstance(c, bytes) else str(c) for c in m[names_key]]
    data, labels = [], []
    for n in want:
        batch = restricted_loads(files[n](), f"{source}:{n}")
        if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
            raise DataError(f"{source}:{n}: not a CIFAR batch (no 'data'/'{label_key}' entries)")
        arr = np.asarray(batch["data"])
        if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] % 3:
            raise DataError(f"{source}:{n}: 'data' must be uint8 (N, 3*H*W), got {arr.dtype} {arr.shape}")
        data.append(arr)
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    flat = np.concatenate(data)
    side = int(round((flat.shape[1] // 3) ** 0.5))
    if side * side * 3 != flat.shape[1]:
        raise DataError(f"{source}: CIFAR rows of {flat.shape[1]} values are not square RGB images")
    images = flat.reshape(-1, 3, side, side).transpose(0, 2, 3, 1).copy()
    lab = np.concatenate(labels)
    if classes is None:
        classes = [str(i) for i in range(int(lab.max()) + 1)]
    return ImageDataset(images, lab, classes, source, "test" if split == "test" else "train")


def read_cifar_archive(path: str | os.PathLike, split: str = "train") -> ImageDataset:
    """Read the official CIFAR-10 or CIFAR-100 python version: the ``.tar.gz`` archive or its
    extracted ``cifar-10-batches-py`` / ``cifar-100-python`` directory.

    The batches are pickles: they are read with a restricted unpickler that accepts builtin
    containers and numpy arrays only.

    Raises:
        DataError: on a corrupt archive, a batch that is not CIFAR's, or a forbidden pickle.
    """
    path = Path(path)
    if path.is_dir():
        files = {
            str(p.relative_to(path)): (lambda p=p: p.read_bytes())
            for p in path.rglob("*")
            if p.is_file()
        }
        return _cifar_batches(files, split, str(path))
    try:
        with tarfile.open(path, "r:*") as tar:
            files = {}
            for m in tar:
                parts = _safe_parts(m.name)
                if m.isfile() and parts is not None:
                    data = tar.extractfile(m).read()
                    files["/".join(parts)] = (lambda d=data: d)
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read tar archive ({exc})") from None
    return _cifar_batches(files, split, str(path))


def is_cifar_archive(path: Path) -> bool:
    """True for a tar archive or directory laid out as CIFAR's python version."""
    if path.is_dir():
        if any((path / d).is_dir() for d in ("cifar-10-batches-py", "cifar-100-python")):
            return True
        return (path / "data_batch_1").is_file() or (path / "batches.meta").is_file() or (
            (path / "train").is_file() and (path / "meta").is_file()
        )
    marks = ("data_batch_", "test_batch", "batches.meta", "cifar-100-python/")
    try:
        with tarfile.open(path, "r:*") as tar:
            for i, m in enumerate(tar):
                if any(k in m.name for k in marks):
                    return True
                if i > 20:
                    return False
    except (tarfile.TarError, EOFError, OSError):
        return False
    return False
