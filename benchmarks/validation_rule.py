"""Choose ``validated``'s small-budget rule without the test split: nested validation.

``validated`` picks a method on a held-out sixth of the training set (the *outer* validation
split); which rule turns those validation accuracies into a choice (a fixed margin over the
incumbent, or a paired interval above zero; which incumbent) is itself a choice, and it must not
be made on the test split (issue 14). This script repeats ``validated``'s procedure one level
down: the outer pool (5/6 of the training set) is split again into an inner pool and an inner
validation split (1/6 of the pool, seed 0), every candidate is validated there (the *inner*
accuracies: what a rule sees), and every candidate is also validated on the outer split (the
*outer* accuracies: how good the choice was). A rule is scored by the outer accuracy of what
it chose from the inner accuracies, against the best candidate's (its regret) and against
DQ's. Nothing of the test split is read. The embedding is the run's (the default proxy, from
the cache), restricted to the pool's rows, as ``validated`` does.

    python benchmarks/validation_rule.py ../shared/data/fashion-mnist --per-class 1 5 10 50 100 --out /tmp/rule-fmnist.csv
    python benchmarks/validation_rule.py ../shared/data/cifar10/cifar10-jpeg.tar --per-class 1 5 10 50 --out /tmp/rule-cifar.csv
    python benchmarks/validation_rule.py --summary /tmp/rule-fmnist.csv /tmp/rule-cifar.csv
    python benchmarks/validation_rule.py --summary /tmp/rule-fmnist.csv /tmp/rule-cifar.csv --summary-seeds 3

The CSV has a row per (per_class, level, candidate, seed); ``--summary`` prints every rule's
choice and outcome per cell and the totals.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np

HEADER = ("data", "per_class", "level", "candidate", "seed", "accuracy")
CANDIDATES = ("random", "dq", "dq-budget", "herding")  # herding-drop: a second run, --candidates herding-drop

# name: (incumbent, rivals, kind); kind "margin" (mean more than 1 point above the incumbent's)
# or "paired" (95 % paired t interval of the gain over the incumbent above zero, highest mean
# among those), "best" (highest mean, no evidence asked)
RULES = {
    "v2: margin 1, dq-budget vs herding": ("dq-budget", ("herding",), "margin"),
    "paired, dq-budget vs herding": ("dq-budget", ("herding",), "paired"),
    "paired, dq vs dq-budget, herding": ("dq", ("dq-budget", "herding"), "paired"),
    "margin 1, dq vs dq-budget, herding": ("dq", ("dq-budget", "herding"), "margin"),
    "paired, random vs dq-budget, herding": ("random", ("dq-budget", "herding"), "paired"),
    "best of dq-budget, herding": ("dq-budget", ("herding",), "best"),
    # with herding-drop (where a cell has it)
    "margin 1, dq-budget vs herding, herding-drop": ("dq-budget", ("herding", "herding-drop"), "margin"),
    "paired, dq-budget vs herding, herding-drop": ("dq-budget", ("herding", "herding-drop"), "paired"),
    "paired, dq vs dq-budget, herding, herding-drop": ("dq", ("dq-budget", "herding", "herding-drop"), "paired"),
    "best of dq-budget, herding, herding-drop": ("dq-budget", ("herding", "herding-drop"), "best"),
    # with typiclust too (session 12: --candidates typiclust)
    "paired, dq vs dq-budget, herding, herding-drop, typiclust": ("dq", ("dq-budget", "herding", "herding-drop", "typiclust"), "paired"),
    # version 4: CCS with the large cut from 100 per class on images (validated adds it itself;
    # --candidates dq at such budgets gives its rows)
    "v4: paired, dq vs dq-budget, herding, herding-drop, ccs": ("dq", ("dq-budget", "herding", "herding-drop", "ccs"), "paired"),
}


def choose(acc: dict, incumbent: str, rivals, kind: str, margin: float = 1.0) -> str:
    """The rule's choice from per-seed accuracies (fractions) ``acc[name] = [...]``: ``"best"``
    the highest mean, else :func:`dsquant.methods.validated.choose` (``"paired"``, ``"margin"``)."""
    from dsquant.methods.validated import choose as rule_choice

    names = [incumbent, *rivals]
    if kind == "best":
        return max(names, key=lambda k: (float(np.mean(acc[k])), -names.index(k)))
    return rule_choice(acc, names, kind, margin)[0]


def run(data: str, per_class: list[float], n_seeds: int, out: Path, candidates) -> None:
    from dsquant import compress
    from dsquant.cache import Cache
    from dsquant.data import read_dataset
    from dsquant.evaluate.protocols import per_class_ratio
    from dsquant.methods.base import Selection, SelectionMethod
    from dsquant.methods.validated import Validated, _PoolContext, _subset

    rows_out: list[list] = []
    done = set()
    if out.exists():  # resume a run of this script; anything else is left alone
        if not out.is_file():
            raise SystemExit(f"{out}: exists and is not a file; choose another --out")
        with open(out) as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != list(HEADER):
                raise SystemExit(f"{out}: exists and is not this script's CSV (header {','.join(HEADER)}); choose another --out")
            for r in reader:
                done.add(float(r["per_class"]))
                rows_out.append([r[k] for k in HEADER])

    class Probe(SelectionMethod):
        """Runs the study inside compress (so the embedding is the cached default proxy's);
        selects the first row of every class."""

        name = "probe"

        def __init__(self, m: float) -> None:
            self.m = m

        def select(self, ctx):
            v = Validated(candidates=candidates, n_seeds=n_seeds)
            t = time.perf_counter()
            outer = v.validate(ctx)["accuracy"]
            _, rows, emb = v.split(ctx)  # validated's pool, split again inside validate below
            pool = _subset(ctx.dataset, rows)
            inner_ctx = _PoolContext(ctx, pool, emb, per_class_ratio(self.m, pool), 0)
            inner = v.validate(inner_ctx)["accuracy"]
            print(f"{data} {self.m:g}/class: {time.perf_counter() - t:.0f} s", flush=True)
            for level, acc in (("inner", inner), ("outer", outer)):
                for k, vals in acc.items():
                    for s, a in enumerate(vals):
                        rows_out.append([data, self.m, level, k, s, a])
            _, first = np.unique(ctx.labels, return_index=True)
            return Selection(np.sort(first).astype(np.int64))

    train = read_dataset(data, cache=Cache())
    for m in per_class:
        if m in done:
            print(f"{m:g}/class: in {out}, skipped")
            continue
        compress(train, ratio=per_class_ratio(m, train), method=Probe(m), seed=0, proxy_seed=0, progress=False)
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(HEADER)
            w.writerows(rows_out)
        os.replace(tmp, out)


def summary(paths: list[str], n_seeds: int | None = None) -> None:
    """Print every rule's choice per cell and the totals; ``n_seeds``: the rules see only the
    first n seeds' accuracies at the inner level (what a cheaper validator would have seen)."""
    cells: dict = {}
    for p in paths:
        with open(p) as f:
            for r in csv.DictReader(f):
                if n_seeds is not None and r["level"] == "inner" and int(r["seed"]) >= n_seeds:
                    continue
                key = (Path(r["data"]).name, float(r["per_class"]))
                cells.setdefault(key, {}).setdefault(r["level"], {}).setdefault(r["candidate"], []).append(float(r["accuracy"]))
    total = {k: [0.0, 0.0, 0] for k in RULES}  # regret, minus dq, cells below dq
    shown = (*CANDIDATES, "herding-drop", "typiclust", "ccs")
    print("| data | per class | outer mean: " + ", ".join(shown) + " | " + " | ".join(RULES) + " |")
    print("|---|---|---|" + "---|" * len(RULES))
    for (d, m), lv in sorted(cells.items()):
        inner, outer = lv["inner"], lv["outer"]
        om = {k: 100 * float(np.mean(v)) for k, v in outer.items()}
        best = max(v for k, v in om.items() if k != "random")  # the best candidate (random is not one)
        line = [d, f"{m:g}", ", ".join(f"{om[k]:.2f}" if k in om else "-" for k in shown)]
        for name, (inc, riv, kind) in RULES.items():
            c = choose(inner, inc, [r for r in riv if r in inner], kind)
            total[name][0] += best - om[c]
            total[name][1] += om[c] - om["dq"]
            total[name][2] += om[c] < om["dq"]
            line.append(f"{c} ({om[c] - om['dq']:+.2f})")
        print("| " + " | ".join(line) + " |")
    print()
    print("| rule | summed regret (points, outer) | summed gain over dq | cells below dq |")
    print("|---|---|---|---|")
    for name, (reg, gain, below) in total.items():
        print(f"| {name} | {reg:.2f} | {gain:+.2f} | {below} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?")
    p.add_argument("--per-class", nargs="+", type=float, default=[1, 5, 10, 50])
    p.add_argument("--n-seeds", type=int, default=5)
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    p.add_argument("--out", type=Path)
    p.add_argument("--summary", nargs="+", help="CSV files of earlier runs: print the rules' table")
    p.add_argument("--summary-seeds", type=int, help="with --summary: the rules see the first N seeds only (a cheaper validator)")
    a = p.parse_args()
    if a.summary:
        summary(a.summary, a.summary_seeds)
        return
    if not a.data or not a.out:
        p.error("DATA and --out are needed to run (or --summary CSV ...)")
    run(a.data, a.per_class, a.n_seeds, a.out, tuple(a.candidates))


if __name__ == "__main__":
    main()
