"""How small could the kept patches of a ``.dsqp`` file be with entropy coding? (Not yet in the
format: version 1 stores them raw.)

    python benchmarks/bench_patch_codecs.py DIR/patches.dsqp

Compresses the ``patches`` section with zlib and LZMA (standard library), raw and after a
horizontal delta filter inside every patch row (mod 256, lossless); prints a Markdown table of
the size as a share of the raw section and the time to compress.
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
    print(f"{args.path}: patches section {patches.nbytes:,} bytes, shape {patches.shape}\n")
    print("| filter | codec | share of the raw section | compress time |")
    print("|---|---|---|---|")
    for fname, arr in [("none", patches), ("horizontal delta", filtered)]:
        raw = np.ascontiguousarray(arr).tobytes()
        for cname, codec in codecs.items():
            t = time.perf_counter()
            size = len(codec(raw))
            print(f"| {fname} | {cname} | {size / len(raw):.1%} | {time.perf_counter() - t:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
