"""Accuracy per byte (issue 17, item 3): at equal bytes on disk, is it better to keep more images
with patches dropped, or fewer whole images stored as the source's JPEG files?

    python benchmarks/accuracy_per_byte.py [DATA] --out DIR [--seeds 0 1 2 3 4] [--arch convnet]
        [--preset cpu] [--ratio 0.125] [--mae mae.pt] [--skip-mae]

Pixel configurations (``dsquant compress --ratio 0.125 --drop-ratio D`` with the default method,
then ``dsquant evaluate``): drop 0.2 lossless (WebP, the default), drop 0.2 lossy WebP quality 90,
the same rebuilt by the tiny MAE instead of inpainting, and drop 0.5 lossy quality 90. Their
bytes are the kept-patch file's. For each of those byte counts, and for the pixel runs' own
ratio, a whole-image configuration: the default method at the keep ratio whose selected source
files (the tar's JPEG members, sizes from the member headers) take about as many bytes. Every
configuration trains ``--arch`` with the same seeds (seed s: the same initialisation and the
preset's protocol), so differences are paired by seed; each pixel configuration is compared with
the whole-image configuration of its bytes (Student's paired t, 95 %).

Writes DIR/results.csv (one row per training, appended as it goes: a rerun skips what is done),
DIR/summary.md (the tables) and DIR/accuracy_per_byte.png (accuracy against megabytes, 95 %
intervals of the mean). The tiny MAE is trained once (10,000 training images x 8 epochs,
``dsquant train-mae``'s model) into DIR/mae.pt unless ``--mae`` names one.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10" / "cifar10-jpeg.tar"
FIELDS = ["config", "kind", "ratio", "n_images", "bytes", "seed", "accuracy", "seconds"]


def pixel_configs(ratio: float) -> list[dict]:
    """The pixel-quantized runs: name, compress options, reconstructor override."""
    return [
        {"name": "drop 0.2, lossless", "run": "drop0.2-lossless", "drop": 0.2, "quality": None, "rec": None},
        {"name": "drop 0.2, WebP q90", "run": "drop0.2-q90", "drop": 0.2, "quality": 90, "rec": None},
        {"name": "drop 0.2, WebP q90, tiny MAE", "run": "drop0.2-q90", "drop": 0.2, "quality": 90, "rec": "mae"},
        {"name": "drop 0.5, WebP q90", "run": "drop0.5-q90", "drop": 0.5, "quality": 90, "rec": None},
    ]


def done_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", default=str(DATA))
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--arch", default="convnet")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--ratio", type=float, default=0.125, help="keep ratio of the pixel runs (default 0.125)")
    p.add_argument("--mae", help="tiny MAE checkpoint for the MAE configuration (default: train one into OUT/mae.pt)")
    p.add_argument("--skip-mae", action="store_true", help="leave out the tiny-MAE configuration")
    p.add_argument("--only", nargs="+", help="train these configurations only (names as in the report, e.g. 'drop 0.2, WebP q90' 'whole JPEGs, 5.2%%')")
    args = p.parse_args()

    from dsquant.cache import Cache
    from dsquant.data import read_dataset
    from dsquant.data.images import source_files
    from dsquant.evaluate import evaluate_output
    from dsquant.pipeline import compress

    out = args.out
    (out / "runs").mkdir(parents=True, exist_ok=True)
    results = out / "results.csv"
    cache = Cache()
    train = read_dataset(args.data, "train", cache=cache)
    sizes = np.array([s for _, s in source_files(args.data, "train")], dtype=np.int64)
    if len(sizes) != len(train):
        raise SystemExit(f"{args.data}: {len(sizes)} source files for {len(train)} training images (expected a tar or folder of image files)")
    per_image = sizes.mean()
    print(f"{args.data}: {len(train):,} training images, source files {sizes.sum() / 1e6:.2f} MB ({per_image:.0f} bytes each on average)", flush=True)

    def run_dir(name: str, **kw) -> Path:
        d = out / "runs" / name
        if not (d / "manifest.json").exists():
            t = time.perf_counter()
            compress(args.data, out=d, cache_dir=None, **kw)
            print(f"compressed {name} in {time.perf_counter() - t:.1f} s", flush=True)
        return d

    configs = []  # dicts: name, kind ("patches" or "whole"), run dir, reconstructor, bytes, images, ratio
    pix = [c for c in pixel_configs(args.ratio) if not (args.skip_mae and c["rec"] == "mae")]
    for c in pix:
        d = run_dir(c["run"], ratio=args.ratio, drop_ratio=c["drop"], patch_quality=c["quality"])
        m = json.loads((d / "manifest.json").read_text())
        configs.append({"name": c["name"], "kind": "patches", "dir": d, "rec": c["rec"], "bytes": m["pixels"]["bytes"]["patches.dsqp"],
                        "n": m["selection"]["n_selected"], "ratio": args.ratio})
    targets = [None, *sorted({c["bytes"] for c in configs})]  # None: whole images at the pixel runs' own ratio
    for b in targets:
        ratio = args.ratio if b is None else round(float(b / per_image / len(train)), 4)
        d = run_dir(f"whole-{ratio:g}", ratio=ratio)
        idx = np.load(d / "indices.npy", allow_pickle=False)
        configs.append({"name": f"whole JPEGs, {ratio:.1%}", "kind": "whole", "dir": d, "rec": None, "bytes": int(sizes[idx].sum()),
                        "n": len(idx), "ratio": ratio, "match": b})

    mae = args.mae
    if any(c["rec"] == "mae" for c in configs) and not mae:
        mae = out / "mae.pt"
        if not mae.exists():
            from dsquant.pixels import default_patch
            from dsquant.pixels.train_mae import save_mae, train_tiny_mae

            model, info = train_tiny_mae(train.images, default_patch(train.image_shape), epochs=8, max_samples=10_000, seed=0)
            save_mae(model, mae, info)  # written to a temporary file and renamed
            print(f"tiny MAE: {info['train_samples']} images x 8 epochs in {info['seconds'] / 60:.1f} min", flush=True)

    if args.only:
        unknown = set(args.only) - {c["name"] for c in configs}
        if unknown:
            raise SystemExit(f"--only: no configuration named {', '.join(sorted(unknown))} (there are: {', '.join(c['name'] for c in configs)})")
        configs = [c for c in configs if c["name"] in args.only]
    done = {(r["config"], int(r["seed"])) for r in done_rows(results)}
    for c in sorted(configs, key=lambda c: c["rec"] == "mae"):  # the MAE last: the slowest rebuild
        for seed in args.seeds:
            if (c["name"], seed) in done:
                continue
            t = time.perf_counter()
            rec = f"tiny-mae:{mae}" if c["rec"] == "mae" else None
            res = evaluate_output(c["dir"], (args.arch,), (seed,), args.preset, reconstructor=rec)
            acc = res["runs"][0]["accuracy"]
            append_row(results, {"config": c["name"], "kind": c["kind"], "ratio": c["ratio"], "n_images": c["n"], "bytes": c["bytes"],
                                 "seed": seed, "accuracy": acc, "seconds": round(time.perf_counter() - t, 1)})
            print(f"{c['name']:32s} seed {seed}: {100 * acc:.2f} % ({time.perf_counter() - t:.0f} s)", flush=True)
    report(configs, done_rows(results), out, args)


def report(configs: list[dict], rows: list[dict], out: Path, args) -> None:
    from dsquant.evaluate.stats import mean_interval, paired_difference

    acc = {c["name"]: {int(r["seed"]): 100 * float(r["accuracy"]) for r in rows if r["config"] == c["name"]} for c in configs}
    lines = [f"# Accuracy per byte: {Path(args.data).name}, {args.arch}, preset {args.preset}, seeds {args.seeds}", "",
             "| configuration | images | MB on disk | test accuracy (%) | 95 % interval of the mean |", "|---|---|---|---|---|"]
    for c in sorted(configs, key=lambda c: c["bytes"]):
        v = np.array(list(acc[c["name"]].values()))
        lo, hi = mean_interval(v)  # (nan, nan) for a single seed
        lines.append(f"| {c['name']} | {c['n']:,} | {c['bytes'] / 1e6:.2f} | {v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f} (n={len(v)}) | [{lo:.2f}, {hi:.2f}] |")
    lines += ["", "Each pixel configuration against whole JPEGs of about the same bytes (paired by seed, Student's t):", "",
              "| pixel configuration | MB | whole JPEGs | MB | difference (points) | 95 % interval |", "|---|---|---|---|---|---|"]
    whole = [c for c in configs if c["kind"] == "whole"]
    for c in (c for c in configs if c["kind"] == "patches"):
        w = next((x for x in whole if x.get("match") == c["bytes"]), None)
        if w is None:  # its whole-image twin was left out (--only)
            continue
        d = paired_difference(acc[c["name"]], acc[w["name"]])
        mark = " ↑" if d.excludes_zero and d.mean > 0 else " ↓" if d.excludes_zero else ""
        lines.append(f"| {c['name']} | {c['bytes'] / 1e6:.2f} | {w['name']} | {w['bytes'] / 1e6:.2f} | {d.mean:+.2f}{mark} | [{d.low:+.2f}, {d.high:+.2f}] |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    plot(configs, acc, out / "accuracy_per_byte.png", args)


def plot(configs: list[dict], acc: dict, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dsquant.evaluate.stats import mean_interval

    whole = sorted((c for c in configs if c["kind"] == "whole"), key=lambda c: c["bytes"])
    if not whole:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ms = [np.mean(list(acc[c["name"]].values())) for c in whole]
    err = [np.subtract(mean_interval(list(acc[c["name"]].values())), m) * [-1, 1] for c, m in zip(whole, ms)]
    ax.errorbar([c["bytes"] / 1e6 for c in whole], ms, yerr=np.array(err).T, capsize=3, color="black", marker="o", label="whole images (source JPEGs)")
    for c, color in zip((c for c in configs if c["kind"] == "patches"), ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")):
        v = list(acc[c["name"]].values())
        m = np.mean(v)
        lo, hi = mean_interval(v)
        ax.errorbar([c["bytes"] / 1e6], [m], yerr=[[m - lo], [hi - m]], capsize=3, marker="s", linestyle="none", color=color, label=f"{c['name']} ({c['n']:,} images)")
    ax.set_xscale("log")
    from matplotlib.ticker import FormatStrFormatter

    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("megabytes on disk (log scale)")
    ax.set_ylabel(f"test accuracy (%), {args.arch}, final epoch")
    ax.set_title(f"Accuracy per byte, {Path(args.data).name} ({len(args.seeds)} seeds, 95 % intervals)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
