"""ADQ bin scores for a dataset: representativeness and diversity of every bin, computed with
the encoders they need (the pure-numpy formulas live in :mod:`dsquant.core.scores`)."""

from __future__ import annotations

import os
import time

import numpy as np

from .cache import Cache, hash_key
from .core.scores import (
    bin_means,
    contrastive_diversity,
    embedding_representativeness,
    importance_scores,
    texture_level,
)

__all__ = ["bin_scores", "DIVERSITY_ENCODERS", "REPRESENTATIVENESS"]

DIVERSITY_ENCODERS = ("simclr", "proxy")
REPRESENTATIVENESS = ("texture", "embedding")
_VIEWS_VERSION = 2


def _representativeness(dataset, bins, rep, features, labels):
    """Per-bin Rep and the name of the method used (``rep`` as :func:`check_representativeness`
    takes it).

    Raises:
        DataError, ValueError: as :func:`check_representativeness`.
    """
    rep = check_representativeness(rep, dataset)
    if isinstance(rep, np.ndarray):
        return bin_means(rep, bins), "user scores"
    if rep is None:
        rep = "texture" if getattr(dataset, "kind", "") == "images" else "embedding"
    if rep == "texture":
        return bin_means(texture_level(dataset.images), bins), "texture level (3x3 Sobel)"
    return embedding_representativeness(features, bins, labels), "mean similarity to the pool (embedding)"


def check_representativeness(rep, dataset):
    """``rep`` checked against ``dataset`` before any work: a method name (None, ``"texture"``
    for images, ``"embedding"``) as given, per-sample scores (an array, or a ``.npy``/``.npz``
    read now) as a checked (N,) float64 array.

    Raises:
        DataError: naming the file, if a scores file is unreadable or not one finite number per
            sample.
        ValueError: likewise for an array of scores, an unknown method, or ``"texture"`` for
            data without images.
    """
    if rep is None or (isinstance(rep, str) and rep == "embedding"):
        return rep
    if isinstance(rep, str) and rep == "texture":
        if getattr(dataset, "kind", "") != "images":
            raise ValueError("representativeness: 'texture' needs images; use 'embedding' or your own scores")
        return rep
    if isinstance(rep, (np.ndarray, list, tuple)):
        return _user_scores(rep, len(dataset), "rep_scores", ValueError)
    if isinstance(rep, (str, os.PathLike)) and str(rep).endswith((".npy", ".npz")):
        from .data import DataError, load_array

        return _user_scores(load_array(rep, mmap=False), len(dataset), str(rep), DataError)
    raise ValueError(f"representativeness: expected 'texture', 'embedding', a .npy of per-sample scores or an array, got {rep!r}")


def _user_scores(values, n: int, source: str, error: type[Exception]) -> np.ndarray:
    """(n,) float64 per-sample scores; ``error`` naming ``source`` unless they are ``n``
    finite numbers."""
    try:
        values = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise error(f"{source}: expected numeric per-sample scores, got {np.asarray(values).dtype}") from None
    if values.shape != (n,):
        raise error(f"{source}: expected one score per sample ({n}), got shape {values.shape}")
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise error(f"{source}: expected finite scores, got {len(bad)} NaN or inf (first at index {bad[0]})")
    return values


def _views(dataset, encoder: str, proxy, seed: int, cache: Cache | None, device, progress: bool, simclr_options: dict):
    """Two augmented-view embeddings of every image, cached by data, encoder and seed.
    ``proxy`` is ``(model, key)``: the proxy classifier and the cache key that identifies it."""
    from .embed.diversity import SimCLREncoder, two_view_embeddings

    if encoder not in DIVERSITY_ENCODERS:
        raise ValueError(f"diversity encoder: expected one of {', '.join(DIVERSITY_ENCODERS)}, got {encoder!r}")
    if encoder == "proxy":
        if proxy is None or proxy[0] is None:
            raise ValueError("diversity encoder 'proxy' needs the proxy classifier (use --encoder proxy)")
        proxy_model = proxy[0]
        config = {"encoder": "proxy", "proxy": proxy[1]}
    else:
        simclr = SimCLREncoder(seed=seed, device=device, **simclr_options)
        config = simclr.config()
    key = hash_key({"v": _VIEWS_VERSION, "data": dataset.fingerprint(), "encoder": config, "seed": seed})
    n = len(dataset)
    expect = {"a": ("f", (n, None)), "b": ("f", (n, None)), "info": ("U", 0)}
    hit = cache.load("views", key, expect, lambda v: v["a"].shape == v["b"].shape and isinstance(_json(v["info"]), dict)) if cache is not None else None
    if hit is not None:
        return hit["a"], hit["b"], {**config, "cached": True, **_json(hit["info"])}
    info: dict = {}
    if encoder == "proxy":
        from .training import resolve_device

        model = proxy_model.to(resolve_device(device)).eval()  # a proxy read from the cache is on the CPU
        fn = lambda x: model.embed(x)[0]  # noqa: E731
    else:
        simclr.train(dataset.images, len(dataset.classes), progress)
        fn = simclr.embed_fn()
        info = simclr.info
    t = time.perf_counter()
    a, b = two_view_embeddings(fn, dataset.images, seed=seed, device=device, progress=progress)
    info["views_seconds"] = round(time.perf_counter() - t, 2)
    if cache is not None:
        cache.save("views", key, {"a": a, "b": b, "info": Cache.pack_json(info)})
    return a, b, {**config, "cached": False, **info}


def _json(value) -> dict:
    return Cache.unpack_json(value) if value is not None else {}


def bin_scores(
    dataset,
    bins: list[np.ndarray],
    features: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    representativeness=None,
    diversity_encoder: str = "simclr",
    proxy=None,
    seed: int = 0,
    cache: Cache | None = None,
    device=None,
    progress: bool = False,
    simclr_options: dict | None = None,
) -> dict:
    """Rep, Div and I_hat of every bin (ALGORITHMS.md section 5).

    Args:
        dataset: the dataset that was binned.
        bins: the K bins.
        features: the embedding (for data without images: Rep and Div are computed on it).
        labels: class labels (embedding representativeness is per class).
        representativeness: ``"texture"`` (default for images), ``"embedding"`` (default
            otherwise), per-sample scores (array or ``.npy``).
        diversity_encoder: ``"simclr"`` or ``"proxy"`` (images only).
        proxy: ``(model, cache key)`` of the trained proxy classifier, for the ``"proxy"``
            diversity encoder.
        seed: seeds the augmentations (and the SimCLR training).

    Returns:
        ``{"rep", "div", "importance"}`` (K,) float64 arrays and ``"info"`` (what was used).
    """
    t = time.perf_counter()
    rep, rep_name = _representativeness(dataset, bins, representativeness, features, labels)
    t_rep = time.perf_counter() - t
    t = time.perf_counter()
    if getattr(dataset, "kind", "") == "images":
        a, b, div_info = _views(dataset, diversity_encoder, proxy, seed, cache, device, progress, simclr_options or {})
        div_name = f"contrastive, {diversity_encoder} encoder, two views (random resized crop + flip)"
    else:
        # no augmentations for vectors: both views are the embedding itself (our extension)
        a = b = np.asarray(features, dtype=np.float64)
        div_info = {"encoder": "embedding"}
        div_name = "1 / mean cosine similarity of the embedding (no views)"
    div = contrastive_diversity(a, b, bins)
    t_div = time.perf_counter() - t
    return {
        "rep": rep,
        "div": div,
        "importance": importance_scores(rep, div),
        "info": {"representativeness": rep_name, "diversity": div_name, "diversity_encoder": div_info, "rep_seconds": round(t_rep, 2), "div_seconds": round(t_div, 2)},
    }
