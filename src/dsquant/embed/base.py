"""The encoder interface and the embedding it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from ..core.similarity import GradientEmbedding

__all__ = ["Embedding", "Encoder"]


@dataclass
class Embedding:
    """What an encoder computed for every sample.

    Attributes:
        features: (N, d) float32: penultimate features, pixels, or precomputed features.
        delta: (N, C) float32 ``softmax(z) - onehot(y)`` of the proxy classifier, or None.
        kind: what bins are computed on: ``"features"`` or ``"gradient"`` (the factorised
            last-layer gradient ``[delta, vec(delta e^T)]``, ALGORITHMS.md section 1).
        info: what the encoder reports (training accuracy, time, ...), JSON-serialisable.
    """

    features: np.ndarray
    delta: np.ndarray | None = None
    kind: str = "features"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("features", "gradient"):
            raise ValueError(f"kind: expected 'features' or 'gradient', got {self.kind!r}")
        if self.kind == "gradient" and self.delta is None:
            raise ValueError("kind 'gradient' needs delta (the logit gradients)")

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def for_binning(self) -> np.ndarray | GradientEmbedding:
        """The array (or factorised gradient) that :func:`dsquant.generate_bins` takes."""
        if self.kind == "gradient":
            return GradientEmbedding(self.delta, self.features)
        return self.features

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"features": self.features}
        if self.delta is not None:
            out["delta"] = self.delta
        return out


@runtime_checkable
class Encoder(Protocol):
    """Anything that maps a dataset to an :class:`Embedding`.

    ``name`` identifies it in manifests; ``config()`` returns every setting that changes its
    output (it keys the embedding cache); ``encode(dataset, progress)`` computes the embedding.
    """

    name: str

    def config(self) -> dict: ...

    def encode(self, dataset, progress: bool = False) -> Embedding: ...
