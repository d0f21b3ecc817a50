"""The kept-patch file format: only the patches that survive dropping are stored.

``*.dsqp``, little-endian::

    b"DSQP" | uint16 version | uint32 header length | header (UTF-8 JSON) | body

The header describes the images (count, size, channels, patch size, grid, patches kept per
image, class names, where they came from) and the body's parts, and holds the SHA-256 of the
body, checked on every read. Files are written to a temporary file and renamed.

**Version 2** (written since issue 17). Body sections ``indices`` (int64, dataset index of each
image), ``labels`` (int64) and ``masks`` (one bit per patch, row-major, packed), each
zlib-compressed, then the **tiles**: the images in store order, stacked vertically a few hundred
at a time (:func:`images_per_tile`), every dropped patch filled by repeating the kept pixel
above it in the same column (below it when there is none), each tile encoded as one image by
Pillow. The header's ``codec`` says how: ``webp`` lossless (the default: 51 % of the raw kept
pixels on CIFAR-10, 54 % of the same whole images as PNG; docs/pixels.md), ``png`` lossless, or
lossy ``webp`` / ``jpeg`` at a ``quality``. Lossless files give back the kept
pixels bit for bit; the filled pixels are thrown away on reading.

**Version 1** (read only): body sections ``indices``, ``labels``, ``masks`` as above, uncompressed,
and ``patches`` (uint8 kept patches of every image in row-major patch order, each
``patch x patch x C``).

Files come from strangers: before anything is decompressed or decoded, the header is checked
(sizes, shapes, offsets inside the body, image sides at most :data:`MAX_SIDE`, every tile at most
:data:`MAX_TILE_PIXELS` pixels, the decoded kept pixels at most ``max_bytes``), each tile is
opened only by its codec's decoder and its dimensions are compared with the header's before it
is decoded. No pickle. A damaged, truncated or malformed file is a one-line ``ValueError`` that
names it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..artifact import atomic_file
from ..artifact import write_atomic  # noqa: F401  (re-exported: pixels.store.write_atomic)
from .patches import patch_grid

__all__ = ["PatchStore", "PatchReader", "PatchStoreWriter", "Codec", "MAGIC", "VERSION", "READABLE_VERSIONS", "kept_psnr", "images_per_tile", "write_atomic"]

MAGIC = b"DSQP"
VERSION = 2
"""The version written."""
READABLE_VERSIONS = (1, 2)

TILE_PIXELS = 1 << 18
"""Pixels per tile aimed at when writing (256 CIFAR images); more images per tile share the
codec's tables (256 rather than 1 per tile: 8 % fewer bytes on CIFAR-10)."""
MAX_SIDE = 16383
"""Largest image side read or written (WebP's limit)."""
MAX_TILE_PIXELS = 1 << 24
"""Largest tile decoded (pixels), checked from the header and the tile's own header first."""
MAX_DECODED_BYTES = 16 << 30
"""Default cap on the kept pixels a file may decode to (``PatchStore.load(max_bytes=...)``)."""

_PILLOW_FORMAT = {"webp": "WEBP", "png": "PNG", "jpeg": "JPEG"}
_V1_CODEC = {"version": 1, "name": "raw", "lossless": True, "quality": None}
"""The codec record of a store read from a version-1 file (raw kept patches)."""
_HEAD = struct.Struct("<HI")


@dataclass(frozen=True)
class Codec:
    """How a version-2 file encodes the kept pixels.

    Attributes:
        name: ``"webp"`` (lossless or lossy), ``"png"`` (lossless only) or ``"jpeg"`` (lossy
            only).
        quality: None for lossless; an integer in [1, 100] for lossy (the codec's quality).
        effort: WebP's ``method`` in [0, 6] (slower = smaller); default 1 lossless, 4 lossy
            (measured in docs/pixels.md). Ignored by PNG and JPEG.

    Raises:
        ValueError: on an unknown name, a quality outside [1, 100], a lossy PNG or a lossless
            JPEG, an effort outside [0, 6].
    """

    name: str = "webp"
    quality: int | None = None
    effort: int | None = None

    def __post_init__(self) -> None:
        if self.name not in _PILLOW_FORMAT:
            raise ValueError(f"codec: expected one of {sorted(_PILLOW_FORMAT)}, got {self.name!r}")
        if self.quality is not None:
            if isinstance(self.quality, bool) or not isinstance(self.quality, (int, np.integer)) or not 1 <= self.quality <= 100:
                raise ValueError(f"quality: expected an integer in [1, 100] (lossy) or None (lossless), got {self.quality!r}")
            if self.name == "png":
                raise ValueError("quality: png is lossless only; use codec 'webp' or 'jpeg' for a lossy file")
        elif self.name == "jpeg":
            raise ValueError("quality: jpeg is lossy only; give a quality in [1, 100], or use codec 'webp' or 'png' for a lossless file")
        if self.effort is not None and (isinstance(self.effort, bool) or not isinstance(self.effort, (int, np.integer)) or not 0 <= self.effort <= 6):
            raise ValueError(f"effort: expected an integer in [0, 6] (WebP's method), got {self.effort!r}")

    @property
    def lossless(self) -> bool:
        return self.quality is None

    def _pillow_options(self) -> dict:
        if self.name == "webp":
            if self.lossless:  # lossless "quality" is WebP's effort; 0 is as small here and faster
                return {"lossless": True, "method": 1 if self.effort is None else int(self.effort), "quality": 0}
            return {"quality": int(self.quality), "method": 4 if self.effort is None else int(self.effort)}
        if self.name == "jpeg":
            return {"quality": int(self.quality), "optimize": True}
        return {}

    def record(self) -> dict:
        """JSON description (the file header's ``codec``, the manifest's)."""
        return {"name": self.name, "lossless": self.lossless, "quality": None if self.lossless else int(self.quality), **({"effort": self._pillow_options()["method"]} if self.name == "webp" else {})}


def images_per_tile(image_shape: tuple[int, int, int]) -> int:
    """Images stacked in one tile: about :data:`TILE_PIXELS` pixels, at least one, the tile's
    height at most :data:`MAX_SIDE`."""
    h, w = image_shape[:2]
    return max(1, min(TILE_PIXELS // (h * w), MAX_SIDE // h))


def _paste(patches: np.ndarray, masks: np.ndarray, patch: int, image_shape: tuple[int, int, int]) -> np.ndarray:
    """(n, H, W, C) uint8 images with the kept ``patches`` in place and zeros elsewhere."""
    n = len(masks)
    h, w, c = image_shape
    gh, gw = masks.shape[1:]
    tiles = np.zeros((n, gh * gw, patch, patch, c), dtype=np.uint8)
    tiles[masks.reshape(n, gh * gw)] = patches.reshape(-1, patch, patch, c)
    return tiles.reshape(n, gh, gw, patch, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)


def _cut(images: np.ndarray, masks: np.ndarray, patch: int, k: int) -> np.ndarray:
    """(n, k, p, p, C): the kept patches of (n, H, W, C) images, row-major patch order."""
    n, h, w, c = images.shape
    gh, gw = h // patch, w // patch
    tiles = images.reshape(n, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, gh * gw, patch, patch, c)
    return tiles[masks.reshape(n, gh * gw)].reshape(n, k, patch, patch, c)


def _fill_from_above(images: np.ndarray, masks: np.ndarray, patch: int) -> np.ndarray:
    """Every pixel of a dropped patch takes the value of the nearest kept pixel above it in its
    column (below when none is above; 0 when the whole column of patches is dropped). Flat
    vertical runs cost WebP almost nothing: 2.5 % fewer bytes than zeros on CIFAR-10, as small
    on Fashion-MNIST (docs/pixels.md)."""
    n, h, w, c = images.shape
    gh, gw = masks.shape[1:]
    rows = np.arange(gh)[None, :, None]
    above = np.maximum.accumulate(np.where(masks, rows, -1), axis=1)
    below = np.minimum.accumulate(np.where(masks, rows, gh)[:, ::-1], axis=1)[:, ::-1]
    ni, ri, ci = np.nonzero(~masks)
    a, b = above[ni, ri, ci], below[ni, ri, ci]
    source_row = np.where(a >= 0, a * patch + patch - 1, np.minimum(b, gh - 1) * patch)  # a pixel row
    values = images.reshape(n, h, gw, patch, c)[ni, source_row, ci]  # (dropped, patch, C)
    values[(a < 0) & (b >= gh)] = 0
    out = images.reshape(n, gh, patch, gw, patch, c).copy()
    out[ni, ri, :, ci] = values[:, None]
    return out.reshape(n, h, w, c)


def kept_psnr(reference: "PatchStore", other: "PatchStore") -> float:
    """PSNR (dB, peak 255) of ``other``'s kept pixels against ``reference``'s (the same images
    and masks, e.g. a store and the same store read back from a lossy file); inf when equal."""
    if reference.patches.shape != other.patches.shape or not np.array_equal(reference.masks, other.masks):
        raise ValueError(f"kept_psnr: the stores differ in shape or masks ({reference.patches.shape} vs {other.patches.shape})")
    mse = np.mean((reference.patches.astype(np.float64) - other.patches) ** 2) if reference.patches.size else 0.0
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


class _Malformed(ValueError):
    """A problem with a file's content; :meth:`PatchStore.load` prefixes the path."""


@dataclass
class PatchStore:
    """Kept patches of a set of images.

    Attributes:
        indices: (N,) int64 dataset index of every image.
        labels: (N,) int64 class ids.
        masks: (N, rows, cols) bool, True where the patch is kept.
        patches: (N, k, p, p, C) uint8, the k kept patches of every image, row-major order.
        patch: patch size p in pixels.
        image_shape: (H, W, C).
        classes: class names.
        meta: free-form JSON-serialisable provenance.
        codec: how the file it was read from stored the pixels (``{"version": 1, "name":
            "raw", ...}`` or version 2's :meth:`Codec.record`); None when built in memory.
    """

    indices: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    patches: np.ndarray
    patch: int
    image_shape: tuple[int, int, int]
    classes: list[str]
    meta: dict = field(default_factory=dict)
    codec: dict | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @classmethod
    def from_images(cls, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, masks: np.ndarray, patch: int, classes: list[str], meta: dict | None = None) -> "PatchStore":
        """Cut the kept patches out of (N, H, W, C) uint8 images.

        Raises:
            ValueError: if the masks do not match the images' patch grid or keep different
                numbers of patches per image.
        """
        n, h, w, c = images.shape
        gh, gw = patch_grid((h, w), patch)
        if masks.shape != (n, gh, gw):
            raise ValueError(f"masks: expected shape {(n, gh, gw)}, got {masks.shape}")
        k = int(masks[0].sum()) if n else 0
        if n and not np.all(masks.reshape(n, -1).sum(1) == k):
            raise ValueError("masks: every image must keep the same number of patches")
        kept = _cut(images, masks.astype(bool), patch, k)
        return cls(np.asarray(indices, np.int64), np.asarray(labels, np.int64), masks.astype(bool), np.ascontiguousarray(kept), patch, (h, w, c), list(classes), dict(meta or {}))

    @property
    def grid(self) -> tuple[int, int]:
        return self.masks.shape[1], self.masks.shape[2]

    def with_holes(self) -> np.ndarray:
        """(N, H, W, C) uint8 images with the kept patches in place and zeros elsewhere."""
        return _paste(self.patches, self.masks, self.patch, self.image_shape)

    def pixel_masks(self) -> np.ndarray:
        """(N, H, W) bool, True on kept pixels."""
        p = self.patch
        return self.masks.repeat(p, axis=1).repeat(p, axis=2)

    # ------------------------------------------------------------------ writing (version 2)

    def to_bytes(self, codec: Codec | str = "webp", quality: int | None = None, effort: int | None = None) -> bytes:
        """The version-2 file. ``codec`` is a :class:`Codec` or its name (then ``quality`` and
        ``effort`` complete it); the default is lossless WebP.

        Raises:
            ValueError: on a bad codec (see :class:`Codec`), or images wider or taller than
                :data:`MAX_SIDE`.
        """
        codec = codec if isinstance(codec, Codec) else Codec(codec, quality, effort)
        _check_sides(self.image_shape)
        n = len(self)
        per = images_per_tile(self.image_shape)
        tiles = [_encode_tile(self.patches[s : s + per], self.masks[s : s + per], self.patch, self.image_shape, codec) for s in range(0, n, per)]
        sections, blob = _sections(self.indices, self.labels, self.masks)
        digest = hashlib.sha256(blob)
        for t in tiles:
            digest.update(t)
        fields = _header_fields(n, self.image_shape, self.patch, self.grid, int(self.patches.shape[1]) if n else 0, self.classes, self.meta, codec)
        counts = [(min(per, n - s), len(t)) for s, t in zip(range(0, n, per), tiles)]
        return _head(fields, sections, blob, counts, digest.hexdigest()) + b"".join(tiles)

    def save(self, path: str | os.PathLike, codec: Codec | str = "webp", quality: int | None = None, effort: int | None = None) -> int:
        """Write the version-2 file atomically (temporary file, then rename); returns the bytes
        written. Arguments as :meth:`to_bytes`."""
        return write_atomic(path, self.to_bytes(codec, quality, effort))

    # ------------------------------------------------------------------ reading (versions 1, 2)

    @classmethod
    def load(cls, path: str | os.PathLike, max_bytes: int = MAX_DECODED_BYTES) -> "PatchStore":
        """Read and verify a ``.dsqp`` file of version 1 or 2.

        Args:
            path: the file.
            max_bytes: refuse a file whose header announces more kept pixels than this (bytes,
                decoded), before decoding anything.

        Raises:
            ValueError: one line naming the file, on a wrong magic number, an unknown version,
                a truncated file, a checksum mismatch, or a header or body that does not hold
                what the format says.
        """
        path = Path(path)
        return cls.from_bytes(path.read_bytes(), str(path), max_bytes)

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<bytes>", max_bytes: int = MAX_DECODED_BYTES) -> "PatchStore":
        """Read a ``.dsqp`` file held in memory; errors name it ``name``. As :meth:`load`."""
        with _naming(name):
            version, header, payload = _verified(data)
            geometry, arrays, masks = _prepare(version, header, payload, max_bytes)
            if version == 1:
                patches = arrays["patches"].copy()
                codec = dict(_V1_CODEC)
            else:
                patches = np.empty((len(masks), geometry[4], geometry[2], geometry[2], geometry[1][2]), dtype=np.uint8)
                for start, count, part in _iter_tiles(header, payload, masks, geometry[1], geometry[2], geometry[4]):
                    patches[start : start + count] = part
                codec = _codec_record(header)
            return cls._build(header, geometry, arrays, masks, patches, codec)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "PatchReader":
        """Open a ``.dsqp`` file for reading a tile at a time: a :class:`PatchReader`, the file
        verified once (the checksum over the whole body, read in blocks, the header, the
        sections) before it returns. Use it as a context manager; :attr:`PatchReader.index`
        and :meth:`PatchReader.tiles` then need no second check.

        Raises:
            ValueError: one line naming the file, as :meth:`load`.
        """
        return PatchReader(path)

    @classmethod
    def iter_load(cls, path: str | os.PathLike) -> Iterator["PatchStore"]:
        """Read a ``.dsqp`` file a tile at a time: stores of consecutive images (one per tile of
        a version-2 file, all of a version-1 file at once), in memory bounded by one tile and the
        per-image masks and indices, whatever the file's size (what rebuilding a large run for
        export uses). Every check of :meth:`load` is made first (the checksum over the whole
        body, read in blocks, the header, the sections), each tile's as it is decoded; there is
        no ``max_bytes``, as nothing is held beyond a tile. :meth:`open` when the index is
        needed too.

        Raises:
            ValueError: one line naming the file, as :meth:`load`.
        """
        with cls.open(path) as reader:
            yield from reader.tiles()

    @classmethod
    def read_index(cls, path: str | os.PathLike) -> dict:
        """What a ``.dsqp`` file holds, without decoding a pixel: :attr:`PatchReader.index`.
        Checked as :meth:`iter_load` checks.

        Raises:
            ValueError: one line naming the file, as :meth:`load`.
        """
        with cls.open(path) as reader:
            return reader.index

    @classmethod
    def _build(cls, header, geometry, arrays, masks, patches, codec) -> "PatchStore":
        return cls(
            arrays["indices"].astype(np.int64),
            arrays["labels"].astype(np.int64),
            masks,
            patches,
            geometry[2],
            geometry[1],
            [str(x) for x in header["classes"]],
            dict(header.get("meta") or {}),
            codec,
        )


class PatchReader:
    """An open ``.dsqp`` file (:meth:`PatchStore.open`), verified once when opened: its index
    without decoding a pixel, and its images a tile at a time. A context manager; the file stays
    open until :meth:`close`.

    Attributes:
        path: the file.
        index: ``{"indices": (N,) int64, "labels": (N,) int64, "image_shape": (H, W, C),
            "classes": [...]}``, in file order.

    Raises:
        ValueError: one line naming the file, as :meth:`PatchStore.load` (when opened, and
            for a tile that cannot be decoded, as it is reached).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._f = open(self.path, "rb")
        try:
            with _naming(str(self.path)):
                self._version, self._header, self._payload = _verified_file(self._f)
                self._geometry, self._arrays, self._masks = _prepare(self._version, self._header, self._payload, None)
                a = self._arrays
                self.index = {"indices": a["indices"].astype(np.int64), "labels": a["labels"].astype(np.int64), "image_shape": tuple(self._geometry[1]), "classes": [str(x) for x in self._header["classes"]]}
        except BaseException:
            self._f.close()
            raise

    def __len__(self) -> int:
        return len(self._masks)

    def tiles(self) -> Iterator[PatchStore]:
        """Stores of consecutive images, one per tile of a version-2 file (all of a version-1
        file at once), in file order; each tile is checked as it is decoded. Memory: one tile."""
        name, header, geometry, arrays, masks = str(self.path), self._header, self._geometry, self._arrays, self._masks
        if self._version == 1:
            with _naming(name):
                store = PatchStore._build(header, geometry, arrays, masks, arrays["patches"].copy(), dict(_V1_CODEC))
            yield store
            return
        codec = _codec_record(header)
        tiles = _iter_tiles(header, self._payload, masks, geometry[1], geometry[2], geometry[4])
        while True:
            with _naming(name):
                item = next(tiles, None)
                if item is None:
                    return
                start, count, part = item
                part_arrays = {key: arrays[key][start : start + count] for key in ("indices", "labels")}
                store = PatchStore._build({**header, "n": count}, geometry, part_arrays, masks[start : start + count], part, codec)
            yield store

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "PatchReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def _naming(name: str):
    """Turn any error of a malformed file into one ``ValueError`` line that names it."""
    try:
        yield
    except _Malformed as exc:
        raise ValueError(f"{name}: {exc}") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, OSError, SyntaxError, zlib.error, struct.error) as exc:
        text = str(exc).splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{name}: malformed kept-patch file ({type(exc).__name__}{': ' + text if text else ''})") from None


def _fixed_header(data: bytes, total: int) -> tuple[int, int]:
    """(version, header length) from the first bytes of a file of ``total`` bytes."""
    if total < 4 + _HEAD.size:
        raise _Malformed("truncated or not a dsquant kept-patch file (shorter than its fixed header)")
    if data[:4] != MAGIC:
        raise _Malformed("not a dsquant kept-patch file (bad magic)")
    version, hlen = _HEAD.unpack_from(data, 4)
    if version not in READABLE_VERSIONS:
        raise _Malformed(f"format version {version}, this dsquant reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    if 4 + _HEAD.size + hlen > total:
        raise _Malformed(f"truncated (the header announces {hlen} bytes, the file holds {total - 4 - _HEAD.size} after the fixed header)")
    return version, hlen


def _json_header(raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _Malformed("corrupt header") from None
    if not isinstance(header, dict):
        raise _Malformed("corrupt header (not a JSON object)")
    return header


def _verified(data: bytes):
    """(version, header, body) of a file held in memory, its checksum verified."""
    version, hlen = _fixed_header(data, len(data))
    start = 4 + _HEAD.size
    header = _json_header(data[start : start + hlen])
    payload = memoryview(data)[start + hlen :]
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise _Malformed("checksum mismatch (the file is damaged, truncated or was changed)")
    return version, header, payload


class _FileBody:
    """The body of an open file, sliced by reading (``body[a:b]`` is bytes)."""

    def __init__(self, f, start: int, size: int) -> None:
        self.f, self.start, self.size = f, start, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, span: slice) -> bytes:
        self.f.seek(self.start + span.start)
        return self.f.read(span.stop - span.start)


def _verified_file(f):
    """(version, header, body) of an open file, its checksum verified by reading the body in
    blocks; the body is read again, a part at a time, as it is used."""
    total = os.fstat(f.fileno()).st_size
    version, hlen = _fixed_header(f.read(4 + _HEAD.size), total)
    header = _json_header(f.read(hlen))
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 22), b""):
        digest.update(block)
    if digest.hexdigest() != header.get("sha256"):
        raise _Malformed("checksum mismatch (the file is damaged, truncated or was changed)")
    start = 4 + _HEAD.size + hlen
    return version, header, _FileBody(f, start, total - start)


def _prepare(version: int, header: dict, payload, max_bytes: int | None):
    """The geometry (n, (H, W, C), patch, (rows, cols), kept), the sections and the masks,
    checked against each other."""
    geometry = _check_geometry(header, max_bytes)
    n, (h, w, c), p, (gh, gw), k = geometry
    want = {"indices": ("<i8", [n]), "labels": ("<i8", [n]), "masks": ("|u1", [n, (gh * gw + 7) // 8])}
    if version == 1:
        want["patches"] = ("|u1", [n, k, p, p, c])
    arrays = _read_sections(header, payload, want, compressed=version == 2)
    masks = np.unpackbits(arrays["masks"], axis=1, bitorder="little", count=gh * gw).astype(bool).reshape(n, gh, gw)
    if n and not np.all(masks.reshape(n, -1).sum(1) == k):
        raise _Malformed(f"masks do not keep {k} patches in every image")
    return geometry, arrays, masks


def _check_sides(image_shape) -> None:
    h, w = image_shape[:2]
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ValueError(f"image_shape: sides above {MAX_SIDE} px cannot be stored (got {h}x{w})")


def _encode_tile(patches: np.ndarray, masks: np.ndarray, patch: int, image_shape, codec: Codec) -> bytes:
    """One tile: the images of ``patches`` (n, k, p, p, C) with ``masks`` (n, rows, cols)
    stacked vertically, dropped patches filled from above, encoded by ``codec``."""
    from PIL import Image

    h, w, c = image_shape
    images = _fill_from_above(_paste(patches, masks, patch, image_shape), masks, patch)
    pixels = images.reshape(len(images) * h, w, c)
    buf = io.BytesIO()
    Image.fromarray(pixels if c == 3 else pixels[..., 0]).save(buf, format=_PILLOW_FORMAT[codec.name], **codec._pillow_options())
    return buf.getvalue()


def _sections(indices: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> tuple[list[dict], bytes]:
    """The zlib-compressed ``indices``, ``labels`` and packed ``masks`` sections (offsets from
    the body's start) and their bytes."""
    n, gh, gw = masks.shape
    packed = np.packbits(masks.reshape(n, gh * gw), axis=1, bitorder="little")
    body, sections = io.BytesIO(), []
    for name, arr in (("indices", np.asarray(indices).astype("<i8")), ("labels", np.asarray(labels).astype("<i8")), ("masks", packed)):
        raw = np.ascontiguousarray(arr).tobytes()
        blob = zlib.compress(raw, 9)
        sections.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "offset": body.tell(), "nbytes": len(blob), "compression": "zlib", "raw_nbytes": len(raw)})
        body.write(blob)
    return sections, body.getvalue()


def _header_fields(n, image_shape, patch, grid, k, classes, meta, codec: Codec) -> dict:
    return {
        "n": int(n),
        "image_shape": [int(v) for v in image_shape],
        "patch": int(patch),
        "grid": [int(v) for v in grid],
        "kept_per_image": int(k),
        "classes": list(classes),
        "meta": dict(meta or {}),
        "codec": {**codec.record(), "fill": "from above", "layout": "images stacked vertically"},
    }


def _head(fields: dict, sections: list[dict], blob: bytes, tiles: list[tuple[int, int]], sha256: str) -> bytes:
    """The file up to its tiles: MAGIC, version, header, then the sections ``blob``;
    ``tiles`` are (images, bytes) of the tiles that follow, in order."""
    entries, off = [], len(blob)
    for count, size in tiles:
        entries.append({"offset": off, "nbytes": int(size), "count": int(count)})
        off += size
    head = json.dumps({**fields, "sections": sections, "tiles": entries, "sha256": sha256}).encode("utf-8")
    return MAGIC + _HEAD.pack(VERSION, len(head)) + head + blob


class PatchStoreWriter:
    """Write a version-2 kept-patch file a batch of images at a time, in memory bounded by one
    tile (:func:`images_per_tile` images) whatever the number of images: what pixel quantization
    of a streamed dataset uses (:func:`dsquant.pixels.quantize_streamed`). The file is the one
    :meth:`PatchStore.to_bytes` gives for the same images, byte for byte.

    The tiles go to a temporary file beside ``path`` as they fill; :meth:`close` writes the
    header and the sections before them into another temporary file and renames it to
    ``path`` (nothing half-written is ever at ``path``); :meth:`abort` (or leaving a ``with``
    block by an exception) removes the temporary files.

    Args:
        path: the ``.dsqp`` file to write.
        image_shape: (H, W, C) of every image, C 1 or 3.
        patch: patch size p (it must tile H and W).
        classes, meta: as :class:`PatchStore`.
        codec: a :class:`Codec` (default lossless WebP).
        verify: decode every tile again as it is written and compare its kept pixels (lossless:
            raise if they differ; lossy: their PSNR is :attr:`psnr`).

    Raises:
        ValueError: on a bad shape, patch or codec, or (in :meth:`add`) masks that do not match
            the images or keep another number of patches than the first image.
    """

    def __init__(self, path: str | os.PathLike, image_shape: tuple[int, int, int], patch: int, classes: list[str], meta: dict | None = None, codec: Codec | str = "webp", verify: bool = True) -> None:
        import tempfile

        self.path = Path(path)
        self.image_shape = tuple(int(v) for v in image_shape)
        if len(self.image_shape) != 3 or self.image_shape[2] not in (1, 3):
            raise ValueError(f"image_shape: expected (H, W, 1 or 3), got {image_shape!r}")
        _check_sides(self.image_shape)
        self.grid = patch_grid(self.image_shape[:2], patch)
        self.patch, self.classes, self.meta = int(patch), list(classes), dict(meta or {})
        self.codec = codec if isinstance(codec, Codec) else Codec(codec)
        self.verify = verify
        self.per_tile = images_per_tile(self.image_shape)
        self.k: int | None = None
        self._indices: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (kept patches, masks) not yet in a tile
        self._n_pending = 0
        self._tiles: list[tuple[int, int]] = []  # (images, bytes)
        self._sq_error, self._n_values = 0.0, 0
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.tiles.", dir=self.path.parent)
        self._body_path = Path(name)
        self._body = os.fdopen(fd, "wb")
        self.closed = False

    def __len__(self) -> int:
        return sum(len(i) for i in self._indices)

    def __enter__(self) -> "PatchStoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self.closed:
            self.close()

    def add(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, masks: np.ndarray) -> None:
        """Append (n, H, W, C) uint8 ``images`` with their (n,) labels, (n,) dataset indices and
        (n, rows, cols) bool keep masks."""
        images = np.asarray(images)
        if images.ndim == 3 and self.image_shape[2] == 1:
            images = images[..., None]
        n = len(images)
        if images.dtype != np.uint8 or images.shape[1:] != self.image_shape:
            raise ValueError(f"images: expected (n, {', '.join(map(str, self.image_shape))}) uint8, got {images.shape} {images.dtype}")
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != (n, *self.grid) or len(labels) != n or len(indices) != n:
            raise ValueError(f"masks, labels, indices: expected ({n}, {self.grid[0]}, {self.grid[1]}), ({n},), ({n},); got {masks.shape}, {len(labels)}, {len(indices)}")
        if n == 0:
            return
        counts = masks.reshape(n, -1).sum(1)
        if self.k is None:
            self.k = int(counts[0])
        if not np.all(counts == self.k):
            raise ValueError(f"masks: every image must keep the same number of patches ({self.k})")
        self._indices.append(np.asarray(indices, np.int64))
        self._labels.append(np.asarray(labels, np.int64))
        self._masks.append(masks)
        self._pending.append((_cut(images, masks, self.patch, self.k), masks))
        self._n_pending += n
        while self._n_pending >= self.per_tile:
            self._flush(self.per_tile)

    def _flush(self, count: int) -> None:
        patches = np.concatenate([p for p, _ in self._pending])
        masks = np.concatenate([m for _, m in self._pending])
        tile = _encode_tile(patches[:count], masks[:count], self.patch, self.image_shape, self.codec)
        if self.verify:
            self._check(tile, patches[:count], masks[:count])
        self._body.write(tile)
        self._tiles.append((count, len(tile)))
        self._pending = [(patches[count:], masks[count:])] if count < len(masks) else []
        self._n_pending = len(masks) - count

    def _check(self, tile: bytes, patches: np.ndarray, masks: np.ndarray) -> None:
        from PIL import Image

        h, w, c = self.image_shape
        with Image.open(io.BytesIO(tile), formats=[_PILLOW_FORMAT[self.codec.name]]) as im:
            back = np.asarray(im.convert("RGB" if c == 3 else "L")).reshape(len(masks), h, w, c)
        diff = _cut(back, masks, self.patch, int(self.k)).astype(np.float64) - patches
        if self.codec.lossless and diff.any():
            raise RuntimeError(f"{self.path.name}: a lossless tile does not read back bit for bit (a bug; please report it)")
        self._sq_error += float(np.sum(diff * diff))
        self._n_values += diff.size

    @property
    def psnr(self) -> float:
        """PSNR (dB, peak 255) of the kept pixels as written against the input (inf when exact;
        needs ``verify``; complete after :meth:`close`, which writes the last tile)."""
        if not self._n_values or self._sq_error == 0:
            return float("inf")
        return float(10 * np.log10(255.0**2 / (self._sq_error / self._n_values)))

    def close(self) -> int:
        """Write the file (temporary file, then rename); returns its size in bytes."""
        if self.closed:
            raise ValueError(f"{self.path}: the writer is closed")
        try:
            if self._n_pending:
                self._flush(self._n_pending)
            self._body.close()
            n = len(self)
            masks = np.concatenate(self._masks) if self._masks else np.zeros((0, *self.grid), bool)
            sections, blob = _sections(np.concatenate(self._indices) if n else np.zeros(0, np.int64), np.concatenate(self._labels) if n else np.zeros(0, np.int64), masks)
            digest = hashlib.sha256(blob)
            with open(self._body_path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    digest.update(chunk)
            fields = _header_fields(n, self.image_shape, self.patch, self.grid, self.k or 0, self.classes, self.meta, self.codec)
            head = _head(fields, sections, blob, self._tiles, digest.hexdigest())
            import shutil

            with atomic_file(self.path) as out, open(self._body_path, "rb") as body:
                out.write(head)
                shutil.copyfileobj(body, out, 1 << 22)
                size = out.tell()
        except BaseException:
            self.abort()
            raise
        self._body_path.unlink(missing_ok=True)
        self.closed = True
        return size

    def abort(self) -> None:
        """Remove the temporary tile file; ``path`` is left as it was."""
        if not self._body.closed:
            self._body.close()
        self._body_path.unlink(missing_ok=True)
        self.closed = True


def _int(header: dict, key: str, lo: int, hi: int | None = None) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise _Malformed(f"header field {key!r} is {value!r}, expected an integer in [{lo}, {hi if hi is not None else 'inf'}]")
    return value


def _check_geometry(header: dict, max_bytes: int):
    """n, (H, W, C), patch, (rows, cols), kept per image, checked against each other and the
    caps before any allocation."""
    n = _int(header, "n", 0)
    shape = header.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)):
        raise _Malformed(f"header field 'image_shape' is {shape!r}, expected [H, W, C]")
    h, w, c = shape
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE and c in (1, 3)):
        raise _Malformed(f"image shape {shape} outside the caps (sides 1..{MAX_SIDE} px, 1 or 3 channels)")
    p = _int(header, "patch", 1, max(h, w))
    if h % p or w % p:
        raise _Malformed(f"{p} px patches do not tile {h}x{w} images")
    gh, gw = h // p, w // p
    if header.get("grid") != [gh, gw]:
        raise _Malformed(f"header field 'grid' is {header.get('grid')!r}, expected {[gh, gw]} for {h}x{w} images and {p} px patches")
    k = _int(header, "kept_per_image", 0, gh * gw)
    if max_bytes is not None and n * k * p * p * c > max_bytes:
        raise _Malformed(f"the header announces {n} images of {k} kept {p}x{p}x{c} patches ({n * k * p * p * c:,} bytes), above the cap of {max_bytes:,} (PatchStore.load(max_bytes=...))")
    if not isinstance(header.get("classes"), list) or not isinstance(header.get("meta", {}), dict):
        raise _Malformed("header fields 'classes' (a list) or 'meta' (an object) malformed")
    return n, (h, w, c), p, (gh, gw), k


def _span(entry: dict, size: int, what: str) -> tuple[int, int]:
    off, nbytes = entry.get("offset"), entry.get("nbytes")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (off, nbytes)) or off < 0 or nbytes < 0 or off + nbytes > size:
        raise _Malformed(f"{what} lies outside the body (offset {off!r}, {nbytes!r} bytes, body of {size})")
    return off, nbytes


def _read_sections(header: dict, payload: memoryview, want: dict, compressed: bool) -> dict:
    """The named sections as arrays of the expected dtype and shape (decompressed, the raw size
    checked against the shape before decompressing)."""
    sections = header.get("sections")
    if not isinstance(sections, list) or not all(isinstance(s, dict) for s in sections):
        raise _Malformed("header field 'sections' malformed")
    by_name = {s.get("name"): s for s in sections}
    arrays = {}
    for name, (dtype, shape) in want.items():
        s = by_name.get(name)
        if s is None:
            raise _Malformed(f"section {name!r} missing")
        if s.get("dtype") != dtype or s.get("shape") != shape:
            raise _Malformed(f"section {name!r} is {s.get('dtype')} {s.get('shape')}, expected {dtype} {shape}")
        raw_n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        off, nbytes = _span(s, len(payload), f"section {name!r}")
        blob = payload[off : off + nbytes]
        if compressed:
            if s.get("compression") != "zlib" or s.get("raw_nbytes") != raw_n:
                raise _Malformed(f"section {name!r}: expected zlib holding {raw_n} bytes")
            d = zlib.decompressobj()
            raw = d.decompress(blob, raw_n)
            if len(raw) != raw_n or d.unconsumed_tail or not d.eof:
                raise _Malformed(f"section {name!r} does not decompress to {raw_n} bytes")
        else:
            if nbytes != raw_n:
                raise _Malformed(f"section {name!r} holds {nbytes} bytes, its shape needs {raw_n}")
            raw = blob
        arrays[name] = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
    return arrays


def _codec_record(header: dict) -> dict:
    rec = header.get("codec")
    return {"version": 2, **{key: rec.get(key) for key in ("name", "lossless", "quality", "effort") if key in rec}}


def _iter_tiles(header: dict, payload, masks: np.ndarray, image_shape, p: int, k: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first image, images, (images, k, p, p, C) kept patches) of every tile of a version-2
    body, in order; the tile list is checked whole before the first is decoded."""
    from PIL import Image

    n = len(masks)
    h, w, c = image_shape
    rec = header.get("codec")
    if not isinstance(rec, dict) or rec.get("name") not in _PILLOW_FORMAT:
        raise _Malformed(f"unknown codec {rec!r}")
    fmt = _PILLOW_FORMAT[rec["name"]]
    tiles = header.get("tiles")
    if not isinstance(tiles, list) or not all(isinstance(t, dict) for t in tiles):
        raise _Malformed("header field 'tiles' malformed")
    counts = [t.get("count") for t in tiles]
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in counts) or sum(counts) != n:
        raise _Malformed(f"tiles hold {counts!r} images, expected positive counts summing to {n}")
    limit = max(MAX_TILE_PIXELS, h * w)
    spans = []
    for i, t in enumerate(tiles):
        if t["count"] * h * w > limit:
            raise _Malformed(f"tile {i} of {t['count']} images is above the cap of {MAX_TILE_PIXELS} pixels")
        spans.append(_span(t, len(payload), f"tile {i}"))
    start = 0
    for i, (t, (off, nbytes)) in enumerate(zip(tiles, spans)):
        count = t["count"]
        try:
            with Image.open(io.BytesIO(payload[off : off + nbytes]), formats=[fmt]) as im:
                if im.size != (w, count * h):
                    raise _Malformed(f"tile {i} is a {im.size[0]}x{im.size[1]} image, the header says {w}x{count * h}")
                pixels = np.asarray(im.convert("RGB" if c == 3 else "L"))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            if isinstance(exc, _Malformed):
                raise
            raise _Malformed(f"tile {i} cannot be decoded as {fmt} ({str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None
        yield start, count, _cut(pixels.reshape(count, h, w, c), masks[start : start + count], p, k)
        start += count
