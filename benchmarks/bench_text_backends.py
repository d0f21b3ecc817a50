"""Sentence-encoder backends against PyTorch float32, interleaved in one process (issue 18).

    python benchmarks/bench_text_backends.py [--sample 1000] [--rounds 2] [--threads 2]
        [--device cpu|cuda] [--modes fp32 fp32-tok bf16-tok bf16-tok-128 static] [--banking77]

Every mode embeds the same ``--sample`` records of ``instructions_t0.jsonl.gz`` (drawn at random,
seed 0) once per round, modes interleaved within each round, so that the load of a shared machine
falls on all of them alike; the rate of a mode is the geometric mean over rounds and its speed-up
the geometric mean of its per-round ratios to ``fp32`` (sentence-transformers' own path: float32,
batches ordered by characters, the model's 256 tokens). Quality against ``fp32`` on the same
records: mean and minimum cosine of each record's two embeddings, and the Spearman correlation of
all pairwise similarities (of the first 2,000 records). ``--banking77`` adds, per mode, the accuracy of
``benchmarks/eval_text.py``'s logistic regression on Banking77 (train on all 10,003 queries, test
on 3,080), embedded with that mode.

Modes: ``fp32``, ``fp32-tok`` (batches by token length), ``bf16-tok`` (bfloat16 weights and
compute), ``fp16-tok``, ``<mode>-128`` (truncated at 128 tokens), ``<mode>-b32`` (batches of 32
instead of ``--batch-size``), ``<mode>-eager`` (transformers' eager attention instead of SDPA),
``static`` (the static encoder, ``--text-model static``). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

TEXT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text"
FULL = 53_785  # records in instructions_t0.jsonl.gz


def make(mode: str, model: str, device: str | None, batch_size: int):
    from dsquant.embed.text import SentenceEncoder

    if mode == "static":
        from dsquant.embed.static import StaticEncoder

        return StaticEncoder()
    parts = mode.split("-")
    precision = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[parts[0]]
    sort = "tokens" if "tok" in parts else "chars"
    tokens = next((int(x) for x in parts if x.isdigit()), None)
    batch = next((int(x[1:]) for x in parts if x[:1] == "b" and x[1:].isdigit()), batch_size)
    enc = SentenceEncoder(model, batch_size=batch, max_seq_length=tokens, device=device, precision=precision, sort=sort)
    if "eager" in parts:  # transformers' plain attention instead of torch's scaled_dot_product_attention
        enc.load(False)[0].auto_model.set_attn_implementation("eager")
    return enc


def spearman_pairs(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of the pairwise cosine similarities of two embeddings of one set."""
    from scipy.stats import spearmanr

    a, b = a[:2000], b[:2000]  # 2 million pairs at most
    iu = np.triu_indices(len(a), 1)
    return float(spearmanr((a @ a.T)[iu], (b @ b.T)[iu]).statistic)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text-dir", type=Path, default=TEXT, help="folder of instructions_t0.jsonl.gz and banking77_*.jsonl (default ../shared/data/text)")
    p.add_argument("--sample", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: every core this process may use)")
    p.add_argument("--device", help="cpu or cuda (default: CUDA when present)")
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--modes", nargs="+", default=["fp32", "fp32-tok", "bf16-tok", "bf16-tok-128"])
    p.add_argument("--banking77", action="store_true")
    args = p.parse_args()

    import torch

    from dsquant.data import load_dataset
    from dsquant.embed.pretrained import cpu_has_fast_bf16

    ds = load_dataset(args.text_dir / "instructions_t0.jsonl.gz")
    rng = np.random.default_rng(0)
    texts = [ds.texts[i] for i in np.sort(rng.choice(len(ds.texts), min(args.sample, len(ds.texts)), replace=False))]
    modes = ["fp32"] + [m for m in args.modes if m != "fp32"]
    encoders = {m: make(m, args.model, args.device, args.batch_size) for m in modes}
    for enc in encoders.values():
        enc.load(False)
    if args.threads:
        torch.set_num_threads(args.threads)  # after loading: loading sets every core
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 {cpu_has_fast_bf16()}, device {args.device or ('cuda' if torch.cuda.is_available() else 'cpu')}, "
          f"{len(texts)} records x {args.rounds} rounds", flush=True)
    for enc in encoders.values():  # warm up every mode once
        enc.encode_texts(texts[:8])
    rates: dict[str, list[float]] = {m: [] for m in modes}
    out: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for m in modes:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            out[m] = encoders[m].encode_texts(texts)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            rates[m].append(len(texts) / (time.perf_counter() - t))
            print(f"round {r} {m}: {rates[m][-1]:.1f} records/s", flush=True)
    bank = _banking77(encoders, args.text_dir) if args.banking77 else {}
    ref = out["fp32"]
    print("\n| mode | records/s | x fp32 | min for 53,785 | mean cosine | min cosine | Spearman (pairs) |" + (" Banking77 LR |" if bank else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if bank else ""))
    for m in modes:
        rate = float(np.exp(np.mean(np.log(rates[m]))))
        speedup = float(np.exp(np.mean(np.log(np.array(rates[m]) / np.array(rates["fp32"])))))
        cos = np.sum(out[m] * ref, axis=1) if out[m].shape == ref.shape else np.full(len(ref), np.nan)
        rho = spearman_pairs(ref, out[m])
        print(f"| {m} | {rate:.1f} | {speedup:.2f} | {FULL / rate / 60:.1f} | {np.mean(cos):.5f} | {np.min(cos):.4f} | {rho:.5f} |"
              + (f" {100 * bank[m]:.2f} % |" if bank else ""))


def _banking77(encoders: dict, text_dir: Path) -> dict[str, float]:
    from dsquant.data import load_dataset
    from dsquant.evaluate.text import align_labels, logreg_accuracy

    train = load_dataset(text_dir / "banking77_train.jsonl", group_by="label")
    test = load_dataset(text_dir / "banking77_test.jsonl", group_by="label")
    ytr, yte = train.labels, align_labels(train, test)
    acc = {}
    for m, enc in encoders.items():
        acc[m] = logreg_accuracy(enc.encode_texts(train.texts), ytr, enc.encode_texts(test.texts), yte)
        print(f"banking77 {m}: {100 * acc[m]:.2f} %", flush=True)
    return acc


if __name__ == "__main__":
    main()
