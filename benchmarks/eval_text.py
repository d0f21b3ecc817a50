"""Does selection help text? Two experiments (issue: instruction data).

    python benchmarks/eval_text.py banking77 [--per-class 1 2 5 10] [--ratios 0.05 0.1 0.2] [--seeds 0 .. 9] [--out DIR]
    python benchmarks/eval_text.py coverage [--data PATH] [--ratios 0.05 0.1 0.2] [--methods ...] [--select-model static]
        [--select-max-tokens 128] [--select-precision auto] [--select-device cpu]

banking77: a logistic regression on all-MiniLM-L6-v2 embeddings, trained on the subset chosen by
random (intent-balanced) and each selection method (bins per intent), tested on
banking77_test.jsonl; every method's difference from random is paired by seed, with its 95 %
interval (Student's paired t). With --out, DIR gets the benchmark's reports (results.csv,
summary.csv, results.md, accuracy.png; see ``dsquant benchmark``).
coverage: on an instruction set, the share of every ``source`` kept and the mean / 95th
percentile cosine distance from every record to its nearest selected record, in the float32
all-MiniLM-L6-v2 space whatever embedding the selection used (``--select-model``).
Embeddings are cached (~/.cache/dsquant), so a rerun is fast. Prints Markdown tables.
"""

import argparse
import time
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
    from dsquant.evaluate.protocols import per_class_ratio
    from dsquant.evaluate.stats import paired_difference

    if args.out:
        from dsquant.evaluate.grid import check_report_dir

        check_report_dir(args.out)  # before the work, not after
    train = load_dataset(TEXT / "banking77_train.jsonl", group_by="label")
    test = load_dataset(TEXT / "banking77_test.jsonl", group_by="label")
    cache = Cache()
    enc = SentenceEncoder()
    xtr, _ = embed(enc, train, cache)
    xte, _ = embed(enc, test, cache)
    ytr, yte = train.labels, align_labels(train, test)
    full = logreg_accuracy(xtr.features, ytr, xte.features, yte)
    budgets = [(f"{m:g}/intent", per_class_ratio(m, train)) for m in args.per_class] + [(f"{100 * r:g} %", r) for r in args.ratios]
    rows, records = {}, []
    for method in args.methods:
        for label, ratio in budgets:
            accs = []
            for seed in args.seeds:
                res = compress(train, ratio=ratio, n_bins=args.bins, method=method, seed=seed, proxy_seed=0, cache_dir=cache.root)
                t0 = time.perf_counter()
                accs.append(logreg_accuracy(xtr.features[res.indices], ytr[res.indices], xte.features, yte, seed=seed))
                records.append({"dataset": "banking77", "method": method, "ratio": ratio, "arch": "logreg-minilm", "seed": seed, "preset": "text",
                                "accuracy": accs[-1], "n_train": len(res.indices), "seconds": round(time.perf_counter() - t0, 2)})
            rows[(method, label)] = accs
            print(f"{method} {label}: {np.mean(accs):.4f} +- {np.std(accs, ddof=1):.4f}", flush=True)
    print(f"\nBanking77: logistic regression (C=10) on all-MiniLM-L6-v2 embeddings; train {len(train):,}, test {len(test):,}; "
          f"bins K={args.bins} per intent; {len(args.seeds)} seeds ({args.seeds[0]}..{args.seeds[-1]}); test accuracy (%) mean ± std, "
          f"and the difference from intent-balanced random paired by seed with its 95 % interval (Student's paired t)\n")
    labels = [b[0] for b in budgets]
    print("| method | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for method in args.methods:
        cells = []
        for label in labels:
            a = rows[(method, label)]
            cell = f"{100 * np.mean(a):.2f} ± {100 * np.std(a, ddof=1):.2f}"
            if method != "random" and ("random", label) in rows:
                d = paired_difference(a, rows[("random", label)])
                mark = " **↑**" if d.low > 0 else (" ↓" if d.high < 0 else "")
                cell += f" ({100 * d.mean:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]{mark})"
            cells.append(cell)
        print(f"| {method} | " + " | ".join(cells) + " |")
    print(f"| full (100 %) | {100 * full:.2f} |" + " |" * (len(labels) - 1))
    if args.out:
        from dsquant.evaluate.grid import write_row_reports

        records.append({"dataset": "banking77", "method": "full", "ratio": 1.0, "arch": "logreg-minilm", "seed": 0, "preset": "text", "accuracy": full, "n_train": len(train)})
        paths = write_row_reports(records, args.out, title="Banking77: logistic regression on all-MiniLM-L6-v2 embeddings")
        print("\nwrote " + ", ".join(str(p) for p in paths.values()))


def cover(args) -> None:
    from unittest import mock

    import dsquant.core.bins as core_bins

    ds = load_dataset(args.data)
    emb, _ = embed(SentenceEncoder(precision="float32"), ds, Cache(), progress=True)  # the space coverage is measured in
    sources = np.array([str(r.get("source", "")) for r in ds.records])
    exact, memo = core_bins.generate_bins, {}

    def same_bins(features, n_bins, *a, **kw):  # bins depend on the embedding and K only: computed once, not per ratio and seed
        import hashlib

        key = (hashlib.sha1(np.ascontiguousarray(features).view(np.uint8)).hexdigest(), n_bins, repr(a), repr(sorted(kw.items())))
        if key not in memo:
            memo[key] = exact(features, n_bins, *a, **kw)
        return memo[key]

    print(f"\n{Path(args.data).name}: {len(ds):,} records, {len(set(sources))} sources; K={args.bins} bins (one pool), seeds {args.seeds}; "
          f"selection embedded with {args.select_model} (max tokens {args.select_max_tokens or 'model default'}, precision {args.select_precision}, "
          f"device {args.select_device or 'default'}), distances in the float32 {SentenceEncoder().model_name} space (cosine)\n")
    print("| keep | method | mean NN distance | p95 NN distance | sources kept | min / median / max share kept per source |")
    print("|---|---|---|---|---|---|")
    with mock.patch.object(core_bins, "generate_bins", same_bins):
        for ratio in args.ratios:
            for method in args.methods:
                stats = []
                for seed in args.seeds:
                    res = compress(ds, ratio=ratio, n_bins=args.bins, method=method, seed=seed, proxy_seed=0, text_model=args.select_model,
                                   text_max_tokens=args.select_max_tokens, encoder_precision=args.select_precision, device=args.select_device)
                    stats.append(coverage(emb.features, res.indices, sources))
                mean = np.mean([s["mean_nn_distance"] for s in stats])
                p95 = np.mean([s["p95_nn_distance"] for s in stats])
                kept = np.mean([s["groups_kept"] for s in stats])
                shares = np.array([list(s["kept_share"].values()) for s in stats]).mean(axis=0)
                print(f"| {100 * ratio:g} % | {method} | {mean:.4f} | {p95:.4f} | {kept:.0f} / {stats[0]['groups']} | {shares.min():.3f} / {np.median(shares):.3f} / {shares.max():.3f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    b = sub.add_parser("banking77")
    b.add_argument("--per-class", nargs="+", type=float, default=[1, 2, 5, 10], help="budgets in examples per intent")
    b.add_argument("--ratios", nargs="+", type=float, default=[0.05, 0.1, 0.2], help="budgets as keep ratios")
    b.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    b.add_argument("--methods", nargs="+", help="selection methods (default: every registered one, random first)")
    b.add_argument("--bins", type=int, default=10)
    b.add_argument("--out", help="directory for the reports (results.csv, summary.csv, results.md, accuracy.png)")
    c = sub.add_parser("coverage")
    c.add_argument("--data", default=str(TEXT / "instructions.jsonl.gz"))
    c.add_argument("--ratios", nargs="+", type=float, default=[0.2])
    c.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    c.add_argument("--methods", nargs="+", default=["random", "dq", "adq"])
    c.add_argument("--bins", type=int, default=5)
    c.add_argument("--select-model", default="all-MiniLM-L6-v2", help="--text-model of the selection (e.g. static); coverage is always measured in the float32 MiniLM space")
    c.add_argument("--select-max-tokens", type=int, help="--max-tokens of the selection's embedding (e.g. 128, the fast mode)")
    c.add_argument("--select-precision", default="float32", help="--encoder-precision of the selection's embedding (default float32; auto: bf16 on CPUs with AMX)")
    c.add_argument("--select-device", help="device of the selection's embedding (e.g. cpu, where the fast mode's bf16 runs)")
    args = p.parse_args()
    if args.what == "banking77" and not args.methods:
        from dsquant.evaluate.grid import methods_in_order
        from dsquant.methods import METHODS

        args.methods = methods_in_order(METHODS)
    banking77(args) if args.what == "banking77" else cover(args)


if __name__ == "__main__":
    main()
