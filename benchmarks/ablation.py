"""Why do (or don't) DQ and ADQ beat random? Vary one setting at a time and measure.

    python benchmarks/ablation.py DATA --out DIR [--ratios 0.05 0.1] [--seeds 0 1 2] [--archs convnet mlp]
                                  [--preset cpu|cpu-long] [--only NAME...]

Variants (each a set of compress options; random is shared): the defaults; penultimate
features instead of gradients; a weaker and a stronger proxy (2 and 15 epochs); K = 5 and 20
bins; ADQ with alpha 0.3 and 0.9; ADQ with the proxy as diversity encoder. Every cell is stored
in DIR/results.sqlite (resumable). Prints a Markdown table per architecture: variant x ratio,
test accuracy mean +- std over seeds, and the difference to random.
"""

import argparse
import json
import sqlite3
from pathlib import Path

import numpy as np

from dsquant.evaluate import Grid, run_grid

DEFAULTS = {"n_bins": 10, "epochs": 5, "embedding": "gradient"}
VARIANTS = [
    ("dq (defaults: gradient embedding, 5-epoch proxy, K=10)", "dq", {}),
    ("dq, penultimate features", "dq", {"embedding": "features"}),
    ("dq, 2-epoch proxy", "dq", {"epochs": 2}),
    ("dq, 15-epoch proxy", "dq", {"epochs": 15}),
    ("dq, K=5 bins", "dq", {"n_bins": 5}),
    ("dq, K=20 bins", "dq", {"n_bins": 20}),
    ("adq (defaults: alpha 0.6, SimCLR diversity)", "adq", {}),
    ("adq, alpha 0.3", "adq", {"alpha": 0.3}),
    ("adq, alpha 0.9", "adq", {"alpha": 0.9}),
    ("adq, proxy diversity encoder", "adq", {"diversity_encoder": "proxy"}),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--out", required=True)
    p.add_argument("--ratios", nargs="+", type=float, default=[0.05, 0.1])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--archs", nargs="+", default=["convnet", "mlp"])
    p.add_argument("--preset", default="cpu", help="training protocol (cpu-long: the convnet trained ~7x longer)")
    p.add_argument("--only", nargs="+", help="run only variants whose name contains one of these")
    args = p.parse_args()
    variants = [v for v in VARIANTS if not args.only or any(o in v[0] for o in args.only)]
    run_grid(Grid([args.data], ["random"], args.ratios, args.archs, args.seeds, args.preset, {}), args.out)
    for name, method, opts in variants:
        print(f"== {name}", flush=True)
        run_grid(Grid([args.data], [method], args.ratios, args.archs, args.seeds, args.preset, {**DEFAULTS, **opts}), args.out)
    con = sqlite3.connect(str(Path(args.out) / "results.sqlite"))
    rows = con.execute("SELECT method, ratio, arch, options, accuracy FROM results WHERE preset=?", (args.preset,)).fetchall()

    def stats(method, options, ratio, arch):
        acc = [a for m, r, ar, o, a in rows if m == method and r == ratio and ar == arch and o == options]
        return (np.mean(acc), np.std(acc, ddof=1) if len(acc) > 1 else 0.0, len(acc)) if acc else None

    for arch in args.archs:
        print(f"\n### {Path(args.data).name} / {arch} ({args.preset} preset, seeds {args.seeds})\n")
        print("| variant | " + " | ".join(f"{100 * r:g} %" for r in args.ratios) + " |")
        print("|---|" + "---|" * len(args.ratios))
        base = {r: stats("random", "{}", r, arch) for r in args.ratios}
        print("| random | " + " | ".join(f"{100 * base[r][0]:.2f} ± {100 * base[r][1]:.2f}" if base[r] else "-" for r in args.ratios) + " |")
        for name, method, opts in variants:
            key = json.dumps({**DEFAULTS, **opts}, sort_keys=True)
            cells = []
            for r in args.ratios:
                s = stats(method, key, r, arch)
                cells.append(f"{100 * s[0]:.2f} ± {100 * s[1]:.2f} ({100 * (s[0] - base[r][0]):+.2f})" if s and base[r] else "-")
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
