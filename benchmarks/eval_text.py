"""Does selection help text? Two experiments (issue: instruction data).

    python benchmarks/eval_text.py banking77 [--ratios 0.05 0.1 0.2] [--seeds 0 1 2]
    python benchmarks/eval_text.py coverage [--data PATH] [--ratio 0.2]

banking77: a logistic regression on all-MiniLM-L6-v2 embeddings, trained on the subset chosen by
random (class-balanced), DQ and ADQ (bins per intent), tested on banking77_test.jsonl.
coverage: on an instruction set, the share of every ``source`` kept and the mean / 95th
percentile cosine distance from every record to its nearest selected record.
Embeddings are cached (~/.cache/dsquant), so a rerun is fast. Prints Markdown tables.
"""

import argparse
from pathlib import Path

import numpy as np

from dsquant.cache import Cache
from dsquant.data import load_dataset
from dsquant.embed import embed
from dsquant.embed.text import SentenceEncoder
from dsquant.evaluate.text import align_labels, coverage, logreg_accuracy
from dsquant.pipeline import compress

TEXT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text"


def banking77(args) -> None:
    train = load_dataset(TEXT / "banking77_train.jsonl", group_by="label")
    test = load_dataset(TEXT / "banking77_test.jsonl", group_by="label")
    cache = Cache()
    enc = SentenceEncoder()
    xtr, _ = embed(enc, train, cache)
    xte, _ = embed(enc, test, cache)
    ytr, yte = train.labels, align_labels(train, test)
    full = logreg_accuracy(xtr.features, ytr, xte.features, yte)
    rows = {}
    for method in args.methods:
        for ratio in args.ratios:
            accs = []
            for seed in args.seeds:
                res = compress(train, ratio=ratio, n_bins=args.bins, method=method, seed=seed, proxy_seed=0)
                accs.append(logreg_accuracy(xtr.features[res.indices], ytr[res.indices], xte.features, yte, seed=seed))
            rows[(method, ratio)] = accs
            print(f"{method} {ratio}: {np.mean(accs):.4f} +- {np.std(accs, ddof=1):.4f}", flush=True)
    print(f"\nBanking77: logistic regression (C=10) on all-MiniLM-L6-v2 embeddings; train {len(train):,}, test {len(test):,}; "
          f"bins K={args.bins} per intent; mean +- std over seeds {args.seeds}\n")
    print("| method | " + " | ".join(f"{100 * r:g} %" for r in args.ratios) + " |")
    print("|---|" + "---|" * len(args.ratios))
    for method in args.methods:
        cells = [f"{100 * np.mean(rows[(method, r)]):.2f} ± {100 * np.std(rows[(method, r)], ddof=1):.2f}" for r in args.ratios]
        print(f"| {method} | " + " | ".join(cells) + " |")
    print(f"| full (100 %) | {100 * full:.2f} |" + " |" * (len(args.ratios) - 1))


def cover(args) -> None:
    ds = load_dataset(args.data)
    emb, _ = embed(SentenceEncoder(), ds, Cache())
    sources = np.array([str(r.get("source", "")) for r in ds.records])
    print(f"\n{Path(args.data).name}: {len(ds):,} records, {len(set(sources))} sources; keep ratio {args.ratio:g}, "
          f"K={args.bins} bins (one pool), seeds {args.seeds}\n")
    print("| method | mean NN distance | p95 NN distance | sources kept | min / median / max share kept per source |")
    print("|---|---|---|---|---|")
    for method in args.methods:
        stats = []
        for seed in args.seeds:
            res = compress(ds, ratio=args.ratio, n_bins=args.bins, method=method, seed=seed, proxy_seed=0)
            stats.append(coverage(emb.features, res.indices, sources))
        mean = np.mean([s["mean_nn_distance"] for s in stats])
        p95 = np.mean([s["p95_nn_distance"] for s in stats])
        kept = np.mean([s["groups_kept"] for s in stats])
        shares = np.array([list(s["kept_share"].values()) for s in stats]).mean(axis=0)
        print(f"| {method} | {mean:.4f} | {p95:.4f} | {kept:.0f} / {stats[0]['groups']} | {shares.min():.3f} / {np.median(shares):.3f} / {shares.max():.3f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    b = sub.add_parser("banking77")
    b.add_argument("--ratios", nargs="+", type=float, default=[0.05, 0.1, 0.2])
    b.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    b.add_argument("--methods", nargs="+", default=["random", "dq", "adq"])
    b.add_argument("--bins", type=int, default=5)
    c = sub.add_parser("coverage")
    c.add_argument("--data", default=str(TEXT / "instructions.jsonl.gz"))
    c.add_argument("--ratio", type=float, default=0.2)
    c.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    c.add_argument("--methods", nargs="+", default=["random", "dq", "adq"])
    c.add_argument("--bins", type=int, default=5)
    args = p.parse_args()
    banking77(args) if args.what == "banking77" else cover(args)


if __name__ == "__main__":
    main()
