"""The ``dsquant`` command: thin wrappers that parse arguments, call the library, print."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a keep ratio in (0, 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _default_out(data: str, method: str, ratio: float) -> str:
    stem = "digits" if data == "digits" else Path(data).name.split(".")[0] or "data"
    return str(Path("runs") / f"{stem}-{method}-{ratio:g}")


def _add_compress(sub) -> None:
    p = sub.add_parser(
        "compress",
        help="compress a dataset into a small subset",
        description="Compress DATA by Dataset Quantization: embed, split every class into bins by "
        "greedy GraphCut, sample a fraction of every bin, write the indices and a manifest.",
    )
    p.add_argument("data", nargs="?", default="digits", help="dataset: 'digits' (default), an image folder, a tar, a CIFAR python archive, IDX files, or .npy/.npz features")
    p.add_argument("--ratio", type=_ratio, default=0.1, help="keep ratio in (0, 1] (default 0.1)")
    p.add_argument("--bins", type=_positive_int, default=10, help="number of bins K (default 10)")
    p.add_argument("--method", choices=["dq", "random"], default="dq", help="dq (default) or random (class-balanced baseline)")
    p.add_argument("--out", help="output directory (default runs/<data>-<method>-<ratio>)")
    p.add_argument("--encoder", default="proxy", help="proxy (default), pixels, or features:PATH (a .npy with one row per sample)")
    p.add_argument("--embedding", choices=["gradient", "features"], default="gradient", help="proxy embedding binned on: last-layer gradients (default) or penultimate features")
    p.add_argument("--epochs", type=_nonneg_int, default=5, help="proxy training epochs (default 5)")
    p.add_argument("--width", type=_positive_int, default=32, help="proxy width (default 32)")
    p.add_argument("--proxy-checkpoint", help="a local state_dict of the proxy to use instead of training")
    p.add_argument("--seed", type=int, default=0, help="seed of training and sampling (default 0)")
    p.add_argument("--labels", help="labels .npy for a .npy feature matrix")
    p.add_argument("--split", default="train", help="split to compress (default train)")
    p.add_argument("--image-size", type=_positive_int, help="resize and centre-crop images to this size")
    p.add_argument("--export", choices=["imagefolder", "npz"], help="also write the subset itself")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--precision", choices=["float32", "float64"], default="float32", help="precision of the similarity rows in bin generation (the bins are the exact greedy's either way; float32 is faster)")
    p.add_argument("--block-size", type=_positive_int, help="similarity rows held per class (default: as many as fit in 2 GiB)")
    p.add_argument("--cache-dir", help="cache of decoded datasets and embeddings (default ~/.cache/dsquant or $DSQUANT_CACHE)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument("--device", help="torch device for the proxy (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="summarise an output directory", description="Print what a compression run selected, per bin and per class, and its stage times.")
    p.add_argument("dir", help="output directory of 'dsquant compress'")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _print_summary(m: dict, out: str | None) -> None:
    sel = m["selection"]
    ds = m["dataset"]
    n = ds["n_samples"]
    print(f"dsquant {m['method']}: selected {sel['n_selected']} of {n} samples ({100 * sel['n_selected'] / n:.1f}%) from {ds['source']}")
    if sel.get("per_class"):
        pc = sel["per_class"]
        lo, hi = min(pc), max(pc)
        print(f"  per class: {lo}" + (f"-{hi}" if hi != lo else "") + f" of {len(pc)} classes")
    if sel.get("bins"):
        sizes = [b["size"] for b in sel["bins"]]
        picks = [b["selected"] for b in sel["bins"]]
        print(f"  bins: {len(sizes)}, sizes {sizes}")
        print(f"        selected {picks}")
    emb = m.get("embedding") or {}
    if emb:
        info = emb.get("info") or {}
        extra = f", proxy train accuracy {info['train_accuracy']:.3f}" if "train_accuracy" in info else ""
        print(f"  embedding: {emb.get('kind')} ({emb.get('dim')}-d){' [cached]' if emb.get('cached') else ''}{extra}")
    t = m.get("timings_seconds", {})
    if t:
        print("  time: " + ", ".join(f"{k} {_fmt_seconds(v)}" for k, v in t.items()))
    if out:
        files = "indices.npy, bins.npz, manifest.json" + (f", {m['export']['path']}" if m.get("export") else "")
        print(f"  wrote {out}/ ({files})")


def _cmd_compress(args) -> int:
    from .pipeline import compress

    out = args.out or _default_out(args.data, args.method, args.ratio)
    result = compress(
        args.data,
        ratio=args.ratio,
        n_bins=args.bins,
        method=args.method,
        encoder=args.encoder,
        seed=args.seed,
        epochs=args.epochs,
        out=out,
        export=args.export,
        overwrite=args.overwrite,
        labels=args.labels,
        split=args.split,
        image_size=args.image_size,
        embedding=args.embedding,
        proxy_width=args.width,
        proxy_checkpoint=args.proxy_checkpoint,
        block_size=args.block_size,
        precision=args.precision,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        device=args.device,
        progress=not args.quiet and sys.stderr.isatty(),
        command=["dsquant"] + sys.argv[1:],
    )
    _print_summary(result.manifest, out)
    return 0


def _cmd_info(args) -> int:
    from .artifact import read_output

    res = read_output(args.dir)
    m = res.manifest
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    _print_summary(m, None)
    p = m["parameters"]
    print(f"  parameters: ratio {p['ratio']}, bins {p.get('n_bins')}, seed {p['seed']}, precision {p.get('precision')}")
    bins = m["selection"].get("bins") or []
    if bins:
        classes = m["dataset"].get("classes") or []
        print()
        print(f"  {'bin':>3} {'size':>7} {'selected':>8}  selected per class")
        for b in bins:
            per = b.get("selected_per_class")
            per_txt = " ".join(str(v) for v in per) if per is not None and len(per) <= 20 else ""
            print(f"  {b['bin']:>3} {b['size']:>7} {b['selected']:>8}  {per_txt}")
        if classes and len(classes) <= 20:
            print(f"  classes: {', '.join(classes)}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Argument errors end in one line on stderr and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog.split()[0]} --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="dsquant", description="Dataset Quantization: compress a training set into a small subset.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"dsquant {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_compress(sub)
    _add_info(sub)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad argument (already reported)
        return int(exc.code or 0)
    from .data import DataError

    try:
        if args.command == "compress":
            return _cmd_compress(args)
        return _cmd_info(args)
    except (DataError, ValueError, FileExistsError, FileNotFoundError, PermissionError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"dsquant: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsquant: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
