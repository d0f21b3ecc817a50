"""The ``dsquant`` command: thin wrappers that parse arguments, call the library, print."""

from __future__ import annotations

import argparse
import json
import os
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


def _per_class_or_none(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")  # refused below, with the same message
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of samples per class or 'none', got {text!r}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _quality(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer quality in [1, 100], got {text!r}") from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected an integer quality in [1, 100], got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed in [0, 2**32), got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer seed in [0, 2**32) (numpy's and torch's range), got {value}")
    return value


def _unit_interval(lo_open: bool, hi_open: bool, what: str):
    """An argparse type: a finite number in [0, 1] with the given open ends."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        ok = (0.0 < value if lo_open else 0.0 <= value) and (value < 1.0 if hi_open else value <= 1.0)
        if not ok:  # NaN fails every comparison
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    return parse


def _device(text: str) -> str:
    from .training import resolve_device

    try:
        resolve_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _default_out(data: str, method: str, ratio: float) -> str:
    stem = "digits" if data == "digits" else Path(data).name.split(".")[0] or "data"
    return str(Path("runs") / f"{stem}-{method}-{ratio:g}")


def _compress_flags() -> list[tuple[tuple[str, ...], dict]]:
    """``dsquant compress``'s options as a table: (flags, argparse options). Every ``dest`` is
    the keyword of :func:`dsquant.compress` the flag sets, so the command passes them through
    unchanged (:func:`_cmd_compress`); choices come from the registries."""
    from .embed import ENCODERS
    from .methods import DYNAMICS_METHODS, METHODS, Validated
    from .methods.validated import CCS_FROM

    encoders = "; ".join(f"{n}{':' + c.argument if c.argument else ''} ({'/'.join(c.kinds)}): {c.summary}" for n, c in ENCODERS.items())
    return [
        (("--ratio",), dict(dest="ratio", type=_ratio, default=0.1, help="keep ratio in (0, 1] (default 0.1)")),
        (("--bins",), dict(dest="n_bins", type=_positive_int, default=10, help="number of bins K (default 10)")),
        (("--method",), dict(dest="method", choices=list(METHODS), default=Validated.name, help="; ".join(f"{name}: {cls.summary}" for name, cls in METHODS.items()) + f" (default {Validated.name}: measured best across datasets, docs/selection.md; dq and adq are the papers' methods, unchanged)")),
        (("--encoder",), dict(dest="encoder", help=f"default: proxy for images, sentence for text, the features themselves for feature data. {encoders}")),
        (("--max-tokens",), dict(dest="text_max_tokens", type=_positive_int, help="text: truncate every text to this many tokens (default: the model's, 256 for all-MiniLM-L6-v2); fewer is faster on long records")),
        (("--encoder-precision",), dict(dest="encoder_precision", choices=["auto", "float32", "bfloat16", "float16"], default="auto", help="compute dtype of the sentence and hf: encoders. auto (default): bf16 on CPUs with AMX/AVX512-BF16 (2.7x float32 for text, the embedding kept), mixed precision for hf: models on CUDA, float32 otherwise")),
        (("--text-model",), dict(dest="text_model", default="all-MiniLM-L6-v2", help="text: sentence-transformers model name or path (default all-MiniLM-L6-v2, offline); static: a static embedding distilled from it (model2vec's recipe, cached; 100x faster, coarser), static:PATH from another model or a model2vec folder")),
        (("--template",), dict(dest="template", help="text: what to embed per record, e.g. '{instruction} {output}' (default: DQ's instruction + input + output)")),
        (("--group-by",), dict(dest="group_by", help="text: a record field whose groups are binned separately, like classes")),
        (("--embedding",), dict(dest="embedding", choices=["gradient", "features"], default="gradient", help="proxy embedding binned on: last-layer gradients (default) or penultimate features")),
        (("--epochs",), dict(dest="epochs", type=_nonneg_int, default=5, help="proxy training epochs (default 5)")),
        (("--width",), dict(dest="proxy_width", type=_positive_int, default=32, help="proxy width (default 32)")),
        (("--proxy-checkpoint",), dict(dest="proxy_checkpoint", help="a local state_dict of the proxy to use instead of training")),
        (("--seed",), dict(dest="seed", type=_seed, default=0, help="seed of training and sampling, in [0, 2**32) (default 0)")),
        (("--alpha",), dict(dest="alpha", type=_unit_interval(False, False, "a weight in [0, 1]"), default=0.6, help="ADQ: weight of bin importance against bin size, in [0, 1] (default 0.6)")),
        (("--diversity-encoder",), dict(dest="diversity_encoder", choices=["simclr", "proxy"], default="simclr", help="ADQ: encoder of the contrastive diversity score (default simclr)")),
        (("--candidates",), dict(dest="candidates", nargs="+", action="extend", choices=[m for m, c in METHODS.items() if not c.needs_pixels and m != "validated"], metavar="METHOD", help="validated: the methods it chooses between on a validation split of the training set below 500 samples per class, the incumbent first (default dq dq-budget herding herding-drop)")),
        (("--pruning-candidates",), dict(dest="pruning_candidates", nargs="*", action="extend", choices=[m for m, c in METHODS.items() if (not c.needs_pixels or c in DYNAMICS_METHODS) and m != "validated"], metavar="METHOD", help="validated, from 500 samples per class (pruning): the methods it chooses between, the incumbent first (default dq-budget el2n ccs; none: dq-budget unvalidated)")),
        (("--ccs-from",), dict(dest="ccs_from", type=_per_class_or_none, default=CCS_FROM, metavar="N|none", help="validated, on images: from N samples per class CCS keeping the easier samples (half the hardest cut) is a candidate too (when pruning, below 90 %% keep); it costs the EL2N training dynamics (default 100; none: never)")),
        (("--rep",), dict(dest="representativeness", help="ADQ: representativeness: texture (images, default), embedding, or a .npy of per-sample scores")),
        (("--labels",), dict(dest="labels", help="labels .npy for a .npy feature matrix")),
        (("--split",), dict(dest="split", default="train", help="split to compress (default train)")),
        (("--image-size",), dict(dest="image_size", type=_positive_int, help="resize and centre-crop images to this size")),
        (("--stream",), dict(dest="stream", action="store_const", const=True, default=None, help="image folders and tars: index them and decode images on demand (default from 200,000 images; needs an encoder that embeds each image on its own: hf:, torchscript:, timm:, open_clip:)")),
        (("--in-memory",), dict(dest="stream", action="store_const", const=False, help="image folders and tars: decode every image into memory, however many")),
        (("--engine",), dict(dest="engine", choices=["local", "ray"], default="local", help="where bins are generated: local (default) or ray (one task per class on a Ray cluster: the same bins; pip install 'dsquant[ray]')")),
        (("--address",), dict(dest="address", help="--engine ray: the cluster's address ('auto': the one this machine joined); default a local cluster")),
        (("--partitions",), dict(dest="partitions", type=_positive_int, help="bin one unlabelled pool by partitioned greedy over P random parts (approximate; for pools larger than a machine; docs/distributed.md)")),
        (("--no-partition-union",), dict(dest="partition_union", action="store_false", help="with --partitions: every part picks its share of each bin, no greedy on the union (what scales to bins of millions, a little further from the exact bins)")),
        (("--export",), dict(dest="export", choices=["imagefolder", "npz"], help="also write the subset itself")),
        (("--drop-ratio",), dict(dest="drop_ratio", type=_unit_interval(False, True, "a drop ratio in [0, 1)"), help="pixel quantization: drop this fraction of every selected image's least important patches (e.g. 0.2) and store only the kept ones (streamed data: with an hf: encoder, reading only the selected images)")),
        (("--patch",), dict(dest="patch", type=_positive_int, help="patch size in pixels (default: 8x8 grid on small images, 16 px on large)")),
        (("--reconstructor",), dict(dest="reconstructor", default="inpaint", help="what rebuilds dropped patches at load time: inpaint (default), tiny-mae (trained on the data now), or mae:PATH (a local MAE checkpoint)")),
        (("--patch-codec",), dict(dest="patch_codec", choices=["webp", "png", "jpeg"], default="webp", help="pixel quantization: codec of the kept patches in patches.dsqp (default webp; jpeg is lossy only, png lossless only)")),
        (("--patch-quality",), dict(dest="patch_quality", type=_quality, help="pixel quantization: lossy kept patches at this quality in [1, 100] (webp or jpeg; the kept pixels' PSNR is recorded); default lossless, bit-exact")),
        (("--overwrite",), dict(dest="overwrite", action="store_true", help="replace an existing output directory of an earlier dsquant run (never anything else)")),
        (("--precision",), dict(dest="precision", choices=["float32", "float64"], default="float32", help="precision of the similarity rows in bin generation (the bins are the exact greedy's either way; float32 is faster)")),
        (("--block-size",), dict(dest="block_size", type=_positive_int, help="similarity rows held per class (default: as many as fit in 2 GiB)")),
        (("--cache-dir",), dict(dest="cache_dir", help="cache of decoded datasets and embeddings (default ~/.cache/dsquant or $DSQUANT_CACHE)")),
        (("--no-cache",), dict(dest="use_cache", action="store_false", help="do not read or write the cache")),
        (("--device",), dict(dest="device", type=_device, help="torch device for the proxy (default: cuda if available)")),
    ]


def _add_compress(sub) -> None:
    p = sub.add_parser(
        "compress",
        help="compress a dataset into a small subset",
        description="Compress DATA by Dataset Quantization: embed, split every class into bins by "
        "greedy GraphCut, sample a fraction of every bin, write the indices and a manifest.",
    )
    p.add_argument("data", nargs="?", default="digits", help="dataset: 'digits' (default), an image folder, a tar, a CIFAR python archive, IDX files, .npy/.npz features, or .jsonl/.json text records")
    p.add_argument("--out", help="output directory (default runs/<data>-<method>-<ratio>)")
    table = _compress_flags()
    for flags, options in table:
        if options.get("action") is None and "choices" not in options:  # --bins BINS, not N_BINS
            options.setdefault("metavar", flags[0].lstrip("-").replace("-", "_").upper())
        p.add_argument(*flags, **options)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(compress_keywords=[options["dest"] for _, options in table])


def _add_embed(sub) -> None:
    from .embed import ENCODERS

    rows = [f"{n}:{c.argument}" for n, c in ENCODERS.items() if callable(getattr(c, "encode_rows", None))]
    p = sub.add_parser(
        "embed",
        help="embed a dataset into a sharded, resumable embedding store",
        description="Embed DATA with a pretrained encoder into STORE: fixed-size shards written "
        "one by one (a killed run resumes at the first unfinished shard), ids and labels beside, "
        "a manifest. 'dsquant compress STORE' bins from it without loading it whole. "
        "--shard i/N embeds one slice, for job arrays writing into one store.",
    )
    p.add_argument("data", help="dataset: an image folder, a tar, WebDataset shards (a brace pattern such as 'train-{000..146}.tar'), or text records")
    p.add_argument("--encoder", required=True, help="an encoder that embeds each sample on its own: " + ", ".join(rows))
    p.add_argument("--out", required=True, help="the store directory (new, empty, or a store of the same embeddings to resume)")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="i/N", help="embed only shards k with k %% N == i (default 0/1: all)")
    p.add_argument("--shard-size", type=_positive_int, default=10_000, help="rows per shard (default 10000)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored precision (default float16)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=_nonneg_int, help="decoding processes (default half the cores; 0 decodes in the main process)")
    p.add_argument("--pool", choices=["auto", "cls", "mean", "pooler", "projection"], default="auto", help="hf: pooling of the backbone's output (default auto: per model family, docs/imagenet.md; projection: a CLIP/SigLIP checkpoint's image-text space)")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16", "float16"], default="auto", help="auto: bf16 autocast on CPUs with AMX/AVX512-BF16, mixed precision on CUDA (default); float32")
    p.add_argument("--skip-bad", action="store_true", help="leave out images that cannot be decoded (listed in the shard records and in compress's manifest) instead of stopping")
    p.add_argument("--split", default="train", help="split to embed (default train)")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="local (default) or ray: shards embedded by a pool of Ray actors (the same store)")
    p.add_argument("--address", help="--engine ray: the cluster's address ('auto': the one this machine joined); default a local cluster")
    p.add_argument("--actors", type=_positive_int, help="--engine ray: actors in the pool (default one per GPU, else the cluster's CPUs less one)")
    p.add_argument("--text-model", default="all-MiniLM-L6-v2", help="text: sentence-transformers model for --encoder sentence")
    p.add_argument("--template", help="text: what to embed per record (see compress --help)")
    p.add_argument("--device", type=_device, help="torch device (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _shard(text: str) -> tuple[int, int]:
    from .embed.store import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_embed(args) -> int:
    from .data import read_dataset
    from .embed import make_encoder
    from .embed.store import embed_to_store

    from .data.stream import CompressedTarError

    try:  # every sample is embedded on its own: stream image folders and tars whatever their size
        dataset = read_dataset(args.data, split=args.split, stream=True, template=args.template)
    except CompressedTarError:
        dataset = read_dataset(args.data, split=args.split, stream=False)
    encoder = make_encoder(args.encoder, getattr(dataset, "kind", None), device=args.device, batch_size=args.batch_size, num_workers=args.workers, pool=args.pool, precision=args.precision, skip_bad=args.skip_bad, model=args.text_model)
    progress = not args.quiet and sys.stderr.isatty()
    if args.engine == "ray":
        from .distributed import ray_embed

        if args.shard != (0, 1):
            raise ValueError("shard: --engine ray embeds every unfinished shard; --shard is for job arrays without Ray")
        r = ray_embed(dataset, encoder, args.out, shard_size=args.shard_size, dtype=args.dtype, address=args.address, actors=args.actors, log=None if args.quiet else print)
    else:
        r = embed_to_store(dataset, encoder, args.out, shard_size=args.shard_size, dtype=args.dtype, shard=args.shard, progress=progress, log=None if args.quiet else print)
    state = "complete" if r["remaining"] == 0 else f"{r['remaining']} of {r['shards']} shards left (other --shard slices, or rerun to resume)"
    print(f"dsquant embed: {r['n']} samples, {r['shards']} shards; wrote {r['written']} ({r['done_before']} were done) in {_fmt_seconds(r['seconds'])} -> {r['store']} ({state})")
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="summarise an output directory", description="Print what a compression run selected, per bin and per class, and its stage times.")
    p.add_argument("dir", help="output directory of 'dsquant compress', or an embedding store of 'dsquant embed'")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")


def _add_evaluate(sub) -> None:
    from .evaluate import ARCHITECTURES, PRESETS

    p = sub.add_parser(
        "evaluate",
        help="train unseen architectures on a compressed set and test them",
        description="Train models from scratch on the compressed set of DIR and report the final epoch's "
        "test accuracy (mean +- std over seeds) on the dataset's test split.",
    )
    p.add_argument("dir", help="output directory of 'dsquant compress'")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="training protocol: cpu (default, 2 cores) or paper (ResNet-18, 200 epochs; for a GPU)")
    p.add_argument("--arch", nargs="+", action="extend", choices=sorted(ARCHITECTURES), help="architectures (default: the preset's)")
    p.add_argument("--seeds", nargs="+", action="extend", type=_seed, help="training seeds (default 0 1 2)")
    p.add_argument("--test", help="the test set, if the dataset has no 'test' split")
    p.add_argument("--device", type=_device, help="torch device (default: cuda if available)")
    p.add_argument("--json", help="also write the results to this JSON file (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file that dsquant evaluate wrote (never anything else)")
    p.add_argument("--unmodified", action="store_true", help="with pixel quantization: train on the selected images as they were (no patches dropped)")
    p.add_argument("--reconstructor", help="with pixel quantization: override the run's reconstructor")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_benchmark(sub) -> None:
    from .evaluate import ARCHITECTURES, PRESETS

    p = sub.add_parser(
        "benchmark",
        help="grid of datasets x methods x keep ratios x architectures x seeds",
        description="Run (or resume) a benchmark grid. Every finished cell is stored in OUT/results.sqlite "
        "and skipped on a rerun; writes OUT/results.csv, summary.csv, results.md and accuracy.png. The "
        "reports give each method's difference from class-balanced random, paired by seed, with its 95 % "
        "interval (Student's paired t).",
    )
    p.add_argument("--data", nargs="+", action="extend", required=True, help="datasets with a test split (paths, or 'digits')")
    from .evaluate.grid import DEFAULT_METHODS, FULL
    from .methods import METHODS

    p.add_argument("--methods", nargs="+", action="extend", choices=[FULL, *METHODS], help=f"{FULL} (the whole training set) and the selection methods (default: {' '.join(DEFAULT_METHODS)})")
    p.add_argument("--ratios", nargs="+", action="extend", type=_ratio, help="keep ratios (default 0.01 0.05 0.1 0.2, or none with --per-class)")
    p.add_argument("--per-class", nargs="+", action="extend", type=_positive_int, metavar="M", help="budgets in samples per class (e.g. 1 5 10 50 for the lowbudget preset): keep ratio M x classes / N of each dataset")
    p.add_argument("--arch", nargs="+", action="extend", choices=sorted(ARCHITECTURES), help="architectures (default: the preset's)")
    p.add_argument("--seeds", nargs="+", action="extend", type=_seed, help="seeds of sampling and training (default: 0 .. N-1 with N from --n-seeds); wins over --n-seeds")
    p.add_argument("--n-seeds", type=_positive_int, default=10, metavar="N", help="run seeds 0 .. N-1 when --seeds is not given (default 10)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--out", required=True, help="directory of the results")
    p.add_argument("--bins", type=_positive_int, default=10, help="bins K of dq/adq (default 10)")
    p.add_argument("--epochs", type=_nonneg_int, default=5, help="proxy training epochs (default 5)")
    p.add_argument("--embedding", choices=["gradient", "features"], default="gradient")
    p.add_argument("--alpha", type=_unit_interval(False, False, "a weight in [0, 1]"), help="ADQ alpha (default: compress's)")
    p.add_argument("--diversity-encoder", choices=["simclr", "proxy"], help="ADQ diversity encoder (default: compress's)")
    p.add_argument("--proxy-seed", dest="proxy_seed", type=_proxy_seed, help="seed of the proxy (and of the other encoders trained on the data): N, or 'seed' for a new proxy per seed, so that the paired intervals include the proxy run's variance (default 0: one proxy for every seed)")
    p.add_argument("--title", default="", help="title of the report and plot")
    p.add_argument("--import", dest="import_csv", nargs="+", action="extend", metavar="CSV", help="first add the trainings of these results.csv files (from other runs; the flag may be repeated) to OUT's database: their cells are not run again and the reports include them")
    p.add_argument("--device", type=_device, help="torch device (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _proxy_seed(text: str):
    """``--proxy-seed``: ``"seed"`` (a proxy per seed) or a seed in [0, 2**32)."""
    if text == "seed":
        return "seed"
    try:
        return _seed(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'seed' (a proxy per seed) or an integer seed in [0, 2**32), got {text!r}") from None


def _cmd_evaluate(args) -> int:
    import contextlib

    from .artifact import AtomicOutput, is_json_file
    from .evaluate import evaluate_output

    with contextlib.ExitStack() as stack:
        w = None
        if args.json:  # checked (and locked) before the training, like every output
            recognise = lambda p: is_json_file(p, ("preset", "runs", "summary"))  # noqa: E731
            w = stack.enter_context(AtomicOutput(args.json, overwrite=args.overwrite, keep=[args.dir], recognise=recognise, what="an evaluation result", is_file=True))
        res = evaluate_output(args.dir, tuple(args.arch) if args.arch else None, tuple(args.seeds or (0, 1, 2)), args.preset, args.test, args.device, progress=not args.quiet and sys.stderr.isatty(), unmodified=args.unmodified, reconstructor=args.reconstructor)
        print(f"dsquant evaluate: {res['n_train']} training samples ({res['trained_on']}), {res['n_test']} test samples, preset {args.preset}")
        print(f"  {'architecture':<16} {'test accuracy (%)':>20}  per seed")
        for s in res["summary"]:
            per = [f"{100 * r['accuracy']:.2f}" for r in res["runs"] if r["arch"] == s["arch"]]
            print(f"  {s['arch']:<16} {100 * s['mean']:>12.2f} ± {100 * s['std']:<5.2f}  {' '.join(per)}")
        if w is not None:
            w.tmp.write_text(json.dumps(res, indent=2) + "\n")
            w.commit()
    return 0


def _cmd_benchmark(args) -> int:
    from .evaluate import Grid, run_grid, write_reports
    from .evaluate.grid import DEFAULT_METHODS, check_report_dir

    opts = {"n_bins": args.bins, "epochs": args.epochs, "embedding": args.embedding}
    if args.alpha is not None:
        opts["alpha"] = args.alpha
    if args.diversity_encoder is not None:
        opts["diversity_encoder"] = args.diversity_encoder
    if args.proxy_seed is not None:  # keyed apart from the one-proxy rows (which carry no proxy_seed)
        opts["proxy_seed"] = args.proxy_seed
    seeds = args.seeds if args.seeds is not None else list(range(args.n_seeds))
    ratios = args.ratios if args.ratios is not None else ([] if args.per_class else [0.01, 0.05, 0.1, 0.2])
    grid = Grid(args.data, args.methods or list(DEFAULT_METHODS), ratios, args.arch, seeds, args.preset, opts, per_class=args.per_class or [])
    check_report_dir(args.out)  # before hours of training, not after
    for csv_path in args.import_csv or []:
        from .evaluate.grid import import_results

        added = import_results(Path(args.out) / "results.sqlite", csv_path)
        print(f"dsquant benchmark: imported {added} trainings from {csv_path}")
    db = run_grid(grid, args.out, args.device, progress=not args.quiet and sys.stderr.isatty())
    paths = write_reports(db, args.out, preset=args.preset, options=grid.options_key(), title=args.title)
    print(f"dsquant benchmark: wrote {', '.join(str(p) for p in paths.values())}")
    print(Path(paths["md"]).read_text())
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write the compressed set's images (reconstructed when patches were dropped)",
        description="Write the images of a compression run, in the original index order: file and row i "
        "are dataset index indices[i]. With pixel quantization the dropped patches are rebuilt first.",
    )
    p.add_argument("dir", help="output directory of 'dsquant compress'")
    p.add_argument("--format", choices=["imagefolder", "npz"], default="npz")
    p.add_argument("--dest", help="where to write (default DIR/export or DIR/export.npz); must not exist")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export that dsquant wrote (never anything else)")
    p.add_argument("--reconstructor", help="override the run's reconstructor (inpaint, mae:PATH, tiny-mae:PATH)")
    p.add_argument("--device", type=_device, help="torch device (default: cuda if available)")
    p.add_argument("--quiet", action="store_true")


def _add_train_mae(sub) -> None:
    p = sub.add_parser(
        "train-mae",
        help="train a small masked autoencoder on a dataset, to rebuild dropped patches",
        description="Train a tiny MAE (the official MAE layout, at the images' resolution) on DATA's "
        "training images; use it with --reconstructor tiny-mae:PATH.",
    )
    p.add_argument("data", help="dataset (image folder, tar, CIFAR archive, IDX, digits)")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--patch", type=_positive_int, help="patch size (default: the compress default for this image size)")
    p.add_argument("--epochs", type=_positive_int, default=10)
    p.add_argument("--max-samples", type=_positive_int, help="train on at most this many images")
    p.add_argument("--mask-ratio", type=_unit_interval(True, True, "a mask ratio in (0, 1)"), default=0.4, help="fraction of patches masked in training (default 0.4)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint that dsquant wrote")
    p.add_argument("--device", type=_device)
    p.add_argument("--quiet", action="store_true")


def _cmd_export(args) -> int:
    from .artifact import read_output
    from .cache import Cache

    done = read_output(args.dir).export(args.format, args.dest, args.overwrite, args.reconstructor, args.device, Cache(), progress=not args.quiet and sys.stderr.isatty())
    print(f"dsquant export: {done['n']} {done['what']} images -> {done['dest']}")
    return 0


def _is_checkpoint(path: Path) -> bool:
    """A file ``torch.save`` wrote (a zip archive with a ``data.pkl`` member)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _cmd_train_mae(args) -> int:
    from .cache import Cache
    from .data import read_dataset
    from .pixels import default_patch
    from .pixels.train_mae import save_mae, train_tiny_mae

    from .artifact import AtomicOutput

    with AtomicOutput(args.out, overwrite=args.overwrite, protect=[args.data], recognise=_is_checkpoint, what="a checkpoint", is_file=True) as w:
        ds = read_dataset(args.data, cache=Cache())
        if getattr(ds, "kind", "") != "images":
            raise ValueError(f"{args.data}: train-mae needs images")
        patch = args.patch or default_patch(ds.image_shape)
        model, info = train_tiny_mae(ds.images, patch, epochs=args.epochs, mask_ratio=args.mask_ratio, max_samples=args.max_samples, seed=args.seed, device=args.device, progress=not args.quiet and sys.stderr.isatty())
        save_mae(model, w.tmp, info)
        w.commit()
    print(f"dsquant train-mae: {info['train_samples']} images x {args.epochs} epochs in {_fmt_seconds(info['seconds'])}; "
          f"loss {info['first_loss']} -> {info['last_loss']}; wrote {args.out}")
    return 0


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
        extra = [f for f in m.get("files", {}) if f not in ("indices.npy", "bins.npz")]
        files = ", ".join(["indices.npy", "bins.npz", "manifest.json", *extra] + ([m["export"]["path"]] if m.get("export") else []))
        print(f"  wrote {out}/ ({files})")


def _cmd_compress(args) -> int:
    from .pipeline import compress

    out = args.out or _default_out(args.data, args.method, args.ratio)
    options = {k: getattr(args, k) for k in args.compress_keywords}  # the flag table's keywords
    result = compress(args.data, out=out, progress=not args.quiet and sys.stderr.isatty(), command=["dsquant"] + sys.argv[1:], **options)
    _print_summary(result.manifest, out)
    return 0


def _store_info(path: str, as_json: bool) -> int:
    from .embed.store import store_status

    st = store_status(path)
    if as_json:
        print(json.dumps(st, indent=2))
        return 0
    m = st["manifest"]
    enc = m.get("encoder") or {}
    bb = enc.get("backbone") if isinstance(enc.get("backbone"), dict) else {}
    print(f"embedding store {path}: {m['n']} samples x {m['dim']} ({m['dtype']}), {len(m.get('classes') or [])} classes, from {m['source']['source']}")
    print(f"  encoder: {bb.get('backbone', enc.get('encoder'))}" + (f", pooling {bb.get('pooling')}, precision {bb.get('precision')}" if bb else ""))
    print(f"  shards: {st['done']} of {m['n_shards']} done ({m['shard_size']} rows each), {st['bytes'] / 1e6:.1f} MB" + (f"; first unfinished: {st['first_missing']}" if st["first_missing"] else ""))
    if st["bad"]:
        print(f"  unreadable samples skipped: {len(st['bad'])} (first: {st['bad'][0][1]}: {st['bad'][0][2]})")
    return 0


def _cmd_info(args) -> int:
    from .artifact import read_output
    from .embed.store import is_store

    if is_store(args.dir):
        return _store_info(args.dir, args.json)
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
    px = m.get("pixels")
    if px:
        b = px["bytes"]
        print()
        print(f"  pixels: drop ratio {px['drop_ratio']}, {px['patch']} px patches ({px['grid'][0]}x{px['grid'][1]}), {px['kept_per_image']} kept per image; "
              f"effective keep ratio {100 * px['effective_keep_ratio']:.2f} %; reconstructor {px['reconstructor']}")
        for line in _bytes_table(px, m["selection"]["n_selected"]):
            print(line)
    from .methods import METHODS

    cls = METHODS.get(m.get("method"))
    if cls is not None:
        for line in cls.report(m):
            print(line)
    return 0


def _bytes_table(px: dict, n: int) -> list[str]:
    """The pixels record's bytes side by side: the kept-patch file against the same images
    whole (raw, PNG, the source's files when known)."""
    b = px["bytes"]
    codec = px.get("codec") or {"name": "raw", "lossless": True}  # runs before format version 2
    kind = "lossless" if codec.get("lossless") else f"quality {codec.get('quality')}"
    kept = "kept pixels exact" if codec.get("lossless") else f"kept pixels PSNR {px.get('kept_psnr_db')} dB"
    dsqp = b["patches.dsqp"]
    rows = [(f"kept patches: patches.dsqp ({codec['name']} {kind}; {kept})", dsqp),
            ("whole images, raw uint8", b["raw_uint8"])]
    if b.get("png") is not None:  # not measured for a streamed dataset (it would mean encoding every image again)
        rows.append(("whole images, PNG", b["png"]))
    if b.get("source_files") is not None:
        rows.append((f"whole images, source files: {px.get('source_files')}", b["source_files"]))
    width = max(len(label) for label, _ in rows)
    lines = [f"  bytes on disk, the {n:,} selected images:"]
    for i, (label, value) in enumerate(rows):
        share = f"   patches.dsqp is {dsqp / value:.1%} of this" if i and value else ""
        lines.append(f"    {label:<{width}} {value:>14,}{share}")
    if b.get("source_files") is None and px.get("source_files"):
        lines.append(f"    source files: {px['source_files']}")
    return lines


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
    _add_embed(sub)
    _add_info(sub)
    _add_evaluate(sub)
    _add_benchmark(sub)
    _add_export(sub)
    _add_train_mae(sub)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad argument (already reported)
        return int(exc.code or 0)
    command = {"compress": _cmd_compress, "embed": _cmd_embed, "info": _cmd_info, "evaluate": _cmd_evaluate, "benchmark": _cmd_benchmark, "export": _cmd_export, "train-mae": _cmd_train_mae}
    try:
        return command[args.command](args)
    except BrokenPipeError:  # `dsquant info DIR | head -1`: the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("dsquant: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (ValueError, OSError, MemoryError, RecursionError) as exc:  # DataError is a ValueError
        if os.environ.get("DSQUANT_DEBUG"):
            raise
        print(f"dsquant: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get("DSQUANT_DEBUG"):
            raise
        print(f"dsquant: internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with DSQUANT_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    """The first line of an error, with OS errors as 'path: reason'."""
    if isinstance(exc, MemoryError):
        return "out of memory" + (f" ({exc})" if str(exc) else "") + "; try a smaller dataset, --block-size or fewer workers"
    if isinstance(exc, RecursionError):
        return f"input nested too deeply to read ({exc})"
    if isinstance(exc, OSError) and exc.strerror:  # raised by the system, not by dsquant
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    text = str(exc)
    return text.splitlines()[0] if text.strip() else type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
