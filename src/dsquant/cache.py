"""An on-disk cache of arrays, keyed by a hash of what produced them.

Entries are ``.npz`` files (no pickles) written to a temporary name and renamed, so a killed run
never leaves a half-written entry. The root is ``$DSQUANT_CACHE``, else
``$XDG_CACHE_HOME/dsquant``, else ``~/.cache/dsquant``.

The cache is optional, so it never stops a run: an entry that cannot be read or does not hold
what the caller expects is a miss (recomputed and overwritten), and a cache that cannot be
written (the root is a file, a read-only or full disk) is reported once, as a warning on the
``dsquant`` logger, and the run goes on without it. Temporary files left by killed writers are
removed on the next save into their kind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

__all__ = ["Cache", "default_cache_dir", "hash_key", "file_digest", "tree_digest"]

log = logging.getLogger("dsquant")

# what an entry's array must be: (numpy dtype kinds such as "u", "iu", "f", "U" or None for any,
# ndim or a shape tuple with None for any length, or None for any)
Spec = tuple[str | None, int | tuple[int | None, ...] | None]

STALE_TMP_SECONDS = 3600  # a temporary file untouched this long has no live writer
_DEAD_WRITER_GRACE = 60  # ... nor one whose writer's pid is gone and that is this old
# Cache.save's temporary names: ".<hash_key>.pid<pid>.<mkstemp's 8 characters>.tmp" (and
# ".<hash_key>.<8 characters>.tmp" from earlier versions, without the pid)
_TMP = re.compile(r"^\.[0-9a-f]{32}\.(?:pid(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp$")


def default_cache_dir() -> Path:
    if os.environ.get("DSQUANT_CACHE"):
        return Path(os.environ["DSQUANT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dsquant"


def hash_key(parts: dict) -> str:
    """Hex SHA-256 (first 32 digits) of the canonical JSON of ``parts``."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def file_digest(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (about 0.1 s per 100 MB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tree_digest(root: str | os.PathLike) -> str:
    """Hex SHA-256 of every file under ``root``: relative paths (sorted) and contents."""
    root = Path(root)
    digest = hashlib.sha256()
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            rel = os.fsencode(os.path.relpath(path, root).replace(os.sep, "/"))
            digest.update(len(rel).to_bytes(8, "little") + rel)
            digest.update(bytes.fromhex(file_digest(path)))
    return digest.hexdigest()


def matches(arrays: Mapping[str, np.ndarray], expect: Mapping[str, Spec]) -> bool:
    """Whether ``arrays`` holds every array named in ``expect``, of the dtype kind and shape
    given there (extra arrays are allowed)."""
    for name, (kinds, shape) in expect.items():
        a = arrays.get(name)
        if not isinstance(a, np.ndarray) or (kinds is not None and a.dtype.kind not in kinds):
            return False
        if isinstance(shape, int) and a.ndim != shape:
            return False
        if isinstance(shape, tuple) and (a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape))):
            return False
    return True


def _writer_alive(pid: int) -> bool | None:
    """Whether process ``pid`` exists (None when that cannot be told)."""
    if os.name != "posix":  # os.kill(pid, 0) sends CTRL_C on Windows
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except (OverflowError, OSError):
        return None
    return True


class Cache:
    """Arrays on disk under ``root/<kind>/<key>.npz``; ``enabled=False`` turns it into a no-op."""

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.enabled = enabled
        self.writable = True  # False after a failed save: warned once, then no more writes
        self._swept: set[str] = set()
        self._skipped: set[Path] = set()

    @staticmethod
    def pack_json(value) -> np.ndarray:
        """``value`` (JSON-serialisable: a record, a config) as a 0-d unicode array, the one
        way metadata is stored inside a cache entry (no pickle)."""
        return np.array(json.dumps(value))

    @staticmethod
    def unpack_json(array) -> object:
        """What :meth:`pack_json` stored.

        Raises:
            ValueError: if ``array`` does not hold JSON (the entry is then a miss for
                :meth:`load`'s ``validate``).
        """
        return json.loads(str(array))

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.npz"

    def load(
        self,
        kind: str,
        key: str,
        expect: Mapping[str, Spec] | None = None,
        validate: Callable[[dict[str, np.ndarray]], bool] | None = None,
    ) -> dict[str, np.ndarray] | None:
        """The arrays stored under (kind, key), or None when absent, unreadable, or not what the
        caller expects.

        Args:
            expect: arrays the entry must hold: ``{name: (dtype kinds, ndim or shape)}``, e.g.
                ``{"images": ("u", 4), "labels": ("iu", 1)}`` (see :func:`matches`).
            validate: a further check of the arrays; an entry is a miss when it returns a false
                value or raises.

        A miss is recomputed by the caller and overwritten by :meth:`save`.
        """
        if not self.enabled:
            return None
        path = self.path(kind, key)
        try:
            if not path.is_file():  # absent, or a directory in its place
                return None
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except MemoryError:
            raise
        except Exception:  # damaged, not an .npz (np.load of a .npy has no files), objects refused
            return None
        try:
            if (expect is not None and not matches(arrays, expect)) or (validate is not None and not validate(arrays)):
                return None
        except MemoryError:
            raise
        except Exception:
            return None
        return arrays

    def save(self, kind: str, key: str, arrays: dict[str, np.ndarray]) -> Path | None:
        """Store ``arrays`` atomically; returns the path, or None when disabled or not writable.

        An :class:`OSError` (the root is a file, a read-only or full disk) is logged once per
        cache as a one-line warning and the cache is not written again; an entry that is not a
        file (a directory in its place) is left alone, with a warning. Other exceptions propagate
        (the temporary file is removed in every case).
        """
        if not self.enabled or not self.writable:
            return None
        path = self.path(kind, key)
        if os.path.lexists(path) and not path.is_file():  # e.g. a directory: not replaceable
            if path not in self._skipped:
                self._skipped.add(path)
                log.warning(f"dsquant: warning: cache entry {path} is not a file; not caching this result")
            return None
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._sweep(path.parent)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.pid{os.getpid()}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            self.writable = False
            reason = exc.strerror or str(exc) or type(exc).__name__
            log.warning(f"dsquant: warning: cannot write the cache {self.root} ({reason}: {exc.filename or path}); continuing without caching")
            return None
        finally:
            if tmp is not None and os.path.lexists(tmp):
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        return path

    def _sweep(self, folder: Path) -> None:
        """Remove temporary files of killed writers from ``folder`` (once per kind): dsquant's
        own ``.<key>.pid<pid>.<random>.tmp`` names only, untouched for an hour, or for a minute
        when their writer's process is gone."""
        if folder.name in self._swept:
            return
        self._swept.add(folder.name)
        now = time.time()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            m = _TMP.match(entry.name)
            if m is None:
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                age = now - entry.stat(follow_symlinks=False).st_mtime
                dead = m["pid"] is not None and _writer_alive(int(m["pid"])) is False
                if age > STALE_TMP_SECONDS or (dead and age > _DEAD_WRITER_GRACE):
                    os.unlink(entry.path)
            except OSError:
                continue
