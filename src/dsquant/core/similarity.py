"""Cosine similarity kernels over embeddings, computed in blocks of rows.

The GraphCut greedy of :mod:`dsquant.core.bins` needs two things from the embedding
(ALGORITHMS.md sections 1-3):

* the column sums ``sum_{i in P} cos(f_i, f_x)`` over a pool ``P``, and
* rows ``cos(f_x, f_P)`` for a few candidate samples ``x`` at a time.

Neither needs an n x n matrix. Two embeddings are supported:

* :class:`CosineKernel` over a dense feature matrix (n, d);
* :class:`GradientKernel` over the *factorised* last-layer gradient embedding
  ``g = [delta, vec(delta e^T)]`` (ALGORITHMS.md section 1), whose Gram matrix is
  ``<g_i, g_j> = <delta_i, delta_j> (1 + <e_i, e_j>)``; the C*(d+1)-dim vector is never built.

Zero vectors have no direction: their cosine with anything is defined as 0 (similarity 0.5).
Pure numpy, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GradientEmbedding", "CosineKernel", "GradientKernel", "make_kernel"]


@dataclass(frozen=True)
class GradientEmbedding:
    """The last-layer gradient embedding of a classifier, kept factorised.

    ``g_i = [delta_i, vec(delta_i e_i^T)]`` with ``delta_i = softmax(z_i) - onehot(y_i)`` and
    ``e_i`` the penultimate features (ALGORITHMS.md section 1).

    Attributes:
        delta: (n, C) float array, dL/dz for cross-entropy on the logits z.
        features: (n, d) float array, the penultimate features e.
    """

    delta: np.ndarray
    features: np.ndarray

    def __post_init__(self) -> None:
        if self.delta.ndim != 2 or self.features.ndim != 2:
            raise ValueError(
                f"GradientEmbedding: delta and features must be 2-D, got shapes "
                f"{self.delta.shape} and {self.features.shape}"
            )
        if self.delta.shape[0] != self.features.shape[0]:
            raise ValueError(
                f"GradientEmbedding: delta has {self.delta.shape[0]} rows but features has "
                f"{self.features.shape[0]}"
            )

    def __len__(self) -> int:
        return int(self.delta.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(n, C*(d+1)): the shape of the gradient vectors this factorisation stands for."""
        n, c = self.delta.shape
        return n, c * (self.features.shape[1] + 1)

    def take(self, index: np.ndarray) -> "GradientEmbedding":
        """The rows ``index`` of both factors."""
        return GradientEmbedding(np.asarray(self.delta[index]), np.asarray(self.features[index]))

    def norms(self) -> np.ndarray:
        """(n,) float64: ``||g_i|| = ||delta_i|| * sqrt(1 + ||e_i||^2)``."""
        d = np.asarray(self.delta, dtype=np.float64)
        e = np.asarray(self.features, dtype=np.float64)
        return np.sqrt(np.einsum("ij,ij->i", d, d) * (1.0 + np.einsum("ij,ij->i", e, e)))


class _SumAccumulator:
    """Running ``m = sum_{j added} u_j`` of unit rows (float64): ``sum_j cos(u_j, u_x) = <u_x, m>``."""

    def __init__(self, unit64: np.ndarray) -> None:
        self._unit64 = unit64
        self._sum = np.zeros(unit64.shape[1], dtype=np.float64)

    def add_many(self, index: np.ndarray) -> None:
        self._sum += self._unit64[index].sum(axis=0)

    def dot(self, index: np.ndarray) -> np.ndarray:
        """(len(index),) float64: ``sum_{j added} cos(j, x)`` for x in ``index``."""
        return self._unit64[index] @ self._sum


class _OuterAccumulator:
    """The same for factorised gradients: ``sum_j dt_j`` and ``sum_j dt_j e_j^T`` (float64)."""

    def __init__(self, delta64: np.ndarray, feat64: np.ndarray) -> None:
        self._delta, self._feat = delta64, feat64
        self._sum = np.zeros(delta64.shape[1], dtype=np.float64)
        self._cross = np.zeros((delta64.shape[1], feat64.shape[1]), dtype=np.float64)

    def add_many(self, index: np.ndarray) -> None:
        delta = self._delta[index]
        self._sum += delta.sum(axis=0)
        self._cross += delta.T @ self._feat[index]

    def dot(self, index: np.ndarray) -> np.ndarray:
        delta, feat = self._delta[index], self._feat[index]
        return delta @ self._sum + np.einsum("ij,ij->i", delta @ self._cross, feat)


def _dot_error(length: int, dtype) -> float:
    """Bound on |computed - exact| of a dot product of two vectors of norm <= 1 whose entries
    were rounded to ``dtype``: input rounding 2u plus summation gamma_n = n u / (1 - n u)."""
    u = float(np.finfo(dtype).eps) / 2
    return 2 * u + length * u / (1 - length * u)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (float64) scaled to unit L2 norm; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return x * scale[:, None]


class CosineKernel:
    """Cosine similarity over the rows of a dense (n, d) feature matrix.

    Features are L2-normalised once, in float64. ``dtype`` is the precision of the rows of
    similarities (float32 halves the memory and time of the matrix products); column sums are
    float64.
    """

    def __init__(self, features: np.ndarray, dtype: type = np.float32) -> None:
        unit = _unit_rows(features)
        self._column_sums = unit @ unit.sum(axis=0)
        self._unit64 = unit
        self._unit = unit.astype(dtype, copy=False)
        self._self = np.any(unit != 0, axis=1).astype(np.float64)
        self.dtype = np.dtype(dtype)
        #: bound on the error of one entry of :meth:`rows` (cosines lie in [-1, 1])
        self.row_error = _dot_error(unit.shape[1], self.dtype)

    def accumulator(self) -> _SumAccumulator:
        """An exact float64 running sum of rows, to re-score samples exactly."""
        return _SumAccumulator(self._unit64)

    def cos_sums(self, acc: _SumAccumulator) -> np.ndarray:
        """(n,) float64: ``sum_{j added to acc} cos(f_j, f_x)`` for every row x of this kernel."""
        return self._unit64 @ acc._sum

    def __len__(self) -> int:
        return int(self._unit.shape[0])

    def column_sums(self) -> np.ndarray:
        """(n,) float64: ``sum_i cos(f_i, f_x)`` over all rows i, for every row x."""
        return self._column_sums

    def self_similarity(self) -> np.ndarray:
        """(n,) float64: ``cos(x, x)``, 1 for a nonzero vector and 0 for a zero one."""
        return self._self

    def rows(self, cand: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(len(cand), n) array of ``cos(f_x, f_i)`` for x in ``cand``, in the kernel's dtype
        (written into ``out`` when given)."""
        return np.matmul(self._unit[cand], self._unit.T, out=out)

    def restrict(self, keep: np.ndarray, rows_only: bool = False) -> "CosineKernel":
        """The kernel over the rows where the boolean mask ``keep`` is True. Its column sums
        are not kept: they depend on the set. With ``rows_only``, only :meth:`rows` works
        (the float64 copy is not made)."""
        new = CosineKernel.__new__(CosineKernel)
        new._unit64 = None if rows_only else self._unit64[keep]
        new._unit = new._unit64 if self._unit is self._unit64 and not rows_only else self._unit[keep]
        new._self = self._self[keep]
        new.dtype, new.row_error, new._column_sums = self.dtype, self.row_error, None
        return new


class GradientKernel:
    """Cosine similarity of factorised gradient embeddings (ALGORITHMS.md section 1).

    ``cos(g_i, g_j) = <dt_i, dt_j> (1 + <e_i, e_j>)`` with ``dt_i = delta_i / ||g_i||``.
    Column sums use ``sum_i <dt_i, dt_x> (1 + <e_i, e_x>) = <dt_x, sum_i dt_i> +
    dt_x^T (sum_i dt_i e_i^T) e_x``, in O(n C d) time and O(C d) extra memory.
    """

    def __init__(self, embedding: GradientEmbedding, dtype: type = np.float32) -> None:
        norms = embedding.norms()
        scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        delta = np.asarray(embedding.delta, dtype=np.float64) * scale[:, None]
        feat = np.asarray(embedding.features, dtype=np.float64)
        cross = delta.T @ feat  # (C, d)
        self._column_sums = delta @ delta.sum(axis=0) + np.einsum("ij,ij->i", delta @ cross, feat)
        self._delta64, self._feat64 = delta, feat
        self._self = (norms > 0).astype(np.float64)
        self._delta = delta.astype(dtype, copy=False)
        self._feat = feat.astype(dtype, copy=False)
        self.dtype = np.dtype(dtype)
        # cos = <dt, dt'> (1 + <e, e'>), where |dt||dt'| (1 + |e||e'|) <= 1: the error of
        # <e, e'> (<= gamma |e||e'|) and of <dt, dt'> (<= gamma |dt||dt'|) each add at most one
        # dot-product bound, plus the rounding of the sum and the product
        u = float(np.finfo(self.dtype).eps) / 2
        self.row_error = 1.01 * (_dot_error(delta.shape[1], self.dtype) + _dot_error(feat.shape[1], self.dtype) + 3 * u)

    def accumulator(self) -> _OuterAccumulator:
        """An exact float64 running sum of rows, to re-score samples exactly."""
        return _OuterAccumulator(self._delta64, self._feat64)

    def cos_sums(self, acc: _OuterAccumulator) -> np.ndarray:
        """(n,) float64: ``sum_{j added to acc} cos(g_j, g_x)`` for every row x of this kernel."""
        return self._delta64 @ acc._sum + np.einsum("ij,ij->i", self._delta64 @ acc._cross, self._feat64)

    def __len__(self) -> int:
        return int(self._delta.shape[0])

    def column_sums(self) -> np.ndarray:
        """(n,) float64: ``sum_i cos(g_i, g_x)`` over all rows i, for every row x."""
        return self._column_sums

    def self_similarity(self) -> np.ndarray:
        """(n,) float64: ``cos(x, x)``, 1 for a nonzero vector and 0 for a zero one."""
        return self._self

    def rows(self, cand: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(len(cand), n) array of ``cos(g_x, g_i)`` for x in ``cand``, in the kernel's dtype
        (written into ``out`` when given)."""
        out = np.matmul(self._feat[cand], self._feat.T, out=out)
        out += 1.0
        out *= self._delta[cand] @ self._delta.T
        return out

    def restrict(self, keep: np.ndarray, rows_only: bool = False) -> "GradientKernel":
        """The kernel over the rows where the boolean mask ``keep`` is True (with
        ``rows_only``, only :meth:`rows` works: the float64 copies are not made)."""
        new = GradientKernel.__new__(GradientKernel)
        lo = self._delta is not self._delta64
        if rows_only:
            new._delta64 = new._feat64 = None
            new._delta, new._feat = self._delta[keep], self._feat[keep]
        else:
            new._delta64, new._feat64 = self._delta64[keep], self._feat64[keep]
            new._delta = self._delta[keep] if lo else new._delta64
            new._feat = self._feat[keep] if lo else new._feat64
        new._self = self._self[keep]
        new.dtype, new.row_error, new._column_sums = self.dtype, self.row_error, None
        return new


def make_kernel(features: "np.ndarray | GradientEmbedding", dtype: type = np.float32):
    """The kernel for ``features``: a :class:`GradientKernel` for a :class:`GradientEmbedding`,
    a :class:`CosineKernel` for a (n, d) array."""
    if isinstance(features, GradientEmbedding):
        return GradientKernel(features, dtype=dtype)
    return CosineKernel(features, dtype=dtype)
