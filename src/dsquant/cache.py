"""An on-disk cache of arrays, keyed by a hash of what produced them.

Entries are ``.npz`` files (no pickles) written to a temporary name and renamed, so a killed run
never leaves a half-written entry. The root is ``$DSQUANT_CACHE``, else
``$XDG_CACHE_HOME/dsquant``, else ``~/.cache/dsquant``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["Cache", "default_cache_dir", "hash_key"]


def default_cache_dir() -> Path:
    if os.environ.get("DSQUANT_CACHE"):
        return Path(os.environ["DSQUANT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dsquant"


def hash_key(parts: dict) -> str:
    """Hex SHA-256 (first 32 digits) of the canonical JSON of ``parts``."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


class Cache:
    """Arrays on disk under ``root/<kind>/<key>.npz``; ``enabled=False`` turns it into a no-op."""

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.enabled = enabled

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.npz"

    def load(self, kind: str, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under (kind, key), or None when absent or unreadable."""
        if not self.enabled:
            return None
        path = self.path(kind, key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None  # a damaged entry is recomputed and overwritten

    def save(self, kind: str, key: str, arrays: dict[str, np.ndarray]) -> Path | None:
        """Store ``arrays`` atomically; returns the path (None when disabled)."""
        if not self.enabled:
            return None
        path = self.path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path
