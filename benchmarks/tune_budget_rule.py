"""Tune dq-budget's "auto" rule on a validation split carved from the training set (issue 14,
item 2: the rule that sets the skew from the budget is chosen without the test split).

The training set is split into a pool (5/6) and a validation split (1/6, class-balanced,
seed 0: ``dsquant.evaluate.protocols.validation_split``). The proxy is trained on the pool only;
bins and greedy ranks are computed once; every variant selects from the pool with the same
functions ``DQBudget`` uses, and models of the ``lowbudget`` preset train on the selection and
are tested on the validation split. Paired by seed: for seed s every variant trains with the
same initialisation and batch order, and random draws a new subset per seed.

    python benchmarks/tune_budget_rule.py ../shared/data/fashion-mnist --per-class 1 5 10 50 --seeds 0 1 2 3 4 --out /tmp/tune-fmnist.csv
    python benchmarks/tune_budget_rule.py ../shared/data/text/banking77_train.jsonl --per-class 1 2 5 10 --keep 0.1 0.2 --seeds 0 1 2 3 4 --out /tmp/tune-banking77.csv
    python benchmarks/tune_budget_rule.py ../shared/data/fashion-mnist --per-class --keep 0.3 0.7 --preset pruning --arch mlp --variants random dq s-1-uniform s-2-uniform --out /tmp/tune-pruning.csv
"""

from __future__ import annotations

import argparse
import csv
import itertools
import time
from types import SimpleNamespace

import numpy as np

VARIANTS = {
    # name: (skew, drop_last, order) ; "random" is class-balanced random sampling
    "random": None,
    "herding": "herding",  # the herding baseline per class (reference)
    "herding-drop": "herding-drop",  # herding per class on every bin but the last (the greedy's remainder)
    "dq": (0.0, False, "uniform"),
    "s1-uniform": (1.0, False, "uniform"),
    "s2-uniform": (2.0, False, "uniform"),
    "s2-uniform-drop": (2.0, True, "uniform"),
    "s1-greedy-drop": (1.0, True, "greedy"),
    "s2-greedy-drop": (2.0, True, "greedy"),
    "s4-greedy-drop": (4.0, True, "greedy"),
    "s0-drop": (0.0, True, "uniform"),
    "s-1-uniform": (-1.0, False, "uniform"),
    "s-2-uniform": (-2.0, False, "uniform"),
    # herding order inside every (bin, class) cell (a later session, on CIFAR-10's validation split)
    "s0-herding-drop": (0.0, True, "herding"),
    "s1-herding-drop": (1.0, True, "herding"),
    "s2-herding-drop": (2.0, True, "herding"),
    "s0-herding": (0.0, False, "herding"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--per-class", nargs="*", type=float, default=[1, 5, 10, 50])
    p.add_argument("--keep", nargs="+", type=float, default=[], help="keep ratios of the pool (the pruning regime, e.g. 0.3 0.7 with --preset pruning), run after --per-class; recorded as per_class = ratio * pool / classes")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--arch", nargs="+", default=["convnet", "mlp"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--preset", default="lowbudget")
    p.add_argument("--bins", type=int, default=10)
    p.add_argument("--epochs", type=int, default=5, help="proxy epochs")
    p.add_argument("--embedding", default="gradient", choices=["gradient", "features"])
    p.add_argument("--out", required=True, help="CSV of every training (appended to, resumed)")
    args = p.parse_args()

    from dsquant.cache import Cache
    from dsquant.core.baselines import herding, herding_cell_rank
    from dsquant.core.bins import generate_bins
    from dsquant.core.sampling import budget, sample_uniform, sample_with_counts, skewed_bin_counts
    from dsquant.data import read_dataset
    from dsquant.embed import ProxyEncoder, embed
    from dsquant.evaluate import train_and_test
    from dsquant.evaluate.protocols import per_class_ratio, validation_split
    from dsquant.evaluate.stats import paired_difference

    # the results file is checked (or created) before any work: a CSV of something else is refused,
    # never appended to
    header = "per_class,variant,arch,seed,accuracy,n_train"
    done = {}
    try:
        with open(args.out, "x") as f:
            f.write(header + "\n")
    except FileExistsError:
        with open(args.out) as f:
            if f.readline().strip() != header:
                raise SystemExit(f"--out: {args.out} exists and is not a results file of this script (expected the header {header!r}); give a new path")
            for r in csv.DictReader(f, fieldnames=header.split(",")):
                done[(float(r["per_class"]), r["variant"], r["arch"], int(r["seed"]))] = float(r["accuracy"])
    cache = Cache()
    t = time.perf_counter()
    if args.data.endswith(".jsonl"):
        # labelled text (e.g. banking77_train.jsonl): all-MiniLM-L6-v2 embeddings (as dsquant's
        # text pipeline and benchmarks/eval_text.py), a logistic regression on them tested on the
        # validation split
        from dsquant.data import FeatureDataset, load_dataset
        from dsquant.embed.text import SentenceEncoder
        from dsquant.evaluate.text import logreg_accuracy

        text = load_dataset(args.data, group_by="label")
        full, _ = embed(SentenceEncoder(), text, cache)
        pool, val = validation_split(FeatureDataset(np.asarray(full.features), text.labels, text.classes, "text-minilm"), seed=0)
        emb = SimpleNamespace(features=pool.features, for_binning=lambda: pool.features)
        args.arch = ["logreg-minilm"]

        def evaluate(pool, idx, val, arch, preset, seed):
            t0 = time.perf_counter()
            acc = logreg_accuracy(pool.features[idx], pool.labels[idx], val.features, val.labels, seed=seed)
            return {"accuracy": acc, "seconds": round(time.perf_counter() - t0, 2)}
        print(f"sentence embedding: {time.perf_counter() - t:.0f} s; pool {len(pool)}, validation {len(val)}", flush=True)
    else:
        train = read_dataset(args.data, cache=cache)
        pool, val = validation_split(train, seed=0)
        emb, rec = embed(ProxyEncoder(epochs=args.epochs, seed=0, embedding=args.embedding), pool, cache=cache, progress=True)
        evaluate = train_and_test
        print(f"proxy embedding of the pool ({len(pool)}): {time.perf_counter() - t:.0f} s (cached {rec['cached']})", flush=True)
    t = time.perf_counter()
    bins, rank = generate_bins(emb.for_binning(), args.bins, pool.labels, return_rank=True)
    print(f"bins: {time.perf_counter() - t:.0f} s", flush=True)

    n_classes = len(np.unique(pool.labels))
    keep = {round(r * len(pool) / n_classes, 3): r for r in args.keep}
    budgets = [float(m) for m in args.per_class] + list(keep)
    for m, arch, seed, name in itertools.product(budgets, args.arch, args.seeds, args.variants):
        key = (float(m), name, arch, seed)
        if key in done:
            continue
        ratio = keep[m] if m in keep else per_class_ratio(m, pool)
        total = budget(ratio, len(pool))
        if VARIANTS[name] is None:
            idx = sample_uniform([np.arange(len(pool))], ratio, pool.labels, seed)
        elif VARIANTS[name] == "herding":
            idx = herding(emb.features, total, pool.labels)
        elif VARIANTS[name] == "herding-drop":
            kept = np.sort(np.concatenate(bins[:-1]))
            idx = kept[herding(emb.features[kept], total, pool.labels[kept])]
        else:
            skew, drop, order = VARIANTS[name]
            counts = skewed_bin_counts([len(b) for b in bins], total, skew, drop)
            order_rank = rank if order == "greedy" else herding_cell_rank(emb.features, bins, counts, pool.labels) if order == "herding" else None
            idx = sample_with_counts(bins, counts, pool.labels, seed, order_rank)
        r = evaluate(pool, idx, val, arch, args.preset, seed)
        done[key] = r["accuracy"]
        with open(args.out, "a") as f:
            f.write(f"{m},{name},{arch},{seed},{r['accuracy']:.6f},{len(idx)}\n")
        print(f"{m:>5g}/class {name:<16} {arch:<16} seed {seed}: {100 * r['accuracy']:.2f}  ({r['seconds']} s)", flush=True)

    print("\nvalidation accuracy minus random, paired by seed (95 % paired t interval)")
    for m, arch in itertools.product(budgets, args.arch):
        base = [done.get((float(m), "random", arch, s)) for s in args.seeds]
        for name in args.variants:
            vals = [done.get((float(m), name, arch, s)) for s in args.seeds]
            if name == "random" or None in vals or None in base:
                continue
            d = paired_difference(vals, base)
            print(f"{m:>5g}/class {arch:<10} {name:<16} {100 * np.mean(vals):6.2f}  diff {100 * d.mean:+6.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]")


if __name__ == "__main__":
    main()
