"""``compress()``: read -> embed -> generate bins -> sample -> write. The CLI's ``dsquant
compress`` is a thin wrapper around it."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .cache import Cache
from .core.sampling import budget, check_ratio
from .artifact import AtomicOutput, Run, check_export, fill_output
from .methods import Context, SelectionMethod, Validated, make_method
from .methods.base import check_int
from .methods.validated import CCS_FROM
from .data import DataError, TextDataset, detect_format, read_dataset

if TYPE_CHECKING:
    from .pixels.store import Codec

__all__ = ["CompressResult", "Run", "compress", "read_dataset"]


CompressResult = Run  # the earlier name of what compress returns


def _encoder(dataset, encoder, **options):
    """The run's encoder: ``encoder`` itself when it is an encoder object, else the registered
    one it names, or the default for the dataset's kind (:func:`dsquant.embed.make_encoder`),
    built with the shorthand ``options`` its constructor takes."""
    from .embed import make_encoder

    return make_encoder(encoder, getattr(dataset, "kind", None), **options)


def _quantize_pixels(dataset, indices, drop_ratio, patch, reconstructor, cache, proxy, proxy_seed, device, progress, mae_options, codec):
    """Grad-CAM++ patch scores of the selected images with ``proxy`` (the run's fitted proxy
    encoder), the kept-patch store (encoded with ``codec``, a :class:`dsquant.pixels.Codec`),
    and (for ``tiny-mae``) a masked autoencoder trained on the data; returns the manifest
    record and the files to write."""
    from .embed import fitted_proxy
    from .pixels import PatchStore, kept_psnr, png_bytes, quantize_pixels
    from .pixels.reconstruct import TRAIN_NOW
    from .pixels.store import write_atomic

    model = fitted_proxy(proxy, dataset, cache, progress)
    store = quantize_pixels(dataset, indices, model, drop_ratio, patch, device=device, progress=progress, meta={"source": str(dataset.source), "fingerprint": dataset.fingerprint()})
    t = time.perf_counter()
    blob = store.to_bytes(codec)
    t_write = time.perf_counter() - t
    t = time.perf_counter()
    back = PatchStore.from_bytes(blob, "patches.dsqp")  # read back before it is written: its times, its error
    t_read = time.perf_counter() - t
    psnr = kept_psnr(store, back)
    if codec.lossless and psnr != float("inf"):
        raise RuntimeError("patches.dsqp: the lossless kept-patch file does not read back bit for bit (a bug; please report it)")
    files = {"patches.dsqp": lambda path: write_atomic(path, blob)}
    spec = reconstructor
    mae_info = None
    if reconstructor == TRAIN_NOW:
        from .pixels.train_mae import cached_tiny_mae, save_mae

        model_mae, mae_info = cached_tiny_mae(dataset, store.patch, cache, proxy_seed, device, progress, mae_options)

        files[f"{TRAIN_NOW}.pt"] = lambda path: save_mae(model_mae, path, mae_info)
        spec = f"{TRAIN_NOW}:{TRAIN_NOW}.pt"
    psnr = None if psnr == float("inf") else round(psnr, 2)  # None: kept pixels exact
    record = _pixels_record(dataset, indices, drop_ratio, store.patch, store.grid, int(store.patches.shape[1]), "Grad-CAM++ of the proxy (its predicted class), mean per patch",
                            spec, mae_info, codec, psnr, len(blob), dataset.image_shape, png_bytes(dataset.images[indices]),
                            codec_seconds={"write": round(t_write, 3), "read": round(t_read, 3)})
    return record, files


def _pixels_record(dataset, indices, drop_ratio, patch, grid, k, importance, reconstructor, tiny_mae, codec, psnr_db, dsqp_bytes, stored_shape, png, **extra) -> dict:
    """The manifest's ``pixels`` record: the patch grid, the effective keep ratio
    (rho x kept / P), how patches were scored and rebuilt, the codec, and the selected images'
    bytes as kept patches against whole (raw, PNG when measured, the source's files); ``extra``
    goes before the bytes."""
    from .pixels import source_file_bytes

    source_bytes, source_what = source_file_bytes(dataset, indices)
    h, w, c = stored_shape  # of the stored images
    return {
        "drop_ratio": drop_ratio,
        "patch": int(patch),
        "grid": list(grid),
        "kept_per_image": int(k),
        "effective_keep_ratio": len(indices) / len(dataset) * k / (grid[0] * grid[1]),  # rho * kept / P
        "importance": importance,
        "reconstructor": reconstructor,
        "tiny_mae": tiny_mae,
        "codec": codec.record(),
        "kept_psnr_db": psnr_db,
        **extra,
        "bytes": {  # the selected images: kept patches, and whole as raw pixels, PNG, the source's files
            "patches.dsqp": int(dsqp_bytes),
            "raw_uint8": int(len(indices) * h * w * c),
            "png": png,
            "source_files": source_bytes,
        },
        "source_files": source_what,
    }


def _quantize_streamed(dataset, indices, drop_ratio, patch, reconstructor, ctx, encoder, seed, progress, codec, dest):
    """Pixel quantization of a streamed dataset (:func:`dsquant.pixels.streamed.quantize_streamed`):
    the kept-patch file is written into ``dest`` (the output's temporary directory) as the
    selected images are read; returns the manifest record and the files (already written)."""
    from .pixels.streamed import quantize_streamed

    features = ctx.embedding().features if ctx.encoder is encoder else None
    meta = {"source": str(dataset.source), "fingerprint": dataset.fingerprint()}
    rec = quantize_streamed(dataset, indices, encoder, dest / "patches.dsqp", drop_ratio, patch, codec, features=features, seed=seed, progress=progress, meta=meta)
    importance = "Grad-CAM++ of a linear head on the backbone's embedding (its predicted class), on the backbone's last spatial features, mean per patch"
    record = _pixels_record(dataset, indices, drop_ratio, rec["patch"], rec["grid"], rec["kept_per_image"], importance, reconstructor, None, codec,
                            rec["kept_psnr_db"], rec["bytes"], rec["image_shape"], None,  # PNG: not measured (every image encoded again)
                            image_shape=rec["image_shape"], preprocessing=rec["preprocessing"], head=rec["head"], seconds=rec["seconds"])
    return record, {"patches.dsqp": lambda path: None}


def _check_streamed(dataset, encoder, selector, drop_ratio, reconstructor=None, writing=True) -> None:
    """Refuse, before any work, what a streamed image dataset cannot do yet.

    Raises:
        ValueError: naming the dataset and what to use instead.
    """
    n = len(dataset)
    if not callable(getattr(encoder, "encode_rows", None)):
        raise ValueError(
            f"encoder: {dataset.source} is streamed ({n} images, decoded on demand) and the {encoder.name!r} encoder "
            f"trains on the whole set in memory; use a pretrained encoder (--encoder hf:MODEL, torchscript:FILE, "
            f"timm:NAME) or read it in memory (--in-memory --image-size S)"
        )
    if selector.needs_pixels:
        raise ValueError(f"method: {selector.name!r} reads the images in memory (training or pixel scores); {dataset.source} is streamed ({n} images): use an embedding method (dq, dq-budget, herding, ...) or --in-memory")
    if drop_ratio is not None:
        from .pixels.reconstruct import TRAIN_NOW

        if not writing:
            raise ValueError(f"drop_ratio: pixel quantization of a streamed dataset ({dataset.source}) writes patches.dsqp as it reads the images; give an output directory (--out)")
        if reconstructor == TRAIN_NOW:
            raise ValueError(f"reconstructor: {TRAIN_NOW!r} trains on every image in memory; {dataset.source} is streamed ({n} images): use 'inpaint' or 'mae:CHECKPOINT', or --in-memory")
        backbone = getattr(encoder, "backbone", None)
        if backbone is None or not backbone.has_spatial:
            raise ValueError(f"drop_ratio: pixel quantization of a streamed dataset needs an hf: encoder (Grad-CAM++ reads its hidden states); {getattr(encoder, 'spec', encoder.name)!r} does not expose them")


def _shape(dataset) -> list[int] | None:
    if getattr(dataset, "kind", "") == "images":
        return None if getattr(dataset, "streamed", False) else list(dataset.image_shape)  # streamed: sizes vary
    if getattr(dataset, "kind", "") == "features":
        return [int(dataset.features.shape[1])]
    return None


_DISTRIBUTIONS = {"torch": "torch", "scipy": "scipy", "sklearn": "scikit-learn", "PIL": "pillow", "sentence_transformers": "sentence-transformers", "transformers": "transformers"}


def _versions() -> dict:
    """Versions of the libraries a run may use, from the installed packages' metadata (importing
    sentence-transformers only to read its version cost 15-20 s per run)."""
    from importlib import metadata

    out = {"dsquant": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for name, dist in _DISTRIBUTIONS.items():
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "__version__", None):
            out[name] = mod.__version__
            continue
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _counts_table(bins: list[np.ndarray], indices: np.ndarray, labels: np.ndarray | None, n_classes: int) -> list[dict]:
    chosen = np.zeros(max([int(b.max()) + 1 for b in bins if len(b)] + [0]), dtype=bool)
    chosen[indices] = True
    rows = []
    for k, b in enumerate(bins):
        row = {"bin": k, "size": int(len(b)), "selected": int(chosen[b].sum())}
        if labels is not None:
            row["size_per_class"] = np.bincount(labels[b], minlength=n_classes).tolist()
            row["selected_per_class"] = np.bincount(labels[b][chosen[b]], minlength=n_classes).tolist()
        rows.append(row)
    return rows


def _input_files(data, labels, encoder, proxy_checkpoint, representativeness, reconstructor) -> list:
    """Every input path of a run: all must exist before the work starts (and no output may
    replace or lie inside one of them).

    Raises:
        DataError: naming the first missing file and the option it came from.
    """
    if isinstance(data, (str, os.PathLike)) and "{" in str(data) and not os.path.exists(data):
        from .data.stream import shard_paths  # WebDataset shards: each file of the pattern

        named = [("DATA", p) for p in shard_paths(data)]
    else:
        named = [("DATA", data if isinstance(data, (str, os.PathLike)) and str(data) != "digits" else None)]
    named += [("labels", labels), ("proxy checkpoint", proxy_checkpoint)]
    if isinstance(encoder, str) and encoder.startswith("features:"):
        named.append(("encoder", encoder.split(":", 1)[1]))
    if isinstance(representativeness, (str, os.PathLike)) and str(representativeness) not in ("texture", "embedding"):
        named.append(("representativeness", representativeness))
    if isinstance(reconstructor, str) and ":" in reconstructor:  # a checkpoint (pixels.reconstruct)
        named.append(("reconstructor", reconstructor.split(":", 1)[1]))
    paths = []
    for what, path in named:
        if path is None or not isinstance(path, (str, os.PathLike)):
            continue
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file or directory ({what})")
        paths.append(path)
    return paths


def _manifest(data, dataset, selector, selection, emb_record, pixels_record, *, ratio, seed, enc_config, block_size, precision, split, image_size, group_by, command, engine="local", partitions=None, partition_union=True) -> dict:
    """The run's manifest (without the times and files, added when it is written)."""
    n, ds_labels = len(dataset), dataset.labels
    indices, bins = selection.indices, selection.bins
    n_classes = len(dataset.classes)
    method_config = selector.config()
    manifest = {
        "dsquant_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "method": selector.name,
        "parameters": {
            "ratio": ratio,
            "n_bins": method_config.get("n_bins"),
            "seed": seed,
            "encoder": enc_config or None,
            "gain": "graphcut",
            "lambda": 1.0,
            "similarity": "0.5 + 0.5 cos",
            "block_size": method_config.get("block_size", block_size),
            "engine": engine,
            "partitions": partitions,
            "partition_union": partition_union if partitions is not None else None,
            "precision": method_config.get("precision", precision),
            "split": split,
            "image_size": image_size,
            "alpha": method_config.get("alpha"),
            "diversity_encoder": method_config.get("diversity_encoder"),
            "method": method_config,
        },
        "dataset": {
            "source": str(dataset.source),
            "format": detect_format(data) if isinstance(data, (str, os.PathLike)) else "object",
            "kind": dataset.kind,
            "split": getattr(dataset, "split", None),
            "n_samples": n,
            "classes": dataset.classes,
            "class_counts": None if ds_labels is None else np.bincount(ds_labels, minlength=n_classes).tolist(),
            "shape": _shape(dataset),
            "schema": getattr(dataset, "schema", None),
            "group_by": group_by,
            "fingerprint": dataset.fingerprint(),
            "streamed": bool(getattr(dataset, "streamed", False)),
            "skipped_unreadable": getattr(dataset, "bad", None) or None,  # [row, id, message] (dsquant embed --skip-bad)
        },
        "embedding": emb_record or None,
        **({selector.name: selection.record} if selection.record is not None else {}),
        "pixels": pixels_record,
        "selection": {
            "n_selected": int(len(indices)),
            "target": budget(ratio, n),
            "per_class": None if ds_labels is None else np.bincount(ds_labels[indices], minlength=n_classes).tolist(),
            "bins": _counts_table(bins, indices, ds_labels, n_classes) if bins else [],
        },
        "versions": _versions(),
        "command": command,
    }
    return manifest


def compress(
    data,
    ratio: float = 0.1,
    n_bins: int = 10,
    method: str | SelectionMethod = Validated.name,
    encoder: str | None = None,
    seed: int = 0,
    epochs: int = 5,
    proxy_seed: int | None = None,
    out: str | os.PathLike | None = None,
    export: str | None = None,
    overwrite: bool = False,
    labels: str | None = None,
    split: str = "train",
    image_size: int | None = None,
    embedding: str = "gradient",
    proxy_width: int = 32,
    proxy_checkpoint: str | None = None,
    block_size: int | None = None,
    precision: str = "float32",
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    alpha: float = 0.6,
    diversity_encoder: str = "simclr",
    representativeness=None,
    simclr_options: dict | None = None,
    candidates: list[str] | tuple[str, ...] | None = None,
    pruning_candidates: list[str] | tuple[str, ...] | None = None,
    ccs_from: float | None = CCS_FROM,
    drop_ratio: float | None = None,
    patch: int | None = None,
    reconstructor: str = "inpaint",
    patch_codec: str | Codec = "webp",
    patch_quality: int | None = None,
    mae_options: dict | None = None,
    text_model: str = "all-MiniLM-L6-v2",
    text_max_tokens: int | None = None,
    encoder_precision: str = "auto",
    template: str | None = None,
    group_by: str | None = None,
    stream: bool | None = None,
    engine: str = "local",
    address: str | None = None,
    partitions: int | None = None,
    partition_union: bool = True,
    device: str | None = None,
    progress: bool = False,
    command: list[str] | None = None,
) -> Run:
    """Compress a dataset by Dataset Quantization: the Python face of ``dsquant compress``.

    Args:
        data: a path (image folder, tar, CIFAR archive, IDX, .npy/.npz features), ``"digits"``,
            or a dataset object from :mod:`dsquant.data`.
        ratio: keep ratio rho in (0, 1]; the compressed set has ``round(ratio * N)`` samples.
        n_bins: K, the number of bins (>= 1, at most the size of the smallest class).
        method: a selection method object (:mod:`dsquant.methods`: ``DQ(n_bins=10)``,
            ``ADQ(...)``, ``Random()`` or a registered one), or its registry name (``"dq"``,
            ``"adq"``, ``"random"``, ...), built with the shorthand options below (``n_bins``,
            ``alpha``, ``diversity_encoder``, ``representativeness``, ``simclr_options``,
            ``precision``, ``block_size``, ``candidates``) that its constructor takes. Default
            ``"validated"`` (:class:`~dsquant.methods.Validated`: DQ, or ``dq-budget``,
            ``herding`` or ``herding-drop`` where one trains better on a validation split of the
            training set with a paired interval above zero; from 500 samples per class DQ, EL2N
            or CCS the same way; measured best across datasets, docs/selection.md).
        encoder: an encoder object (:class:`dsquant.embed.Encoder`, e.g.
            ``ProxyEncoder(epochs=5)``; a fitted one is used as it is, not trained again), or a
            name of :data:`dsquant.embed.ENCODERS`: for images ``"proxy"`` (default: a small
            ResNet trained ``epochs`` epochs on the data), ``"pixels"`` or ``"features:PATH"``;
            for text ``"sentence"`` (default, ``text_model``) or ``"features:PATH"``; feature
            datasets are their own embedding by default. The shorthand options below
            (``epochs``, ``proxy_seed``, ``embedding``, ``proxy_width``, ``proxy_checkpoint``,
            ``text_model``, ``text_max_tokens``, ``device``) go to the constructor that takes them.
        seed: seeds the proxy's training and the sampling; the same seed gives the same indices.
        epochs: proxy training epochs.
        proxy_seed: a separate seed for the proxy (default ``seed``): with it fixed, the
            embedding and bins are computed once (and cached) while ``seed`` varies the sampling.
        out: output directory (nothing is written when None).
        export: also write the subset: ``"imagefolder"`` or ``"npz"``.
        overwrite: replace an existing ``out``.
        labels: labels file for a ``.npy`` feature matrix.
        split: which split to compress (``"train"``).
        image_size: resize/centre-crop images to this size (folders of mixed sizes).
        embedding: ``"gradient"`` (factorised last-layer gradients, DQ's default) or
            ``"features"`` (penultimate features) for the proxy.
        proxy_width, proxy_checkpoint: the proxy's width; a local checkpoint to use untrained.
        block_size, precision: rows of similarities held per class and their precision in bin
            generation (:func:`dsquant.generate_bins`; the bins are exact either way).
        cache_dir, use_cache: where decoded datasets and embeddings are cached.
        alpha: ADQ's weight of bin importance against bin size, in [0, 1].
        diversity_encoder: ADQ's diversity encoder: ``"simclr"`` or ``"proxy"``.
        representativeness: ADQ's Rep: ``"texture"`` (images), ``"embedding"``, or per-sample
            scores (array or .npy path).
        simclr_options: options of :class:`dsquant.embed.diversity.SimCLREncoder`.
        candidates: the ``validated`` method's candidates at small budgets, the incumbent first
            (registered names; default ``dq``, ``dq-budget``, ``herding``, ``herding-drop``).
        pruning_candidates: its candidates from 500 samples per class, the incumbent first
            (default ``dq-budget``, ``el2n``, ``ccs``; empty: ``dq-budget`` unvalidated there).
        ccs_from: the ``validated`` method's per-class budget from which, on images, CCS with a
            large hard cut is a candidate too (default 100; None: never; it costs the EL2N
            training dynamics).
        drop_ratio: pixel quantization: drop this fraction theta of every selected image's
            patches (least important by Grad-CAM++ of the proxy) and store only the kept ones
            in ``out/patches.dsqp``; None keeps whole images. On a streamed dataset it needs an
            ``hf:`` encoder and ``out``: Grad-CAM++ of the backbone with a linear head fitted on
            its embedding, only the selected images read, a batch at a time, at the backbone's
            input size (:mod:`dsquant.pixels.streamed`).
        patch: patch size in pixels (default: an 8 x 8 grid on small images, 16 px on large).
        reconstructor: what rebuilds the dropped patches at load time: ``"inpaint"``,
            ``"mae:PATH"`` (a local MAE checkpoint) or ``"tiny-mae"`` (trained on the data now,
            saved as ``out/tiny-mae.pt``).
        patch_codec, patch_quality: how ``patches.dsqp`` encodes the kept pixels: a
            :class:`dsquant.pixels.Codec`, or its name ``"webp"`` (default), ``"png"`` or
            ``"jpeg"`` with ``patch_quality`` None for lossless (bit-exact kept pixels) or an
            integer in [1, 100] for lossy (``webp`` or ``jpeg``; the kept pixels' PSNR goes into
            the manifest).
        mae_options: options of :func:`dsquant.pixels.train_mae.train_tiny_mae`.
        text_model: sentence-transformers model for text (default all-MiniLM-L6-v2, offline).
        text_max_tokens: truncate every text to this many tokens (default: the model's, 256
            for all-MiniLM-L6-v2); fewer is faster on long records.
        encoder_precision: compute dtype of the sentence and ``hf:`` encoders: ``"auto"``
            (bf16 on CPUs with native bf16; mixed precision for ``hf:`` models on CUDA; float32
            otherwise), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        template: the text embedded per record, a ``str.format`` template over its fields
            (default DQ's: instruction + input + output).
        group_by: a record field; its groups are binned separately, like classes.
        stream: image folders and tars: True indexes them and decodes images on demand
            (:mod:`dsquant.data.stream`; needs an encoder that embeds each image on its own:
            ``hf:``, ``torchscript:``, ``timm:``, ``open_clip:``), False decodes them into
            memory, None (default) streams from :data:`dsquant.data.STREAM_MIN_IMAGES` images.
            ``data`` may also be an embedding store (``dsquant embed``), binned from its shards.
        engine: where bins are generated: ``"local"`` (this process) or ``"ray"`` (one Ray task
            per class on the cluster at ``address``, or a local one: the same bins;
            :mod:`dsquant.distributed`, needs ``dsquant[ray]``).
        partitions: bin one unlabelled pool by partitioned greedy over this many random parts
            (an approximation for pools larger than a machine;
            :func:`dsquant.core.partitioned.partitioned_bins`), with ``engine`` running the parts.
        partition_union: with ``partitions``, run the greedy again on the union of the parts'
            candidates (default; closest to the exact bins), or False: every part picks its share
            and nothing is sequential (what scales to bins of millions; docs/distributed.md).
        device: torch device for the proxy (default CUDA when present).
        progress: show progress bars.
        command: the command line, recorded in the manifest.

    Returns:
        A :class:`dsquant.artifact.Run` (``path`` None when ``out`` is None).

    Raises:
        ValueError: on a bad argument (ratio outside (0, 1], bins < 1 or more bins than samples
            in a class, unknown method or encoder, NaN/inf features) - before any heavy work.
        DataError: on a missing, corrupt or inconsistent dataset or features file, or a
            missing referenced file (labels, checkpoint, scores) - before any heavy work.
        FileExistsError: if ``out`` exists and ``overwrite`` is False, or another run is
            writing it.
        ValueError: if ``out`` may not be replaced even with ``overwrite`` (not a dsquant
            output, a file, a link, or a path holding an input or the working directory; see
            :class:`dsquant.artifact.AtomicOutput`), or the keep ratio rounds to no sample.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    check_ratio(ratio)
    if engine not in ("local", "ray"):
        raise ValueError(f"engine: expected 'local' or 'ray', got {engine!r}")
    if partitions is not None:
        check_int("partitions", partitions)
    if engine == "ray":
        from .distributed import _ray

        _ray()  # not installed: say so before any work
    selector = make_method(method, n_bins=n_bins, alpha=alpha, representativeness=representativeness, diversity_encoder=diversity_encoder, simclr_options=simclr_options, precision=precision, block_size=block_size, **({"candidates": tuple(candidates)} if candidates is not None else {}), **({"pruning_candidates": tuple(pruning_candidates)} if pruning_candidates is not None else {}), ccs_from=ccs_from)
    if drop_ratio is not None:
        from .pixels import n_kept

        n_kept(1, drop_ratio)
        from .pixels.reconstruct import check_reconstructor

        check_reconstructor(reconstructor, train_now=True)
        from .pixels import Codec

        codec = patch_codec if isinstance(patch_codec, Codec) else Codec(patch_codec, patch_quality)
    if drop_ratio is None and patch_quality is not None:
        raise ValueError("patch_quality: sets the codec of dropped-patch storage; it needs drop_ratio (--drop-ratio) too")
    check_export(export)
    proxy_seed = seed if proxy_seed is None else proxy_seed
    options = {"epochs": epochs, "width": proxy_width, "seed": proxy_seed, "embedding": embedding, "checkpoint": proxy_checkpoint, "model": text_model, "max_seq_length": text_max_tokens, "precision": encoder_precision, "device": device, "cache_dir": cache_dir if use_cache else False}
    if encoder is not None:
        _encoder(None, encoder, **options)  # an unknown encoder name is refused before the data is read
    inputs = _input_files(data, labels, encoder, proxy_checkpoint, representativeness, reconstructor if drop_ratio is not None else None)
    cache = Cache(cache_dir, enabled=use_cache)

    writer = None
    if out is not None:  # checked, locked and created before any work (artifact.AtomicOutput)
        writer = AtomicOutput(out, overwrite=overwrite, protect=inputs, keep=[cache.root if use_cache else None]).open()
    try:
        t = time.perf_counter()
        dataset = read_dataset(data, split=split, image_size=image_size, labels=labels, cache=cache, progress=progress, template=template, group_by=group_by, stream=stream)
        timings["read"] = time.perf_counter() - t
        n = len(dataset)
        if n == 0:
            raise DataError(f"{dataset.source}: the dataset is empty")
        if budget(ratio, n) == 0:
            raise ValueError(f"ratio: {ratio!r} of {n} samples rounds to 0 samples; use a keep ratio above {0.5 / n:.3g}")
        check_export(export, dataset.kind)
        selector.check(dataset)  # e.g. bins per class, a scores file: before any work
        if drop_ratio is not None and getattr(dataset, "kind", "") != "images":
            raise ValueError(f"drop_ratio: pixel quantization needs images, {dataset.source} holds {dataset.kind}")

        from .embed import embed

        run_encoder = _encoder(dataset, encoder, **options)  # built now (checked), fitted when a method embeds
        if getattr(dataset, "streamed", False):
            _check_streamed(dataset, run_encoder, selector, drop_ratio, reconstructor, writing=writer is not None)
        bins_engine = None
        if partitions is not None:
            from .distributed import partitioned_engine

            bins_engine = partitioned_engine(partitions, seed=seed, use_ray=engine == "ray", address=address, union_greedy=partition_union)
        elif engine == "ray":
            from .distributed import ray_engine

            bins_engine = ray_engine(address)
        ctx = Context(
            dataset, ratio, seed,
            make_encoder=lambda: run_encoder,
            embed=embed, cache=cache, device=device, progress=progress, proxy_seed=proxy_seed,
            generate_bins=bins_engine,
        )
        selection = selector.select(ctx)
        indices, bins = selection.indices, selection.bins
        timings.update(ctx.timings)
        enc_config = ctx.encoder.config() if ctx.encoder is not None else {}
        emb_record: dict = {}
        if ctx.encoder is not None:
            emb = ctx.embedding()
            emb_record = {
                **ctx.embedding_record,
                "kind": emb.kind,
                "dim": int(emb.features.shape[1]),
                "classes_dim": None if emb.delta is None else int(emb.delta.shape[1]),
                "info": emb.info,
            }

        extra_files: dict = {}
        pixels_record = None
        if drop_ratio is not None and getattr(dataset, "streamed", False):
            t = time.perf_counter()
            pixels_record, extra_files = _quantize_streamed(dataset, indices, drop_ratio, patch, reconstructor, ctx, run_encoder, proxy_seed, progress, codec, writer.tmp)
            timings["pixels"] = time.perf_counter() - t
        elif drop_ratio is not None:
            t = time.perf_counter()
            from .embed import ProxyEncoder

            # the run's proxy when it embedded with one, else the proxy it would have used
            proxy = ctx.encoder if isinstance(ctx.encoder, ProxyEncoder) else _encoder(dataset, "proxy", **options)
            pixels_record, extra_files = _quantize_pixels(dataset, indices, drop_ratio, patch, reconstructor, cache, proxy, proxy_seed, device, progress, mae_options or {}, codec)
            timings["pixels"] = time.perf_counter() - t

        manifest = _manifest(data, dataset, selector, selection, emb_record, pixels_record, ratio=ratio, seed=seed, enc_config=enc_config, block_size=block_size, precision=precision, split=split, image_size=image_size, group_by=group_by, command=command, engine=engine, partitions=partitions, partition_union=partition_union)
        out_path = None
        if writer is not None:
            t = time.perf_counter()

            def finalize(m: dict) -> None:  # the manifest is written last, inside the atomic write
                timings["write"] = time.perf_counter() - t
                timings["total"] = time.perf_counter() - t_start
                m["timings_seconds"] = {k: round(v, 3) for k, v in timings.items()}

            ids = getattr(dataset, "ids", None)
            if ids is not None:
                extra_files["ids.json"] = lambda path, ids=ids: path.write_text(json.dumps([str(x) for x in ids[indices]]) + "\n", encoding="utf-8")
            fill_output(writer.tmp, indices, bins, manifest, export=(dataset, export) if export else None, records=dataset if isinstance(dataset, TextDataset) else None, extra=extra_files, finalize=finalize)
            out_path = writer.commit()
        else:
            timings["total"] = time.perf_counter() - t_start
            manifest["timings_seconds"] = {k: round(v, 3) for k, v in timings.items()}
        return Run(out_path, indices, bins, manifest, dataset)
    finally:
        if writer is not None:
            writer.abort()  # nothing half-written: the temporary directory goes, the lock too
