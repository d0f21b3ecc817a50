"""The kept-patch file format: only the patches that survive dropping are stored.

``*.dsqp`` (version 1), little-endian::

    b"DSQP" | uint16 version | uint32 header length | header (UTF-8 JSON) | body

The header describes the images (count, size, channels, patch size, grid, patches kept per
image, class names, where they came from) and the body's sections, and holds the SHA-256 of the
body, checked on every read. Sections: ``indices`` (int64, dataset index of each image),
``labels`` (int64), ``masks`` (one bit per patch, row-major, packed), ``patches`` (uint8 kept
patches of every image in row-major patch order, each ``patch x patch x C``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .patches import patch_grid

__all__ = ["PatchStore", "MAGIC", "VERSION"]

MAGIC = b"DSQP"
VERSION = 1


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
    """

    indices: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    patches: np.ndarray
    patch: int
    image_shape: tuple[int, int, int]
    classes: list[str]
    meta: dict = field(default_factory=dict)

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
        tiles = images.reshape(n, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, gh * gw, patch, patch, c)
        kept = tiles[masks.reshape(n, -1)].reshape(n, k, patch, patch, c)
        return cls(np.asarray(indices, np.int64), np.asarray(labels, np.int64), masks.astype(bool), np.ascontiguousarray(kept), patch, (h, w, c), list(classes), dict(meta or {}))

    @property
    def grid(self) -> tuple[int, int]:
        return self.masks.shape[1], self.masks.shape[2]

    def with_holes(self) -> np.ndarray:
        """(N, H, W, C) uint8 images with the kept patches in place and zeros elsewhere."""
        n = len(self)
        h, w, c = self.image_shape
        gh, gw = self.grid
        p = self.patch
        tiles = np.zeros((n, gh * gw, p, p, c), dtype=np.uint8)
        tiles[self.masks.reshape(n, -1)] = self.patches.reshape(-1, p, p, c)
        return tiles.reshape(n, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)

    def pixel_masks(self) -> np.ndarray:
        """(N, H, W) bool, True on kept pixels."""
        p = self.patch
        return self.masks.repeat(p, axis=1).repeat(p, axis=2)

    def _sections(self) -> list[tuple[str, np.ndarray]]:
        n = len(self)
        packed = np.packbits(self.masks.reshape(n, -1), axis=1, bitorder="little")
        return [
            ("indices", self.indices.astype("<i8")),
            ("labels", self.labels.astype("<i8")),
            ("masks", packed),
            ("patches", self.patches.astype(np.uint8)),
        ]

    def to_bytes(self) -> bytes:
        body = io.BytesIO()
        sections = []
        for name, arr in self._sections():
            arr = np.ascontiguousarray(arr)
            sections.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "offset": body.tell(), "nbytes": arr.nbytes})
            body.write(arr.tobytes())
        payload = body.getvalue()
        header = {
            "n": len(self),
            "image_shape": list(self.image_shape),
            "patch": self.patch,
            "grid": list(self.grid),
            "kept_per_image": int(self.patches.shape[1]) if len(self) else 0,
            "classes": self.classes,
            "meta": self.meta,
            "sections": sections,
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
        head = json.dumps(header).encode("utf-8")
        return MAGIC + struct.pack("<HI", VERSION, len(head)) + head + payload

    def save(self, path: str | os.PathLike) -> int:
        """Write atomically (temporary file, then rename); returns the bytes written."""
        path = Path(path)
        data = self.to_bytes()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return len(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PatchStore":
        """Read and verify a ``.dsqp`` file.

        Raises:
            ValueError: on a wrong magic number, an unknown version, a truncated file or a
                checksum mismatch (the message names the file).
        """
        path = Path(path)
        data = path.read_bytes()
        if data[:4] != MAGIC:
            raise ValueError(f"{path}: not a dsquant kept-patch file (bad magic)")
        if len(data) < 10:
            raise ValueError(f"{path}: truncated header")
        version, hlen = struct.unpack("<HI", data[4:10])
        if version != VERSION:
            raise ValueError(f"{path}: format version {version}, this dsquant reads version {VERSION}")
        try:
            header = json.loads(data[10 : 10 + hlen].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path}: corrupt header") from None
        payload = data[10 + hlen :]
        if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
            raise ValueError(f"{path}: checksum mismatch (the file is damaged or was changed)")
        arrays = {}
        for s in header["sections"]:
            raw = payload[s["offset"] : s["offset"] + s["nbytes"]]
            arrays[s["name"]] = np.frombuffer(raw, dtype=np.dtype(s["dtype"])).reshape(s["shape"])
        n = header["n"]
        gh, gw = header["grid"]
        masks = np.unpackbits(arrays["masks"], axis=1, bitorder="little", count=gh * gw).astype(bool).reshape(n, gh, gw)
        return cls(
            arrays["indices"].astype(np.int64),
            arrays["labels"].astype(np.int64),
            masks,
            arrays["patches"].copy(),
            int(header["patch"]),
            tuple(header["image_shape"]),
            list(header["classes"]),
            header.get("meta", {}),
        )
