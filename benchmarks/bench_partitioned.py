"""Partitioned greedy against the exact bins of one pool, and its cost at scale.

    python benchmarks/bench_partitioned.py quality --n 100000 [--dim 256] [--parts 4 10] [--bins 10] [--first 3]
    python benchmarks/bench_partitioned.py scale --n 10000000 --dim 256 --parts 100 [--max-parts 3] --memmap /tmp/x.npy

``quality``: synthetic clustered features (``--centres`` Gaussian clusters of different sizes and
spreads, float32) as one unlabelled pool; the exact greedy bins (:func:`dsquant.core.bins.pool_bins`)
and partitioned greedy with each ``--parts`` P (oversample 2, seed 0), both computing only the
first ``--first`` greedy bins of K (the rest is one remainder: the same bins as a full run's
first ones). Per bin: the GraphCut objective of the partitioned bin on its remaining pool
divided by the exact bin's on its own (target >= 0.99), and the overlap of the two bins
(|A & B| / |B|); times.

``scale``: an N x d float32 ``.npy`` pool written once (``--memmap``), read with plain file
reads (no memory map, so the peak RSS is the working memory); the first bin's
stages: the coverage reduction over all N rows, ``--max-parts`` of the P parts' greedy runs
(timed one after another, peak RSS of the process after each), and the union step (a greedy
picking B of 2B candidates) measured at 50,000 and 200,000 candidates and extrapolated to 2B;
then the time per bin on 1, 10 and 100 machines (parts at once; reductions and union step
sequential).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np

from dsquant.core.bins import bin_sizes, pool_bins
from dsquant.core.partitioned import graphcut_objective, part_greedy, partitioned_bins, unit_sum


def clustered(n: int, dim: int, centres: int, seed: int = 0, out=None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim)).astype(np.float32) * 3
    weights = rng.dirichlet(np.ones(centres) * 0.5)
    spread = rng.uniform(0.5, 2.0, centres).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float32) if out is None else out
    for start in range(0, n, 1 << 18):
        m = min(1 << 18, n - start)
        k = rng.choice(centres, m, p=weights)
        x[start : start + m] = c[k] + spread[k, None] * rng.standard_normal((m, dim), dtype=np.float32)
    return x


class _FileRows:
    """The rows of a ``.npy`` file, read with plain file reads (a contiguous run of rows in one
    read, other rows one by one): no memory map, so the process's peak RSS is its working
    memory (through a map, the kernel's fault-around would count most of the file's pages in
    the page cache as this process's RSS after scattered reads)."""

    ndim = 2

    def __init__(self, path: Path) -> None:
        m = np.load(path, mmap_mode="r")
        self.path, self.shape, self.dtype, self.offset = path, m.shape, m.dtype, m.offset
        del m
        self.row_bytes = self.shape[1] * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        idx = np.arange(*index.indices(self.shape[0])) if isinstance(index, slice) else np.asarray(index, dtype=np.int64)
        out = np.empty((len(idx), self.shape[1]), dtype=self.dtype)
        with open(self.path, "rb") as f:
            if len(idx) and idx[-1] - idx[0] + 1 == len(idx) and np.all(np.diff(idx) == 1):
                f.seek(self.offset + int(idx[0]) * self.row_bytes)
                f.readinto(out)
            else:
                for k, i in enumerate(idx.tolist()):
                    f.seek(self.offset + i * self.row_bytes)
                    f.readinto(out[k])
        return out


def first_sizes(n: int, n_bins: int, first: int) -> np.ndarray:
    full = bin_sizes([n], n_bins)[0]
    return np.array([*full[:first], n - int(full[:first].sum())])


def quality(n: int, dim: int, parts: list[int], n_bins: int, first: int, centres: int) -> None:
    x = clustered(n, dim, centres)
    sizes = first_sizes(n, n_bins, first)
    t = time.perf_counter()
    exact = pool_bins(x, sizes)
    t_exact = time.perf_counter() - t
    print(f"pool {n} x {dim} ({centres} clusters), K = {n_bins}, first {first} bins of {sizes[0]}; exact greedy {t_exact:.1f} s")
    print("| parts | seconds | objective / exact, per bin | overlap with the exact bin, per bin |\n|---|---|---|---|")
    for p, union in [(p, u) for p in parts for u in (True, False)]:
        t = time.perf_counter()
        got = partitioned_bins(x, len(sizes), p, sizes=sizes, union_greedy=union)
        s = time.perf_counter() - t
        pool_e = pool_p = np.arange(n)
        ratios, overlaps = [], []
        for k in range(first):
            ratios.append(graphcut_objective(x, got[k], pool_p) / graphcut_objective(x, exact[k], pool_e))
            overlaps.append(len(np.intersect1d(got[k], exact[k])) / len(exact[k]))
            pool_e, pool_p = np.setdiff1d(pool_e, exact[k]), np.setdiff1d(pool_p, got[k])
        print(f"| {p}{'' if union else ', no union step'} | {s:.1f} | {', '.join(f'{r:.5f}' for r in ratios)} | {', '.join(f'{o:.3f}' for o in overlaps)} |")


def scale(n: int, dim: int, parts: int, n_bins: int, first: int, centres: int, memmap: Path, max_parts: int) -> None:
    """The first bin's stages on an N x d memory-mapped pool: the coverage reduction over all N
    rows, ``max_parts`` of the P parts' greedy runs (each timed, with the peak RSS after it),
    and the union step measured at two smaller sizes and extrapolated (a greedy picking half of
    2B candidates is the one sequential step; at N = 10 M and K = 10 it picks 1 M of 2 M)."""
    if not memmap.exists():
        t = time.perf_counter()
        out = np.lib.format.open_memmap(memmap, mode="w+", dtype=np.float32, shape=(n, dim))
        clustered(n, dim, centres, out=out)
        out.flush()
        del out
        print(f"wrote {memmap} ({n} x {dim} float32, {n * dim * 4 / 1e9:.1f} GB) in {time.perf_counter() - t:.0f} s")
    x = _FileRows(memmap)
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731
    t = time.perf_counter()
    coverage = unit_sum(x, np.arange(n))
    t_cov = time.perf_counter() - t
    print(f"coverage reduction over {n} rows (one pass, memory-mapped): {t_cov:.1f} s, peak RSS {rss():.0f} MB")
    size = int(bin_sizes([n], n_bins)[0][0])
    split = np.array_split(np.random.default_rng(0).permutation(n), parts)
    times = []
    for j in range(min(max_parts, parts)):
        idx = np.sort(split[j])
        take = int(np.ceil(2 * size * len(idx) / n))
        t = time.perf_counter()
        part_greedy(x, idx, coverage, take)
        times.append(time.perf_counter() - t)
        print(f"  part {j}: {len(idx)} rows -> {take} candidates in {times[-1]:.1f} s, peak RSS so far {rss():.0f} MB", flush=True)
    shares = []
    for j in range(min(max_parts, parts)):  # without the union step: each part picks its share
        idx = np.sort(split[j])
        take = int(round(size * len(idx) / n))
        t = time.perf_counter()
        part_greedy(x, idx, coverage, take)
        shares.append(time.perf_counter() - t)
        print(f"  part {j}, no union step: {len(idx)} rows -> its share {take} in {shares[-1]:.1f} s, peak RSS so far {rss():.0f} MB", flush=True)
    share_mean = float(np.mean(shares))
    for machines in (1, 10, 100):
        per_bin = t_cov + np.ceil(parts / machines) * share_mean
        print(f"  no union step, on {machines} machine(s): ~{per_bin / 60:.1f} min per bin, {(n_bins - 1) * per_bin / 60:.0f} min for the {n_bins - 1} greedy bins")
    union = []
    for m in (50_000, 200_000):
        idx = np.sort(np.random.default_rng(1).choice(n, m, replace=False))
        t = time.perf_counter()
        part_greedy(x, idx, coverage, m // 2)
        union.append(time.perf_counter() - t)
        print(f"  union-like step: {m} candidates -> {m // 2} picks in {union[-1]:.1f} s, peak RSS so far {rss():.0f} MB", flush=True)
    slope = np.log(union[1] / union[0]) / np.log(4)
    est = union[1] * (2 * size / 200_000) ** slope
    mean = float(np.mean(times))
    print(f"first bin of {size} from {n} x {dim}, {parts} parts: a part {mean:.0f} s (mean of {len(times)}), all parts on one machine ~{mean * parts / 60:.0f} min; "
          f"union step of {2 * size} -> {size}: ~{est / 3600:.1f} h extrapolated (time ~ size^{slope:.2f} from the two measured sizes)")
    for machines in (1, 10, 100):
        per_bin = t_cov + np.ceil(parts / machines) * mean + est
        print(f"  on {machines} machine(s): ~{per_bin / 3600:.1f} h per bin, the union step {100 * est / per_bin:.0f} % of it")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("quality", "scale"):
        a = sub.add_parser(name)
        a.add_argument("--n", type=int, default=100_000 if name == "quality" else 10_000_000)
        a.add_argument("--dim", type=int, default=256)
        a.add_argument("--bins", type=int, default=10)
        a.add_argument("--first", type=int, default=3 if name == "quality" else 1)
        a.add_argument("--centres", type=int, default=200)
        if name == "quality":
            a.add_argument("--parts", type=int, nargs="+", default=[4, 10])
        else:
            a.add_argument("--parts", type=int, default=100)
            a.add_argument("--max-parts", type=int, default=3, help="parts actually run (timed); the rest extrapolated")
            a.add_argument("--memmap", type=Path, required=True)
    args = p.parse_args()
    if args.cmd == "quality":
        quality(args.n, args.dim, args.parts, args.bins, args.first, args.centres)
    else:
        scale(args.n, args.dim, args.parts, args.bins, args.first, args.centres, args.memmap, args.max_parts)


if __name__ == "__main__":
    main()
