"""Scale of the text pipeline on instructions_t0.jsonl.gz (53,785 records): sentence embedding
time (target <= 10 min on 2 cores), bin generation time (<= 60 s), peak RSS (<= 4 GB).

    python benchmarks/bench_text.py [--data PATH] [--bins 10] [--sample N] [--max-tokens 128]

Runs without the cache (the embedding is computed), in this process; prints a Markdown table.
With ``--sample N`` only N records drawn at random (seed 0) are embedded and the full embedding
time is extrapolated from their rate (marked so); the bins then run on the sample's embedding
tiled with noise to the full record count (marked so too).
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
    p.add_argument("--sample", type=int, help="embed only this many records, drawn at random, and extrapolate")
    p.add_argument("--max-tokens", type=int, help="truncate texts to this many tokens (default: the model's)")
    p.add_argument("--tokens-only", action="store_true", help="only print the token lengths of the (sampled) records")
    p.add_argument("--save", help="also save the embedding to this .npy")
    args = p.parse_args()
    t = time.perf_counter()
    ds = load_dataset(args.data)
    n = len(ds.texts)
    texts = ds.texts
    if args.sample and args.sample < n:
        texts = [texts[i] for i in np.sort(np.random.default_rng(0).choice(n, args.sample, replace=False))]
    read_s = time.perf_counter() - t
    enc = SentenceEncoder(max_seq_length=args.max_tokens)
    if args.tokens_only:
        _token_stats(enc, texts, args.max_tokens or enc.load().max_seq_length)
        return
    t = time.perf_counter()
    feats = enc.encode_texts(texts, progress=False)
    embed_s = time.perf_counter() - t
    rate = len(texts) / embed_s
    if len(feats) < n:
        # the full pool for the bins: the sample's embeddings repeated, each copy jittered
        rng = np.random.default_rng(1)
        feats = feats[np.arange(n) % len(feats)] + 0.02 * rng.standard_normal((n, feats.shape[1])).astype(np.float32)
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    if args.save:
        np.save(args.save, feats)
    t = time.perf_counter()
    bins = generate_bins(feats, args.bins)
    bins_s = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert sum(len(b) for b in bins) == len(feats)
    tokens = args.max_tokens or enc.load().max_seq_length
    _token_stats(enc, texts, tokens)
    full = n / rate
    est = f"{full / 60:.1f} min ({rate:.1f} records/s" + (f", measured on {len(texts):,} random records)" if len(texts) < n else ")")
    print(f"| data | records | read | embed (all-MiniLM-L6-v2, {tokens} tokens) | bins (K={args.bins}, one pool) | peak RSS |")
    print("|---|---|---|---|---|---|")
    print(f"| {Path(args.data).name} | {n:,} | {read_s:.1f} s | {est} | {bins_s:.1f} s{' (sample tiled to the full count)' if len(texts) < n else ''} | {rss:.2f} GB |")


def _token_stats(enc, texts, tokens: int) -> None:
    lengths = np.array([len(ids) for ids in enc.load().tokenizer(texts, add_special_tokens=True)["input_ids"]])
    print(f"tokens per record (sample of {len(texts):,}): median {np.median(lengths):.0f}, mean {lengths.mean():.0f}, "
          f"{np.mean(lengths > 128):.0%} beyond 128, {np.mean(lengths > 256):.0%} beyond 256; "
          f"mean embedded at {tokens}: {np.minimum(lengths, tokens).mean():.0f}\n")


if __name__ == "__main__":
    main()
