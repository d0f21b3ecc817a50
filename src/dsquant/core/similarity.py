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
Pure numpy (the exact sums are numba-compiled loops from :mod:`dsquant.core._steps`), no I/O.
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

    The unit embedding of sample x is ``[p_x, p_x (x) q_x]`` with ``p_x = scale_x * first_x``
    (c,) and ``q_x = second_x`` (e,), both taken exactly into float64: the factorised
    gradients (p = dt, q = e), or dense unit rows (p = u, e = 0). The sums are
    ``s1 = sum_j p_j`` (c,) and ``s2 = sum_j p_j q_j^T`` (c, e), and
    ``sum_j cos(j, x) = <p_x, s1> + p_x^T s2 q_x``. Samples are the kernel's positions, stored
    at row ``index[pos]``. The compiled greedy loop adds to ``s1`` and ``s2`` in place.
    """

    def __init__(self, kernel: "_Kernel") -> None:
        self.first, self.scale, self.second = kernel._first, kernel._scale, kernel._second
        self.index = kernel._index
        self.s1 = np.zeros(self.first.shape[1], dtype=np.float64)
        self.s2 = np.zeros((self.first.shape[1], self.second.shape[1]), dtype=np.float64)

    def stored(self, index: np.ndarray) -> np.ndarray:
        """(len(index),) int64: the stored rows of the kernel's samples ``index``."""
        return np.asarray(_at(self.index, index), dtype=np.int64)


def _at(index: np.ndarray | None, positions):
    """Rows of the stored arrays for the kernel's ``positions`` (``index`` None: the same)."""
    return positions if index is None else index[positions]


def _dot_error(length: int, dtype) -> float:
    """Bound on |computed - exact| of a dot product of two vectors of norm <= 1 whose entries
    were rounded to ``dtype``: input rounding 2u plus summation gamma_n = n u / (1 - n u)."""
    u = float(np.finfo(dtype).eps) / 2
    return 2 * u + length * u / (1 - length * u)


def _stored(x) -> np.ndarray:
    """``x`` as a C-contiguous float32 or float64 array (other dtypes become float64)."""
    x = np.asarray(x)
    return np.ascontiguousarray(x, dtype=x.dtype if x.dtype in (np.float32, np.float64) else np.float64)


class _Kernel:
    """What both kernels share.

    The embedding is stored as given (float32 or float64), never normalised into a copy:
    ``_first`` (n, c), ``_second`` (n, e) and ``_scale`` (n,) float64, the unit embedding being
    ``[p, p (x) q]`` with ``p = scale * first``, ``q = second`` (see :class:`_Accumulator`).
    Exact float64 sums read these rows in place (half the memory traffic for float32
    features). ``_index`` holds the stored row of each sample of the kernel (None: all, in
    order): :meth:`restrict` only narrows it, so a pool that shrinks bin by bin is never
    copied. Rows of similarities come from the scaled rows in the kernel's dtype, gathered
    when needed; a ``rows_only`` restriction keeps them compact for repeated matrix products.
    """

    def __len__(self) -> int:
        return len(self._self)

    def column_sums(self) -> np.ndarray:
        """(n,) float64: the sum of the similarities of every sample x with all samples."""
        return self._column_sums

    def self_similarity(self) -> np.ndarray:
        """(n,) float64: ``cos(x, x)``, 1 for a nonzero vector and 0 for a zero one."""
        return self._self

    def accumulator(self) -> _Accumulator:
        """An exact float64 running sum of the unit embeddings of picked samples."""
        return _Accumulator(self)

    def cos_sums(self, acc: _Accumulator) -> np.ndarray:
        """(n,) float64: ``sum_{j added to acc} cos(j, x)`` for every sample x of this kernel
        (compiled; reads the stored rows in place)."""
        from ._steps import picked_sums  # numba is imported on first use

        rows = np.arange(len(self._first)) if self._index is None else self._index
        out = np.empty(len(rows))
        picked_sums(rows, acc.first, acc.scale, acc.second, acc.s1, acc.s2, out)
        return out

    def _init(self, first: np.ndarray, second: np.ndarray, scale: np.ndarray, dtype) -> None:
        """Store the factors (see the class docstring) and compute the column sums."""
        self._first, self._second, self._scale = first, second, scale
        self._self = (scale > 0).astype(np.float64)
        self._index = None
        self._fast = None  # compact scaled rows in the kernel's dtype (rows_only kernels)
        self.dtype = np.dtype(dtype)
        # column sums: the sums over every sample
        from ._steps import add_rows

        acc = self.accumulator()
        add_rows(np.arange(len(first)), first, scale, second, acc.s1, acc.s2)
        self._column_sums = self.cos_sums(acc)

    def _scaled(self, positions=None) -> tuple[np.ndarray, np.ndarray]:
        """The rows ``(p, q)`` of the kernel's ``positions`` (None: all) in its dtype."""
        if self._fast is not None:
            return self._fast if positions is None else (self._fast[0][positions], self._fast[1][positions])
        from ._steps import scaled_rows

        rows = np.arange(len(self)) if positions is None else np.asarray(positions)
        rows = np.ascontiguousarray(_at(self._index, rows), dtype=np.int64)
        p = np.empty((len(rows), self._first.shape[1]), dtype=self.dtype)
        scaled_rows(rows, self._first, self._scale, p)
        return p, self._second[rows].astype(self.dtype, copy=False)

    def restrict(self, keep: np.ndarray, rows_only: bool = False):
        """The kernel over the samples where the boolean mask ``keep`` is True. Its column sums
        are not kept: they depend on the set. It shares the stored arrays (only the index of
        its samples is new); with ``rows_only`` it holds compact scaled rows in its dtype for
        :meth:`rows`, and nothing else works."""
        new = type(self).__new__(type(self))
        new.dtype, new.row_error, new._column_sums = self.dtype, self.row_error, None
        new._self = self._self[keep]
        new._first = new._second = new._scale = new._index = new._fast = None
        if self._fast is not None:  # a compact kernel stays compact
            new._fast = (self._fast[0][keep], self._fast[1][keep])
            return new
        if rows_only:
            new._fast = self._scaled(np.flatnonzero(keep))
            return new
        new._index = np.flatnonzero(keep) if self._index is None else self._index[keep]
        new._first, new._second, new._scale = self._first, self._second, self._scale
        return new


class CosineKernel(_Kernel):
    """Cosine similarity over the rows of a dense (n, d) feature matrix.

    Unit rows are ``u = f / |f|`` in float64 (the norm computed in float64), never stored:
    the features are kept as given with the scale ``1 / |f|``. ``dtype`` is the precision of
    the rows of similarities (float32 halves the memory and time of the matrix products);
    column sums and every other sum are exact float64.
    """

    def __init__(self, features: np.ndarray, dtype: type = np.float32) -> None:
        first = _stored(features)
        norms = np.sqrt(np.einsum("ij,ij->i", first, first, dtype=np.float64))
        scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        self._init(first, np.empty((len(first), 0), dtype=first.dtype), scale, dtype)
        #: bound on the error of one entry of :meth:`rows` (cosines lie in [-1, 1])
        self.row_error = _dot_error(first.shape[1], self.dtype)

    def rows(self, cand: np.ndarray, out: np.ndarray | None = None, cols: np.ndarray | None = None) -> np.ndarray:
        """(len(cand), n) array of ``cos(f_x, f_i)`` for x in ``cand``, in the kernel's dtype
        (written into ``out`` when given); only the columns i in ``cols`` when given."""
        return np.matmul(self._scaled(cand)[0], self._scaled(cols)[0].T, out=out)


class GradientKernel(_Kernel):
    """Cosine similarity of factorised gradient embeddings (ALGORITHMS.md section 1).

    ``cos(g_i, g_j) = <dt_i, dt_j> (1 + <e_i, e_j>)`` with ``dt_i = delta_i / ||g_i||``.
    Column sums use ``sum_i <dt_i, dt_x> (1 + <e_i, e_x>) = <dt_x, sum_i dt_i> +
    dt_x^T (sum_i dt_i e_i^T) e_x``, in O(n C d) time and O(C d) extra memory.
    """

    def __init__(self, embedding: GradientEmbedding, dtype: type = np.float32) -> None:
        norms = embedding.norms()
        scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        self._init(_stored(embedding.delta), _stored(embedding.features), scale, dtype)
        # cos = <dt, dt'> (1 + <e, e'>), where |dt||dt'| (1 + |e||e'|) <= 1: the error of
        # <e, e'> (<= gamma |e||e'|) and of <dt, dt'> (<= gamma |dt||dt'|) each add at most one
        # dot-product bound, plus the rounding of the sum and the product
        u = float(np.finfo(self.dtype).eps) / 2
        c, d = self._first.shape[1], self._second.shape[1]
        self.row_error = 1.01 * (_dot_error(c, self.dtype) + _dot_error(d, self.dtype) + 3 * u)

    def rows(self, cand: np.ndarray, out: np.ndarray | None = None, cols: np.ndarray | None = None) -> np.ndarray:
        """(len(cand), n) array of ``cos(g_x, g_i)`` for x in ``cand``, in the kernel's dtype
        (written into ``out`` when given); only the columns i in ``cols`` when given."""
        (dt_x, e_x), (dt_i, e_i) = self._scaled(cand), self._scaled(cols)
        out = np.matmul(e_x, e_i.T, out=out)
        out += 1.0
        out *= dt_x @ dt_i.T
        return out


def make_kernel(features: "np.ndarray | GradientEmbedding", dtype: type = np.float32):
    """The kernel for ``features``: a :class:`GradientKernel` for a :class:`GradientEmbedding`,
    a :class:`CosineKernel` for a (n, d) array."""
    if isinstance(features, GradientEmbedding):
        return GradientKernel(features, dtype=dtype)
    return CosineKernel(features, dtype=dtype)
