"""What every selection method is: parameters stored as given and checked once, a ``config()``
for the manifest, and one ``select(context) -> Selection``.

A method reads what it needs from a :class:`Context`: the dataset and its labels, the keep
ratio, the seed, and (computed once, on first use) the embedding of the run's encoder. Adding a
method is one class here and one line in :data:`dsquant.methods.METHODS`
(``docs/architecture.md``).
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

__all__ = ["Context", "Selection", "SelectionMethod", "check_int", "check_unit"]


def check_int(name: str, value, low: int = 1) -> int:
    """``value`` as an int if it is an integer >= ``low``; else ValueError naming ``name``,
    the rule and the value (one format for every parameter)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return int(value)


def check_unit(name: str, value) -> float:
    """``value`` as a float if it is a finite number in [0, 1]; else ValueError naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{name}: expected a weight in [0, 1], got {value!r}")
    return v


@dataclass
class Selection:
    """What a method selected.

    Attributes:
        indices: (M,) sorted int64 indices into the dataset.
        bins: the K bins (int64 index arrays) the method sampled from; empty when it has none.
        record: the method's own manifest block (ADQ: alpha, its scores and the per-bin table),
            stored under the method's name; None when it has nothing to add.
    """

    indices: np.ndarray
    bins: list[np.ndarray] = field(default_factory=list)
    record: dict | None = None


class Context:
    """What a method may use while it selects.

    Attributes:
        dataset: the dataset (images, text or features); ``labels`` its (N,) int64 class ids or
            None.
        ratio, seed: the keep ratio and the seed of the run (sampling); ``proxy_seed`` the seed
            of the encoders trained on the data (default ``seed``).
        cache, device, progress: the run's cache, torch device and progress-bar switch.
        timings: wall seconds of the stages, in order; methods add theirs (``bins``,
            ``scores``, ``sample``) with :meth:`timed`.
        generate_bins: the bin engine, :func:`dsquant.generate_bins`'s signature (default it;
            :func:`dsquant.distributed.engine` gives the Ray one, or partitioned greedy).
        dynamics: the training dynamics of this run's dataset per ``(epochs, n_runs)``
            (:func:`dsquant.methods.dynamics.training_dynamics`), computed once and shared by
            the training-dynamics methods that ask for them (``validated`` fills a pool's
            context with the pool's rows of the whole set's).
    """

    def __init__(self, dataset, ratio: float, seed: int, make_encoder: Callable[[], Any], embed: Callable, cache=None, device=None, progress: bool = False, proxy_seed: int | None = None, generate_bins: Callable | None = None) -> None:
        from ..core.bins import generate_bins as exact_bins

        self.generate_bins = generate_bins or exact_bins
        self.dataset = dataset
        self.labels = dataset.labels
        self.ratio, self.seed = ratio, seed
        self.proxy_seed = seed if proxy_seed is None else proxy_seed
        self.cache, self.device, self.progress = cache, device, progress
        self.timings: dict[str, float] = {}
        self.dynamics: dict[tuple[int, int], dict] = {}
        self._make_encoder, self._embed = make_encoder, embed
        self.encoder = None
        self._embedding = None
        self.embedding_record: dict = {}

    def timed(self, stage: str, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)``, its wall time added to ``timings[stage]``."""
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t

    def embedding(self):
        """The run's :class:`~dsquant.embed.Embedding`, computed (or read from the cache) once."""
        if self._embedding is None:
            self.encoder = self._make_encoder()
            self._embedding, self.embedding_record = self.timed("embed", self._embed, self.encoder, self.dataset, cache=self.cache, progress=self.progress)
        return self._embedding

    def proxy(self):
        """``(model, key)``: the proxy classifier the embedding came from (fitted once, the same
        object for every stage: :func:`dsquant.embed.fitted_proxy`) and its cache key, or None
        when the encoder is not the proxy."""
        from ..embed import ProxyEncoder, fitted_proxy

        self.embedding()
        if not isinstance(self.encoder, ProxyEncoder):
            return None
        return fitted_proxy(self.encoder, self.dataset, self.cache, self.progress), self.embedding_record["key"]


class SelectionMethod:
    """Base of the selection methods. Subclasses set ``name`` and ``summary``, store their
    parameters unchanged in ``__init__`` (checked there, once) and implement :meth:`select`.

    Class attributes:
        name: the registry name (``--method NAME``).
        summary: one line for ``--help`` and the docs.
        needs_embedding: whether ``select`` uses the embedding (the benchmark keys a method's
            results by the encoder options only when it does).
        needs_pixels: whether ``select`` reads the images in memory beyond the embedding
            (training dynamics, ADQ's texture and contrastive scores): not possible on a
            streamed dataset or an embedding store.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    needs_embedding: ClassVar[bool] = True
    needs_pixels: ClassVar[bool] = False

    def config(self) -> dict:
        """The method's parameters, for the manifest (JSON-serialisable)."""
        return {}

    def check(self, dataset) -> None:
        """Checks that need the data (for example bins per class), run before any work."""

    def select(self, ctx: Context) -> Selection:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def report(cls, manifest: dict) -> list[str]:
        """Lines that ``dsquant info`` prints about this method's part of a run."""
        return []

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
