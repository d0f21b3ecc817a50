"""Encoders: map a dataset to an :class:`Embedding`; :func:`embed` caches the result on disk,
keyed by the dataset's fingerprint and the encoder's configuration."""

from __future__ import annotations

import time

import numpy as np

from ..cache import Cache, hash_key
from .base import Embedding, Encoder
from .proxy import ProxyEncoder, softmax_delta
from .simple import IdentityEncoder, PixelEncoder, PrecomputedEncoder

__all__ = [
    "Embedding",
    "Encoder",
    "IdentityEncoder",
    "PixelEncoder",
    "PrecomputedEncoder",
    "ProxyEncoder",
    "cached_proxy",
    "embedding_key",
    "fitted_proxy",
    "embed",
    "make_encoder",
    "softmax_delta",
]

_EMBED_VERSION = 1


def make_encoder(spec: str, **proxy_options) -> Encoder:
    """The encoder named by ``spec``: ``proxy``, ``pixels`` or ``features:PATH``.

    ``proxy_options`` go to :class:`ProxyEncoder` (epochs, width, seed, embedding, ...).

    Raises:
        ValueError: on an unknown name.
    """
    if spec == "proxy":
        return ProxyEncoder(**proxy_options)
    if spec == "pixels":
        return PixelEncoder()
    if spec.startswith("features:"):
        return PrecomputedEncoder(spec.split(":", 1)[1])
    raise ValueError(f"encoder: expected 'proxy', 'pixels' or 'features:PATH', got {spec!r}")


def embedding_key(encoder: Encoder, dataset) -> str:
    """The cache key of ``encoder``'s embedding of ``dataset`` (and of the proxy trained for it)."""
    return hash_key({"v": _EMBED_VERSION, "data": dataset.fingerprint(), "encoder": encoder.config()})


def cached_proxy(encoder: "ProxyEncoder", dataset, cache: Cache | None, key: str | None = None):
    """The trained proxy model: the encoder's own if it trained (or was loaded) in this process,
    else the one cached beside its embedding (None when neither exists, or the cached state does
    not fit the proxy of this dataset). A loaded model becomes ``encoder.model``."""
    if encoder.model is not None:
        return encoder.model
    if cache is None:
        return None
    from .proxy import arrays_to_state, state_to_arrays

    model = encoder.build(dataset)
    spec = {k: (v.dtype.kind, v.shape) for k, v in state_to_arrays(model).items()}
    arrays = cache.load("proxy", key or embedding_key(encoder, dataset), spec, lambda a: a.keys() == spec.keys())
    if arrays is None:
        return None
    model.load_state_dict(arrays_to_state(arrays))
    encoder.model = model.eval()
    return encoder.model


def fitted_proxy(encoder: "ProxyEncoder", dataset, cache: Cache | None = None, progress: bool = False):
    """The proxy of ``dataset`` fitted once: ``encoder.model`` if it has one, else the one cached
    beside its embedding, else trained now (and cached). Every stage that needs the proxy (the
    embedding, ADQ's proxy diversity, Grad-CAM++ patch scores) gets this one object."""
    model = cached_proxy(encoder, dataset, cache)
    if model is None:
        model = encoder.train(dataset, progress)
        if cache is not None:
            from .proxy import state_to_arrays

            cache.save("proxy", embedding_key(encoder, dataset), state_to_arrays(model))
    return model


def _embedding_entry(n: int):
    """What a cached embedding of ``n`` samples must hold: (expect, validate) of Cache.load."""
    import json

    def valid(a) -> bool:
        json.loads(str(a["info"]))
        if str(a["kind"]) == "features":
            return True
        delta = a.get("delta")
        return str(a["kind"]) == "gradient" and delta is not None and delta.dtype.kind == "f" and delta.ndim == 2 and len(delta) == n

    return {"features": ("f", (n, None)), "kind": ("U", 0), "info": ("U", 0)}, valid


def embed(encoder: Encoder, dataset, cache: Cache | None = None, progress: bool = False) -> tuple[Embedding, dict]:
    """Embed ``dataset`` with ``encoder``, reusing a cached result for the same data and
    configuration (an entry that does not hold a valid embedding of it is computed again and
    overwritten).

    Returns:
        (the embedding, a record: cache key, whether it was a cache hit, seconds spent).
    """
    import json

    key = embedding_key(encoder, dataset)
    t0 = time.perf_counter()
    if cache is not None:
        hit = cache.load("embeddings", key, *_embedding_entry(len(dataset)))
        if hit is not None:
            emb = Embedding(hit["features"], hit.get("delta"), str(hit["kind"]), json.loads(str(hit["info"])))
            return emb, {"key": key, "cached": True, "seconds": round(time.perf_counter() - t0, 3)}
    emb = encoder.encode(dataset, progress=progress)
    if cache is not None:
        arrays = dict(emb.arrays())
        arrays["features"] = np.asarray(arrays["features"])
        arrays["kind"] = np.array(emb.kind)
        arrays["info"] = np.array(json.dumps(emb.info))
        if isinstance(encoder, ProxyEncoder) and encoder.model is not None:
            from .proxy import state_to_arrays

            cache.save("proxy", key, state_to_arrays(encoder.model))
        if not isinstance(encoder, (PrecomputedEncoder, IdentityEncoder)):
            cache.save("embeddings", key, arrays)
    return emb, {"key": key, "cached": False, "seconds": round(time.perf_counter() - t0, 3)}
