"""The output directory of a compression run, written atomically and safely, and ways to read
it back.

Layout::

    OUT/
      indices.npy     sorted int64 indices into the original dataset (its reader's order)
      bins.npz        bin_0 .. bin_{K-1}: int64 indices of every bin
      manifest.json   method, parameters, seed, dataset fingerprint, counts, versions, timings
      export/         optional: the subset as an ImageFolder (PNG) or export.npz

How an output is written (:class:`AtomicOutput`, ``docs/reliability.md``):

* Everything, the manifest included, is written into a temporary sibling ``.OUT.tmp-*`` and
  renamed into place at the end, so an interrupted run leaves no ``OUT`` at all.
* An existing ``OUT`` is replaced only with ``overwrite=True``, and only when it is recognisably
  dsquant's own output (a dsquant ``manifest.json``); never a file, a symbolic link, a directory
  that holds an input of the run or the working directory. The replacement is one atomic
  exchange (``renameat2(RENAME_EXCHANGE)`` on Linux), so a kill at any moment leaves either the
  old output or the new one.
* One run at a time writes ``OUT``: a lock file ``.OUT.lock`` beside it is held from before the
  heavy work starts until the rename. Under the lock, leftovers of killed runs (``.OUT.tmp-*``,
  ``.OUT.old-*``) are removed, or the previous output is put back when a kill left none.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no lock
    fcntl = None

__all__ = [
    "AtomicOutput",
    "CompressedOutput",
    "EXPORT_RECORD",
    "Run",
    "atomic_dir",
    "write_atomic",
    "class_folders",
    "export_subset",
    "file_sha256",
    "fill_output",
    "is_export_dir",
    "is_export_npz",
    "is_json_file",
    "is_run_dir",
    "read_output",
    "write_images",
]

MANIFEST_MAX_BYTES = 64 << 20
"""A manifest larger than this is not read (a hostile or damaged one could be any size)."""
EXPORT_RECORD = "dsquant-export.json"
"""The file in an exported ImageFolder that maps its folders to the classes and labels."""
_EXPORT_NPZ_MEMBERS = {"indices.npy", "images.npy", "labels.npy", "classes.npy", "features.npy"}
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """A binary file to write ``path`` through: a temporary file beside it, flushed to disk and
    renamed into place when the block ends; an exception (or an interruption) in the block
    leaves the old file or none, and no temporary file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike, data: bytes) -> int:
    """Write ``data`` to ``path`` through :func:`atomic_file`; returns the bytes written."""
    with atomic_file(path) as f:
        f.write(data)
    return len(data)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path`` (the manifest's ``files`` digests): the cache's
    :func:`dsquant.cache.file_digest`."""
    from .cache import file_digest

    return file_digest(path)


# ----------------------------------------------------------------------------- recognisers


def _read_small_json(path: Path, max_bytes: int = MANIFEST_MAX_BYTES):
    """The JSON in regular file ``path`` (never following a link), or raise ValueError."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: not a regular file")
    if st.st_size > max_bytes:
        raise ValueError(f"{path}: {st.st_size:,} bytes; a dsquant manifest is at most {max_bytes:,}")
    with open(path, "rb") as f:
        blob = f.read(max_bytes + 1)
    try:
        return json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def is_run_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory holding a dsquant ``manifest.json`` (a compression run)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        m = _read_small_json(path / "manifest.json")
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and "dsquant_version" in m and isinstance(m.get("files"), dict)


def is_json_file(path: str | os.PathLike, keys: Iterable[str]) -> bool:
    """True when ``path`` is a regular file (not a link) holding a JSON object with ``keys``
    (for example an evaluation result: ``preset``, ``runs``, ``summary``)."""
    try:
        m = _read_small_json(Path(path))
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and all(k in m for k in keys)


def is_export_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is an ImageFolder that ``dsquant export`` wrote (it holds
    :data:`EXPORT_RECORD`)."""
    path = Path(path)
    return not path.is_symlink() and path.is_dir() and is_json_file(path / EXPORT_RECORD, ("dsquant_export",))


def is_export_npz(path: str | os.PathLike) -> bool:
    """True when ``path`` is a regular ``.npz`` file with the arrays an export writes."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return "indices.npy" in names and names <= _EXPORT_NPZ_MEMBERS


# ----------------------------------------------------------------------------- atomic writes

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False when the system or the file system lacks it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    """Remove a leftover of dsquant's own (a directory tree or a file; links are unlinked)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


class _Lock:
    """An exclusive, non-blocking ``flock`` on a lock file, removed on release."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, what: Path) -> None:
        if fcntl is None:  # pragma: no cover
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FileExistsError(
                    f"{what}: another dsquant run is writing it now (lock {self.path.name}); "
                    f"wait for it to finish or choose another output"
                ) from None
            # the holder before us may have removed the file after we opened it: retry then
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None


class AtomicOutput:
    """Write the directory (or, with ``is_file=True``, the file) ``out`` safely and atomically.

    ``open()`` checks ``out`` and takes its lock *before* the caller's heavy work, then gives a
    temporary sibling ``tmp`` to fill; ``commit()`` renames it into place; ``abort()`` (or leaving
    a ``with`` block without ``commit()``) removes it. Use as::

        with AtomicOutput(out, overwrite=False, protect=[data]) as w:
            ...                      # long work; fill w.tmp
            w.commit()

    Args:
        out: the directory (or file) to create.
        overwrite: replace an existing ``out``, if ``recognise(out)`` says it is dsquant's own.
        protect: input paths of the run: ``out`` may neither contain one of them nor lie inside
            an input directory (writing there would change the input).
        keep: more paths ``out`` may not contain (a run directory an export reads from, the
            cache); ``out`` may lie inside them. The working directory is always kept.
        recognise: tells whether an existing ``out`` may be replaced (default: a compression run,
            :func:`is_run_dir`).
        what: how ``out`` is named in messages.
        is_file: ``out`` is one file (``tmp`` is a file path to write) instead of a directory.

    Raises (from ``open``):
        FileExistsError: ``out`` exists without ``overwrite``, is a file where a directory goes
            (or a directory where a file goes), or another run holds its lock.
        ValueError: ``out`` is a symbolic link, contains an input or the working directory, lies
            inside an input directory, or is not recognisably dsquant's own output.
        OSError: ``out``'s parent cannot be created or written (before any work is done).
    """

    def __init__(
        self,
        out: str | os.PathLike,
        *,
        overwrite: bool = False,
        protect: Iterable[str | os.PathLike] = (),
        keep: Iterable[str | os.PathLike | None] = (),
        recognise: Callable[[Path], bool] = is_run_dir,
        what: str = "a dsquant output directory",
        is_file: bool = False,
    ) -> None:
        self.out = Path(out)
        self.overwrite = bool(overwrite)
        self.protect = [Path(p) for p in protect if p is not None and str(p) not in ("", "digits")]
        self.keep = [Path(p) for p in keep if p is not None and str(p) != ""]
        self.recognise = recognise
        self.what = what
        self.is_file = is_file
        self.tmp: Path | None = None
        self._lock = _Lock(self.out.parent / f".{self.out.name}.lock")
        self.recovered: Path | None = None

    # -- checks
    def _check(self) -> None:
        out = self.out
        if not out.name or out.name in (".", ".."):
            raise ValueError(f"{out}: name a new directory for the output, not {str(out)!r}")
        if out.is_symlink():
            raise ValueError(f"{out}: is a symbolic link; dsquant writes only to a path it creates (choose another output)")
        real = out.resolve()
        for p in self.protect:
            rp = p.resolve()
            if _contains(real, rp):
                raise ValueError(f"{out}: holds the input {p}; dsquant never writes over its input (choose another output)")
            if rp.is_dir() and rp in real.parents:
                raise ValueError(f"{out}: lies inside the input directory {p}; writing there would change the dataset (choose another output)")
        for p in self.keep:
            if _contains(real, p.resolve()):
                raise ValueError(f"{out}: holds {p}, which this run reads or keeps; dsquant never writes over it (choose another output)")
        if not os.path.lexists(out):
            return
        if self.is_file and not out.is_file():
            raise FileExistsError(f"{out}: exists and is not a file; dsquant does not replace it (choose another output)")
        if not self.is_file and not out.is_dir():
            raise FileExistsError(f"{out}: is a file, not a directory; dsquant never replaces files (choose another output)")
        if not self.overwrite:
            raise FileExistsError(f"{out}: already exists; choose another output or pass --overwrite")
        if _contains(real, Path.cwd().resolve()):
            raise ValueError(f"{out}: holds the working directory; --overwrite never replaces it (choose another output)")
        if not self.recognise(out):
            raise ValueError(
                f"{out}: is not {self.what} written by dsquant, so --overwrite does not replace it "
                f"(remove it yourself or choose another output)"
            )

    def _leftovers(self) -> list[Path]:
        prefixes = (f".{self.out.name}.tmp-", f".{self.out.name}.old-")
        try:
            return sorted(p for p in self.out.parent.iterdir() if p.name.startswith(prefixes))
        except OSError:
            return []

    def _recover(self) -> None:
        """Under the lock no other run writes ``out``: what is left of earlier runs is stale."""
        for p in self._leftovers():
            if p.name.startswith(f".{self.out.name}.old-") and not os.path.lexists(self.out):
                # a run killed while replacing: put the previous output back
                for cand in (p, p / "previous"):  # ours, or an earlier dsquant's
                    if not cand.is_symlink() and self.recognise(cand):
                        os.rename(cand, self.out)
                        self.recovered = self.out
                        print(f"dsquant: restored {self.out} from an interrupted run", file=sys.stderr)
                        break
            if os.path.lexists(p):
                _remove(p)

    # -- life cycle
    def open(self) -> "AtomicOutput":
        self._check()  # before anything is created
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._lock.acquire(self.out)
        try:
            self._recover()
            self._check()
            prefix = f".{self.out.name}.tmp-{os.getpid()}-"
            if self.is_file:
                fd, name = tempfile.mkstemp(prefix=prefix, dir=self.out.parent)
                os.close(fd)
                self.tmp = Path(name)
            else:
                self.tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=self.out.parent))
        except BaseException:
            self._lock.release()
            raise
        return self

    def commit(self) -> Path:
        """Move the filled ``tmp`` into place (atomically replacing a checked old output)."""
        if self.tmp is None:
            raise RuntimeError("AtomicOutput.commit() before open()")
        tmp, out = self.tmp, self.out
        try:
            os.chmod(tmp, (0o666 if self.is_file else 0o777) & ~_umask())  # mkdtemp/mkstemp give 0700/0600
            if os.path.lexists(out):
                self._check()  # still dsquant's own, still allowed
                if not _renameat2(tmp, out, _RENAME_EXCHANGE):
                    old = out.parent / f".{out.name}.old-{os.getpid()}"
                    os.rename(out, old)  # a kill here is recovered by the next run (_recover)
                    os.rename(tmp, out)
                    tmp = old
                _remove(tmp)  # now the previous output
            elif not _renameat2(tmp, out, _RENAME_NOREPLACE):
                os.rename(tmp, out)
            self.tmp = None
        finally:
            self.abort()
        return out

    def abort(self) -> None:
        """Remove ``tmp`` (if not committed) and release the lock."""
        if self.tmp is not None:
            _remove(self.tmp)
            self.tmp = None
        self._lock.release()

    def __enter__(self) -> "AtomicOutput":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.abort()


def atomic_dir(
    out: str | os.PathLike,
    fill: Callable[[Path], None],
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike] = (),
    recognise: Callable[[Path], bool] = is_run_dir,
) -> Path:
    """Create directory ``out`` by calling ``fill(tmp)`` on a temporary sibling, then renaming
    (:class:`AtomicOutput`: the same checks, lock and clean-up).

    Raises:
        FileExistsError, ValueError: as :class:`AtomicOutput`.
    """
    with AtomicOutput(out, overwrite=overwrite, protect=protect, recognise=recognise) as w:
        fill(w.tmp)
        return w.commit()


# ----------------------------------------------------------------------------- exports


def _safe_name(name: str) -> str:
    """A class name usable as a folder name (no separators, no '..')."""
    cleaned = "".join(c if (c.isalnum() or c in "-_. ") else "_" for c in name).strip(" .")
    return cleaned or "_"


def class_folders(classes: list[str]) -> list[str]:
    """One folder name per class, safe on any file system and unique even when names differ
    only in characters that are replaced or in case (``a:b`` and ``a?b`` give ``a_b`` and
    ``a_b-1``). :data:`EXPORT_RECORD` maps them back to the classes."""
    used: set[str] = set()
    out = []
    for label, name in enumerate(classes):
        base = _safe_name(str(name))
        cand, k = base, 0
        while cand.casefold() in used:
            k += 1
            cand = f"{base}-{label}" if k == 1 else f"{base}-{label}-{k}"
        used.add(cand.casefold())
        out.append(cand)
    return out


def write_images(dest: Path, fmt: str, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, classes: list[str]) -> dict:
    """Write images to ``dest``: one ``.npz`` file (``images``, ``labels``, ``indices``,
    ``classes``) for ``fmt="npz"``, or an ImageFolder ``dest/<class folder>/<index:07d>.png``
    with :data:`EXPORT_RECORD` for ``fmt="imagefolder"`` (``dest`` must exist).

    Args:
        images: (M, H, W, C) uint8; labels, indices: (M,) ints; classes: the class names.

    Returns:
        A manifest record: format, files and bytes written.
    """
    if fmt == "npz":
        with open(dest, "wb") as f:
            np.savez(f, images=images, labels=labels, indices=indices, classes=np.array(classes))
        return {"format": fmt, "files": 1, "bytes": dest.stat().st_size}
    if fmt != "imagefolder":
        raise ValueError(f"export: expected 'imagefolder' or 'npz', got {fmt!r}")
    total = write_png_files(dest, class_folders(list(classes)), images, labels, indices)
    write_export_record(dest, list(classes), len(indices))
    return {"format": fmt, "files": int(len(indices)), "bytes": total}


def write_png_files(dest: Path, folders: list[str], images: np.ndarray, labels, indices) -> int:
    """``dest/<folders[label]>/<index:07d>.png`` for every (H, W, C) uint8 image; returns the
    bytes written."""
    from PIL import Image

    total = 0
    for img, lab, idx in zip(images, labels, indices):
        folder = dest / folders[int(lab)]
        folder.mkdir(exist_ok=True)
        path = folder / f"{int(idx):07d}.png"
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path, format="PNG")
        total += path.stat().st_size
    return total


def write_export_record(dest: Path, classes: list[str], n: int) -> None:
    """:data:`EXPORT_RECORD` of an ImageFolder export of ``n`` files."""
    folders = class_folders(list(classes))
    record = {
        "dsquant_export": 1,
        "format": "imagefolder",
        "classes": [{"label": i, "class": c, "folder": f} for i, (c, f) in enumerate(zip(classes, folders))],
        "files": int(n),
    }
    (dest / EXPORT_RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_streamed(dest: Path, fmt: str, dataset, indices: np.ndarray, image_size: int | None = None) -> dict:
    """Write the samples ``indices`` of a streamed dataset, reading only those: for
    ``"imagefolder"`` each sample's stored bytes unchanged (``<class folder>/<index:07d><ext>``,
    its original file extension; nothing is decoded or re-encoded), with :data:`EXPORT_RECORD`
    listing every file's stable id; for ``"npz"`` the images decoded at ``image_size`` (the
    shorter side resized, the centre cropped).

    Raises:
        ValueError: for ``"npz"`` without ``image_size`` (streamed images differ in size).
    """
    if fmt == "npz":
        if image_size is None:
            raise ValueError(f"export: {dataset.source} is streamed and its images differ in size; npz needs --image-size (or export imagefolder, which copies the files)")
        sub = dataset.load(image_size, indices)
        return write_images(dest, fmt, sub.images, sub.labels, indices, dataset.classes)
    folders = class_folders(list(dataset.classes))
    total, files = 0, []
    for idx in indices:
        i = int(idx)
        folder = dest / folders[int(dataset.labels[i])]
        folder.mkdir(exist_ok=True)
        data = dataset.read_bytes(i)
        ext = os.path.splitext(str(dataset.ids[i]))[1].lower()
        ext = ext if ext in _IMAGE_SUFFIXES else _sniff_suffix(data)  # WebDataset keys have none
        path = folder / f"{i:07d}{ext}"
        path.write_bytes(data)
        total += len(data)
        files.append({"file": f"{path.parent.name}/{path.name}", "id": str(dataset.ids[i])})
    record = {
        "dsquant_export": 1,
        "format": "imagefolder",
        "classes": [{"label": i, "class": c, "folder": f} for i, (c, f) in enumerate(zip(dataset.classes, folders))],
        "files": int(len(indices)),
        "ids": files,
    }
    (dest / EXPORT_RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"format": fmt, "files": int(len(indices)), "bytes": total}


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif", "PPM": ".ppm"}


def _sniff_suffix(data: bytes) -> str:
    """The file extension of image bytes, from Pillow's reading of their header (``.jpg``,
    ``.png``, ...; ``.img`` if Pillow does not know them)."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return _FORMAT_SUFFIX.get(im.format or "", ".img")
    except Exception:  # not an image Pillow knows: named as such, the bytes kept
        return ".img"


def export_subset(dataset, indices: np.ndarray, dest: Path, fmt: str) -> dict:
    """Write the selected samples of ``dataset`` into the run directory ``dest``.

    ``fmt="imagefolder"``: ``dest/export/<class folder>/<index:07d>.png`` (lossless PNG, folder
    names from :func:`class_folders`, recorded in ``export/dsquant-export.json``);
    ``fmt="npz"``: ``dest/export.npz`` with ``images``, ``labels``, ``indices``, ``classes``
    (or ``features`` for a feature dataset).

    Returns:
        A manifest record: format, path, files and bytes written.

    Raises:
        ValueError: on an unknown format, or a format the dataset's kind does not have.
    """
    indices = np.asarray(indices, dtype=np.int64)
    kind = getattr(dataset, "kind", "")
    check_export(fmt, kind)
    if fmt == "npz" and kind == "features":
        path = dest / "export.npz"
        arrays = {"indices": indices, "features": np.asarray(dataset.features[indices])}
        if getattr(dataset, "labels", None) is not None:
            arrays["labels"] = dataset.labels[indices]
            arrays["classes"] = np.array(dataset.classes)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        return {"format": fmt, "path": path.name, "files": 1, "bytes": path.stat().st_size}
    name = "export.npz" if fmt == "npz" else "export"
    if fmt == "imagefolder":
        (dest / name).mkdir()
    if getattr(dataset, "streamed", False):
        rec = write_streamed(dest / name, fmt, dataset, indices)
        return {"format": fmt, "path": name, **{k: v for k, v in rec.items() if k != "format"}}
    rec = write_images(dest / name, fmt, dataset.images[indices], dataset.labels[indices], indices, dataset.classes)
    return {"format": fmt, "path": name, **{k: v for k, v in rec.items() if k != "format"}}


def check_export(fmt: str | None, kind: str | None = None) -> None:
    """Raise ValueError unless ``fmt`` (None, ``"npz"`` or ``"imagefolder"``) is a format and,
    given the data's ``kind`` (``images``, ``features``, ``text``), one it has: checked before
    any work is done (the name alone before the data is read)."""
    if fmt is None:
        return
    if fmt not in ("npz", "imagefolder"):
        raise ValueError(f"export: expected 'imagefolder' or 'npz', got {fmt!r}")
    if kind is None:
        return
    if fmt == "imagefolder" and kind != "images":
        raise ValueError(f"export: format 'imagefolder' needs images; this dataset holds {kind} (subset.jsonl and indices.npy hold the subset)")
    if fmt == "npz" and kind not in ("images", "features"):
        raise ValueError(f"export: format 'npz' is not available for {kind} data (subset.jsonl and indices.npy hold the subset)")


# ----------------------------------------------------------------------------- runs


def fill_output(
    tmp: Path,
    indices: np.ndarray,
    bins: list[np.ndarray],
    manifest: dict,
    export: tuple | None = None,
    records=None,
    extra: dict | None = None,
    finalize: Callable[[dict], None] | None = None,
) -> None:
    """Write a run's files into the (temporary) directory ``tmp``, the manifest last.

    ``export`` is ``(dataset, format)``; ``records`` a text dataset whose selected records are
    written to ``subset.jsonl``; ``extra`` maps more file names to functions that write them
    (given the path); ``finalize(manifest)`` is called just before the manifest is written (to
    record the final timings). The manifest gains ``files`` (SHA-256 of each file) and
    ``export`` records.
    """
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
    if finalize is not None:
        finalize(manifest)
    with open(tmp / "manifest.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=False)
        f.write("\n")


@dataclass
class Run:
    """A compression run: what :func:`dsquant.compress` returns and what
    :func:`dsquant.open_run` (:func:`read_output`) reads back from an output directory.

    Attributes:
        path: the output directory, or None when the run was not written.
        indices: (M,) sorted int64 indices of the compressed set into the dataset.
        bins: the K bins (int64 index arrays); empty for a method without bins.
        manifest: the run's manifest (method, parameters, dataset fingerprint, counts, times).
        dataset: the dataset, when the run holds it (after ``compress``, or once
            :meth:`open_dataset` has read it).
    """

    path: Path | None
    indices: np.ndarray
    bins: list[np.ndarray]
    manifest: dict
    dataset: object = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def out(self) -> Path | None:
        """The output directory (the earlier name of :attr:`path`)."""
        return self.path

    def open_dataset(self, data=None, cache=None, progress: bool = False):
        """The dataset the indices refer to: the one the run holds, else ``data`` (a path or
        dataset object), by default the manifest's source, read as the run read it and checked.

        Raises:
            ValueError: if its fingerprint differs from the manifest's (the source changed, or
                it is another dataset: the indices would pick the wrong samples).
            DataError: if it cannot be read.
        """
        if data is None and self.dataset is not None:
            return self.dataset
        from .data import read_dataset

        info = self.manifest["dataset"]
        params = self.manifest.get("parameters") or {}
        source = data if data is not None else info["source"]
        ds = read_dataset(source, split=info.get("split") or "train", image_size=params.get("image_size"), cache=cache, progress=progress, stream=info.get("streamed", False))
        if ds.fingerprint() != info.get("fingerprint"):
            raise ValueError(
                f"{self.path}: the dataset read from {source} is not the one these indices refer to "
                f"(it changed since it was compressed: fingerprint {ds.fingerprint()} != {info.get('fingerprint')})"
            )
        if data is None:
            self.dataset = ds
        return ds


    def export(self, fmt: str = "npz", dest=None, overwrite: bool = False, reconstructor: str | None = None, device=None, cache=None, progress: bool = False) -> dict:
        """Write the compressed set's images, in the original index order (file and row i are
        dataset index ``indices[i]``): with pixel quantization the dropped patches are rebuilt
        first (by the run's reconstructor, or ``reconstructor``), a tile of the kept-patch file at
        a time: memory is bounded by a tile whatever the run's size (``npz`` rebuilds into a
        memory-mapped unnamed temporary file beside ``dest``, :func:`dsquant.pixels.rebuild_to_file`).
        The face of ``dsquant export``.

        Args:
            fmt: ``"npz"`` (``images``, ``labels``, ``indices``, ``classes``) or
                ``"imagefolder"`` (PNG files per class, :func:`write_images`).
            dest: where to write (default ``DIR/export.npz`` or ``DIR/export``); checked and
                locked before any image is read (:class:`AtomicOutput`).
            overwrite: replace an earlier export that dsquant wrote (never anything else).

        Returns:
            ``{"dest": path, "n": images written, "what": "unmodified" or "reconstructed (...)"}``.

        Raises:
            ValueError: if the run holds no images, its dataset changed (fingerprint), or
                ``dest`` exists and may not be replaced.
            FileExistsError: if ``dest`` exists and ``overwrite`` is False.
        """
        m = self.manifest
        kind = m["dataset"].get("kind")
        if kind != "images":
            raise ValueError(f"{self.path}: export writes images; this run compressed {kind} data (see subset.jsonl or indices.npy)")
        check_export(fmt, kind)
        npz = fmt == "npz"
        dest = Path(dest or Path(self.path) / ("export.npz" if npz else "export"))
        with AtomicOutput(dest, overwrite=overwrite, protect=[m["dataset"]["source"]], keep=[self.path], recognise=is_export_npz if npz else is_export_dir, what="an export", is_file=npz) as w:
            if m.get("pixels") and not npz:  # a tile at a time: memory bounded whatever the run's size
                from .pixels import iter_reconstructed

                classes, n = list(m["dataset"]["classes"]), 0
                folders = class_folders(classes)
                for images, store in iter_reconstructed(self.path, reconstructor, device, progress):
                    write_png_files(w.tmp, folders, images, store.labels, store.indices)
                    n += len(images)
                write_export_record(w.tmp, classes, n)
                w.commit()
                return {"dest": dest, "n": n, "what": f"reconstructed ({reconstructor or m['pixels']['reconstructor']})"}
            if m.get("pixels"):  # rebuilt a tile at a time into a temporary file beside dest, in index order
                from .pixels import rebuild_to_file

                images, info = rebuild_to_file(self.path, reconstructor, device, progress, order="index", tmp_dir=dest.parent)
                indices, labels, classes = info["indices"], info["labels"], info["classes"]
                what = f"reconstructed ({reconstructor or m['pixels']['reconstructor']})"
            else:
                ds = self.open_dataset(cache=cache, progress=progress)  # verifies the fingerprint
                indices = self.indices
                if getattr(ds, "streamed", False):  # only the selected files are read
                    write_streamed(w.tmp, fmt, ds, indices, (m.get("parameters") or {}).get("image_size"))
                    w.commit()
                    return {"dest": dest, "n": int(len(indices)), "what": "unmodified (the source's files)"}
                images, labels, classes = ds.images[indices], ds.labels[indices], ds.classes
                what = "unmodified"
            write_images(w.tmp, fmt, images, labels, indices, list(classes))
            w.commit()
        return {"dest": dest, "n": int(len(indices)), "what": what}


CompressedOutput = Run  # the earlier name


def _check_index_array(arr: np.ndarray, path: Path, n: int, sorted_unique: bool) -> np.ndarray:
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path}: expected a 1-D integer array of indices, got {arr.dtype} {arr.shape}")
    if len(arr) and (int(arr.min()) < 0 or int(arr.max()) >= n):
        raise ValueError(f"{path}: indices must lie in [0, {n}) for the run's {n} samples, got [{int(arr.min())}, {int(arr.max())}]")
    if sorted_unique and len(arr) > 1 and not bool(np.all(np.diff(arr) > 0)):
        raise ValueError(f"{path}: indices must be sorted and unique")
    return arr.astype(np.int64, copy=False)


def read_output(path: str | os.PathLike) -> Run:
    """Read and check an output directory written by :func:`dsquant.compress`.

    Only plain file names inside ``path`` are read (the manifest cannot point elsewhere), only
    regular files (no links, devices or pipes), each against its SHA-256 in the manifest; the
    indices must be sorted, unique and within the dataset, the bins within it too.

    Raises:
        FileNotFoundError: if ``path`` or a file is missing.
        ValueError: if a file is not a regular file, is corrupt, does not match its checksum, or
            holds indices outside the dataset.
    """
    path = Path(path)
    if not path.is_dir() or not os.path.lexists(path / "manifest.json"):
        raise FileNotFoundError(f"{path}: not a dsquant output directory (no manifest.json)")
    manifest = _read_small_json(path / "manifest.json")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not {"indices.npy", "bins.npz"} <= set(files):
        raise ValueError(f"{path / 'manifest.json'}: not a dsquant manifest (no checksums of indices.npy and bins.npz)")
    for name, digest in files.items():
        if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
            raise ValueError(f"{path / 'manifest.json'}: lists {name!r}, which is not a plain file name inside the output directory")
        try:
            st = os.lstat(path / name)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path / name}: missing") from None
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path / name}: not a regular file")
        if file_sha256(path / name) != digest:
            raise ValueError(f"{path / name}: checksum does not match the manifest (file changed or damaged)")
    try:
        n = int(manifest["dataset"]["n_samples"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path / 'manifest.json'}: no dataset.n_samples") from None
    try:
        indices = np.load(path / "indices.npy", allow_pickle=False)
        with np.load(path / "bins.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: cannot read indices.npy or bins.npz ({exc})") from None
    names = [f"bin_{k}" for k in range(len(arrays))]
    if sorted(arrays) != sorted(names):
        raise ValueError(f"{path / 'bins.npz'}: expected arrays bin_0 .. bin_{len(arrays) - 1}, got {sorted(arrays)[:5]}")
    bins = [_check_index_array(arrays[k], path / "bins.npz", n, sorted_unique=False) for k in names]
    indices = _check_index_array(indices, path / "indices.npy", n, sorted_unique=True)
    return Run(path, indices, bins, manifest)
