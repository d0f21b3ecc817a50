"""What rebuilding dropped patches at load time costs the evaluation's training (issue 17 item 4).

    python benchmarks/bench_pixel_load.py RUN_DIR [--data CIFAR_TAR] [--arch convnet] [--mae CKPT]

RUN_DIR is a ``dsquant compress ... --drop-ratio 0.2`` output; made first when it does not exist
(CIFAR-10, 12.5 % by dq, drop ratio 0.2: 6,250 images). Times, each a single run in this
process: reading ``patches.dsqp``; rebuilding every image (inpainting, and the tiny MAE when
``--mae`` names a checkpoint of ``dsquant train-mae``, timed only: its inference does not depend
on how well it was trained); and ``dsquant evaluate``'s training of
``--arch`` (preset ``cpu``, seed 0) on the same images as stored (``unmodified``: no rebuild)
and rebuilt. The slowdown is the rebuild's share of that training: (rebuilt - unmodified) /
unmodified wall time. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10" / "cifar10-jpeg.tar"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--arch", default="convnet")
    p.add_argument("--mae", help="a tiny-MAE checkpoint (dsquant train-mae) to time as well")
    args = p.parse_args()

    from dsquant.evaluate.harness import evaluate_output
    from dsquant.pipeline import compress
    from dsquant.pixels import load_reconstructed
    from dsquant.pixels.store import PatchStore

    if not args.run.exists():
        compress(args.data, ratio=0.125, method="dq", drop_ratio=0.2, out=args.run)
    rows = []
    t = time.perf_counter()
    store = PatchStore.load(args.run / "patches.dsqp")
    rows.append((f"read patches.dsqp ({len(store.indices):,} images)", time.perf_counter() - t))
    for spec in ["inpaint"] + ([f"tiny-mae:{args.mae}"] if args.mae else []):
        t = time.perf_counter()
        load_reconstructed(args.run, spec)
        rows.append((f"read + rebuild, {spec.split(':')[0]}", time.perf_counter() - t))
    walls = {}
    for label, kw in [("as stored, no rebuild", {"unmodified": True}), ("rebuilt by inpainting", {"reconstructor": "inpaint"})]:
        t = time.perf_counter()
        res = evaluate_output(args.run, archs=(args.arch,), seeds=(0,), **kw)
        walls[label] = time.perf_counter() - t
        acc = res["runs"][0]["accuracy"]
        rows.append((f"`dsquant evaluate` {args.arch}, seed 0, {label} (accuracy {100 * acc:.2f} %)", walls[label]))
    print("| step | seconds |\n|---|---|")
    for label, s in rows:
        print(f"| {label} | {s:.2f} |")
    base = walls["as stored, no rebuild"]
    print(f"\nslowdown of the evaluation by rebuilding at load time: {100 * (walls['rebuilt by inpainting'] - base) / base:+.1f} % (target: at most 20 %)")
    for label, sec in rows:
        if label.startswith("read + rebuild"):
            print(f"{label}: {100 * sec / base:.1f} % of the evaluation without a rebuild")


if __name__ == "__main__":
    main()
