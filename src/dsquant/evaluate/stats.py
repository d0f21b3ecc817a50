"""Statistics of the benchmark reports: confidence intervals of a mean and of a paired difference.

Both are Student's t intervals (W. S. Gosset, "The probable error of a mean", Biometrika 6,
1908; e.g. NIST/SEMATECH e-Handbook of Statistical Methods, sections 7.2.2 and 7.3.1; the
paired version is the one-sample interval of the per-pair differences). With ``n`` values of
mean ``m`` and sample standard deviation ``s`` (``ddof=1``), the ``c`` interval of the mean is

    m -+ t_{(1 + c) / 2, n - 1} * s / sqrt(n)

where ``t_{q, df}`` is the ``q`` quantile of Student's t distribution with ``df`` degrees of
freedom (:func:`scipy.stats.t.ppf`). It assumes the values are independent draws from a
distribution close enough to normal; with a handful of seeds it is the usual, not an exact,
statement.

In the benchmark, a method and class-balanced random share a seed's training (initialisation,
batch order) and differ in the selected subset, so their accuracies are compared by seed: the
paired interval is that of the differences ``a[seed] - b[seed]``, which removes the
seed-to-seed spread they have in common. An interval that excludes zero is the same statement
as ``scipy.stats.ttest_rel(a, b).pvalue < 1 - c`` (two-sided).

Pure numpy/scipy; no dependency on the rest of dsquant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PairedDifference", "mean_interval", "paired_difference", "t_quantile"]


def t_quantile(n: int, confidence: float = 0.95) -> float:
    """``t_{(1 + confidence) / 2, n - 1}``: the two-sided critical value of Student's t for ``n``
    values (``n - 1`` degrees of freedom); NaN for ``n < 2``.

    Example: ``t_quantile(3) == 4.302652...`` (2 degrees of freedom, 95 %).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: {confidence!r} is not in (0, 1)")
    if n < 2:
        return math.nan
    from scipy.stats import t

    return float(t.ppf((1 + confidence) / 2, n - 1))


def _finite(values, what: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: values must be finite numbers, got {a[~np.isfinite(a)][:3].tolist()}")
    return a


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """The ``confidence`` interval of the mean of ``values`` by Student's t:
    ``mean -+ t_{(1 + c) / 2, n - 1} * s / sqrt(n)`` with ``s`` the sample standard deviation
    (``ddof=1``).

    Returns:
        ``(low, high)``; ``(nan, nan)`` for fewer than 2 values (no spread to estimate).
    """
    a = _finite(values, "values")
    n = len(a)
    if n < 2:
        return math.nan, math.nan
    m = float(a.mean())
    half = t_quantile(n, confidence) * float(a.std(ddof=1)) / math.sqrt(n)
    return m - half, m + half


@dataclass(frozen=True)
class PairedDifference:
    """The difference ``a - b`` of two paired samples and its Student's t interval.

    Attributes:
        mean: mean of the per-pair differences ``d_i = a_i - b_i`` (NaN with no pairs).
        std: their sample standard deviation (``ddof=1``; NaN for ``n < 2``).
        n: number of pairs used (keys present in both inputs).
        low, high: the ``confidence`` interval ``mean -+ t_{(1 + c)/2, n - 1} * std / sqrt(n)``
            (NaN for ``n < 2``).
        excludes_zero: whether the interval lies wholly above or below 0 (``low > 0`` or
            ``high < 0``); always False for ``n < 2``. Equivalent to the two-sided paired t test
            (``scipy.stats.ttest_rel``) rejecting "no difference" at level ``1 - confidence``.
        confidence: the interval's confidence level.
        keys: the keys (seeds) of the pairs, in the order used, for mapping inputs; ``None`` for
            sequence inputs.
    """

    mean: float
    std: float
    n: int
    low: float
    high: float
    excludes_zero: bool
    confidence: float = 0.95
    keys: tuple | None = None


def _sorted_keys(keys) -> list:
    try:
        return sorted(keys)
    except TypeError:  # keys of mixed types: a stable, deterministic order all the same
        return sorted(keys, key=repr)


def paired_difference(a, b, confidence: float = 0.95) -> PairedDifference:
    """Mean difference ``a - b`` of paired samples with its Student's paired t interval.

    With the per-pair differences ``d_i = a_i - b_i`` (i = 1..n), their mean ``d`` and sample
    standard deviation ``s_d`` (``ddof=1``), the interval is (Student 1908; the one-sample t
    interval of the differences)

        d -+ t_{(1 + confidence) / 2, n - 1} * s_d / sqrt(n).

    It excludes 0 exactly when the two-sided paired t test (``scipy.stats.ttest_rel(a, b)``)
    has ``p < 1 - confidence``. When all differences are equal (``s_d = 0``, n >= 2) the
    interval is the point ``[d, d]``, which excludes 0 unless ``d == 0``.

    Args:
        a: the method's accuracies: a mapping ``seed -> value`` or a sequence.
        b: the baseline's (e.g. class-balanced random): the same kind as ``a``. Mappings are
            paired by key: keys only one of them has are dropped (never shifted onto another
            seed), and the pairs are taken in sorted key order. Sequences are paired by position
            and must have the same length.
        confidence: the interval's level in (0, 1) (default 0.95).

    Returns:
        A :class:`PairedDifference`. With fewer than 2 pairs there is no spread to estimate:
        ``std``, ``low`` and ``high`` are NaN and ``excludes_zero`` is False (``mean`` is the
        single difference for one pair, NaN for none).

    Raises:
        TypeError: if one of ``a``, ``b`` is a mapping and the other is not.
        ValueError: sequences of different lengths, non-finite values, or ``confidence``
            outside (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: {confidence!r} is not in (0, 1)")
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise TypeError("paired_difference: pass two mappings (seed -> value) or two sequences, not one of each")
    keys = None
    if isinstance(a, Mapping):
        keys = tuple(_sorted_keys(set(a) & set(b)))
        x = _finite([a[k] for k in keys], "a")
        y = _finite([b[k] for k in keys], "b")
    else:
        if not isinstance(a, (Sequence, np.ndarray)) or not isinstance(b, (Sequence, np.ndarray)):
            a, b = list(a), list(b)
        x, y = _finite(a, "a"), _finite(b, "b")
        if len(x) != len(y):
            raise ValueError(f"paired_difference: {len(x)} values in a but {len(y)} in b; sequences are paired by position (pass mappings seed -> value to pair by seed)")
    d = x - y
    n = len(d)
    if n == 0:
        return PairedDifference(math.nan, math.nan, 0, math.nan, math.nan, False, confidence, keys)
    mean = float(d.mean())
    if n < 2:
        return PairedDifference(mean, math.nan, n, math.nan, math.nan, False, confidence, keys)
    sd = float(d.std(ddof=1))
    half = t_quantile(n, confidence) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    return PairedDifference(mean, sd, n, low, high, bool(low > 0 or high < 0), confidence, keys)
