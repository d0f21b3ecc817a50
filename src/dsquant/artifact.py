"""The output directory of a compression run, written atomically, and ways to read it back.

Layout::

    OUT/
      indices.npy     sorted int64 indices into the original dataset (its reader's order)
      bins.npz        bin_0 .. bin_{K-1}: int64 indices of every bin
      manifest.json   method, parameters, seed, dataset fingerprint, counts, versions, timings
      export/         optional: the subset as an ImageFolder (PNG) or export.npz

Everything is written into a temporary sibling directory and renamed into place at the end, so
an interrupted run leaves no ``OUT`` at all (and an existing ``OUT`` is only replaced with
``overwrite=True``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["CompressedOutput", "atomic_dir", "read_output", "write_output", "export_subset", "file_sha256"]


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_dir(out: str | os.PathLike, fill: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Create directory ``out`` by calling ``fill(tmp)`` on a temporary sibling, then renaming.

    Raises:
        FileExistsError: if ``out`` exists and ``overwrite`` is False.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fill(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "previous")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_subset(dataset, indices: np.ndarray, dest: Path, fmt: str) -> dict:
    """Write the selected samples of ``dataset`` to ``dest``.

    ``fmt="imagefolder"``: ``dest/export/<class>/<index:07d>.png`` (lossless PNG of the image);
    ``fmt="npz"``: ``dest/export.npz`` with ``images``, ``labels``, ``indices``, ``classes``
    (or ``features`` for a feature dataset).

    Returns:
        A manifest record: format, path, files and bytes written.

    Raises:
        ValueError: on an unknown format, or ``imagefolder`` for a dataset without images.
    """
    from PIL import Image

    indices = np.asarray(indices, dtype=np.int64)
    if fmt == "npz":
        path = dest / "export.npz"
        arrays = {"indices": indices}
        if getattr(dataset, "kind", "") == "images":
            arrays["images"] = dataset.images[indices]
        elif getattr(dataset, "kind", "") == "features":
            arrays["features"] = np.asarray(dataset.features[indices])
        else:
            raise ValueError(f"export: format 'npz' is not available for {getattr(dataset, 'kind', '?')} data")
        if getattr(dataset, "labels", None) is not None:
            arrays["labels"] = dataset.labels[indices]
            arrays["classes"] = np.array(dataset.classes)
        np.savez(path, **arrays)
        return {"format": fmt, "path": path.name, "files": 1, "bytes": path.stat().st_size}
    if fmt == "imagefolder":
        if getattr(dataset, "kind", "") != "images":
            raise ValueError("export: format 'imagefolder' needs an image dataset")
        root = dest / "export"
        total = 0
        for i in indices:
            cls = dataset.classes[int(dataset.labels[i])]
            folder = root / _safe_name(cls)
            folder.mkdir(parents=True, exist_ok=True)
            img = dataset.images[i]
            pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            path = folder / f"{int(i):07d}.png"
            pil.save(path, format="PNG")
            total += path.stat().st_size
        return {"format": fmt, "path": "export", "files": len(indices), "bytes": total}
    raise ValueError(f"export: expected 'imagefolder' or 'npz', got {fmt!r}")


def _safe_name(name: str) -> str:
    """A class name usable as a folder name (no separators, no '..')."""
    cleaned = "".join(c if (c.isalnum() or c in "-_. ") else "_" for c in name).strip(" .")
    return cleaned or "_"


def write_output(
    out: str | os.PathLike,
    indices: np.ndarray,
    bins: list[np.ndarray],
    manifest: dict,
    overwrite: bool = False,
    export: tuple | None = None,
    records=None,
    extra: dict | None = None,
) -> Path:
    """Write ``indices.npy``, ``bins.npz``, ``manifest.json`` (and an export) atomically.

    ``export`` is ``(dataset, format)``; ``records`` a text dataset whose selected records are
    written to ``subset.jsonl``; ``extra`` maps more file names to functions that write them
    (given the path). The manifest gains ``files`` (SHA-256 of each file) and ``export``
    records.
    """

    def fill(tmp: Path) -> None:
        np.save(tmp / "indices.npy", np.asarray(indices, dtype=np.int64))
        np.savez(tmp / "bins.npz", **{f"bin_{k}": np.asarray(b, dtype=np.int64) for k, b in enumerate(bins)})
        names = ["indices.npy", "bins.npz"]
        if records is not None:
            records.write_subset(indices, tmp / "subset.jsonl")
            names.append("subset.jsonl")
        for name, write in (extra or {}).items():
            write(tmp / name)
            names.append(name)
        if export is not None:
            manifest["export"] = export_subset(export[0], indices, tmp, export[1])
        manifest["files"] = {name: file_sha256(tmp / name) for name in names}
        with open(tmp / "manifest.json", "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=False)
            f.write("\n")

    return atomic_dir(out, fill, overwrite)


@dataclass
class CompressedOutput:
    """A compression run read back from its directory."""

    path: Path
    indices: np.ndarray
    bins: list[np.ndarray]
    manifest: dict

    def __len__(self) -> int:
        return len(self.indices)


def read_output(path: str | os.PathLike) -> CompressedOutput:
    """Read an output directory written by :func:`write_output`.

    Raises:
        FileNotFoundError: if a file is missing.
        ValueError: if a file is corrupt or does not match its checksum in the manifest.
    """
    path = Path(path)
    if not (path / "manifest.json").exists():
        raise FileNotFoundError(f"{path}: not a dsquant output directory (no manifest.json)")
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path / 'manifest.json'}: not valid JSON ({exc})") from None
    for name, digest in manifest.get("files", {}).items():
        if not (path / name).exists():
            raise FileNotFoundError(f"{path / name}: missing")
        if file_sha256(path / name) != digest:
            raise ValueError(f"{path / name}: checksum does not match the manifest (file changed or damaged)")
    indices = np.load(path / "indices.npy", allow_pickle=False)
    with np.load(path / "bins.npz", allow_pickle=False) as z:
        bins = [z[f"bin_{k}"] for k in range(len(z.files))]
    return CompressedOutput(path, indices, bins, manifest)
