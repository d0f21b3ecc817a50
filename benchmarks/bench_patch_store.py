"""Bytes, write and read times, and kept-pixel error of the kept-patch file (``.dsqp``) for
several codecs and layouts, on the kept patches of a compression run.

    python benchmarks/bench_patch_store.py RUN_DIR [--data DATA]

RUN_DIR is the output of ``dsquant compress ... --drop-ratio 0.2`` (its ``patches.dsqp`` may
be of format version 1 or 2: the kept patches are read and written again here). The whole
images' PNG and the source files' bytes come from ``RUN_DIR/manifest.json``, or are measured on
DATA (the dataset the run compressed: needed for runs made before format version 2, whose
manifest lacks the source files).

Every row writes the file with :meth:`PatchStore.to_bytes` (in memory) and reads it back with
:meth:`PatchStore.from_bytes`; the layouts other than the format's (one image per tile, holes
filled with zeros) are the same writer with its tile size or fill swapped. Times are single
runs on whatever the machine is doing; PSNR is over the kept pixels only (inf: bit-exact).
Prints a Markdown table.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dsquant.pixels import store as store_module
from dsquant.pixels.store import PatchStore, kept_psnr

ROWS = [
    # (label, codec, quality, effort, layout)
    ("WebP lossless, effort 1 (the default)", "webp", None, None, "tiles"),
    ("WebP lossless, effort 0", "webp", None, 0, "tiles"),
    ("WebP lossless, effort 4", "webp", None, 4, "tiles"),
    ("WebP lossless, effort 1, dropped patches zero", "webp", None, None, "zeros"),
    ("WebP lossless, effort 1, one image a tile", "webp", None, None, "one image a tile"),
    ("PNG (lossless)", "png", None, None, "tiles"),
    ("PNG (lossless), one image a tile", "png", None, None, "one image a tile"),
    ("WebP lossy, quality 50", "webp", 50, None, "tiles"),
    ("WebP lossy, quality 75", "webp", 75, None, "tiles"),
    ("WebP lossy, quality 90 (the lossy default codec)", "webp", 90, None, "tiles"),
    ("JPEG, quality 75", "jpeg", 75, None, "tiles"),
    ("JPEG, quality 90", "jpeg", 90, None, "tiles"),
]


def _write(store: PatchStore, codec, quality, effort, layout) -> bytes:
    saved = store_module.TILE_PIXELS, store_module._fill_from_above
    try:
        if layout == "one image a tile":
            store_module.TILE_PIXELS = 1
        if layout == "zeros":
            store_module._fill_from_above = lambda images, masks, patch: images  # holes stay 0
        return store.to_bytes(codec, quality, effort)
    finally:
        store_module.TILE_PIXELS, store_module._fill_from_above = saved


def _references(run: Path, store: PatchStore, data: str | None) -> dict:
    """Bytes of the same images whole: raw, PNG, the source's files."""
    h, w, c = store.image_shape
    refs = {"raw": len(store) * h * w * c, "png": None, "source": None, "source_what": ""}
    manifest = run / "manifest.json"
    if manifest.exists():
        b = (json.loads(manifest.read_text()).get("pixels") or {}).get("bytes") or {}
        refs["png"], refs["source"] = b.get("png"), b.get("source_files")
        refs["source_what"] = (json.loads(manifest.read_text())["pixels"] or {}).get("source_files", "")
    if data is not None:
        from dsquant.cache import Cache
        from dsquant.data import read_dataset
        from dsquant.pixels import png_bytes, source_file_bytes

        ds = read_dataset(data, cache=Cache())
        refs["png"] = png_bytes(ds.images[store.indices])
        refs["source"], refs["source_what"] = source_file_bytes(ds, store.indices)
    return refs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="output directory of a compression run with --drop-ratio")
    p.add_argument("--data", help="the dataset the run compressed (for its PNG and source-file bytes)")
    args = p.parse_args()
    run = Path(args.run)
    store = PatchStore.load(run / "patches.dsqp")
    refs = _references(run, store, args.data)
    n = len(store)
    kept = store.patches.nbytes
    print(f"{run}: {n:,} images {store.image_shape}, {store.patches.shape[1]} of {store.grid[0] * store.grid[1]} patches of {store.patch} px kept")
    print(f"whole images: raw {refs['raw']:,} bytes, PNG {refs['png']:,} bytes" if refs["png"] else f"whole images: raw {refs['raw']:,} bytes")
    print(f"source files: {refs['source']:,} bytes ({refs['source_what']})" if refs["source"] else f"source files: {refs['source_what'] or 'unknown'}")
    print(f"kept pixels raw (format version 1's body): {kept:,} bytes\n")
    print("| kept-patch file | bytes | vs raw kept pixels | vs whole images PNG | vs source files | write | read | PSNR kept (dB) |")
    print("|---|---|---|---|---|---|---|---|")
    share = lambda a, b: f"{a / b:.1%}" if b else "-"  # noqa: E731
    for label, codec, quality, effort, layout in ROWS:
        t = time.perf_counter()
        data = _write(store, codec, quality, effort, layout)
        t_write = time.perf_counter() - t
        t = time.perf_counter()
        back = PatchStore.from_bytes(data, label)
        t_read = time.perf_counter() - t
        psnr = kept_psnr(store, back)
        print(f"| {label} | {len(data):,} | {share(len(data), kept)} | {share(len(data), refs['png'])} | {share(len(data), refs['source'])} "
              f"| {t_write:.2f} s | {t_read:.2f} s | {'exact' if psnr == float('inf') else f'{psnr:.2f}'} |", flush=True)


if __name__ == "__main__":
    main()
