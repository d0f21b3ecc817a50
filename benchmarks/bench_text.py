"""Scale of the text pipeline on instructions_t0.jsonl.gz (53,785 records): sentence embedding
time (target <= 10 min on 2 cores), bin generation time (<= 60 s), peak RSS (<= 4 GB).

    python benchmarks/bench_text.py [--data PATH] [--bins 10] [--limit N]

Runs without the cache (the embedding is computed), in this process; prints a Markdown table.
"""

import argparse
import resource
import time
from pathlib import Path

import numpy as np

from dsquant import generate_bins
from dsquant.data import load_dataset
from dsquant.embed.text import SentenceEncoder

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "instructions_t0.jsonl.gz"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(DEFAULT))
    p.add_argument("--bins", type=int, default=10)
    p.add_argument("--limit", type=int)
    p.add_argument("--save", help="also save the embedding to this .npy")
    args = p.parse_args()
    t = time.perf_counter()
    ds = load_dataset(args.data)
    if args.limit:
        ds.texts = ds.texts[: args.limit]
    read_s = time.perf_counter() - t
    enc = SentenceEncoder()
    t = time.perf_counter()
    feats = enc.encode_texts(ds.texts, progress=False)
    embed_s = time.perf_counter() - t
    if args.save:
        np.save(args.save, feats)
    t = time.perf_counter()
    bins = generate_bins(feats, args.bins)
    bins_s = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert sum(len(b) for b in bins) == len(feats)
    print(f"| data | records | read | embed (all-MiniLM-L6-v2) | bins (K={args.bins}, one pool) | peak RSS |")
    print("|---|---|---|---|---|---|")
    print(f"| {Path(args.data).name} | {len(feats):,} | {read_s:.1f} s | {embed_s / 60:.1f} min ({len(feats) / embed_s:.0f} records/s) | {bins_s:.1f} s | {rss:.2f} GB |")


if __name__ == "__main__":
    main()
