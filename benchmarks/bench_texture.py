"""Speed of ADQ's texture level on CIFAR-size images (target: >= 20,000 images/s on 2 cores).

    python benchmarks/bench_texture.py [--n 50000]

Uses the real CIFAR-10 training images when ../shared/data is present, random images otherwise.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from dsquant.core.scores import texture_level


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=50000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    tar = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10" / "cifar10-jpeg.tar"
    if tar.exists():
        from dsquant.cache import Cache
        from dsquant.data import read_dataset

        images = read_dataset(str(tar), cache=Cache()).images[: args.n]
        source = "CIFAR-10 train"
    else:
        images = np.random.default_rng(0).integers(0, 256, (args.n, 32, 32, 3), dtype=np.uint8)
        source = "random"
    texture_level(images[:1000])
    best = float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        tl = texture_level(images)
        best = min(best, time.perf_counter() - t)
    print(f"| images | time (best of {args.repeats}) | images/s | mean TL |")
    print("|---|---|---|---|")
    print(f"| {len(images):,} x 32x32x3 ({source}) | {best:.2f} s | {len(images) / best:,.0f} | {tl.mean():.4f} |")


if __name__ == "__main__":
    main()
