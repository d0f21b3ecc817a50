"""Speed and memory of the coreset-selection baselines (issue 13, item 4).

Target: on CIFAR-10-size embeddings (50,000 x 512 float32, 10 classes), every baseline selects
in at most 10 s on 2 cores once its scores exist. Every case runs in a fresh subprocess, so its
peak RSS (``ru_maxrss``) is its own; "RSS before" is the peak after generating the data and
warming up (the embedding alone is 0.1 GB). Prints a Markdown table.

    python benchmarks/bench_baselines.py                        # every case, ratios 0.01 and 0.1
    python benchmarks/bench_baselines.py --cases kcenter herding --ratios 0.1

Synthetic data (seeded): ``clustered`` = ReLU(class mean + 32-d shared factor + noise), like a
CNN's penultimate features (the generator of bench_bins.py); training dynamics are stand-ins of
the right shapes: softmax probabilities of 5 runs (5, 50,000, 10) and a (200, 50,000) correctness
matrix. Score-based rows time the score computation *and* the selection; ``prototype`` times
k-means (the score) and the selection together.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_bins import clustered  # noqa: E402  (the same synthetic features as the bins benchmark)

N, D, CLASSES = 50_000, 512, 10


def dynamics(labels, seed=1, runs=5, epochs=200):
    """Stand-ins for what a training loop records: probabilities and per-epoch correctness."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((runs, len(labels), CLASSES)).astype(np.float32)
    logits[:, np.arange(len(labels)), labels] += 2.0
    probs = np.exp(logits)
    probs /= probs.sum(axis=-1, keepdims=True)
    learn = rng.integers(0, epochs, len(labels))
    correct = (np.arange(epochs)[:, None] >= learn[None, :]) ^ (rng.random((epochs, len(labels))) < 0.05)
    return probs, correct


# name -> what the timed call does
CASES = {
    "el2n": "EL2N scores (5 runs) + top-k per class",
    "forgetting": "forgetting events (200 epochs) + top-k per class",
    "uncertainty": "entropy + top-k per class",
    "ccs": "CCS on EL2N scores (50 strata, cutoff 0.1)",
    "kcenter": "k-center greedy, per class",
    "kcenter-pool": "k-center greedy, one pool of 50,000 (no labels; not the target)",
    "herding": "herding, per class",
    "facility": "facility location (cosine, lazy greedy), per class",
    "moderate": "Moderate-DS, per class",
    "prototype": "prototypes: k-means (10 clusters, cosine, one pool) + keep hard",
}


def run_case(case: str, ratio: float) -> dict:
    from dsquant.core import baselines as b

    X, labels = clustered(N, D, CLASSES)
    k = round(ratio * N)
    if case in ("el2n", "forgetting", "uncertainty", "ccs"):
        probs, correct = dynamics(labels)
    # warm-up: imports and the compiled facility-location loop (numba's on-disk cache)
    t = time.perf_counter()
    b.facility_location(X[:64], 4, labels[:64])
    first_call = time.perf_counter() - t
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if case == "el2n":
        idx = b.select_by_score(b.el2n_scores(probs, labels), ratio, labels)
    elif case == "forgetting":
        idx = b.select_by_score(b.forgetting_events(correct), ratio, labels)
    elif case == "uncertainty":
        idx = b.select_by_score(b.entropy(probs[0]), ratio, labels)
    elif case == "ccs":
        idx = b.ccs_sample(b.el2n_scores(probs, labels), ratio, labels, seed=0)
    elif case == "kcenter":
        idx = b.kcenter_greedy(X, k, seed=0, labels=labels)
    elif case == "kcenter-pool":
        idx = b.kcenter_greedy(X, k, seed=0)
    elif case == "herding":
        idx = b.herding(X, k, labels)
    elif case == "facility":
        idx = b.facility_location(X, k, labels)
    elif case == "moderate":
        idx = b.moderate_ds(X, ratio, labels)
    elif case == "prototype":
        idx = b.prototype_select(X, ratio, n_clusters=10, seed=0, keep="hard")
    else:
        raise ValueError(f"case: unknown {case!r}")
    seconds = time.perf_counter() - t
    assert len(idx) == k and len(np.unique(idx)) == k
    return {
        "case": case,
        "ratio": ratio,
        "selected": int(k),
        "seconds": seconds,
        "first_call_seconds": first_call,
        "rss_before_gb": rss_before / 2**20,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--ratios", nargs="+", type=float, default=[0.01, 0.1])
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        case, ratio = args.one.split(":")
        print(json.dumps(run_case(case, float(ratio))))
        return
    rows = []
    load_before = os.getloadavg()
    for case in args.cases:
        for ratio in args.ratios:
            res = subprocess.run([sys.executable, __file__, "--one", f"{case}:{ratio}"], capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{case} at {ratio} failed:\n{res.stderr}", file=sys.stderr)
                continue
            rec = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(rec)
            print(json.dumps(rec), file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores; numpy {np.__version__}; data: {N:,} x {D} float32 clustered, {CLASSES} classes")
    print(f"load average (1 min) before / after: {load_before[0]:.1f} / {load_after[0]:.1f} (other processes share the cores)\n")
    first = max((r["first_call_seconds"] for r in rows), default=0.0)
    print(f"(not in the times: imports and loading the compiled facility-location loop, at most {first:.2f} s here)\n")
    print("| method | ratio | selected | seconds | under 10 s | peak RSS | RSS before |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ok = "yes" if r["seconds"] <= 10 else "no"
        print(
            f"| {CASES[r['case']]} | {r['ratio']:g} | {r['selected']:,} | {r['seconds']:.2f} | {ok} | "
            f"{r['peak_rss_gb']:.2f} GB | {r['rss_before_gb']:.2f} GB |"
        )


if __name__ == "__main__":
    main()
