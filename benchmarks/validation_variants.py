"""Variants of class-balanced random sampling, measured on ``validated``'s validation split (no
test split read): where nothing beats random on the test split (Fashion-MNIST at 5-10 % keep,
docs/selection.md), does moving random's subset in some direction help?

Every variant draws uniformly at random inside each class (seeded by the training seed); they
differ in what they draw from and how many per class:

* ``random``: the registered ``random`` method (class-balanced; what ``validated``'s pool sees).
* ``quota:L``: class quotas that follow class difficulty, ``(1 - L) / C + L * e_c / sum(e)``
  of the budget (largest remainder), ``e_c`` the class's mean error ``1 - p(true class)`` of the
  EL2N training dynamics (early training of the proxy network; training set only). ``L = 1`` is
  DRoP's allocation (Vysogorets, Ahuja & Kempe, "DRoP: Distributionally Robust Data Pruning",
  ICLR 2025: quotas proportional to class error, random within classes); ``L < 0`` moves
  samples to the easy classes instead.
* ``cut:B``: per class, leave out the ``round(B * n_c)`` hardest samples by EL2N, then draw
  the class's quota from the rest: the rule of CCS with one stratum (``CCS(cutoff=B,
  n_strata=1, balance=True)``; Zheng et al., ICLR 2023), which cuts ``floor(B * n_c)`` and
  draws from its own random stream; this script keeps its own draw so that the rows in
  docs/results/validation-variants-fashion-mnist reproduce.

The pool, the held-out sixth and the model (the ``lowbudget`` MLP, seeds 0 .. n-1) are
``validated``'s below 500 per class (from there ``validated`` itself trains the ``pruning``
preset; this script keeps ``lowbudget`` at every budget); the dynamics are the run's
(``--proxy-seed``, cached). ``--test``: the variants
select from the whole training set and are tested on the test split instead (the benchmark's
protocol: ``random``'s rows are then the benchmark's, to the bit), for a variant already chosen
on the validation split.

    python benchmarks/validation_variants.py ../shared/data/fashion-mnist --per-class 300 --variants random quota:0.5 quota:1 quota:-0.3 cut:0.02 cut:0.1 cut:0.2 cut:0.3 --out V.csv
    python benchmarks/validation_variants.py --summary V.csv
    python benchmarks/validation_variants.py ../shared/data/fashion-mnist --per-class 300 --variants random cut:0.1 --test --seeds 0 1 2 3 4 --out T.csv

The CSV has a row per (data, proxy_seed, per_class, variant, seed); a run resumes an ``--out``
file, skipping the rows it holds. ``--summary`` prints every variant's mean, random's on the same
seeds, and the paired difference with its 95 % t interval. A run prints the classes' error
``e_c`` of the dynamics first.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np

HEADER = ("data", "proxy_seed", "per_class", "variant", "seed", "accuracy")


def class_error(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(C,) mean ``1 - p(true class)`` per class, over the (R, N, C) dynamics ``probs``."""
    p_true = probs[:, np.arange(len(labels)), labels].mean(0)
    return np.array([1.0 - p_true[labels == c].mean() for c in range(n_classes)])


def variant_indices(name: str, labels: np.ndarray, budget_: int, err: np.ndarray, el2n: np.ndarray, seed: int) -> np.ndarray:
    """Sorted pool indices of ``quota:L`` or ``cut:B`` (module docstring)."""
    from dsquant.core.sampling import largest_remainder

    kind, value = name.split(":")
    x = float(value)
    n_classes = len(err)
    sizes = np.bincount(labels, minlength=n_classes)
    if kind == "quota":
        weights = (1 - x) / n_classes + x * err / err.sum()
        if (weights < 0).any():
            raise SystemExit(f"variant {name!r}: L gives class {int(np.argmin(weights))} a negative share of the budget; use an L closer to 0")
        q = largest_remainder(budget_, weights, caps=sizes)
        rng = np.random.default_rng([seed, 77])
        parts = [rng.choice(np.flatnonzero(labels == c), int(q[c]), replace=False) for c in range(n_classes)]
    elif kind == "cut":
        if not 0 <= x < 1:
            raise SystemExit(f"variant {name!r}: expected a share B in [0, 1)")
        q = largest_remainder(budget_, sizes, caps=sizes)  # class-balanced, as random's quotas
        rng = np.random.default_rng([seed, 78])
        parts = []
        for c in range(n_classes):
            members = np.flatnonzero(labels == c)
            keep = members[np.argsort(-el2n[members], kind="stable")][round(x * len(members)):]
            if len(keep) < q[c]:
                raise SystemExit(f"variant {name!r}: class {c} keeps {len(keep)} samples after the cut, fewer than its quota {int(q[c])}; use a smaller B")
            parts.append(rng.choice(keep, int(q[c]), replace=False))
    else:
        raise SystemExit(f"variant {name!r}: expected random, quota:L or cut:B")
    return np.sort(np.concatenate(parts))


def run(data: str, per_class: list[float], variants: list[str], seeds: list[int], proxy_seed: int, out: Path, test: bool = False) -> None:
    from dsquant import compress
    from dsquant.cache import Cache
    from dsquant.core import baselines as B
    from dsquant.data import read_dataset
    from dsquant.evaluate import train_and_test
    from dsquant.evaluate.protocols import per_class_ratio
    from dsquant.methods import make_method
    from dsquant.methods.base import Selection, SelectionMethod
    from dsquant.methods.dynamics import EL2N
    from dsquant.methods.validated import Validated, _PoolContext, _rows_of, _subset

    if out.exists() and not out.is_file():
        raise SystemExit(f"{out}: exists and is not a file; choose another --out")
    done = set()
    if out.exists():  # resume: rows already measured are kept
        with open(out) as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != list(HEADER):
                raise SystemExit(f"{out}: exists and is not this script's CSV (header {','.join(HEADER)}); choose another --out")
            done = {(r["data"], int(r["proxy_seed"]), float(r["per_class"]), r["variant"], int(r["seed"])) for r in reader}

    def write(row) -> None:
        new = not out.exists()
        with open(out, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(HEADER)
            w.writerow(row)

    class Probe(SelectionMethod):
        """Runs the study inside compress (the run's cached embedding and dynamics)."""

        name = "probe"

        def __init__(self, m: float) -> None:
            self.m = m

        def select(self, ctx):
            v = Validated()
            if test:  # the whole training set, tested on the test split
                rows = np.arange(len(ctx.dataset))
                pool, val, emb = ctx.dataset, read_dataset(data, "test", cache=Cache()), ctx.embedding()
            else:
                held, rows, emb = v.split(ctx)
                pool, val = _subset(ctx.dataset, rows), _subset(ctx.dataset, held)
            labels = np.asarray(ctx.labels)[rows]
            n_classes = len(np.unique(labels))
            dyn = _rows_of(EL2N().dynamics(ctx), rows)
            err = class_error(dyn["probs"], labels, n_classes)
            el2n = B.el2n_scores(dyn["probs"], labels)
            print(f"{self.m:g}/class: class error {np.round(err, 3).tolist()}", flush=True)
            budget_ = round(self.m * n_classes)
            for s in seeds:
                for name in variants:
                    label = name + (" (test)" if test else "")
                    if (data, proxy_seed, self.m, label, s) in done:
                        continue
                    if name == "random":
                        idx = make_method("random").select(_PoolContext(ctx, pool, emb, budget_ / len(rows), s)).indices
                    else:
                        idx = variant_indices(name, labels, budget_, err, el2n, s)
                    t = time.perf_counter()
                    a = train_and_test(pool, idx, val, v.arch, v.preset, s, len(idx) / len(pool))["accuracy"]
                    print(f"{self.m:g}/class {name} seed {s}: {100 * a:.2f} ({time.perf_counter() - t:.0f} s)", flush=True)
                    write([data, proxy_seed, self.m, label, s, float(a)])
            _, first = np.unique(ctx.labels, return_index=True)
            return Selection(np.sort(first).astype(np.int64))

    train = read_dataset(data, cache=Cache())
    for m in per_class:
        compress(train, ratio=per_class_ratio(m, train), method=Probe(m), seed=0, proxy_seed=proxy_seed, progress=False)


def summary(paths: list[str]) -> None:
    """Print every variant's mean, random's mean on the same seeds, and the paired difference
    (95 % t interval), per dataset, proxy seed and budget; test-split rows pair with
    ``random (test)``."""
    from dsquant.evaluate.stats import paired_difference

    acc: dict = {}
    for p in paths:
        with open(p) as f:
            for r in csv.DictReader(f):
                key = (Path(r["data"]).name, int(r["proxy_seed"]), float(r["per_class"]))
                acc.setdefault(key, {}).setdefault(r["variant"], {})[int(r["seed"])] = float(r["accuracy"])
    print("| data, proxy seed, per class | variant | accuracy (%) | random, the same seeds (%) | minus random, paired | seeds |")
    print("|---|---|---|---|---|---|")
    for (d, proxy, m), cell in sorted(acc.items()):
        for name, vals in sorted(cell.items()):
            base = "random (test)" if name.endswith(" (test)") else "random"
            rand = cell.get(base, {})
            seeds = sorted(set(vals) & set(rand))
            if name == base or not seeds:
                continue
            a, b = [vals[s] for s in seeds], [rand[s] for s in seeds]
            diff = paired_difference(a, b)
            interval = f"[{100 * diff.low:+.2f}, {100 * diff.high:+.2f}]" if len(seeds) > 1 else "(one seed)"
            print(f"| {d}, {proxy}, {m:g} | {name} | {100 * np.mean(a):.2f} | {100 * np.mean(b):.2f} | {100 * diff.mean:+.2f} {interval} | {len(seeds)} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?")
    p.add_argument("--per-class", nargs="+", type=float, default=[300])
    p.add_argument("--variants", nargs="+", default=["random", "quota:0.5", "quota:1", "cut:0.1"])
    p.add_argument("--n-seeds", type=int, default=5, help="seeds 0 .. N-1 (default 5)")
    p.add_argument("--seeds", nargs="+", type=int, help="these seeds instead")
    p.add_argument("--test", action="store_true", help="select from the whole training set, test on the test split")
    p.add_argument("--proxy-seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.add_argument("--summary", nargs="+", help="CSV files of earlier runs: print the table")
    a = p.parse_args()
    if a.summary:
        summary(a.summary)
        return
    if not a.data or not a.out:
        p.error("DATA and --out are needed to run (or --summary CSV ...)")
    for v in a.variants:
        if v != "random" and (v.count(":") != 1 or v.split(":")[0] not in ("quota", "cut")):
            p.error(f"--variants: {v!r} is not random, quota:L or cut:B")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run(a.data, a.per_class, a.variants, a.seeds if a.seeds is not None else list(range(a.n_seeds)), a.proxy_seed, a.out, a.test)


if __name__ == "__main__":
    main()
