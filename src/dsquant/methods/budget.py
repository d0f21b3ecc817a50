"""DQ with bin shares that follow the budget: dsquant's extension beyond the papers
(docs/selection.md).

DQ gives every bin the same fraction of itself, so every sample has the selection probability of
class-balanced random sampling: DQ only stratifies (docs/selection.md). The bins are ordered,
though: bin 0 holds the greedy GraphCut's first picks (the most representative samples of the
class), the last bin what the greedy never picked (outliers, atypical and mislabelled samples).
The literature says which end to favour: with few samples per class, typical samples train
better; with many, the diverse and hard ones do (Sorscher et al., NeurIPS 2022; CCS, Zheng et al.
ICLR 2023). ``DQBudget`` leans the shares towards the early bins at small per-class budgets and
towards the late bins at large ones (:func:`dsquant.core.sampling.skewed_bin_counts`), can leave
out the last bin, and can take the greedy's first picks inside a bin instead of drawing
uniformly. With ``skew=0, drop_last=False, order="uniform"`` it is DQ exactly.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.sampling import budget, sample_with_counts, skewed_bin_counts
from .base import Context, Selection
from .dq import DQ

__all__ = ["DQBudget", "budget_rule"]

ORDERS = ("uniform", "greedy")

# the frozen "auto" rule, chosen on a validation split carved from Fashion-MNIST's training set
# (benchmarks/tune_budget_rule.py, docs/selection.md); nothing of it saw a test split
RULE = {"skew_max": 2.0, "skew_full_below": 10.0, "skew_zero_at": 50.0, "drop_last_below": 100.0, "greedy_below": 3.2}


def budget_rule(per_class: float) -> dict:
    """The ``"auto"`` settings for an average of ``per_class`` selected samples per class
    (constants in :data:`RULE`):

    * ``skew = skew_max * clip(log(skew_zero_at / m) / log(skew_zero_at / skew_full_below), 0, 1)``:
      the full skew (2) up to 10 per class, falling on a log scale to 0 (DQ's shares) at 50;
    * ``drop_last = m < drop_last_below`` (100): the greedy's remainder left out;
    * ``order = "greedy"`` when ``m < greedy_below`` (3.2, halfway on a log scale between the
      budgets where greedy order helped, 1, and where it did not, 10).

    Raises:
        ValueError: if ``per_class`` is not a positive number.
    """
    if not per_class > 0:
        raise ValueError(f"per_class: expected a positive number of samples, got {per_class!r}")
    full, zero = RULE["skew_full_below"], RULE["skew_zero_at"]
    fraction = min(1.0, max(0.0, math.log(zero / per_class) / math.log(zero / full)))
    return {
        "skew": RULE["skew_max"] * fraction,
        "drop_last": bool(per_class < RULE["drop_last_below"]),
        "order": "greedy" if per_class < RULE["greedy_below"] else "uniform",
    }


class DQBudget(DQ):
    """DQ's bins with shares that follow the budget (docs/selection.md; beyond the papers).

    Args:
        n_bins, precision, block_size: as :class:`~dsquant.methods.DQ`.
        skew: how much the shares lean to the early bins (> 0) or the late bins (< 0): bin k's
            weight is ``|B_k| exp(skew (1 - 2k / (K - 1)))``; ``"auto"`` (default) sets it from
            the per-class budget (:func:`budget_rule`).
        drop_last: give the last bin (the greedy's remainder) nothing; ``"auto"`` by the rule.
        order: ``"uniform"`` draws inside a (bin, class) cell as DQ does; ``"greedy"`` takes the
            greedy's first picks (the last bin, never ranked, is still drawn); ``"auto"``.

    With ``skew=0, drop_last=False, order="uniform"`` the indices are DQ's, to the bit.

    Raises:
        ValueError: naming the parameter, on a bad value.
    """

    name = "dq-budget"
    summary = "DQ's bins, shares that follow the budget: typical bins at small budgets, diverse at large (dsquant)"

    def __init__(self, n_bins: int = 10, skew="auto", drop_last="auto", order: str = "auto", precision: str = "float32", block_size: int | None = None) -> None:
        super().__init__(n_bins, precision, block_size)
        if skew != "auto":
            try:
                ok = not isinstance(skew, bool) and math.isfinite(float(skew))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"skew: expected a finite number or 'auto', got {skew!r}")
        if drop_last != "auto" and not isinstance(drop_last, bool):
            raise ValueError(f"drop_last: expected True, False or 'auto', got {drop_last!r}")
        if order not in (*ORDERS, "auto"):
            raise ValueError(f"order: expected 'uniform', 'greedy' or 'auto', got {order!r}")
        self.skew, self.drop_last, self.order = skew, drop_last, order

    def config(self) -> dict:
        return {**super().config(), "skew": self.skew, "drop_last": self.drop_last, "order": self.order}

    def settings(self, n_selected: int, n_classes: int) -> dict:
        """The skew, drop_last and order used for ``n_selected`` samples over ``n_classes``
        classes: the given ones, ``"auto"`` ones from :func:`budget_rule`."""
        auto = budget_rule(n_selected / max(1, n_classes))
        return {
            "skew": auto["skew"] if self.skew == "auto" else float(self.skew),
            "drop_last": auto["drop_last"] if self.drop_last == "auto" else self.drop_last,
            "order": auto["order"] if self.order == "auto" else self.order,
        }

    def select(self, ctx: Context) -> Selection:
        n = len(ctx.dataset)
        total = budget(ctx.ratio, n)
        n_classes = 1 if ctx.labels is None else len(np.unique(ctx.labels))
        s = self.settings(total, n_classes)
        greedy = s["order"] == "greedy"
        out = self.bins(ctx, return_rank=greedy)
        bins, rank = out if greedy else (out, None)
        counts = skewed_bin_counts([len(b) for b in bins], total, s["skew"], s["drop_last"])
        indices = ctx.timed("sample", sample_with_counts, bins, counts, ctx.labels, ctx.seed, rank)
        record = {**s, "per_class": round(total / max(1, n_classes), 3), "counts": counts.tolist()}
        return Selection(indices, bins, record)

    @classmethod
    def report(cls, manifest: dict) -> list[str]:
        r = manifest.get(cls.name)
        if not r:
            return []
        return ["", f"  dq-budget: skew {r['skew']:.3g}, drop last bin {r['drop_last']}, order {r['order']} ({r['per_class']} per class)"]
