"""Speed and memory of bin generation (issue: core performance targets).

Every case runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own. Prints a
Markdown table. Each process first bins a tiny array, so the one-off cost of loading the
compiled greedy loop (printed above the table) is not counted in a case.

    python benchmarks/bench_bins.py                  # all cases
    python benchmarks/bench_bins.py --cases cls50k   # one case
    python benchmarks/bench_bins.py --naive-classes 2  # naive greedy on 2 of the 10 classes only

Cases:
  cls50k    50,000 x 512 features, 10 classes, 10 bins, against the naive O(B^2 n) greedy
            (dense float64 similarity per class, gains recomputed every step) and the official
            code's structure (float32 matrix, boolean-mask indexing), both run in the process of
            the first precision between three timed dsquant runs and three more (the ratio uses
            the mean of the six)
  pool54k   53,785 x 384 features, no labels (one pool), 10 bins
  imagenet  1,281,167 x 512 features (memory-mapped .npy), 1,000 classes, 10 bins

Synthetic features: ``clustered`` = ReLU(class mean + 32-d shared factor + noise), like a CNN's
penultimate features; ``text-like`` = unit vectors around 276 topic centres (the number of
templates in instructions_t0), like sentence embeddings; ``gaussian`` = i.i.d. N(0, 1), the worst
case for the candidate blocks (flat gains).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def clustered(n, d, classes, seed=0, rank=32):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % classes)
    means = rng.standard_normal((classes, d)).astype(np.float32)
    factors = (rng.standard_normal((rank, d)) / np.sqrt(rank)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    step = 65536
    for s in range(0, n, step):
        m = min(step, n - s)
        x = means[labels[s : s + m]] + 1.5 * rng.standard_normal((m, rank), dtype=np.float32) @ factors
        x += 0.5 * rng.standard_normal((m, d), dtype=np.float32)
        out[s : s + m] = np.maximum(x, 0)
    return out, labels


def text_like(n, d, topics=276, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    t = rng.integers(0, topics, n)
    x = centres[t] + 0.06 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def naive_greedy_bins(features, labels, n_bins, classes=None):
    """The official algorithm's cost, O(B^2 n) per bin: dense similarity of the pool, gains
    recomputed from the selected set at every step (float64)."""
    from dsquant import bin_sizes

    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    sizes = bin_sizes([len(g) for g in groups], n_bins)
    out = []
    for gi, (g, g_sizes) in enumerate(zip(groups, sizes)):
        if classes is not None and gi >= classes:
            break
        f = features[g].astype(np.float64)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        remaining = np.arange(len(g))
        bins_g = []
        for b in g_sizes[:-1]:
            sim = 0.5 + 0.5 * f[remaining] @ f[remaining].T
            col = sim.sum(axis=0)
            taken = np.zeros(len(remaining), bool)
            sel = []
            for _ in range(int(b)):
                gains = col - 2.0 * sim[sel].sum(axis=0)
                gains[taken] = -np.inf
                x = int(np.argmax(gains))
                sel.append(x)
                taken[x] = True
            bins_g.append(g[remaining[sel]])
            remaining = remaining[~taken]
        out.append(bins_g)
    return out


def official_style_bins(features, labels, n_bins, classes=None):
    """The cost structure of the official DQ code (NaiveGreedy over GraphCut): a dense float32
    similarity matrix per pool, and at every step the gains of all unselected samples recomputed
    from the selected rows through boolean-mask fancy indexing. Same O(B^2 n), slower constants."""
    from dsquant import bin_sizes

    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    sizes = bin_sizes([len(g) for g in groups], n_bins)
    for gi, (g, g_sizes) in enumerate(zip(groups, sizes)):
        if classes is not None and gi >= classes:
            break
        f = features[g].astype(np.float32)
        remaining = np.arange(len(g))
        for b in g_sizes[:-1]:
            v = f[remaining]
            norm = np.linalg.norm(v, axis=1)
            sim = (0.5 + 0.5 * (v @ v.T) / (norm[:, None] * norm[None, :])).astype(np.float32)
            col = sim.sum(axis=0)
            selected = np.zeros(len(remaining), dtype=bool)
            gains = np.zeros(len(remaining))
            for _ in range(int(b)):
                gains[~selected] = -2.0 * sim[np.ix_(selected, ~selected)].sum(axis=0) + col[~selected]
                x = int(gains.argmax())
                selected[x] = True
                gains[x] = -np.inf
            remaining = remaining[~selected]


def run_case(case: str, naive_classes: int | None, precision: str) -> dict:
    from dsquant import generate_bins

    dtype = np.float32 if precision == "float32" else np.float64
    rec = {"case": case, "precision": precision}
    # the first call in a process loads the compiled greedy loop (numba's on-disk cache, or a
    # compilation the very first time): timed on its own, not inside the cases
    t = time.perf_counter()
    generate_bins(np.random.default_rng(0).random((64, 8), dtype=np.float32), 2, np.arange(64) % 2, dtype=dtype)
    rec["first_call_seconds"] = time.perf_counter() - t
    if case.startswith("cls50k"):
        kind = case.split("-", 1)[1] if "-" in case else "clustered"
        if kind == "gaussian":
            rng = np.random.default_rng(0)
            feats = rng.standard_normal((50000, 512)).astype(np.float32)
            labels = rng.permutation(np.arange(50000) % 10)
        else:
            feats, labels = clustered(50000, 512, 10)
        rec["data"] = f"50,000 x 512 {kind}, 10 classes, 10 bins"
        def timed() -> tuple[float, list]:
            t = time.perf_counter()
            out = generate_bins(feats, 10, labels, dtype=dtype)
            return time.perf_counter() - t, out

        rec["warm_up_seconds"], bins = timed()  # the bins: a warm-up run, timed apart
        runs = [timed()[0] for _ in range(3)]
        ref_path = os.path.join(os.environ["BENCH_REF"], f"naive-{kind}.npz") if "BENCH_REF" in os.environ else ""
        if naive_classes != 0 and ref_path and not os.path.exists(ref_path):
            # the baselines, bracketed by three more dsquant runs: this machine's speed drifts by
            # tens of percent over minutes, so the ratio uses the mean of all six dsquant runs
            k = naive_classes or 10
            t = time.perf_counter()
            ref = naive_greedy_bins(feats, labels, 10, classes=k)
            naive = (time.perf_counter() - t) * (10 / k)
            np.savez(ref_path, seconds=naive, classes=k, **{f"c{c}_b{b}": ref[c][b] for c in range(k) for b in range(9)})
            rec["naive_seconds"] = naive
            rec["naive_classes_run"] = k
            t = time.perf_counter()
            official_style_bins(feats, labels, 10, classes=k)
            rec["official_style_seconds"] = (time.perf_counter() - t) * (10 / k)
            runs += [timed()[0] for _ in range(3)]
        rec["seconds_runs"] = runs
        rec["seconds"] = float(np.mean(runs))
        if naive_classes != 0 and ref_path and os.path.exists(ref_path):
            # the same bins as the naive greedy, on the classes it ran on
            with np.load(ref_path) as z:
                k = int(z["classes"])
                groups = [np.flatnonzero(labels == c) for c in range(10)]
                rec["same_bins_as_naive"] = bool(
                    all(np.array_equal(np.sort(z[f"c{c}_b{b}"]), np.intersect1d(bins[b], groups[c])) for c in range(k) for b in range(9))
                )
    elif case == "pool54k":
        feats = text_like(53785, 384)
        rec["data"] = "53,785 x 384 text-like, one pool, 10 bins"
        t = time.perf_counter()
        generate_bins(feats, 10, dtype=dtype)
        rec["seconds"] = time.perf_counter() - t
    elif case == "imagenet":
        n, d, c = 1281167, 512, 1000
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            path = os.path.join(tmp, "features.npy")
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
            rng = np.random.default_rng(0)
            labels = rng.permutation(np.arange(n) % c)
            means = rng.standard_normal((c, d)).astype(np.float32)
            for s in range(0, n, 65536):
                m = min(65536, n - s)
                mm[s : s + m] = np.maximum(means[labels[s : s + m]] + 0.7 * rng.standard_normal((m, d), dtype=np.float32), 0)
            mm.flush()
            del mm
            feats = np.load(path, mmap_mode="r")
            rec["data"] = "1,281,167 x 512 clustered (memory-mapped .npy), 1,000 classes, 10 bins"
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t = time.perf_counter()
            bins = generate_bins(feats, 10, labels, dtype=dtype)
            rec["seconds"] = time.perf_counter() - t
            rec["rss_before_gb"] = rss_before / 2**20
            assert sum(len(b) for b in bins) == n
    rec["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["cls50k", "cls50k-gaussian", "pool54k", "imagenet"])
    p.add_argument("--precision", nargs="+", default=["float32", "float64"], help="the first one runs the baselines")
    p.add_argument("--naive-classes", type=int, default=None, help="run the naive greedy on this many classes and scale (default all 10; 0 skips it)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        case, precision = args.one.split(":")
        print(json.dumps(run_case(case, args.naive_classes, precision)))
        return
    rows = []
    ref_dir = tempfile.mkdtemp(prefix="bench-naive-")  # the naive bins, shared by the precisions
    os.environ["BENCH_REF"] = ref_dir
    for case in args.cases:
        for precision in args.precision:
            cmd = [sys.executable, __file__, "--one", f"{case}:{precision}"]
            if args.naive_classes is not None:
                cmd += ["--naive-classes", str(args.naive_classes)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(res.stderr, file=sys.stderr)
                continue
            rec = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(rec)
            print(json.dumps(rec), file=sys.stderr, flush=True)
    import shutil

    shutil.rmtree(ref_dir, ignore_errors=True)
    print(f"machine: {os.cpu_count()} cores; numpy {np.__version__}\n")
    first = max(r["first_call_seconds"] for r in rows) if rows else 0.0
    print(f"(not in the times below: the first call in a process loads the compiled loop, at most {first:.2f} s here)\n")
    print("| data | precision | dsquant | naive O(B²n), numpy | speed-up | official-style O(B²n) | speed-up | same bins as naive | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        # the baselines ran in the process of the first precision, beside its dsquant runs
        nv = r if "naive_seconds" in r else None
        naive = f"{nv['naive_seconds']:.0f} s" + ("" if nv["naive_classes_run"] == 10 else f" (from {nv['naive_classes_run']} classes)") if nv else "-"
        speed = f"{nv['naive_seconds'] / r['seconds']:.0f}x" if nv else "-"
        official = f"{nv['official_style_seconds']:.0f} s" if nv else "-"
        speed_o = f"{nv['official_style_seconds'] / r['seconds']:.0f}x" if nv else "-"
        same = ("yes" if r.get("same_bins_as_naive") else "no") if "same_bins_as_naive" in r else "-"
        runs = f" ({min(r['seconds_runs']):.2f}-{max(r['seconds_runs']):.2f}, {len(r['seconds_runs'])} runs)" if "seconds_runs" in r else ""
        print(f"| {r['data']} | {r['precision']} | {r['seconds']:.2f} s{runs} | {naive} | {speed} | {official} | {speed_o} | {same} | {r['peak_rss_gb']:.2f} GB |")


if __name__ == "__main__":
    main()
