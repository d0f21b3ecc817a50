"""Bin generation on a real cached embedding: time, and how the active-set greedy behaves.

    python benchmarks/bench_bins_real.py EMBEDDING.npz
    python benchmarks/bench_bins_real.py EMBEDDING.npz --naive-classes 2   # also check exactness

EMBEDDING.npz is an embedding from dsquant's cache (``$DSQUANT_CACHE/embeddings/*.npz``, written
by ``dsquant compress``): ``features`` (n, d) and, for the gradient embedding, ``delta`` (n, C),
whose most negative entry is the label. Prints, for the gradient embedding (when present) and
the penultimate features: the exact refreshes per bin, rows computed per bin, exact re-scorings
of near-ties per bin, how many classes fell back to the whole pool, the wall time of
``generate_bins`` (10 bins, float32 rows, mean of 3 runs after a warm-up call) and, with
``--naive-classes K``, whether its bins equal those of the naive O(B^2 n) float64 greedy of
``bench_bins.py`` on the first K classes (on the explicit C*(d+1)-dim gradient vectors).
"""

import argparse
import time

import numpy as np

from dsquant import GradientEmbedding, bin_sizes, generate_bins
from dsquant.core.bins import _PoolGreedy
from dsquant.core.similarity import make_kernel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("embedding")
    p.add_argument("--bins", type=int, default=10)
    p.add_argument("--naive-classes", type=int, default=0, help="compare with the naive greedy on this many classes")
    args = p.parse_args()
    with np.load(args.embedding, allow_pickle=False) as z:
        feats = z["features"]
        delta = z["delta"] if "delta" in z.files else None
    if delta is None:
        raise SystemExit(f"{args.embedding}: no 'delta' array to take the labels from")
    labels = delta.argmin(axis=1)
    cases = [("gradient", GradientEmbedding(delta, feats)), ("penultimate", feats)]
    for emb in (GradientEmbedding(delta[:200], feats[:200]), feats[:200]):  # load the compiled loops
        generate_bins(emb, 2, labels[:200])
    same = f" same bins as naive ({args.naive_classes} classes) |" if args.naive_classes else ""
    print(f"| embedding | refreshes / bin | rows / bin | re-scorings / bin | whole-pool classes | generate_bins |{same}")
    print("|---|---|---|---|---|---|" + ("---|" if same else ""))
    for name, emb in cases:
        total, fallback, n_bins = {}, 0, 0
        for c in np.unique(labels):
            g = np.flatnonzero(labels == c)
            part = emb.take(g) if isinstance(emb, GradientEmbedding) else emb[g]
            greedy = _PoolGreedy(make_kernel(part, dtype=np.float32), 1.0, None, 2**31)
            for b in bin_sizes([len(g)], args.bins)[0][:-1]:
                greedy.select(int(b))
                n_bins += 1
            for k, v in greedy.stats.items():
                total[k] = total.get(k, 0) + v
            fallback += int(greedy.whole_pool)
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            bins = generate_bins(emb, args.bins, labels)
            runs.append(time.perf_counter() - t)
        check = ""
        if args.naive_classes:
            from bench_bins import naive_greedy_bins

            x = feats.astype(np.float64)
            if name == "gradient":  # the explicit vectors g = [delta, vec(delta e^T)]
                d64 = delta.astype(np.float64)
                x = np.concatenate([d64, (d64[:, :, None] * x[:, None, :]).reshape(len(x), -1)], axis=1)
            ref = naive_greedy_bins(x, labels, args.bins, classes=args.naive_classes)
            ok = all(
                np.array_equal(np.sort(ref[c][b]), np.intersect1d(bins[b], np.flatnonzero(labels == c)))
                for c in range(args.naive_classes) for b in range(args.bins - 1)
            )
            check = f" {'yes' if ok else 'NO'} |"
        print(
            f"| {name} | {total['refreshes'] / n_bins:.2f} | {total['rows'] / n_bins:.0f} | "
            f"{total['rescored'] / n_bins:.1f} | {fallback} of {len(np.unique(labels))} | {np.mean(runs):.2f} s |{check}"
        )


if __name__ == "__main__":
    main()
