"""Print ``validated``'s cached choices: what a benchmark's runs validated, without the manifests.

``dsquant benchmark`` keeps the trainings' accuracies but not each run's manifest, where
``validated`` records its validation accuracies; they are in dsquant's cache (``kind``
``validation``, one entry per embedding, budget and configuration). This prints every entry,
oldest first: when it was written, the per-class budget, the regime and preset, the pool and
held-out sizes, each candidate's mean validation accuracy (%), each rival's paired gain over the
incumbent with its 95 % interval (points), the choice and the seconds choosing took.

    python benchmarks/validation_cache.py                      # $DSQUANT_CACHE or ~/.cache/dsquant
    python benchmarks/validation_cache.py --since "2026-12-01 18:20" --per-class 500 600
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dsquant.cache import Cache, default_cache_dir


def entries(root: Path, since: float = 0.0) -> list[tuple[float, str, dict]]:
    """``(mtime, key, result)`` of every readable validation entry under ``root``, oldest first."""
    out = []
    for path in (root / "validation").glob("*.npz"):
        t = path.stat().st_mtime
        if t < since or not path.is_file():
            continue
        try:
            with np.load(path, allow_pickle=False) as z:
                result = Cache.unpack_json(z["result"])
        except (OSError, ValueError, KeyError) as exc:
            print(f"{path}: skipped ({exc})", file=sys.stderr)
            continue
        out.append((t, path.stem, result))
    return sorted(out, key=lambda e: e[0])


def line(t: float, key: str, r: dict) -> str:
    means = ", ".join(f"{k} {100 * v:.2f}" for k, v in r["mean"].items())
    gains = "; ".join(f"{k} {100 * m:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]" for k, (m, lo, hi) in (r.get("gain") or {}).items() if lo is not None)
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))
    return f"{when} {key[:8]} {r['per_class']:g}/class {r['regime']} ({r.get('preset')}), pool {r['pool']}, held out {r['validation']}: {means} | {gains or 'no intervals'} | chose {r['chosen']} in {r['seconds']:.0f} s"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", type=Path, default=None, help="cache root (default $DSQUANT_CACHE or ~/.cache/dsquant)")
    p.add_argument("--since", default=None, help="only entries written from this UTC time on, 'YYYY-MM-DD HH:MM'")
    p.add_argument("--per-class", type=float, nargs="+", default=None, help="only these per-class budgets")
    args = p.parse_args(argv)
    root = args.cache or default_cache_dir()
    if not (root / "validation").is_dir():
        print(f"{root}: no validation entries (no validated run has cached a choice there)", file=sys.stderr)
        return 1
    since = 0.0
    if args.since:
        try:
            since = datetime.strptime(args.since, "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            print(f"--since: expected 'YYYY-MM-DD HH:MM', got {args.since!r}", file=sys.stderr)
            return 2
    for t, key, r in entries(root, since):
        if args.per_class is None or any(abs(r["per_class"] - m) < 1e-6 for m in args.per_class):
            print(line(t, key, r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
