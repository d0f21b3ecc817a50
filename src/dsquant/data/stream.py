"""Streamed image sources: a dataset that is an index, with images decoded on demand.

ImageNet-size data does not fit in memory decoded (1.28 million images are 193 GB at 224 px), so
a :class:`StreamedImageDataset` holds only what identifies each sample (its stable id: the path
inside a folder, the member name inside a tar, the key of a WebDataset sample), its label, and
where its bytes lie (a file, or a tar shard with the member's offset and size, read by one
``seek`` + ``read``). Images are decoded on demand, in DataLoader worker processes, straight to an
encoder's input size (Pillow's JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale when the image is
that much larger than needed; then the shorter side is resized and the centre cropped).

Memory does not grow with the number of images beyond the index (ids, labels, offsets: about
150 bytes per image) and what the consumer keeps (embeddings).

Sources:

* an ImageFolder directory (``<class>/<image>``, optionally under ``train/``, ``test/``):
  :func:`index_image_folder`; sample order and labels are those of
  :func:`~dsquant.data.read_image_folder` (so indices agree with the in-memory reader);
* an uncompressed tar of one: :func:`index_image_tar` (a compressed tar cannot be read at an
  offset; read it in memory, or unpack it);
* WebDataset-style tar shards (``<key>.<ext>`` members grouped by key, the image in
  ``.jpg``/``.jpeg``/``.png``/``.webp``/..., the class id as text in ``.cls``), given as a brace
  pattern (``shards/train-{000000..000146}.tar``) or a list of files:
  :func:`index_webdataset`; samples in shard order, then member order.

Inputs are not trusted: only regular files are read, sizes come from ``stat`` or the tar headers
and are checked against :data:`~dsquant.data.images.MAX_IMAGE_BYTES` before reading, member
names that leave the archive are ignored, and an image that cannot be decoded gives a
:class:`~dsquant.errors.DataError` naming it (or, with ``skip_bad``, is listed and left out;
never silently).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from ..errors import DataError
from .images import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_BYTES,
    _EndMarkTarInfo,
    _TAR_ERRORS,
    folder_entries,
    _index,
    _layout,
    _tar_listing,
    _to_uint8,
    check_regular_file,
    decoding,
    label_classes,
)

__all__ = [
    "STREAM_MIN_IMAGES",
    "StreamedImageDataset",
    "decode_resized",
    "index_image_folder",
    "index_image_tar",
    "index_webdataset",
    "iter_image_batches",
    "resize_center_crop",
]

STREAM_MIN_IMAGES = 200_000
"""With ``stream=None`` (automatic), image folders and tars of at least this many images are
streamed; smaller ones are decoded into memory, which is faster for CIFAR-size sets."""

_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS, "box": Image.BOX}
MAX_LABEL_BYTES = 64  # a WebDataset .cls member: a class id as text
_OPEN_SHARDS = 16  # tar files kept open per process by StreamedImageDataset.read_bytes


def resize_center_crop(im: Image.Image, resize: int, crop: int, interpolation: str = "bilinear") -> Image.Image:
    """Resize the shorter side of ``im`` to ``resize`` pixels (aspect kept) and cut the centre
    ``crop`` x ``crop`` square: the usual evaluation transform of ImageNet encoders.

    Raises:
        ValueError: if ``crop > resize`` or a size is below 1, or ``interpolation`` is unknown.
    """
    if resize < 1 or crop < 1 or crop > resize:
        raise ValueError(f"resize/crop: expected 1 <= crop <= resize, got resize={resize}, crop={crop}")
    if interpolation not in _RESAMPLE:
        raise ValueError(f"interpolation: expected one of {sorted(_RESAMPLE)}, got {interpolation!r}")
    w, h = im.size
    scale = resize / min(w, h)
    size = (max(resize, round(w * scale)), max(resize, round(h * scale)))
    if size != (w, h):
        im = im.resize(size, _RESAMPLE[interpolation])
    w, h = im.size
    left, top = (w - crop) // 2, (h - crop) // 2
    return im.crop((left, top, left + crop, top + crop))


def decode_resized(data: bytes, name: str, resize: int, crop: int, interpolation: str = "bilinear") -> np.ndarray:
    """Decode an image file's bytes to a (crop, crop, 3) uint8 RGB array, decoding JPEGs at the
    smallest draft scale (1/1, 1/2, 1/4, 1/8) that keeps both sides at least ``resize``.

    Pixel modes follow :mod:`dsquant.data.images` (16-bit and float grey scaled to 8 bits, other
    modes converted by Pillow), then grey is repeated to RGB (encoders take three channels).

    Raises:
        DataError: naming ``name`` if the bytes are not a decodable image or exceed Pillow's
            decompression-bomb limit.
    """
    with decoding(name), Image.open(io.BytesIO(data)) as im:
        if im.format == "JPEG":
            im.draft("RGB", (resize, resize))
        im.load()
        if im.mode in ("I", "F") or im.mode.startswith("I;"):
            im = Image.fromarray(_to_uint8(im, name), "L")
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.asarray(resize_center_crop(im, resize, crop, interpolation), dtype=np.uint8)


@dataclass
class StreamedImageDataset:
    """A labelled image dataset as an index; images are read and decoded on demand.

    Attributes:
        ids: (N,) str array: each sample's stable id (relative path in a folder, member name in
            a tar, key of a WebDataset sample); unique.
        labels: (N,) int64 class ids in ``[0, len(classes))``.
        classes: class names; label i is ``classes[i]``.
        files: the files holding the bytes (image files, or tar shards).
        file_index: (N,) int32: which of ``files`` holds sample i.
        offsets: (N,) int64 byte offset of the sample's bytes in its file (0 for an image file).
        sizes: (N,) int64 byte size of the sample's bytes (from ``stat`` or the tar header).
        source: what was indexed (a directory, a tar, a shard pattern).
        split: the split of the source.
        format: ``"imagefolder"``, ``"tar"`` or ``"webdataset"``.
    """

    ids: np.ndarray
    labels: np.ndarray
    classes: list[str]
    files: list[str]
    file_index: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    source: str
    split: str = "train"
    format: str = "imagefolder"
    signature: dict = field(default_factory=dict, repr=False)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)
    _handles: dict = field(default_factory=dict, repr=False, compare=False)

    kind = "images"
    streamed = True

    def __post_init__(self) -> None:
        n = len(self.ids)
        if n == 0:
            raise DataError(f"{self.source}: the dataset is empty (no images)")
        for name in ("labels", "file_index", "offsets", "sizes"):
            if len(getattr(self, name)) != n:
                raise DataError(f"{self.source}: index field {name} has {len(getattr(self, name))} entries for {n} images")
        big = np.flatnonzero(self.sizes > MAX_IMAGE_BYTES)
        if len(big):
            i = int(big[0])
            raise DataError(f"{self.name_of(i)}: {int(self.sizes[i])} bytes is more than the {MAX_IMAGE_BYTES}-byte limit for an image file")

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:  # sent to DataLoader workers: without open file handles
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def name_of(self, i: int) -> str:
        """How messages name sample ``i``: its file, or ``shard:member``."""
        f = self.files[int(self.file_index[i])]
        return f if self.format == "imagefolder" else f"{f}:{self.ids[i]}"

    def fingerprint(self) -> str:
        """Hex BLAKE2b digest of the index (ids, labels, classes, byte sizes) and of the files'
        sizes and modification times: it identifies the source without reading any image."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(repr((self.format, self.split, self.classes, self.signature)).encode())
            h.update("\0".join(self.ids.tolist()).encode("utf-8", "surrogateescape"))
            for a in (self.labels, self.sizes, self.offsets):
                h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def subset(self, indices) -> "StreamedImageDataset":
        """The samples ``indices`` (same classes and files), still streamed."""
        idx = np.asarray(indices, dtype=np.int64)
        return StreamedImageDataset(self.ids[idx], self.labels[idx], list(self.classes), list(self.files), self.file_index[idx], self.offsets[idx], self.sizes[idx], self.source, self.split, self.format, dict(self.signature, subset=True))

    def read_bytes(self, i: int) -> bytes:
        """The stored bytes of sample ``i`` (one seek and read; handles stay open per process).

        Raises:
            DataError: if the file is gone, shorter than its index says, or unreadable.
        """
        k = int(self.file_index[i])
        size = int(self.sizes[i])
        try:
            if self.format == "imagefolder":  # one file per image: opened, read, closed
                with open(self.files[k], "rb") as f:
                    data = f.read(size)
            else:  # tar shards: a few handles kept open per process
                key = (os.getpid(), k)
                f = self._handles.pop(key, None)
                if f is None:
                    f = open(self.files[k], "rb")
                self._handles[key] = f  # most recently used last
                while len(self._handles) > _OPEN_SHARDS:
                    self._handles.pop(next(iter(self._handles))).close()
                f.seek(int(self.offsets[i]))
                data = f.read(size)
        except OSError as exc:
            raise DataError(f"{self.name_of(i)}: cannot read ({exc.strerror or exc})") from None
        if len(data) != size:
            raise DataError(f"{self.name_of(i)}: {len(data)} bytes read, {size} expected (the file changed since it was indexed)")
        return data

    def decode(self, i: int, resize: int, crop: int, interpolation: str = "bilinear") -> np.ndarray:
        """Sample ``i`` as a (crop, crop, 3) uint8 RGB array (:func:`decode_resized`)."""
        return decode_resized(self.read_bytes(i), self.name_of(i), resize, crop, interpolation)

    def load(self, image_size: int, indices=None, progress: bool = False):
        """Decode ``indices`` (default all) into an in-memory :class:`~dsquant.data.ImageDataset`
        at ``image_size`` (shorter side resized, centre crop), e.g. the selected subset."""
        from .images import ImageDataset

        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        arrays = np.empty((len(idx), image_size, image_size, 3), dtype=np.uint8)
        for pos, batch in iter_image_batches(self, image_size, image_size, indices=idx, progress=progress, as_numpy=True):
            arrays[pos] = batch
        return ImageDataset(arrays, self.labels[idx], list(self.classes), self.source, self.split)

    def source_files(self) -> list[tuple[str, int]]:
        """``(name, bytes)`` of every sample's stored file or member (no image is read)."""
        return [(self.name_of(i), int(self.sizes[i])) for i in range(len(self))]


# ----------------------------------------------------------------------------- indexing


def _from_entries(entries, order, classes, labels, where, source: str, split: str, fmt: str, signature: dict) -> StreamedImageDataset:
    files, file_index, offsets, sizes, ids = [], [], [], [], []
    for i in order:
        rel, file, offset, size = where(entries[i][0])
        ids.append(rel)
        files.append(file)
        offsets.append(offset)
        sizes.append(size)
    if fmt == "imagefolder":
        file_index = np.arange(len(files), dtype=np.int32)
    else:
        file_index = np.zeros(len(files), dtype=np.int32)
        files = files[:1]
    return StreamedImageDataset(np.array(ids, dtype=str), labels, classes, files, file_index, np.array(offsets, dtype=np.int64), np.array(sizes, dtype=np.int64), source, split, fmt, signature)


def index_image_folder(root: str | os.PathLike, split: str | None = None) -> StreamedImageDataset:
    """Index ``root/<class>/<image>`` (or ``root/<split>/<class>/<image>``) without decoding:
    the same samples, order and labels as :func:`~dsquant.data.read_image_folder`.

    Raises:
        DataError: as the in-memory reader does (no images of the split, an empty class folder,
            a class name that is not UTF-8), or an image that is not a regular file or is larger
            than :data:`~dsquant.data.images.MAX_IMAGE_BYTES` (checked with ``stat``).
    """
    root = Path(root)
    entries, split, order, classes, labels = folder_entries(root, split)
    base = Path(os.path.abspath(root))  # absolute: workers elsewhere (Ray) read the same files
    mtime = 0

    def where(parts):
        nonlocal mtime
        path = base.joinpath(*parts)
        try:
            st = os.stat(path)  # one stat per image: its size, type and time
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            check_regular_file(path)  # raises the reader's one-line error
            st = os.stat(path)  # (it did not: the file changed in between)
        mtime = max(mtime, st.st_mtime_ns)
        return "/".join(parts), str(path), 0, st.st_size

    ds = _from_entries(entries, order, classes, labels, where, str(root), split, "imagefolder", {})
    ds.signature = {"newest_mtime_ns": mtime}
    return ds


class CompressedTarError(DataError):
    """A compressed tar was to be streamed: its members cannot be read at an offset."""


def _open_tar(path: Path) -> tarfile.TarFile:
    check_regular_file(path)
    try:
        tar = tarfile.open(path, "r:", tarinfo=_EndMarkTarInfo)
    except tarfile.ReadError:
        raise CompressedTarError(
            f"{path}: cannot stream a compressed tar (its members cannot be read at an offset); "
            f"read it in memory (stream=False, CLI --in-memory) or unpack it to a folder or a plain .tar"
        ) from None
    except _TAR_ERRORS as exc:
        raise DataError(f"{path}: cannot read tar archive ({exc})") from None
    return tar


def _signature(path: Path) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def index_image_tar(path: str | os.PathLike, split: str | None = None) -> StreamedImageDataset:
    """Index an uncompressed tar of an ImageFolder from its member headers (nothing is decoded;
    each image is later read at its offset): the same samples, order and labels as
    :func:`~dsquant.data.read_image_tar`.

    Raises:
        DataError: on a compressed tar (not streamable), a corrupt or truncated archive, no
            images of the split, an empty class folder, or a member above the size limit.
    """
    path = Path(path)
    tar = _open_tar(path)
    try:
        with tar:
            members, dirs = _tar_listing(tar, path)
    except _TAR_ERRORS as exc:
        raise DataError(f"{path}: cannot read tar archive ({exc})") from None
    entries, split = _layout([k.split("/") for k in members], split, str(path), dirs, lambda d: f"{path}:{'/'.join(d)}/")
    order, classes, labels = _index(entries)

    absolute = os.path.abspath(path)

    def where(parts):
        m = members["/".join(parts)]
        if m.issparse():
            raise DataError(f"{path}:{m.name}: a sparse tar member cannot be read at an offset; read the tar in memory (--in-memory)")
        return "/".join(parts), absolute, m.offset_data, m.size

    return _from_entries(entries, order, classes, labels, where, str(path), split, "tar", _signature(path))


def shard_paths(shards: str | os.PathLike | Sequence) -> list[Path]:
    """The shard files of a brace pattern (``"train-{000..146}.tar"``) or a list of paths."""
    if isinstance(shards, (str, os.PathLike)):
        from braceexpand import braceexpand

        return [Path(p) for p in braceexpand(str(shards))]
    return [Path(p) for p in shards]


def index_webdataset(shards: str | os.PathLike | Sequence, split: str | None = None) -> StreamedImageDataset:
    """Index WebDataset-style tar shards: members ``<key>.<ext>`` grouped by key (the member
    name up to the first dot of its last component), the image in the first member with an
    image extension, the class id in ``<key>.cls`` (an integer as text; class names are then
    :func:`~dsquant.data.images.label_classes`'). Ids are the keys, which must be unique across
    shards. Samples come in shard order, then member order.

    Args:
        shards: a brace pattern (``"data/train-{000..146}.tar"``) or a list of shard paths.
        split: only ``None`` or ``"train"`` (a shard set is one split).

    Raises:
        DataError: naming the shard (and key) on a missing, compressed, corrupt or truncated
            shard, a sample without an image or without a ``.cls`` label, a label that is not an
            integer, or a key present twice.
    """
    if split not in (None, "train"):
        raise DataError(f"{shards}: WebDataset shards are one split; got split {split!r}")
    paths = shard_paths(shards)
    if not paths:
        raise DataError(f"{shards}: no shard files")
    files, file_index, offsets, sizes, ids, raw_labels = [], [], [], [], [], []
    seen: dict[str, str] = {}
    sig = []
    for k, path in enumerate(paths):
        tar = _open_tar(path)
        sig.append(_signature(path))
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        try:
            with tar:
                members, _ = _tar_listing(tar, path)
                for name, m in members.items():
                    head, _, last = name.rpartition("/")
                    stem, dot, ext = last.partition(".")
                    if not dot:
                        continue
                    key = f"{head}/{stem}" if head else stem
                    groups.setdefault(key, {})[ext.lower()] = m
                for key, parts in groups.items():
                    image = next((parts[e] for e in parts if ("." + e.rsplit(".", 1)[-1]) in IMAGE_EXTENSIONS), None)
                    if image is None:
                        raise DataError(f"{path}:{key}: no image member (expected {key}.jpg, .png, ... one of {IMAGE_EXTENSIONS})")
                    cls = parts.get("cls")
                    if cls is None:
                        raise DataError(f"{path}:{key}: no label member (expected {key}.cls holding the class id)")
                    if cls.size > MAX_LABEL_BYTES:
                        raise DataError(f"{path}:{key}.cls: {cls.size} bytes; expected a class id of at most {MAX_LABEL_BYTES} bytes")
                    text = tar.extractfile(cls).read().decode("utf-8", "replace").strip()
                    try:
                        raw_labels.append(int(text))
                    except ValueError:
                        raise DataError(f"{path}:{key}.cls: expected an integer class id, got {text[:40]!r}") from None
                    if image.issparse():
                        raise DataError(f"{path}:{image.name}: a sparse tar member cannot be read at an offset")
                    if key in seen:
                        raise DataError(f"{path}:{key}: key also in {seen[key]}; WebDataset keys must be unique across shards")
                    seen[key] = str(path)
                    ids.append(key)
                    file_index.append(k)
                    offsets.append(image.offset_data)
                    sizes.append(image.size)
        except _TAR_ERRORS as exc:
            raise DataError(f"{path}: cannot read tar archive ({exc})") from None
        files.append(os.path.abspath(path))
    if not ids:
        raise DataError(f"{shards}: no samples in {len(paths)} shard(s) (expected <key>.jpg + <key>.cls members)")
    labels, classes = label_classes(np.array(raw_labels, dtype=np.int64), str(shards))
    return StreamedImageDataset(np.array(ids, dtype=str), labels, classes, files, np.array(file_index, dtype=np.int32), np.array(offsets, dtype=np.int64), np.array(sizes, dtype=np.int64), str(shards), "train", "webdataset", {"shards": sig})


# ----------------------------------------------------------------------------- batches


class _Decoded:
    """A map-style dataset of decoded images for a DataLoader: item j is (j, array or None,
    error message). Errors travel as values, so the main process reports them in one line."""

    def __init__(self, dataset, indices: np.ndarray, resize: int, crop: int, interpolation: str) -> None:
        self.dataset, self.indices = dataset, indices
        self.resize, self.crop, self.interpolation = resize, crop, interpolation

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = int(self.indices[j])
        try:
            if getattr(self.dataset, "streamed", False):
                return j, self.dataset.decode(i, self.resize, self.crop, self.interpolation), ""
            a = self.dataset.images[i]
            im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB")
            return j, np.asarray(resize_center_crop(im, self.resize, self.crop, self.interpolation)), ""
        except DataError as exc:
            return j, None, str(exc)


def _collate(items):
    pos = np.array([j for j, a, _ in items if a is not None], dtype=np.int64)
    arrays = [a for _, a, _ in items if a is not None]
    errors = [(j, e) for j, a, e in items if a is None]
    stacked = np.stack(arrays) if arrays else None
    return pos, stacked, errors


def default_workers(device=None) -> int:
    """Decoding worker processes by default: with a CUDA encoder every core this process may
    use but one (at most 16), since decoding then limits the speed; with a CPU encoder half of
    them (at least 1, at most 8), the other half running the encoder."""
    from ..training import affinity_cores

    cores = affinity_cores()
    if device is not None and str(device).startswith("cuda"):
        return max(1, min(16, cores - 1))
    return max(1, min(8, cores // 2))


def iter_image_batches(
    dataset,
    resize: int,
    crop: int,
    interpolation: str = "bilinear",
    indices=None,
    batch_size: int = 64,
    num_workers: int | None = None,
    skip_bad: bool = False,
    bad: list | None = None,
    progress: bool = False,
    as_numpy: bool = False,
    device=None,
) -> Iterator[tuple[np.ndarray, object]]:
    """Decode ``dataset``'s images (streamed or in memory) in batches, in worker processes.

    Args:
        dataset: a :class:`StreamedImageDataset` or an in-memory
            :class:`~dsquant.data.ImageDataset`.
        resize, crop, interpolation: the transform (:func:`resize_center_crop`).
        indices: which samples, in this order (default all).
        batch_size: images per batch.
        num_workers: decoding processes (default :func:`default_workers` for ``device``, the
            encoder's; 0 decodes here).
        skip_bad: leave out images that cannot be read or decoded, appending ``(index, message)``
            to ``bad``, instead of raising.
        progress: show a progress bar (images/s).
        as_numpy: yield numpy arrays instead of torch tensors.

    Yields:
        ``(positions, batch)``: positions (B,) int64 into ``indices`` and a (B, crop, crop, 3)
        uint8 batch (a torch tensor, pinned for a CUDA ``device``, or a numpy array).

    Raises:
        DataError: the first unreadable image, in one line, unless ``skip_bad``.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    idx = np.arange(len(dataset), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    workers = default_workers(device) if num_workers is None else num_workers
    workers = min(workers, max(0, len(idx) // batch_size))  # no process for a batch or two
    loader = DataLoader(
        _Decoded(dataset, idx, resize, crop, interpolation), batch_size=batch_size, shuffle=False,
        num_workers=workers, collate_fn=_collate, persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    with tqdm(total=len(idx), desc="decode", unit="img", disable=not progress, leave=False) as bar:
        for pos, batch, errors in loader:
            for j, message in errors:
                if not skip_bad:
                    raise DataError(message)
                if bad is not None:
                    bad.append((int(idx[j]), message))
            bar.update(len(pos) + len(errors))
            if batch is None:
                continue
            if as_numpy:
                yield pos, batch
            else:
                t = torch.from_numpy(batch)
                yield pos, (t.pin_memory() if str(device).startswith("cuda") else t)
