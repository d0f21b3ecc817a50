"""One leaderboard from several benchmark reports: every method's difference from class-balanced
random, paired by seed, with its 95 % interval, per (dataset, architecture, budget), and a tally
of where each method beats random (interval above zero), ties (interval contains zero) or loses
(interval below zero).

    python benchmarks/leaderboard.py docs/results/lowbudget-fashion-mnist/summary.csv docs/results/banking77/summary.csv

Reads the ``summary.csv`` files ``dsquant benchmark`` and ``benchmarks/eval_text.py --out``
write; ``--per-class`` labels budgets as images per class where the classes are known
(``--classes NAME=K N`` gives a dataset's class count K and training-set size N). Prints Markdown.

``--pair A B`` also prints A's difference from B in every cell both were run, paired by seed
(the same seed trains both subsets from the same initialisation), from the ``results.csv``
beside each summary:

    python benchmarks/leaderboard.py docs/results/lowbudget-cifar10/summary.csv --pair dq-budget herding

``--best-of M ...`` prints, the same way, the best of methods M per seed minus random: the
accuracy a choice among M would have if it could read the test split (an upper bound on any
rule that chooses among them from the training set alone; cells where every M was run):

    python benchmarks/leaderboard.py docs/results/proxy-per-seed-fashion-mnist-mlp/summary.csv --best-of dq dq-budget herding herding-drop
"""

from __future__ import annotations

import argparse
import csv


def _label(ratio: float, sizes: dict, dataset: str) -> str:
    if dataset in sizes:
        k, n = sizes[dataset]
        m = ratio * n / k
        if abs(m - round(m)) < 1e-6 and m < 100:
            return f"{round(m)}/class"
    return f"{100 * ratio:.3g} %"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("summaries", nargs="+", help="summary.csv files")
    p.add_argument("--classes", nargs="*", default=["fashion-mnist=10:60000", "cifar10-jpeg=10:50000", "banking77=77:10003"],
                   help="NAME=K:N per dataset, to label budgets as samples per class")
    p.add_argument("--pair", nargs=2, metavar=("A", "B"), help="also print method A minus method B, paired by seed")
    p.add_argument("--best-of", nargs="+", metavar="M", help="also print the best of methods M per seed (read on the test split: an upper bound) minus random, paired by seed")
    args = p.parse_args()
    sizes = {}
    for item in args.classes:
        name, kn = item.split("=")
        k, n = kn.split(":")
        sizes[name] = (int(k), int(n))
    rows = []
    for path in args.summaries:
        with open(path) as f:
            rows += list(csv.DictReader(f))
    cells = sorted({(r["dataset"], r["arch"], float(r["ratio"])) for r in rows if r["method"] not in ("random", "full")})
    methods = []
    for r in rows:
        if r["method"] not in ("random", "full") and r["method"] not in methods:
            methods.append(r["method"])
    by = {(r["dataset"], r["arch"], float(r["ratio"]), r["method"]): r for r in rows}
    tally = {m: [0, 0, 0] for m in methods}
    one_ds, one_arch = len({c[0] for c in cells}) == 1, len({c[1] for c in cells}) == 1  # said once, above the table
    heads = [" / ".join([*([] if one_ds else [d]), *([] if one_arch else [a]), _label(q, sizes, d)]) for d, a, q in cells]
    if cells and (one_ds or one_arch):
        print(" / ".join([*([cells[0][0]] if one_ds else []), *([cells[0][1]] if one_arch else [])]) + "\n")
    print("Difference from class-balanced random (percentage points), paired by seed, 95 % paired t interval; "
          "**bold ↑**: interval above zero, ↓: below zero.\n")
    print("| method | " + " | ".join(heads) + " | above / tie / below |")
    print("|---|" + "---|" * (len(heads) + 1))
    for m in methods:
        out = []
        for d, a, q in cells:
            r = by.get((d, a, q, m))
            if r is None or r["diff_vs_random"] == "":
                out.append("-")
                continue
            mean, lo, hi = (100 * float(r[k]) for k in ("diff_vs_random", "diff_ci95_low", "diff_ci95_high"))
            text = f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]"
            if lo > 0:
                out.append(f"**{text} ↑**")
                tally[m][0] += 1
            elif hi < 0:
                out.append(f"{text} ↓")
                tally[m][2] += 1
            else:
                out.append(text)
                tally[m][1] += 1
        print(f"| {m} | " + " | ".join(out) + f" | {tally[m][0]} / {tally[m][1]} / {tally[m][2]} |")
    base = [by.get((d, a, q, "random")) for d, a, q in cells]
    fulls = {(r["dataset"], r["arch"]): r for r in rows if r["method"] == "full"}
    print("| *random (accuracy %)* | " + " | ".join(f"{100 * float(b['mean']):.2f} ± {100 * float(b['std']):.2f}" if b else "-" for b in base) + " | |")
    for (d, a), r in sorted(fulls.items()):
        print(f"| *full data, {d} / {a}* | {100 * float(r['mean']):.2f} ± {100 * float(r['std']):.2f} (n={r['n']}) |" + " |" * len(cells))
    if args.pair:
        _print_pair(args.summaries, (args.pair[0],), args.pair[1], sizes, f"{args.pair[0]} minus {args.pair[1]}")
    if args.best_of:
        _print_pair(args.summaries, tuple(args.best_of), "random", sizes, f"the best of {', '.join(args.best_of)} per seed (picked on the test split) minus random")


def _print_pair(summaries: list[str], a: tuple, b: str, sizes: dict, title: str) -> None:
    """The best of methods ``a`` (one method: that method) minus ``b`` per (dataset, arch,
    ratio), paired by (preset, seed) over the seeds every one of them was run with, from the
    results.csv beside each summary.csv."""
    from pathlib import Path

    from dsquant.evaluate.stats import paired_difference

    acc: dict[tuple, dict] = {}
    for path in summaries:
        results = Path(path).with_name("results.csv")
        if not results.is_file():
            raise SystemExit(f"--pair: {results} not found (the every-training results.csv that dsquant benchmark writes beside {path})")
        with open(results) as f:
            for r in csv.DictReader(f):
                if r["method"] in (*a, b):
                    acc.setdefault((r["dataset"], r["arch"], float(r["ratio"]), r["method"]), {})[(r["preset"], r["seed"])] = float(r["accuracy"])
    print(f"\n{title} (percentage points), paired by seed, 95 % paired t interval:\n")
    print("| dataset / arch / budget | difference | seeds |")
    print("|---|---|---|")
    for d, arch, q in sorted({k[:3] for k in acc}):
        xs, y = [acc.get((d, arch, q, m)) for m in a], acc.get((d, arch, q, b))
        if not all(xs) or not y:
            continue
        seeds = sorted(set(y).intersection(*xs))
        if len(seeds) < 2:
            continue
        diff = paired_difference([max(x[s] for x in xs) for s in seeds], [y[s] for s in seeds])
        print(f"| {d} / {arch} / {_label(q, sizes, d)} | {100 * diff.mean:+.2f} [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}] | {len(seeds)} |")


if __name__ == "__main__":
    main()
