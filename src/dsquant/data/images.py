"""Readers for labelled image datasets. Every reader gives an :class:`ImageDataset`:
uint8 images (N, H, W, C), int64 labels (N,) and the class names.

Formats: an ImageFolder directory (``root/<class>/<image>``, optionally under ``train/`` and
``test/``), a tar archive of one (read in place, never extracted), IDX files (MNIST,
Fashion-MNIST; gzipped or not), the official CIFAR-10/100 python archive (read with a restricted
unpickler), scikit-learn's digits, and in-memory arrays.

Order: classes sort by name (label i is the i-th name), images by path inside their class, as
torchvision's ImageFolder does. Indices everywhere in dsquant refer to this order.

Pixel modes (how a decoded image becomes uint8 L or RGB):

* ``L`` and ``RGB`` are kept; ``1`` (bilevel) gives 0/255; ``LA`` drops its alpha to ``L``.
* 16-bit grey (``I;16``, ``I;16B``, ... and the ``I`` mode Pillow gives 16-bit PNG/PGM files):
  value / 257, rounded (65535 -> 255, and an 8-bit value stored as v * 257 comes back as v).
* ``I`` (32-bit integers, e.g. TIFF): values must lie in [0, 65535]; if the largest is at most
  255 they are kept, otherwise they are scaled as 16-bit. Anything else is refused.
* ``F`` (float): values in [0, 1] are scaled by 255, otherwise values in [0, 255] are kept (both
  rounded to nearest); NaN, infinities or other ranges are refused.
* Every other mode (``P``, ``RGBA``, ``CMYK``, ``YCbCr``, ...) is converted to ``RGB`` by Pillow:
  a palette gives its colours, alpha is dropped (not composited), CMYK uses Pillow's formula.
  16-bit colour files are reduced to their high byte by Pillow itself.

Inputs are not trusted. Every error is a :class:`DataError` whose one-line message names the file
(a path, or ``archive:member``) and what was expected:

* only regular files are read (a symbolic link to one is fine; FIFOs, devices and sockets are
  refused before opening them for reading);
* sizes are checked from ``stat``, tar and IDX headers before reading: an image file or tar
  member above :data:`MAX_IMAGE_BYTES`, a CIFAR batch above :data:`MAX_PICKLE_BYTES`, IDX data
  that the file cannot hold are refused; images above Pillow's ``Image.MAX_IMAGE_PIXELS`` are
  refused as possible decompression bombs (Pillow's warning is made an error);
* a tar archive must end with its end-of-archive marker (a zero block): one cut short, even at a
  member boundary, is refused as truncated;
* an empty ImageFolder class folder (no image files in it) is refused, as torchvision does,
  instead of shifting the ids of the classes after it; class folder names must be valid UTF-8;
* class ids from label files (IDX, CIFAR without meta, arrays) follow :func:`label_classes`:
  negative labels are refused, and one huge label value cannot make millions of classes.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib
import io
import math
import os
import pickle
import posixpath
import re
import stat
import tarfile
import threading
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from ..errors import DataError

__all__ = [
    "ImageDataset",
    "DataError",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_BYTES",
    "MAX_PICKLE_BYTES",
    "from_arrays",
    "label_classes",
    "load_digits",
    "read_cifar_archive",
    "read_idx",
    "read_image_folder",
    "read_image_tar",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLITS = ("train", "test", "val", "valid", "validation")

MAX_IMAGE_BYTES = 256 << 20
"""Largest image file or tar member read (256 MiB), checked from its size before reading it."""

MAX_PICKLE_BYTES = 1 << 30
"""Largest CIFAR batch file read (1 GiB; CIFAR-100's train batch is 155 MB)."""

GZIP_MAX_RATIO = 1032
"""Deflate cannot expand data more than ~1032-fold: a gzip file of n bytes holds at most
``GZIP_MAX_RATIO * n`` bytes, which bounds what a gzipped IDX header may announce."""

DECODE_CHUNK = 2000
"""Images per task of the decoding pool; the pool is used for more than ``2 * DECODE_CHUNK``
images."""


@dataclass
class ImageDataset:
    """A labelled image dataset held in memory.

    Attributes:
        images: (N, H, W, C) uint8 array.
        labels: (N,) int64 array of class ids in ``[0, len(classes))``.
        classes: class names; label i is ``classes[i]``.
        source: where it was read from (a path or a name such as ``"digits"``).
        split: which split of the source (``"train"``, ``"test"``, ...).

    Raises:
        DataError: on a shape, dtype or label mismatch.
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


def label_classes(labels: Sequence[int] | np.ndarray, source: str) -> tuple[np.ndarray, list[str]]:
    """Class ids and names for integer labels read from ``source`` (when no class names are
    given).

    Labels ``0..m`` with at most half of those ids missing (MNIST, CIFAR: all present) keep
    their values, and the classes are ``"0"``..``"m"``. Otherwise the classes are the distinct
    label values (as strings, in increasing order) and each label becomes the index of its
    value, so there are never more classes than labels: a single label 2**31 - 1 gives one
    class, not two billion.

    Raises:
        DataError: naming ``source`` on a negative label or labels that are not integers.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return labels.astype(np.int64), []
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{source}: labels must be integers, got dtype {labels.dtype}")
    low = labels.min()
    if low < 0:
        raise DataError(f"{source}: label {int(low)} is negative (labels must be class ids >= 0)")
    values = np.unique(labels)
    top = int(values[-1])
    if top + 1 <= 2 * len(values):
        return labels.astype(np.int64), [str(i) for i in range(top + 1)]
    return np.searchsorted(values, labels).astype(np.int64), [str(int(v)) for v in values]


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
        classes: names of the classes (default: from the labels, see :func:`label_classes`).

    Raises:
        DataError: on a shape, dtype or label mismatch.
    """
    labels = np.asarray(labels)
    if classes is None:
        labels, classes = label_classes(labels, source)
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


# ----------------------------------------------------------------------------- files


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def check_regular_file(path: str | os.PathLike, name: str | None = None) -> int:
    """The size of ``path`` if it is a regular file (a symbolic link to one is fine).

    Raises:
        DataError: if it is missing, unreadable, or a directory, FIFO, device or socket (which
            could hang or never end when read).
    """
    name = name or str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{name}: no such file") from None
    except OSError as exc:
        raise DataError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{name}: is {_file_kind(st.st_mode)}; expected a regular file")
    return st.st_size


def _too_big(name: str, size: int, limit: int, what: str) -> DataError:
    return DataError(f"{name}: {size} bytes is more than the {limit}-byte limit for {what}")


def _read_regular(path: Path, limit: int, what: str, name: str | None = None) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (checked before reading)."""
    name = name or str(path)
    size = check_regular_file(path, name)
    if size > limit:
        raise _too_big(name, size, limit, what)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise DataError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise _too_big(name, len(data), limit, what)
    return data


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int, what: str, name: str) -> bytes:
    """A tar member's bytes, refused from its header size before reading when above ``limit``."""
    if member.size > limit:
        raise _too_big(name, member.size, limit, what)
    return tar.extractfile(member).read()


class _EndMarkTarInfo(tarfile.TarInfo):
    """Notes on the archive when tarfile stops at a zero block (the end-of-archive marker):
    tarfile also stops, silently, at the end of the data, as in an archive cut at a member
    boundary."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            tar.dsquant_end_marker = True
            raise


def _check_end_marker(tar: tarfile.TarFile, path: Path) -> None:
    """After iterating an archive opened with ``tarinfo=_EndMarkTarInfo``: refuse it if it
    lacks its end-of-archive marker (truncated or corrupt)."""
    if not getattr(tar, "dsquant_end_marker", False):
        raise DataError(
            f"{path}: truncated tar archive (no end-of-archive marker after {len(tar.members)} "
            f"members); the file was cut short or is corrupt"
        )


def _tar_members(tar: tarfile.TarFile, path: Path) -> list[tarfile.TarInfo]:
    """All members of an archive opened with ``tarinfo=_EndMarkTarInfo``, which must be whole."""
    members = list(tar)
    _check_end_marker(tar, path)
    return members


_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile, zlib.error)


# ----------------------------------------------------------------------------- image files


_GREY = ("1", "L", "LA", "La")
_BYTESIO = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def _to_uint8(im: Image.Image, name: str) -> np.ndarray:
    """An 8-bit grey array for the 16-bit, 32-bit integer and float modes (module docstring)."""
    a = np.asarray(im)
    if im.mode == "F":
        if not np.all(np.isfinite(a)):
            raise DataError(f"{name}: float image holds NaN or infinite values; expected values in [0, 1] or [0, 255]")
        low, high = float(a.min()), float(a.max())
        if low < 0 or high > 255:
            raise DataError(f"{name}: float image values lie in [{low:g}, {high:g}]; expected [0, 1] or [0, 255]")
        return np.rint(a * 255.0 if high <= 1 else a).astype(np.uint8)
    a = a.astype(np.int64)
    low, high = int(a.min()), int(a.max())
    sixteen = im.mode.startswith("I;16") or im.format in ("PNG", "PPM")
    if low < 0 or high > 65535:
        raise DataError(f"{name}: {im.mode} image values lie in [{low}, {high}]; expected [0, 65535]")
    if not sixteen and high <= 255:
        return a.astype(np.uint8)
    return ((a + 128) // 257).astype(np.uint8)  # round(a / 257)


@contextlib.contextmanager
def decoding(name: str):
    """Decode an image inside this: Pillow's decompression-bomb warning becomes an error, and
    any failure a one-line :class:`DataError` naming ``name``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except DataError:
        raise
    except Image.UnidentifiedImageError:
        raise DataError(f"{name}: cannot decode image (not a recognised image format)") from None
    except Exception as exc:  # Pillow raises many types on malformed data
        msg = " ".join(_BYTESIO.sub("", str(exc)).split()) or type(exc).__name__
        raise DataError(f"{name}: cannot decode image ({msg})") from None


def _decode(data: bytes, name: str, image_size: int | None) -> np.ndarray:
    with decoding(name), Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode in ("I", "F") or im.mode.startswith("I;"):
            im = Image.fromarray(_to_uint8(im, name), "L")
        elif im.mode not in ("L", "RGB"):
            im = im.convert("L" if im.mode in _GREY else "RGB")
        if image_size is not None:
            im = _resize_center_crop(im, image_size)
        return np.asarray(im, dtype=np.uint8)


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


def _exit_with_parent(conn) -> None:
    """Pool worker initializer: exit when the main process dies (even by SIGKILL), instead of
    waiting forever for work. ``conn`` is the read end of a pipe whose write end only the main
    process holds: the read returns (EOF) when the main process is gone."""

    def watch() -> None:
        try:
            conn.recv_bytes()
        except (EOFError, OSError):
            pass
        os._exit(1)

    threading.Thread(target=watch, name="dsquant-parent-watch", daemon=True).start()


def _decode_all(
    items: list[tuple[str, Callable[[], bytes]]], source: str, image_size: int | None, progress: bool
) -> np.ndarray:
    """Decode every image; big sets are split over one process per core (Pillow holds the GIL
    for much of a small image's decode, so threads do not help). The workers exit if this
    process dies."""
    from tqdm.auto import tqdm

    names = [name for name, _ in items]
    workers = min(os.cpu_count() or 1, 8)
    chunk = DECODE_CHUNK
    bar = tqdm(total=len(items), desc=f"decode {Path(source).name}", unit="img", disable=not progress, leave=False)
    arrays: list[np.ndarray] = []
    if workers > 1 and len(items) > 2 * chunk:
        import multiprocessing as mp

        ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        alive_r, alive_w = ctx.Pipe(duplex=False)
        try:
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_exit_with_parent, initargs=(alive_r,)) as pool:
                try:
                    futures = [
                        pool.submit(_decode_chunk, [(n, read()) for n, read in items[i : i + chunk]], image_size)
                        for i in range(0, len(items), chunk)
                    ]
                    for fut in futures:
                        part = fut.result()
                        arrays.extend(part)
                        bar.update(len(part))
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
        finally:
            alive_w.close()
            alive_r.close()
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


def _layout(
    paths: Iterable[list[str]],
    split: str | None,
    source: str,
    dirs: Iterable[list[str]] = (),
    where: Callable[[list[str]], str] = "/".join,
) -> tuple[list[tuple[list[str], str]], str]:
    """Pick the images of ``split``: returns [(parts, class)], the split used.

    ``dirs`` are all folders of the tree: a folder beside the chosen class folders that holds no
    image is an empty class and is refused (``where`` names it in the message).
    """
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
    parents = {tuple(p[:-2]) for p in chosen}
    filled = {tuple(p[:-1]) for p in chosen}
    for d in sorted(dirs):
        if d and tuple(d[:-1]) in parents and tuple(d) not in filled:
            raise DataError(
                f"{where(d)}: empty class folder (no image files: expected at least one of "
                f"{', '.join(IMAGE_EXTENSIONS)}); remove it or add images"
            )
    for c in sorted({p[-2] for p in chosen}):
        try:
            c.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(
                f"{source}: class folder name {os.fsencode(c)!r} is not valid UTF-8; class "
                f"names must be text (rename the folder)"
            ) from None
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
        DataError: if the directory has no images, lacks the split, has an empty class folder
            or one whose name is not UTF-8, or an image is not a regular file, is larger than
            :data:`MAX_IMAGE_BYTES` or cannot be decoded.
    """
    root = Path(root)
    entries, split, order, classes, labels = folder_entries(root, split)

    def reader(parts: list[str]) -> Callable[[], bytes]:
        return lambda: _read_regular(root.joinpath(*parts), MAX_IMAGE_BYTES, "an image file")

    items = [(str(root.joinpath(*entries[i][0])), reader(entries[i][0])) for i in order]
    images = _decode_all(items, str(root), image_size, progress)
    return ImageDataset(images, labels, classes, str(root), split)


def folder_entries(root: Path, split: str | None):
    """The images of an ImageFolder's split in the readers' order: ``(entries, split, order,
    classes, labels)``, entry ``order[i]`` (path parts, class) being sample i.

    Raises:
        DataError: if ``root`` is not a directory, or as :func:`_layout` does.
    """
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    found, dirs = _folder_listing(root)
    entries, split = _layout(found, split, str(root), dirs, lambda d: str(root.joinpath(*d)))
    order, classes, labels = _index(entries)
    return entries, split, order, classes, labels


def _folder_listing(root: Path) -> tuple[list[list[str]], list[list[str]]]:
    """Every file and every directory under ``root``, as path parts relative to it (links are
    not followed)."""
    found, dirs = [], []
    for dirpath, subdirs, files in os.walk(root, followlinks=False):
        rel = list(Path(dirpath).relative_to(root).parts)
        dirs.extend(rel + [d] for d in subdirs)
        found.extend(rel + [f] for f in files)
    return found, dirs


def _tar_listing(tar: tarfile.TarFile, path: Path) -> tuple[dict[str, tarfile.TarInfo], list[list[str]]]:
    """The regular-file members whose names stay inside the archive (by their '/'-joined parts)
    and the directories, of an archive opened with ``tarinfo=_EndMarkTarInfo``."""
    members, dirs = {}, []
    for m in _tar_members(tar, path):
        parts = _safe_parts(m.name)
        if parts is None:
            continue
        if m.isdir():
            dirs.append(parts)
        elif m.isfile():
            members["/".join(parts)] = m
    return members, dirs


def source_files(source: str | os.PathLike, split: str | None = None) -> list[tuple[str, int]]:
    """The files behind the samples of an image folder or a tar, in the readers' order: item i
    is sample i of :func:`read_image_folder` / :func:`read_image_tar` ``(source, split)``.

    Returns:
        ``(name, bytes)`` per sample, from the directory entries or the tar's member headers (no
        image is read; a compressed tar is decompressed to list it).

    Raises:
        DataError: as the readers' listing does (no images of the split, an empty class folder,
            a corrupt or truncated archive).
    """
    path = Path(source)
    if path.is_dir():
        found, dirs = _folder_listing(path)
        entries, _ = _layout(found, split, str(path), dirs, lambda d: str(path.joinpath(*d)))
        order, _, _ = _index(entries)
        return [(str(path.joinpath(*entries[i][0])), os.stat(path.joinpath(*entries[i][0])).st_size) for i in order]
    check_regular_file(path)
    try:
        with tarfile.open(path, "r:*", tarinfo=_EndMarkTarInfo) as tar:
            members, dirs = _tar_listing(tar, path)
    except _TAR_ERRORS as exc:
        raise DataError(f"{path}: cannot read tar archive ({exc})") from None
    entries, _ = _layout([k.split("/") for k in members], split, str(path), dirs, lambda d: f"{path}:{'/'.join(d)}/")
    order, _, _ = _index(entries)
    return [(f"{path}:{'/'.join(entries[i][0])}", members["/".join(entries[i][0])].size) for i in order]


def read_image_tar(
    path: str | os.PathLike, split: str | None = None, image_size: int | None = None, progress: bool = False
) -> ImageDataset:
    """Read a tar archive (plain, .gz, .bz2 or .xz) of an ImageFolder, in place.

    Members are filtered: only regular files whose names stay inside the archive (no absolute
    paths, no ``..``) are read; nothing is written to disk.

    Raises:
        DataError: if the archive is not a regular file, is corrupt or truncated (no
            end-of-archive marker), has no images of the split or an empty class folder, or a
            member is larger than :data:`MAX_IMAGE_BYTES` or cannot be decoded.
    """
    path = Path(path)
    check_regular_file(path)
    try:
        with tarfile.open(path, "r:*", tarinfo=_EndMarkTarInfo) as tar:
            members, dirs = _tar_listing(tar, path)
            entries, split = _layout(
                [k.split("/") for k in members], split, str(path), dirs, lambda d: f"{path}:{'/'.join(d)}/"
            )
            order, classes, labels = _index(entries)
            blobs = []
            from tqdm.auto import tqdm

            for i in tqdm(order, desc=f"read {path.name}", unit="file", disable=not progress, leave=False):
                key = "/".join(entries[i][0])
                name = f"{path}:{key}"
                data = _read_member(tar, members[key], MAX_IMAGE_BYTES, "an image file", name)
                blobs.append((name, (lambda data: lambda: data)(data)))
    except _TAR_ERRORS as exc:
        raise DataError(f"{path}: cannot read tar archive ({exc})") from None
    images = _decode_all(blobs, str(path), image_size, progress)
    return ImageDataset(images, labels, classes, str(path), split)


# ----------------------------------------------------------------------------- IDX


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_upto(f, n: int) -> bytearray:
    """Up to ``n`` bytes of ``f``, in pieces: memory grows with the data actually there."""
    buf = bytearray()
    while len(buf) < n:
        piece = f.read(min(1 << 24, n - len(buf)))
        if not piece:
            break
        buf += piece
    return buf


def parse_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (gzipped or not) into an array. The header's size is checked against
    the file before any data is read or decompressed.

    Raises:
        DataError: if it is not a regular file, on a bad magic number, unknown type code, or a
            size that does not match the header.
    """
    path = Path(path)
    size = check_regular_file(path)
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            f = gzip.GzipFile(fileobj=raw) if gz else raw
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                raise DataError(f"{path}: not an IDX file (bad magic number)")
            ndim = head[3]
            dim_bytes = f.read(4 * ndim)
            if ndim == 0 or len(dim_bytes) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header")
            dims = [int.from_bytes(dim_bytes[4 * i : 4 * i + 4], "big") for i in range(ndim)]
            dtype = np.dtype(_IDX_DTYPES[head[2]])
            expected = math.prod(dims) * dtype.itemsize
            room = GZIP_MAX_RATIO * size if gz else size - 4 - 4 * ndim
            if expected > room:
                holds = f"a {size}-byte gzip file cannot hold that much" if gz else f"the file holds {room}"
                raise DataError(f"{path}: IDX header announces {dims} ({expected} bytes of data) but {holds}")
            data = _read_upto(f, expected)
            extra = f.read(1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if len(data) != expected or extra:
        holds = f"{len(data)}" if not extra else "more"
        raise DataError(f"{path}: IDX header announces {dims} ({expected} bytes of data) but the file holds {holds}")
    return np.frombuffer(data, dtype=dtype).reshape(dims)


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
        classes: class names (default: from the labels, see :func:`label_classes`).

    Raises:
        DataError: on a missing partner file, a malformed file, a count mismatch or negative
            labels.
    """
    images_path, labels_path = _idx_pair(Path(path), split)
    images = parse_idx(images_path)
    labels = parse_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{labels_path}: {labels.shape} labels do not match {len(images)} images in {images_path.name}")
    ids, names = label_classes(labels, str(labels_path))  # also refuses negative labels
    if classes is not None:
        ids, names = labels.astype(np.int64), list(classes)
    split_name = "test" if images_path.name.startswith("t10k") else split
    return ImageDataset(images[..., None].copy(), ids, names, str(images_path), split_name)


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
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError, KeyError, OverflowError, MemoryError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{name}: not a valid CIFAR batch ({msg})") from None


def _cifar_array(batch: dict, raw_size: int, name: str) -> np.ndarray:
    """A batch's ``data``: a uint8 (N, 3*H*W) array that owns no more bytes than the pickle
    held (a broadcast or shared-row view, which copying would blow up, is refused)."""
    arr = batch["data"]
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] % 3:
        what = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise DataError(f"{name}: 'data' must be a uint8 array (N, 3*H*W), got {what}")
    if not arr.flags.c_contiguous or arr.nbytes > raw_size:
        raise DataError(
            f"{name}: 'data' {arr.shape} is a view of {raw_size} bytes of pickle (shared or "
            f"broadcast rows); expected a plain array"
        )
    return arr


def _cifar_labels(values, rows: int, name: str, key: str) -> np.ndarray:
    """A batch's labels: one integer per row, checked before any conversion."""
    if isinstance(values, np.ndarray):
        ok = values.shape == (rows,) and np.issubdtype(values.dtype, np.integer)
    else:
        ok = isinstance(values, (list, tuple)) and len(values) == rows and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values
        )
    if not ok:
        raise DataError(f"{name}: '{key}' must be {rows} integers, one per row of 'data'")
    try:
        return np.asarray(values, dtype=np.int64)
    except OverflowError:
        raise DataError(f"{name}: '{key}' holds an integer too large for a label") from None


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
            try:
                classes = [c.decode() if isinstance(c, bytes) else str(c) for c in m[names_key]]
            except (UnicodeDecodeError, TypeError):
                raise DataError(f"{source}:{meta[0]}: '{names_key}' must be a list of UTF-8 names") from None
    data, labels = [], []
    for n in want:
        raw = files[n]()
        batch = restricted_loads(raw, f"{source}:{n}")
        if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
            raise DataError(f"{source}:{n}: not a CIFAR batch (no 'data'/'{label_key}' entries)")
        arr = _cifar_array(batch, len(raw), f"{source}:{n}")
        data.append(arr)
        labels.append(_cifar_labels(batch[label_key], len(arr), f"{source}:{n}", label_key))
    flat = np.concatenate(data)
    side = int(round((flat.shape[1] // 3) ** 0.5))
    if side * side * 3 != flat.shape[1]:
        raise DataError(f"{source}: CIFAR rows of {flat.shape[1]} values are not square RGB images")
    images = flat.reshape(-1, 3, side, side).transpose(0, 2, 3, 1).copy()
    lab = np.concatenate(labels)
    if classes is None:
        lab, classes = label_classes(lab, source)
    return ImageDataset(images, lab, classes, source, "test" if split == "test" else "train")


_CIFAR_FILES = ("batches.meta", "meta", "train", "test")


def _is_cifar_file(name: str) -> bool:
    base = posixpath.basename(name)
    return base in _CIFAR_FILES or base.startswith(("data_batch_", "test_batch"))


def read_cifar_archive(path: str | os.PathLike, split: str = "train") -> ImageDataset:
    """Read the official CIFAR-10 or CIFAR-100 python version: the ``.tar.gz`` archive or its
    extracted ``cifar-10-batches-py`` / ``cifar-100-python`` directory.

    The batches are pickles: they are read with a restricted unpickler that accepts builtin
    containers and numpy arrays only. Only the batch and meta files are read, each at most
    :data:`MAX_PICKLE_BYTES`.

    Raises:
        DataError: on a corrupt or truncated archive, a batch that is not CIFAR's (or whose
            'data' array is a view larger than the file), a forbidden pickle, a batch file that
            is not a regular file or is too large, or negative labels.
    """
    path = Path(path)
    if path.is_dir():
        files = {
            str(p.relative_to(path)): (
                lambda p=p: _read_regular(p, MAX_PICKLE_BYTES, "a CIFAR batch", f"{path}:{p.relative_to(path)}")
            )
            for p in path.rglob("*")
            if not p.is_dir() and _is_cifar_file(p.name)
        }
        return _cifar_batches(files, split, str(path))
    check_regular_file(path)
    try:
        with tarfile.open(path, "r:*", tarinfo=_EndMarkTarInfo) as tar:
            files = {}
            for m in tar:
                parts = _safe_parts(m.name)
                if m.isfile() and parts is not None and _is_cifar_file(m.name):
                    key = "/".join(parts)
                    data = _read_member(tar, m, MAX_PICKLE_BYTES, "a CIFAR batch", f"{path}:{key}")
                    files[key] = (lambda d=data: d)
            _check_end_marker(tar, path)
    except _TAR_ERRORS as exc:
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
    if not path.is_file():
        return False
    marks = ("data_batch_", "test_batch", "batches.meta", "cifar-100-python/")
    try:
        with tarfile.open(path, "r:*") as tar:
            for i, m in enumerate(tar):
                if any(k in m.name for k in marks):
                    return True
                if i > 20:
                    return False
    except (tarfile.TarError, EOFError, OSError, zlib.error):
        return False
    return False
