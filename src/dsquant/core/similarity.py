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


class _Accumulator:
    """Exact float64 running sums over the added samples, for ``sum_{j added} cos(j, x)``.

    The similarity is ``cos(j, x) = <p_j, p_x> + p_j^T M q_x``-shaped: with ``first`` rows p
    (n, c) and ``second`` rows q (n, e), the sums are ``s1 = sum_j p_j`` (c,) and
    ``s2 = sum_j p_j q_j^T`` (c, e), and ``sum_j cos(j, x) = <p_x, s1> + p_x^T s2 q_x`` for
    the factorised gradients (p = dt, q = e); e = 0 for dense unit rows (p = u). Samples are
    the kernel's positions, stored at ``first[index[pos]]``. The compiled greedy loop adds to
    ``s1`` and ``s2`` in place.
    """

    def __init__(self, first: np.ndarray, second: np.ndarray, index: np.ndarray | None) -> None:
        self.first, self.second, self.index = first, second, index
        self.s1 = np.zeros(first.shape[1], dtype=np.float64)
        self.s2 = np.zeros((first.shape[1], second.shape[1]), dtype=np.float64)

    def stored(self, index: np.ndarray) -> np.ndarray:
        """(len(index),) int64: the rows of ``first`` and ``second`` of the kernel's samples."""
        return np.asarray(_at(self.index, index), dtype=np.int64)


def _at(index: np.ndarray | None, positions):
    """Rows of the stored arrays for the kernel's ``positions`` (``index`` None: the same)."""
    return positions if index is None else index[positions]


def _dot_error(length: int, dtype) -> float:
    """Bound on |computed - exact| of a dot product of two vectors of norm <= 1 whose entries
    were rounded to ``dtype``: input rounding 2u plus summation gamma_n = n u / (1 - n u)."""
    u = float(np.finfo(dtype).eps) / 2
    return 2 * u + length * u / (1 - length * u)


def _unit_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` (a new float64 array) scaled to unit L2 norm, zero rows staying zero; and
    the (n,) float64 norms."""
    x = np.array(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    x *= np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)[:, None]
    return x, norms


class _Kernel:
    """What both kernels share: the stored arrays (named in ``_fast`` and ``_exact``) and
    ``_index``, the stored row of each sample of the kernel (None: all, in order).
    :meth:`restrict` only narrows the index, so a pool that shrinks bin by bin is never
    copied; the compiled sums read the stored rows in place."""

    _fast: tuple[str, ...] = ()  # the arrays in the kernel's dtype (the matrix products)
    _exact: tuple[str, ...] = ()  # the float64 arrays (column sums, exact re-scoring)
    _fast_pair: tuple[str, ...] = ()  # the first and second factors in the kernel's dtype
    _stored_error = 0.0  # relative error of a row in the kernel's dtype

    def __len__(self) -> int:
        return len(self._self)

    def column_sums(self) -> np.ndarray:
        """(n,) float64: the sum of the similarities of every sample x with all samples."""
        return self._column_sums

    def self_similarity(self) -> np.ndarray:
        """(n,) float64: ``cos(x, x)``, 1 for a nonzero vector and 0 for a zero one."""
        return self._self

    def _local(self, name: str, positions=None) -> np.ndarray:
        """Stored array ``name`` at the kernel's ``positions`` (None: all samples)."""
        arr = getattr(self, name)
        if positions is None:
            return arr if self._index is None else arr[self._index]
        return arr[_at(self._index, positions)]

    def cos_sums(self, acc: _Accumulator) -> np.ndarray:
        """(n,) float64: ``sum_{j added to acc} cos(j, x)`` for every sample x of this kernel
        (compiled; the float64 rows are read where they are stored, never gathered)."""
        from ._steps import picked_sums  # numba is imported on first use

        rows = np.arange(len(acc.first)) if self._index is None else self._index
        out = np.empty(len(rows))
        picked_sums(rows, acc.first, acc.second, acc.s1, acc.s2, out)
        return out

    def approx_cos_sums(self, acc: _Accumulator) -> tuple[np.ndarray, float]:
        """:meth:`cos_sums` from the rows in the kernel's dtype (half the memory traffic in
        float32), with a bound on the error of every value: a float32 row differs from the
        float64 one by at most ``_stored_error`` of its norm (<= 1), so the sum is off by at
        most that times ``|sum_j f_j|`` (Cauchy-Schwarz), plus the float64 rounding."""
        if self.dtype == np.float64:
            return self.cos_sums(acc), 0.0
        from ._steps import picked_sums

        rows = np.arange(len(acc.first)) if self._index is None else self._index
        first, second = (getattr(self, name) for name in self._fast_pair)
        out = np.empty(len(rows))
        picked_sums(rows, first, second, acc.s1, acc.s2, out)
        norm = np.sqrt(float(acc.s1 @ acc.s1) + float(np.sum(acc.s2 * acc.s2)))
        terms = acc.first.shape[1] * (1 + acc.second.shape[1]) + 2
        return out, 1.01 * (self._stored_error + terms * 2.0**-52) * norm

    def restrict(self, keep: np.ndarray, rows_only: bool = False):
        """The kernel over the samples where the boolean mask ``keep`` is True. Its column sums
        are not kept: they depend on the set. It shares the stored arrays (only the index of
        its samples is new); with ``rows_only`` it is a compact copy in the kernel's dtype for
        :meth:`rows`, and nothing else works."""
        new = type(self).__new__(type(self))
        new.dtype, new.row_error, new._column_sums = self.dtype, self.row_error, None
        new._self = self._self[keep]
        index = np.flatnonzero(keep) if self._index is None else self._index[keep]
        if rows_only:
            for name in self._fast:
                setattr(new, name, getattr(self, name)[index])
            for name in self._exact:
                setattr(new, name, None)
            new._index = None
        else:
            for name in self._fast + self._exact + self._fast_pair:
                setattr(new, name, getattr(self, name))
            new._index = index
        return new


class CosineKernel(_Kernel):
    """Cosine similarity over the rows of a dense (n, d) feature matrix.

    Features are L2-normalised once, in float64. ``dtype`` is the precision of the rows of
    similarities (float32 halves the memory and time of the matrix products); column sums are
    float64.
    """

    _fast = ("_unit",)
    _exact = ("_unit64",)
    _fast_pair = ("_unit", "_nothing")  # first and second rows for the compiled sums
    #: |f32(u) - u| <= 2^-24 |u| for a float32 copy of a float64 row
    _stored_error = 2.0**-24

    def __init__(self, features: np.ndarray, dtype: type = np.float32) -> None:
        features = np.asarray(features)
        if features.dtype in (np.float32, np.float64) and features.ndim == 2:
            from ._steps import unit_rows  # one compiled pass instead of five numpy ones

            n, d = features.shape
            unit = np.empty((n, d))
            fast = unit if np.dtype(dtype) == np.float64 else np.empty((n, d), dtype=dtype)
            norms, total = np.empty(n), np.zeros(d)
            unit_rows(features, unit, fast, norms, total)
        else:
            unit, norms = _unit_rows(features)
            fast, total = unit.astype(dtype, copy=False), unit.sum(axis=0)
        self._column_sums = unit @ total
        self._unit64, self._unit = unit, fast
        self._nothing = np.empty((len(unit), 0), dtype=fast.dtype)  # no second factor
        self._self = (norms > 0).astype(np.float64)
        self._index = None
        self.dtype = np.dtype(dtype)
        #: bound on the error of one entry of :meth:`rows` (cosines lie in [-1, 1])
        self.row_error = _dot_error(unit.shape[1], self.dtype)

    def accumulator(self) -> _Accumulator:
        """An exact float64 running sum of rows, to re-score samples exactly."""
        return _Accumulator(self._unit64, np.empty((len(self._unit64), 0)), self._index)

    def rows(self, cand: np.ndarray, out: np.ndarray | None = None, cols: np.ndarray | None = None) -> np.ndarray:
        """(len(cand), n) array of ``cos(f_x, f_i)`` for x in ``cand``, in the kernel's dtype
        (written into ``out`` when given); only the columns i in ``cols`` when given."""
        return np.matmul(self._local("_unit", cand), self._local("_unit", cols).T, out=out)


class GradientKernel(_Kernel):
    """Cosine similarity of factorised gradient embeddings (ALGORITHMS.md section 1).

    ``cos(g_i, g_j) = <dt_i, dt_j> (1 + <e_i, e_j>)`` with ``dt_i = delta_i / ||g_i||``.
    Column sums use ``sum_i <dt_i, dt_x> (1 + <e_i, e_x>) = <dt_x, sum_i dt_i> +
    dt_x^T (sum_i dt_i e_i^T) e_x``, in O(n C d) time and O(C d) extra memory.
    """

    _fast = ("_delta", "_feat")
    _exact = ("_delta64", "_feat64")
    _fast_pair = ("_delta", "_feat")
    #: g = [dt, dt (x) e]: a product of two float32-rounded values is off by <= 2u + u^2
    _stored_error = 2.0**-23 + 2.0**-48

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
        self._index = None
        self.dtype = np.dtype(dtype)
        # cos = <dt, dt'> (1 + <e, e'>), where |dt||dt'| (1 + |e||e'|) <= 1: the error of
        # <e, e'> (<= gamma |e||e'|) and of <dt, dt'> (<= gamma |dt||dt'|) each add at most one
        # dot-product bound, plus the rounding of the sum and the product
        u = float(np.finfo(self.dtype).eps) / 2
        self.row_error = 1.01 * (_dot_error(delta.shape[1], self.dtype) + _dot_error(feat.shape[1], self.dtype) + 3 * u)

    def accumulator(self) -> _Accumulator:
        """An exact float64 running sum of rows, to re-score samples exactly."""
        return _Accumulator(self._delta64, self._feat64, self._index)

    def rows(self, cand: np.ndarray, out: np.ndarray | None = None, cols: np.ndarray | None = None) -> np.ndarray:
        """(len(cand), n) array of ``cos(g_x, g_i)`` for x in ``cand``, in the kernel's dtype
        (written into ``out`` when given); only the columns i in ``cols`` when given."""
        out = np.matmul(self._local("_feat", cand), self._local("_feat", cols).T, out=out)
        out += 1.0
        out *= self._local("_delta", cand) @ self._local("_delta", cols).T
        return out


def make_kernel(features: "np.ndarray | GradientEmbedding", dtype: type = np.float32):
    """The kernel for ``features``: a :class:`GradientKernel` for a :class:`GradientEmbedding`,
    a :class:`CosineKernel` for a (n, d) array."""
    if isinstance(features, GradientEmbedding):
        return GradientKernel(features, dtype=dtype)
    return CosineKernel(features, dtype=dtype)
