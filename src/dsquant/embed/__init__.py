"""Encoders: map a dataset to an :class:`Embedding`; :func:`embed` caches the result on disk,
keyed by the dataset's fingerprint and the encoder's configuration."""

from __future__ import annotations

import time

import numpy as np

from ..cache import Cache, hash_key
from .base import Embedding, Encoder
from .proxy import ProxyEncoder, softmax_delta
from .simple import IdentityEncoder, PixelEncoder, PrecomputedEncoder
from .kmeans import KMeansFeatureEncoder
from .text import SentenceEncoder
from .static import StaticEncoder
from .pretrained_encoder import HFEncoder, OpenCLIPEncoder, PretrainedEncoder, TimmEncoder, TorchScriptEncoder

__all__ = [
    "DEFAULT_ENCODERS",
    "ENCODERS",
    "Embedding",
    "Encoder",
    "HFEncoder",
    "IdentityEncoder",
    "KMeansFeatureEncoder",
    "PixelEncoder",
    "PrecomputedEncoder",
    "PretrainedEncoder",
    "ProxyEncoder",
    "SentenceEncoder",
    "StaticEncoder",
    "cached_proxy",
    "embedding_key",
    "fitted_proxy",
    "embed",
    "make_encoder",
    "register_encoder",
    "softmax_delta",
]

_EMBED_VERSION = 1


ENCODERS: dict[str, type] = {cls.name: cls for cls in (ProxyEncoder, PixelEncoder, KMeansFeatureEncoder, PrecomputedEncoder, SentenceEncoder, StaticEncoder, IdentityEncoder, HFEncoder, TorchScriptEncoder, TimmEncoder, OpenCLIPEncoder)}
"""Every encoder by name. A class here has ``name``, ``kinds`` (the data kinds it embeds:
``"images"``, ``"text"``, ``"features"``), ``summary`` (one line for ``--help``), ``argument``
(what follows ``NAME:`` in a spec, e.g. ``PATH``, or None), ``cached`` (whether :func:`embed`
stores its embeddings) and a constructor that takes the argument first when it has one.
Adding an encoder is one class and one :func:`register_encoder` (``docs/architecture.md``)."""

DEFAULT_ENCODERS = {"images": ProxyEncoder.name, "text": SentenceEncoder.name, "features": IdentityEncoder.name}
"""The encoder a dataset of each kind gets when none is named."""


def register_encoder(cls: type) -> type:
    """Add ``cls`` to :data:`ENCODERS` under ``cls.name`` (usable as a class decorator).

    Raises:
        ValueError: if ``cls`` lacks ``name``/``kinds``/``config``/``encode``, or its name is taken.
    """
    if not isinstance(cls, type) or not getattr(cls, "name", None) or not getattr(cls, "kinds", None) or not callable(getattr(cls, "encode", None)) or not callable(getattr(cls, "config", None)):
        raise ValueError(f"register_encoder: expected an encoder class with name, kinds, config() and encode(), got {cls!r}")
    if cls.name in ENCODERS and ENCODERS[cls.name] is not cls:
        raise ValueError(f"register_encoder: an encoder named {cls.name!r} exists ({ENCODERS[cls.name].__name__})")
    ENCODERS[cls.name] = cls
    return cls


def _spec_names(kind: str | None = None) -> str:
    names = [n + (f":{c.argument}" if getattr(c, "argument", None) else "") for n, c in ENCODERS.items() if kind is None or kind in c.kinds]
    return ", ".join(repr(n) for n in names)


def make_encoder(spec, kind: str | None = None, **options) -> Encoder:
    """The encoder named by ``spec``, for data of ``kind``.

    Args:
        spec: an encoder object (returned as it is), None (the default for ``kind``:
            :data:`DEFAULT_ENCODERS`), or ``"NAME"`` / ``"NAME:ARGUMENT"`` of :data:`ENCODERS`
            (``"proxy"``, ``"pixels"``, ``"features:PATH"``, ``"sentence"``, ...).
        kind: the dataset's kind (``"images"``, ``"text"``, ``"features"``), or None to skip
            the check that the encoder embeds it.
        options: shorthand options, each passed to the constructor only when it takes it
            (``epochs``, ``width``, ``seed``, ``embedding``, ``checkpoint``, ``model``,
            ``max_seq_length``, ``device``, ...; ``compress`` passes them all).

    Raises:
        ValueError: on an unknown name or a name without its argument (the message lists the
            encoders for ``kind``), an encoder that does not embed ``kind``, or a bad option.
    """
    import inspect

    if isinstance(spec, Encoder):
        return spec
    if spec is None:
        if kind not in DEFAULT_ENCODERS:
            raise ValueError(f"encoder: no default encoder for data of kind {kind!r}")
        spec = DEFAULT_ENCODERS[kind]
    if not isinstance(spec, str):
        raise ValueError(f"encoder: expected a name ({_spec_names(kind)}) or an encoder object, got {spec!r}")
    name, sep, arg = spec.partition(":")
    if name == SentenceEncoder.name and str(options.get("model", "")).startswith(StaticEncoder.name):
        name = StaticEncoder.name  # --text-model static[:PATH]
    cls = ENCODERS.get(name)
    if cls is None or bool(getattr(cls, "argument", None)) != bool(sep) or (sep and not arg):
        raise ValueError(f"encoder: expected one of {_spec_names(kind)}, got {spec!r}")
    if kind is not None and kind not in cls.kinds:
        raise ValueError(f"encoder: {name!r} embeds {' or '.join(cls.kinds)}, not {kind}; for {kind} use {_spec_names(kind)}")
    accepted = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in options.items() if k in accepted}
    return cls(arg, **kwargs) if sep else cls(**kwargs)


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
    def valid(a) -> bool:
        Cache.unpack_json(a["info"])
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
    key = embedding_key(encoder, dataset)
    t0 = time.perf_counter()
    if cache is not None:
        hit = cache.load("embeddings", key, *_embedding_entry(len(dataset)))
        if hit is not None:
            emb = Embedding(hit["features"], hit.get("delta"), str(hit["kind"]), Cache.unpack_json(hit["info"]))
            return emb, {"key": key, "cached": True, "seconds": round(time.perf_counter() - t0, 3)}
    emb = encoder.encode(dataset, progress=progress)
    if cache is not None:
        if isinstance(encoder, ProxyEncoder) and encoder.model is not None:
            from .proxy import state_to_arrays

            cache.save("proxy", key, state_to_arrays(encoder.model))
        if getattr(encoder, "cached", True):  # not before: an uncached store's rows stay on disk
            arrays = dict(emb.arrays())
            arrays["features"] = np.asarray(arrays["features"])
            arrays["kind"] = np.array(emb.kind)
            arrays["info"] = Cache.pack_json(emb.info)
            cache.save("embeddings", key, arrays)
    return emb, {"key": key, "cached": False, "seconds": round(time.perf_counter() - t0, 3)}
