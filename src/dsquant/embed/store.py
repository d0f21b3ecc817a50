"""A sharded, resumable embedding store: ``dsquant embed DATA --encoder ... --out STORE``.

Layout of ``STORE/``::

    store.json               the manifest, written once when the store is created: format and
                             version, N, dim, dtype, shard size, encoder config and its hash,
                             preprocessing, the source (path, format, split, fingerprint), classes
    ids.npy                  (N,) str: every sample's stable id (path, tar member, WebDataset key)
    labels.npy               (N,) int64 class ids
    shard-00000.npy          (rows, dim) float16 or float32 features of rows [start, stop)
    shard-00000.json         the shard's completion record, written last: rows, SHA-256 of the
                             features file, unreadable samples (with ``skip_bad``), seconds

A shard is done when its record exists and names a features file of the right size; a killed
run leaves at most a ``*.tmp-*`` file, and the next run (same command) embeds exactly the shards
not done. Shards are independent, so ``--shard i/N`` (shards k with ``k % N == i``) spreads the
work over the processes of a job array writing into one store on a shared file system: the
manifest is created once (by a hard link, which fails if another process created it first, and
then must agree), and every file is written to a temporary name and renamed.

Reading: :func:`open_store` checks the manifest and every shard record, and gives a
:class:`StoreDataset` whose ``features`` are a :class:`ShardedArray`: rows are read from the
memory-mapped shards only when indexed, so bins are generated class by class without loading the
store whole (about ``N * dim * 2`` bytes for float16 would otherwise be needed). Unreadable
samples skipped while embedding (``skip_bad``) are left out of the dataset and named in its
``bad`` list; ids keep every sample's identity.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifact import write_atomic
from ..cache import file_digest, hash_key
from ..errors import DataError

__all__ = ["STORE_FORMAT", "ShardedArray", "StoreDataset", "embed_to_store", "is_store", "open_store", "parse_shard", "pending_shards", "prepare_store", "store_status", "write_shard"]

STORE_FORMAT = "dsquant-embedding-store"
STORE_VERSION = 1
MANIFEST = "store.json"
MAX_MANIFEST_BYTES = 64 << 20


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N.

    Raises:
        ValueError: naming the text and the expected form.
    """
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ValueError(f"shard: expected i/N with integers 0 <= i < N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard: expected i/N with 0 <= i < N, got {text!r}")
    return i, n


def is_store(path) -> bool:
    """Whether ``path`` is a directory holding an embedding store manifest."""
    p = Path(path)
    return p.is_dir() and (p / MANIFEST).is_file()


def _npy_bytes(arr: np.ndarray) -> bytes:
    """``arr`` as the bytes of a ``.npy`` file (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _read_json(path: Path, what: str) -> dict:
    from ..data.images import check_regular_file

    size = check_regular_file(path)
    if size > MAX_MANIFEST_BYTES:
        raise DataError(f"{path}: {size} bytes is more than the {MAX_MANIFEST_BYTES}-byte limit for {what}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable {what} ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object ({what})")
    return data


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}"


class ShardedArray:
    """A read-only (N, d) array over the store's shard files, read on indexing.

    Supports what bin generation needs: ``shape``, ``ndim``, ``dtype`` (float32: rows are
    converted when read), ``len``, and indexing by an integer, a slice or an integer array
    (rows in the order asked). ``np.asarray`` reads it whole (N * d * 4 bytes).
    """

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, files: list[Path], starts: np.ndarray, n: int, dim: int) -> None:
        self.files, self.starts, self.shape = files, np.asarray(starts, dtype=np.int64), (int(n), int(dim))
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:  # sent to other processes (Ray tasks): paths, not mapped data
        return {k: v for k, v in self.__dict__.items() if k != "_maps"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._maps = {}

    def _map(self, k: int) -> np.ndarray:
        m = self._maps.get(k)
        if m is None:
            m = self._maps[k] = np.load(self.files[k], mmap_mode="r", allow_pickle=False)
        return m

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        if len(rows) == 0:
            return out
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise IndexError(f"row index out of range for {self.shape[0]} rows")
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        order = np.argsort(shard, kind="stable")
        bounds = np.flatnonzero(np.diff(shard[order])) + 1
        for part in np.split(order, bounds):
            k = int(shard[part[0]])
            local = rows[part] - self.starts[k]
            out[part] = self._map(k)[local]  # a copy of those rows only
        return out

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self._gather(np.array([int(key) % self.shape[0] if key < 0 else int(key)]))[0]
        if isinstance(key, slice):
            return self._gather(np.arange(*key.indices(self.shape[0]), dtype=np.int64))
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise TypeError(f"ShardedArray: index with an int, a slice or a 1-D integer array, got {type(key).__name__}")
        return self._gather(rows.astype(np.int64))

    def __array__(self, dtype=None, copy=None):
        a = self._gather(np.arange(self.shape[0], dtype=np.int64))
        return a if dtype is None else a.astype(dtype)


@dataclass
class StoreDataset:
    """The embeddings of a store as a feature dataset (what ``dsquant compress STORE`` bins).

    Attributes:
        features: (N', d) :class:`ShardedArray` (float32 rows), N' the readable samples.
        labels: (N',) int64 class ids.
        classes: class names.
        ids: (N',) str stable ids of the samples.
        rows: (N',) int64 row of each sample in the store (differs from 0..N'-1 only when
            unreadable samples were skipped).
        bad: ``[row, id, message]`` of every skipped sample.
        source: the store directory; ``manifest`` its manifest.
    """

    features: ShardedArray
    labels: np.ndarray
    classes: list[str]
    ids: np.ndarray
    rows: np.ndarray
    bad: list
    source: str
    manifest: dict = field(repr=False)
    split: str = "train"

    kind = "features"

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """The manifest's encoder and source, and every shard's SHA-256 (nothing re-read)."""
        return hash_key({"store": self.manifest.get("encoder_hash"), "source": self.manifest.get("source"), "shards": self.manifest.get("shard_sha256"), "rows": len(self.rows)})


def open_store(path) -> StoreDataset:
    """Open a finished store for reading.

    Raises:
        DataError: if ``path`` has no readable manifest, the manifest is not a store's, its
            ids/labels do not match it, or a shard is unfinished or its file has the wrong size
            (the message says how many shards remain and how to resume).
    """
    root = Path(path).resolve()  # absolute: tasks on other machines read the same shards
    m = _read_manifest(root)
    n, dim, size = m["n"], m["dim"], m["shard_size"]
    ids = np.load(root / "ids.npy", allow_pickle=False)
    labels = np.load(root / "labels.npy", allow_pickle=False)
    if ids.shape != (n,) or labels.shape != (n,):
        raise DataError(f"{root}: ids.npy {ids.shape} and labels.npy {labels.shape} do not match the manifest's {n} samples")
    records = _shard_records(root, m)
    missing = [k for k, rec in enumerate(records) if rec is None]
    if missing:
        raise DataError(
            f"{root}: {len(missing)} of {len(records)} shards are not finished (first: {_shard_name(missing[0])}); "
            f"run the same 'dsquant embed' command again to resume"
        )
    bad = [b for rec in records for b in rec.get("bad", [])]
    shas = [rec.get("sha256") for rec in records]
    feats = ShardedArray([root / f"{_shard_name(k)}.npy" for k in range(len(records))], np.arange(len(records)) * size, n, dim)
    keep = np.ones(n, dtype=bool)
    keep[[int(r) for r, _, _ in bad]] = False
    rows = np.flatnonzero(keep)
    m = dict(m, shard_sha256=shas)
    if len(rows) < n:  # skipped samples leave the dataset; a view keeps the others' rows
        feats = _RowView(feats, rows)
    labelled = m.get("labelled", True)
    classes = [str(c) for c in m.get("classes", [])] if labelled else []
    return StoreDataset(feats, labels[rows].astype(np.int64) if labelled else None, classes, ids[rows], rows, bad, str(root), m, m.get("source", {}).get("split") or "train")


class _RowView(ShardedArray):
    """Rows ``rows`` of a :class:`ShardedArray`."""

    def __init__(self, base: ShardedArray, rows: np.ndarray) -> None:
        self.base, self.rows, self.shape = base, rows, (len(rows), base.shape[1])

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.shape[0]} rows")
        return self.base._gather(self.rows[rows])


def _shard_record(root: Path, k: int, manifest: dict) -> dict | None:
    """The shard's completion record when the shard is done (its features file has the size the
    record and the manifest say), else None."""
    rec_path = root / f"{_shard_name(k)}.json"
    feat_path = root / f"{_shard_name(k)}.npy"
    if not rec_path.is_file() or not feat_path.is_file():
        return None
    rec = _read_json(rec_path, "shard record")
    n, size = int(manifest["n"]), int(manifest["shard_size"])
    rows = min(size, n - k * size)
    if rec.get("rows") != rows or rec.get("bytes") != feat_path.stat().st_size:
        return None
    return rec


def store_status(path) -> dict:
    """A store's manifest and progress: ``{"manifest", "done", "first_missing", "bytes", "bad"}``
    (``first_missing`` the first unfinished shard's name or None; ``bad`` the skipped samples).

    Raises:
        DataError: if ``path`` has no readable store manifest.
    """
    root = Path(path)
    m = _read_manifest(root)
    records = _shard_records(root, m)
    done = [rec for rec in records if rec is not None]
    first = next((_shard_name(k) for k, rec in enumerate(records) if rec is None), None)
    return {"manifest": m, "done": len(done), "first_missing": first, "bytes": sum(int(rec["bytes"]) for rec in done), "bad": [b for rec in done for b in rec.get("bad", [])]}


def _read_manifest(root: Path) -> dict:
    """A store's manifest, checked: its format and version, and integers ``n``, ``dim`` and
    ``shard_size`` (``n_shards`` derived from them).

    Raises:
        DataError: naming the manifest, if it is missing, unreadable or not a store's.
    """
    m = _read_json(root / MANIFEST, "embedding store manifest")
    if m.get("format") != STORE_FORMAT or m.get("version") != STORE_VERSION:
        raise DataError(f"{root / MANIFEST}: not a dsquant embedding store of version {STORE_VERSION} (format {m.get('format')!r}, version {m.get('version')!r})")
    try:
        n, dim, size = int(m["n"]), int(m["dim"]), int(m["shard_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{root / MANIFEST}: a store manifest needs integers n, dim and shard_size ({exc})") from None
    return dict(m, n=n, dim=dim, shard_size=size, n_shards=-(-n // size))


def _shard_records(root: Path, manifest: dict) -> list[dict | None]:
    """Every shard's completion record, None for a shard not done (:func:`_shard_record`)."""
    return [_shard_record(root, k, manifest) for k in range(int(manifest["n_shards"]))]


def _source_record(dataset) -> dict:
    from ..data import detect_format

    src = str(getattr(dataset, "source", "<object>"))
    fmt = getattr(dataset, "format", None)
    if fmt is None:
        try:
            fmt = detect_format(src)
        except DataError:
            fmt = "object"
    return {"source": src, "format": fmt, "split": getattr(dataset, "split", None), "fingerprint": dataset.fingerprint()}


def _ours(name: str) -> bool:
    """A file a store being created may already hold (another process got there first): its
    ids and labels, or the temporary file of one of them or of the manifest."""
    return name in ("ids.npy", "labels.npy") or name.startswith((".ids.npy.", ".labels.npy.", f".{MANIFEST}."))


def _create_or_check(root: Path, manifest: dict, ids: np.ndarray, labels: np.ndarray) -> dict:
    """Create the store's manifest, then its ids and labels; or check that an existing store
    holds the same embeddings (and complete its ids and labels if their writer died). Processes
    of a job array may race here: the manifest is created by a hard link, which only one wins."""
    path = root / MANIFEST
    if path.exists():
        old = _read_json(path, "embedding store manifest")
        for key in ("format", "n", "dim", "dtype", "shard_size", "encoder_hash", "source"):
            if old.get(key) != manifest.get(key):
                raise DataError(
                    f"{root}: holds a store of other embeddings ({key}: {old.get(key)!r} there, {manifest.get(key)!r} now); "
                    f"use another --out, or delete that store yourself"
                )
        _index_files(root, ids, labels)
        return old
    if root.exists() and any(not _ours(p.name) for p in root.iterdir()):
        raise DataError(f"{root}: exists and is not an embedding store (no {MANIFEST}); dsquant writes a store only into a new or empty directory")
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", dir=root)  # a name no other process picks
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    tmp = Path(tmp)
    try:
        os.link(tmp, path)  # fails if another process created the manifest first
    except FileExistsError:
        return _create_or_check(root, manifest, ids, labels)
    finally:
        tmp.unlink()
    _index_files(root, ids, labels)
    return manifest


def _index_files(root: Path, ids: np.ndarray, labels: np.ndarray) -> None:
    """Write ids.npy and labels.npy unless present (only after the manifest agreed: the same
    source, so the same content whichever process writes them)."""
    for name, arr in (("ids.npy", ids), ("labels.npy", labels)):
        if not (root / name).is_file():
            write_atomic(root / name, _npy_bytes(arr))


def prepare_store(dataset, encoder, out, shard_size: int = 10_000, dtype: str = "float16") -> tuple[Path, dict]:
    """Create the store ``out`` for ``encoder``'s embeddings of ``dataset`` (manifest, ids,
    labels), or check that an existing one holds the same: ``(root, manifest)``.

    Raises:
        ValueError: on an encoder that cannot embed rows independently, a bad dtype or shard size.
        DataError: if ``out`` holds something else.
    """
    from .. import __version__

    if not callable(getattr(encoder, "encode_rows", None)):
        raise ValueError(f"encoder: {getattr(encoder, 'name', encoder)!r} embeds the whole dataset at once (it trains on it); a store needs an encoder that embeds every sample on its own (hf:, torchscript:, timm:, open_clip:, sentence)")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype: expected 'float16' or 'float32', got {dtype!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size: expected a positive number of rows, got {shard_size!r}")
    root = Path(out).resolve()
    n = len(dataset)
    config = encoder.config()
    labels = getattr(dataset, "labels", None)
    labels = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    ids = getattr(dataset, "ids", None)
    ids = np.arange(n).astype(str) if ids is None else np.asarray(ids)
    manifest = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "n": n,
        "dim": int(encoder.dim),
        "dtype": dtype,
        "shard_size": int(shard_size),
        "n_shards": -(-n // shard_size),
        "encoder": config,
        "encoder_hash": hash_key(config),
        "preprocessing": config.get("preprocessing"),
        "source": _source_record(dataset),
        "classes": list(getattr(dataset, "classes", []) or []),
        "labelled": getattr(dataset, "labels", None) is not None,
        "dsquant_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return root, _create_or_check(root, manifest, ids, labels)


def pending_shards(root, manifest: dict, shard: tuple[int, int] = (0, 1)) -> tuple[list[int], int]:
    """The unfinished shards of slice ``shard = (i, N)`` (shards k with ``k % N == i``), and how
    many of that slice were already done."""
    i, n_parts = shard
    mine = [k for k in range(int(manifest["n_shards"])) if k % n_parts == i]
    todo = [k for k in mine if _shard_record(Path(root), k, manifest) is None]
    return todo, len(mine) - len(todo)


def write_shard(root, manifest: dict, dataset, encoder, k: int, progress: bool = False, config: dict | None = None) -> dict:
    """Embed shard ``k`` of the store at ``root`` and write it (features, then its record, each
    to a temporary name and renamed); returns the record. Any process may run it, on any
    machine that sees the store: what the Ray engine's actors do. ``config``: this process's
    ``encoder.config()`` when the caller has it (computing it may hash the weights), checked
    against the store's."""
    root = Path(root)
    t = time.perf_counter()
    config = encoder.config() if config is None else config
    if hash_key(config) != manifest.get("encoder_hash"):  # e.g. another device resolved another precision
        diff = sorted(k for k in set(config) | set(manifest.get("encoder") or {}) if config.get(k) != (manifest.get("encoder") or {}).get(k))
        raise DataError(f"{root}: this process's encoder differs from the store's ({', '.join(diff) or 'config'}); pin it (for example --precision float32) so every process embeds alike")
    size, n = int(manifest["shard_size"]), int(manifest["n"])
    rows = np.arange(k * size, min(n, (k + 1) * size), dtype=np.int64)
    bad: list = []
    raw = encoder.encode_rows(dataset, rows, progress=progress, bad=bad)
    with np.errstate(over="ignore"):  # overflow is checked just below, with a message
        feats = raw.astype(manifest["dtype"])
    if not np.all(np.isfinite(feats)):
        where = "above float16's range (65504)" if np.all(np.isfinite(raw)) else "NaN or infinite"
        raise DataError(f"{root}: shard {k} has features {where}; embed with --dtype float32" if "float16" in where else f"{root}: shard {k}: the encoder produced {where} features")
    path = root / f"{_shard_name(k)}.npy"
    write_atomic(path, _npy_bytes(feats))
    ids = getattr(dataset, "ids", None)
    rec = {
        "shard": k, "start": int(rows[0]), "stop": int(rows[-1]) + 1, "rows": len(rows),
        "bytes": path.stat().st_size, "sha256": file_digest(path),
        "bad": [[int(r), str(ids[r]) if ids is not None else str(r), msg] for r, msg in bad],
        "seconds": round(time.perf_counter() - t, 3),
    }
    write_atomic(root / f"{_shard_name(k)}.json", (json.dumps(rec) + "\n").encode())
    return rec


def shard_line(rec: dict) -> str:
    """One line about a written shard, for logs."""
    return f"{_shard_name(rec['shard'])}: rows {rec['start']}-{rec['stop'] - 1} in {rec['seconds']:.1f} s" + (f", {len(rec['bad'])} unreadable skipped" if rec["bad"] else "")


def embed_to_store(dataset, encoder, out, shard_size: int = 10_000, dtype: str = "float16", shard: tuple[int, int] = (0, 1), progress: bool = False, log=None) -> dict:
    """Embed ``dataset`` with ``encoder`` into the store ``out``, resuming: shards already done
    are kept, the others (those of ``shard = (i, N)``: ``k % N == i``) are embedded here, one
    after the other (:func:`dsquant.distributed.ray_embed` spreads them over a Ray cluster).

    Args:
        dataset: a streamed or in-memory image dataset, or a text dataset.
        encoder: an encoder with ``encode_rows(dataset, indices, progress, bad)`` and ``dim``
            (pretrained image backbones, the sentence encoder).
        out: the store directory (new, empty, or a store of the same embeddings).
        shard_size: rows per shard.
        dtype: ``"float16"`` (default; half the bytes, relative error about 5e-4) or ``"float32"``.
        shard: ``(i, N)``: embed only the shards k with ``k % N == i``.
        progress: progress bars. log: called with one line per shard written.

    Returns:
        ``{"store", "n", "shards", "done_before", "written", "remaining", "seconds"}``.

    Raises:
        ValueError: on an encoder that cannot embed rows independently, a bad dtype or shard.
        DataError: if ``out`` holds something else, or an image is unreadable (without skip_bad).
    """
    root, manifest = prepare_store(dataset, encoder, out, shard_size, dtype)
    todo, done = pending_shards(root, manifest, shard)
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    config = encoder.config() if todo else None  # once, not per shard
    for k in tqdm(todo, desc="shards", unit="shard", disable=not progress or len(todo) < 2):
        rec = write_shard(root, manifest, dataset, encoder, k, progress, config)
        if log is not None:
            log(shard_line(rec))
    return store_summary(root, manifest, done, len(todo), time.perf_counter() - t0)


def store_summary(root, manifest: dict, done_before: int, written: int, seconds: float) -> dict:
    """What :func:`embed_to_store` returns."""
    records = _shard_records(Path(root), manifest)
    remaining = sum(rec is None for rec in records)
    return {"store": str(root), "n": int(manifest["n"]), "shards": len(records), "done_before": done_before, "written": written, "remaining": remaining, "seconds": round(seconds, 3)}
