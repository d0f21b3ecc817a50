"""Bin generation on a real cached embedding: time, and how the active-set greedy behaves.

    python benchmarks/bench_bins_real.py EMBEDDING.npz

EMBEDDING.npz is an embedding from dsquant's cache (``$DSQUANT_CACHE/embeddings/*.npz``, written
by ``dsquant compress``): ``features`` (n, d) and, for the gradient embedding, ``delta`` (n, C),
whose most negative entry is the label. Prints, for the gradient embedding (when present) and
the penultimate features: the exact refreshes per bin, rows computed per bin, exact re-scorings
of near-ties per bin, how many classes fell back to the whole pool, and the wall time of
``generate_bins`` (10 bins, float32 rows, after a warm-up call).
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
    args = p.parse_args()
    with np.load(args.embedding, allow_pickle=False) as z:
        feats = z["features"]
        delta = z["delta"] if "delta" in z.files else None
    if delta is None:
        raise SystemExit(f"{args.embedding}: no 'delta' array to take the labels from")
    labels = delta.argmin(axis=1)
    cases = [("gradient", GradientEmbedding(delta, feats)), ("penultimate", feats)]
    generate_bins(feats[:200], 2, labels[:200])  # load the compiled loop
    print("| embedding | refreshes / bin | rows / bin | re-scorings / bin | whole-pool classes | generate_bins |")
    print("|---|---|---|---|---|---|")
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
        t = time.perf_counter()
        generate_bins(emb, args.bins, labels)
        seconds = time.perf_counter() - t
        print(
            f"| {name} | {total['refreshes'] / n_bins:.2f} | {total['rows'] / n_bins:.0f} | "
            f"{total['rescored'] / n_bins:.1f} | {fallback} of {len(np.unique(labels))} | {seconds:.2f} s |"
        )


if __name__ == "__main__":
    main()
