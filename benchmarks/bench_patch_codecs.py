"""General-purpose compressors on the kept patches of a ``.dsqp`` file: the measurement that
came before format version 2 (version 1 stored the kept patches raw). An image codec does much
better (WebP lossless: about 51 % of the raw kept pixels on CIFAR-10, against 72 % for the best
row here); the format's own codecs and layouts are measured by ``bench_patch_store.py``.

    python benchmarks/bench_patch_codecs.py DIR/patches.dsqp

Compresses the kept patches (read from a file of either version) with zlib and LZMA (standard
library), raw and after a horizontal delta filter inside every patch row (mod 256, lossless);
prints a Markdown table of the size as a share of the raw kept pixels and the time to compress.
"""

import argparse
import lzma
import time
import zlib

import numpy as np

from dsquant.pixels.store import PatchStore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path")
    args = p.parse_args()
    patches = PatchStore.load(args.path).patches  # (n, kept, patch, patch, C) uint8
    q = patches.astype(np.int16)
    delta = q.copy()
    delta[..., 1:, :] = q[..., 1:, :] - q[..., :-1, :]
    filtered = (delta % 256).astype(np.uint8)
    codecs = {"zlib level 9": lambda b: zlib.compress(b, 9), "LZMA preset 6": lambda b: lzma.compress(b, preset=6)}
    print(f"{args.path}: kept patches {patches.nbytes:,} bytes raw, shape {patches.shape}\n")
    print("| filter | codec | share of the raw kept pixels | compress time |")
    print("|---|---|---|---|")
    for fname, arr in [("none", patches), ("horizontal delta", filtered)]:
        raw = np.ascontiguousarray(arr).tobytes()
        for cname, codec in codecs.items():
            t = time.perf_counter()
            size = len(codec(raw))
            print(f"| {fname} | {cname} | {size / len(raw):.1%} | {time.perf_counter() - t:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
