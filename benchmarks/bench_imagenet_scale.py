"""ImageNet-scale figures on one machine: reading, embedding, and binning from the store.

    python benchmarks/bench_imagenet_scale.py make-folder DIR [--n 100000] [--classes 1000]
    python benchmarks/bench_imagenet_scale.py decode DIR [--images 4000] [--workers 0 1 2]
    python benchmarks/bench_imagenet_scale.py index DIR
    python benchmarks/bench_imagenet_scale.py embed-speed [--models resnet50 vit-b16] [--images 64]
    python benchmarks/bench_imagenet_scale.py embed-store DIR STORE
    python benchmarks/bench_imagenet_scale.py store-bins STORE [--n 1281167] [--dim 768] [--classes 1000]
    python benchmarks/bench_imagenet_scale.py pixels DIR OUT [--ratios 0.05 0.2] [--drop-ratio 0.2] [--model tiny]
    python benchmarks/bench_imagenet_scale.py export OUT/ratio-0.05 OUT/ratio-0.2 [--formats npz imagefolder]

``make-folder`` writes an ImageNet-shaped ImageFolder once (outside the repository): N JPEGs of
random sizes 200-500 px (each side drawn separately) in C classes, quality 90, smooth random
colour fields with noise (real photographs compress less: ImageNet's mean file is ~110 KB).

``decode`` times read + decode + resize(256) + centre crop(224) through
:func:`dsquant.data.stream.iter_image_batches` (the path every encoder reads through) with 0
(decoded in the main process), 1, 2 ... worker processes; images/s over ``--images`` images.

``index`` indexes DIR (listing, stat, labels) and reports seconds and the peak RSS of a process
that did only that: the memory the index of N images costs.

``embed-speed`` times transformers models with random weights (speed does not depend on the
weights) at 224 px, batch 32, in this process: ResNet-50 (``ResNetConfig()``, 25.6 M parameters)
and ViT-B/16 (``ViTConfig()``, 86 M), with dsquant's precision policy (bf16 autocast on CPUs that
have AMX / AVX512-BF16) and fp32; images/s of the forward pass alone on ready tensors.

``embed-store`` runs ``dsquant embed DIR --encoder hf:TINY --out STORE`` (a tiny random ResNet, so
that the whole 100,000-image pipeline runs here in minutes) in a child process and reports its
wall time and peak RSS: the pipeline's memory at that number of images (the encoder's own weights
aside), from which 1.28 M is extrapolated by the index and store sizes.

``store-bins`` writes a synthetic store of N x dim float16 features in C Gaussian classes (unit
centres, noise 1) once, then runs ``dsquant compress STORE --method dq --ratio 0.1`` in a child
process: wall time, the compress stage times, and peak RSS.

``pixels`` runs ``dsquant compress DIR --stream --encoder hf:MODEL --method dq --ratio R
--drop-ratio T --patch-quality 90 --out OUT/ratio-R`` in a child process per keep ratio: pixel
quantization of a streamed folder, which reads only the selected images, a batch at a time, and
writes their kept patches as it goes. It reports the wall time, the pixel stage's time
(Grad-CAM++ of the backbone with its fitted head, and the writing), the peak RSS (flat in the
number of selected images if memory is bounded), and ``patches.dsqp`` against the selected
source files.

``export`` runs ``dsquant export RUN --format F --dest D`` in a child process per pixel run and
format (D a temporary path beside the run, removed after): the rebuild a tile at a time, its wall
time, the child's own peak RSS (``os.wait4``: that child alone, so a smaller peak after a larger
one is seen), the peak of its anonymous memory (``RssAnon``, sampled: RSS also counts the pages of
the memory-mapped temporary file the npz export rebuilds into, which are page cache the kernel
can write back and drop) and the export's size.

Every child's peak RSS is ``ru_maxrss`` of that child (``resource.getrusage(RUSAGE_CHILDREN)``
after it exits). Times are single runs; prints Markdown rows.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _child(args: list[str]) -> tuple[float, float, str]:
    """Run ``args``; (wall seconds, peak RSS in MB of that child, its stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    p = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode:
        sys.exit(f"failed ({p.returncode}): {' '.join(args)}\n{p.stderr[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        print(f"(note: this child's peak RSS is below an earlier child's {before / 1024:.0f} MB; run stages separately)")
    return wall, peak / 1024, p.stdout


def _child_alone(args: list[str]) -> tuple[float, float, float]:
    """Run ``args``; (wall seconds, peak RSS in MB of that child alone: ``os.wait4``, and the
    peak of its anonymous memory in MB, ``RssAnon`` of ``/proc/PID/status`` sampled every 20 ms:
    RSS also counts the file pages it maps, such as a memory-mapped temporary file, which the
    kernel can write back and drop; the anonymous part it cannot)."""
    import os

    import tempfile

    err = tempfile.TemporaryFile()  # not a pipe: a child that writes much to stderr would block on a full one
    t = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
    anon = 0
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        anon = max(anon, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.02)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if p.returncode:
        err.seek(0)
        sys.exit(f"failed ({p.returncode}): {' '.join(args)}\n{err.read().decode(errors='replace')[-2000:]}")
    err.close()
    return wall, usage.ru_maxrss / 1024, anon / 1024


def export(runs: list[Path], formats: list[str]) -> None:
    import shutil

    print("| run | images | format | wall (s) | images/s | peak RSS (MB) | peak anonymous memory (MB) | export (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        n = json.loads((run / "manifest.json").read_text())["selection"]["n_selected"]
        for fmt in formats:
            dest = run.parent / f".bench-export-{run.name}{'.npz' if fmt == 'npz' else ''}"
            if dest.exists():
                sys.exit(f"{dest}: exists (left by an interrupted run?); remove it first")
            try:
                wall, peak, anon = _child_alone([sys.executable, "-m", "dsquant.cli", "export", str(run), "--format", fmt, "--dest", str(dest), "--quiet"])
                size = dest.stat().st_size if fmt == "npz" else sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
            finally:
                if dest.is_dir():
                    shutil.rmtree(dest)
                elif dest.exists():
                    dest.unlink()
            print(f"| {run.name} | {n:,} | {fmt} | {wall:.0f} | {n / wall:.0f} | {peak:.0f} | {anon:.0f} | {size / 1e6:.0f} |")


def make_folder(root: Path, n: int, classes: int, seed: int = 0, workers: int = 1) -> None:
    if root.exists() and any(root.iterdir()):
        sys.exit(f"{root}: exists and is not empty")
    for c in range(classes):
        (root / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
    if workers > 1:  # chunks of 1,000 images, each from its own seed: the same folder for any number of workers > 1
        from concurrent.futures import ProcessPoolExecutor

        chunks = [(root, range(s, min(s + 1000, n)), classes, seed * 1_000_003 + s) for s in range(0, n, 1000)]
        with ProcessPoolExecutor(workers) as pool:
            total = sum(pool.map(_make_images, *zip(*chunks)))
    else:
        total = _make_images(root, range(n), classes, seed, progress=True)
    print(f"wrote {n} JPEGs in {classes} classes to {root}: {total / 1e9:.2f} GB, mean {total / n / 1e3:.1f} KB")


def _make_images(root: Path, ids: range, classes: int, seed: int, progress: bool = False) -> int:
    from PIL import Image
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    total = 0
    noise = rng.integers(-12, 13, (1024, 1024, 3), dtype=np.int16)  # windows of it, at random offsets
    for i in tqdm(ids, unit="img", desc="make", disable=not progress):
        w, h = (int(x) for x in rng.integers(200, 501, 2))
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        y, x = (int(v) for v in rng.integers(0, 1024 - 500, 2))
        a = np.asarray(im, dtype=np.int16) + noise[y : y + h, x : x + w]
        path = root / f"n{i % classes:08d}" / f"img_{i:08d}.JPEG"
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)
        total += path.stat().st_size
    return total


def decode(root: Path, images: int, workers: list[int]) -> None:
    from dsquant.data import index_image_folder
    from dsquant.data.stream import iter_image_batches

    ds = index_image_folder(root)
    idx = np.random.default_rng(0).permutation(len(ds))[:images]  # across classes and files
    print("| workers | images | seconds | images/s |\n|---|---|---|---|")
    for w in workers:
        list(iter_image_batches(ds, 256, 224, indices=idx[:64], num_workers=w, batch_size=64))  # warm the page cache of nothing else
        t = time.perf_counter()
        count = sum(len(p) for p, _ in iter_image_batches(ds, 256, 224, indices=idx, num_workers=w, batch_size=64))
        s = time.perf_counter() - t
        print(f"| {w} | {count} | {s:.1f} | {count / s:.0f} |")


def index(root: Path) -> None:
    code = (
        "import time, resource; from dsquant.data import index_image_folder; "
        "base=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; t=time.perf_counter(); "
        f"ds=index_image_folder({str(root)!r}); s=time.perf_counter()-t; "
        "kept=sum(a.nbytes for a in (ds.ids, ds.labels, ds.file_index, ds.offsets, ds.sizes)) + sum(len(f) + 49 for f in ds.files); "
        "print(len(ds), round(s, 2), base / 1024, kept / len(ds))"
    )
    wall, peak, out = _child([sys.executable, "-c", code])
    n, seconds, base, kept = out.split()
    n, base, kept = int(n), float(base), float(kept)
    print(f"index of {n} images: {seconds} s; peak RSS {peak:.0f} MB, {base:.0f} MB of it before indexing (imports): "
          f"{(peak - base) * 1e6 / n / 1.048576:.0f} bytes per image at the peak (listing), {kept:.0f} bytes per image kept (the index arrays and paths)")


def embed_speed(models: list[str], images: int, device: str = "cpu", batch: int = 32) -> None:
    import torch
    from transformers import ResNetConfig, ResNetModel, ViTConfig, ViTModel

    from dsquant.training import set_threads

    set_threads()
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    builders = {"resnet50": lambda: ResNetModel(ResNetConfig()), "vit-b16": lambda: ViTModel(ViTConfig(), add_pooling_layer=False)}
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    print(f"device {dev} ({where}), threads {torch.get_num_threads()}, batch {batch}")
    print("| model | parameters | precision | images/s | GFLOP/image (published) | GFLOP/s here |\n|---|---|---|---|---|---|")
    gflops = {"resnet50": 4.1, "vit-b16": 17.6}
    for name in models:
        torch.manual_seed(0)
        model = builders[name]().eval().to(dev)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        x = torch.randn(batch, 3, 224, 224, device=dev)
        for precision in ("bf16 autocast", "float32"):
            cnn = name.startswith("resnet")
            m = model.to(memory_format=torch.channels_last) if cnn else model
            xx = x.contiguous(memory_format=torch.channels_last) if cnn else x
            ctx = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
            with torch.inference_mode(), ctx:
                for _ in range(3 if dev.type == "cuda" else 1):  # warm-up (cuDNN picks its kernels)
                    m(pixel_values=xx[: max(4, batch // 8)] if dev.type == "cpu" else xx)
                sync()
                done, t = 0, time.perf_counter()
                while done < images:
                    m(pixel_values=xx)
                    done += len(xx)
                sync()
                s = time.perf_counter() - t
            print(f"| {name} | {params:.1f} M | {precision} | {done / s:.1f} | {gflops[name]} | {done / s * gflops[name]:.0f} |", flush=True)


_IMAGENET_PREPROCESSING = {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
                           "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 2}


def _full_model(name: str, path: Path) -> None:
    """A random ResNet-50 or ViT-B/16 saved as a transformers folder (with an ImageNet
    preprocessor config): the speed of the real models."""
    import torch
    from transformers import ResNetConfig, ResNetModel, ViTConfig, ViTModel

    torch.manual_seed(0)
    model = ResNetModel(ResNetConfig()) if name == "resnet50" else ViTModel(ViTConfig(), add_pooling_layer=False)
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(_IMAGENET_PREPROCESSING))


def _tiny_model(path: Path) -> None:
    import torch
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(_IMAGENET_PREPROCESSING))


def embed_store(root: Path, store: Path, model_name: str = "tiny", device: str | None = None, workers: int | None = None, batch: int = 128) -> None:
    model = store.with_name(f"{store.name}-{model_name}-model")
    if not model.exists():
        _tiny_model(model) if model_name == "tiny" else _full_model(model_name, model)
    dsq = [sys.executable, "-m", "dsquant.cli"]
    extra = (["--device", device] if device else []) + (["--workers", str(workers)] if workers is not None else [])
    wall, peak, out = _child(dsq + ["embed", str(root), "--encoder", f"hf:{model}", "--out", str(store), "--quiet", "--batch-size", str(batch)] + extra)
    print(out.strip().splitlines()[-1])
    size = sum(p.stat().st_size for p in store.iterdir())
    n = json.loads((store / "store.json").read_text())["n"]
    print(f"dsquant embed of {n} images with {model_name} ({device or 'default device'}, workers {workers if workers is not None else 'default'}): "
          f"{wall:.0f} s ({n / wall:.0f} images/s end to end, start-up included), peak RSS {peak:.0f} MB, store {size / 1e6:.1f} MB")


def store_bins(store: Path, n: int, dim: int, classes: int, shard_size: int = 100_000) -> None:
    from dsquant.embed.store import embed_to_store

    if not store.exists():
        rng = np.random.default_rng(0)
        centres = rng.normal(size=(classes, dim)).astype(np.float32)
        labels = np.arange(n) % classes

        class Synthetic:
            source, split, format = "synthetic", "train", "synthetic"

            def __init__(self):
                self.labels, self.ids, self.classes = labels, np.char.add("s", np.arange(n).astype(str)), [f"c{c}" for c in range(classes)]

            def __len__(self):
                return n

            def fingerprint(self):
                return f"synthetic-{n}-{dim}-{classes}"

        class Gaussian:
            name = "gaussian"

            def __init__(self):
                self.dim = dim

            def config(self):
                return {"encoder": "gaussian", "dim": dim, "classes": classes}

            def encode_rows(self, dataset, rows, progress=False, bad=None):
                r = np.random.default_rng(int(rows[0]))
                return centres[labels[rows]] + r.normal(size=(len(rows), dim)).astype(np.float32)

        t = time.perf_counter()
        embed_to_store(Synthetic(), Gaussian(), store, shard_size=shard_size, progress=True)
        print(f"wrote the synthetic store {n} x {dim} float16 in {time.perf_counter() - t:.0f} s")
    run = store.with_name(store.name + "-run")
    dsq = [sys.executable, "-m", "dsquant.cli"]
    wall, peak, out = _child(dsq + ["compress", str(store), "--method", "dq", "--ratio", "0.1", "--out", str(run), "--overwrite", "--quiet"])
    m = json.loads((run / "manifest.json").read_text())
    print(out.strip())
    print(f"compress from the store ({m['dataset']['n_samples']} x {dim}, {classes} classes, dq, 10 bins): {wall:.1f} s wall, stages {m['timings_seconds']}, peak RSS {peak:.0f} MB")


def pixels(root: Path, out: Path, ratios: list[float], drop_ratio: float, model_name: str = "tiny") -> None:
    model = out / f"{model_name}-model"
    if not model.exists():
        model.parent.mkdir(parents=True, exist_ok=True)
        _tiny_model(model) if model_name == "tiny" else _full_model(model_name, model)
    dsq = [sys.executable, "-m", "dsquant.cli"]
    print("| keep ratio | selected images | wall (s) | embed (s) | pixels (s) | pixels images/s | peak RSS (MB) | patches.dsqp (MB) | selected source files (MB) | kept PSNR (dB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in ratios:
        dest = out / f"ratio-{r}"
        wall, peak, _ = _child(dsq + ["compress", str(root), "--stream", "--encoder", f"hf:{model}", "--method", "dq", "--ratio", str(r),
                                      "--drop-ratio", str(drop_ratio), "--patch-quality", "90", "--out", str(dest), "--overwrite", "--quiet"])
        m = json.loads((dest / "manifest.json").read_text())
        t, px = m["timings_seconds"], m["pixels"]
        n = m["selection"]["n_selected"]
        src = px["bytes"]["source_files"]
        print(f"| {r} | {n:,} | {wall:.0f} | {t.get('embed', float('nan')):.0f} | {t['pixels']:.0f} | {n / t['pixels']:.0f} | {peak:.0f} | "
              f"{px['bytes']['patches.dsqp'] / 1e6:.1f} | {'-' if src is None else f'{src / 1e6:.1f}'} | {px['kept_psnr_db']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("make-folder"); a.add_argument("dir", type=Path); a.add_argument("--n", type=int, default=100_000); a.add_argument("--classes", type=int, default=1000); a.add_argument("--workers", type=int, default=1)
    a = sub.add_parser("decode"); a.add_argument("dir", type=Path); a.add_argument("--images", type=int, default=4000); a.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    a = sub.add_parser("index"); a.add_argument("dir", type=Path)
    a = sub.add_parser("embed-speed"); a.add_argument("--models", nargs="+", default=["resnet50", "vit-b16"]); a.add_argument("--images", type=int, default=64)
    a.add_argument("--device", default="cpu"); a.add_argument("--batch", type=int, default=32)
    a = sub.add_parser("embed-store"); a.add_argument("dir", type=Path); a.add_argument("store", type=Path); a.add_argument("--model", choices=["tiny", "resnet50", "vit-b16"], default="tiny")
    a.add_argument("--device"); a.add_argument("--workers", type=int); a.add_argument("--batch-size", type=int, default=128)
    a = sub.add_parser("store-bins"); a.add_argument("store", type=Path); a.add_argument("--n", type=int, default=1_281_167); a.add_argument("--dim", type=int, default=768); a.add_argument("--classes", type=int, default=1000)
    a = sub.add_parser("pixels"); a.add_argument("dir", type=Path); a.add_argument("out", type=Path); a.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.2])
    a.add_argument("--drop-ratio", type=float, default=0.2); a.add_argument("--model", choices=["tiny", "resnet50", "vit-b16"], default="tiny")
    a = sub.add_parser("export"); a.add_argument("runs", type=Path, nargs="+"); a.add_argument("--formats", nargs="+", choices=["npz", "imagefolder"], default=["npz", "imagefolder"])
    args = p.parse_args()
    if args.cmd == "export":
        export(args.runs, args.formats)
    elif args.cmd == "make-folder":
        make_folder(args.dir, args.n, args.classes, workers=args.workers)
    elif args.cmd == "decode":
        decode(args.dir, args.images, args.workers)
    elif args.cmd == "index":
        index(args.dir)
    elif args.cmd == "embed-speed":
        embed_speed(args.models, args.images, args.device, args.batch)
    elif args.cmd == "embed-store":
        embed_store(args.dir, args.store, args.model, args.device, args.workers, args.batch_size)
    elif args.cmd == "pixels":
        pixels(args.dir, args.out, args.ratios, args.drop_ratio, args.model)
    else:
        store_bins(args.store, args.n, args.dim, args.classes)


if __name__ == "__main__":
    main()
