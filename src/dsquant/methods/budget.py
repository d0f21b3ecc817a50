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
out the last bin, and can take the greedy's first picks, or herding's picks, inside a bin instead
of drawing uniformly. The ``"auto"`` rule (:data:`RULES`, version 2) sets all three from the
per-class budget and the kind of embedding. With ``skew=0, drop_last=False, order="uniform"`` it
is DQ exactly.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.baselines import herding_cell_rank, herding_drop_last
from ..core.sampling import budget, sample_with_counts, skewed_bin_counts
from .base import Context, Selection
from .dq import DQ

__all__ = ["DQBudget", "HerdingDrop", "RULES", "budget_rule"]

ORDERS = ("uniform", "greedy", "herding")

# the frozen "auto" rules, one per kind of embedding, chosen on validation splits carved from
# training sets (benchmarks/tune_budget_rule.py, docs/selection.md); nothing of them saw a test
# split. "proxy": an embedding learnt from the data's own labels (DQ's proxy), chosen on
# Fashion-MNIST (rule 1) and CIFAR-10 (rule 2, the herding order); "pretrained": any other
# embedding (sentence encoders, hf: models, features given), chosen on Banking77
RULES = {
    "proxy": {"skew_max": 2.0, "skew_full_below": 50.0, "skew_zero_at": 500.0, "drop_last_below": 500.0, "greedy_below": 3.2, "herding_below": 500.0},
    "pretrained": {"skew_max": 2.0, "skew_full_below": 2.0, "skew_zero_at": 5.0, "drop_last_below": 5.0, "greedy_below": 3.2, "herding_below": 0.0},
}
RULE = RULES["proxy"]
RULE_VERSION = 2


def budget_rule(per_class: float, embedding: str = "proxy") -> dict:
    """The ``"auto"`` settings for an average of ``per_class`` selected samples per class
    (m), with the constants of ``RULES[embedding]`` (:data:`RULES`):

    * ``skew = skew_max * clip(log(skew_zero_at / m) / log(skew_zero_at / skew_full_below), 0, 1)``:
      the full skew up to ``skew_full_below`` per class, falling on a log scale to 0 (DQ's
      shares) at ``skew_zero_at``;
    * ``drop_last = m < drop_last_below``: the greedy's remainder left out;
    * ``order``: ``"greedy"`` when ``m < greedy_below`` (3.2, halfway on a log scale between the
      budgets where greedy order helped, 1, and where it did not, 10), else ``"herding"`` when
      ``m < herding_below``, else ``"uniform"``.

    ``embedding`` is ``"proxy"`` (an embedding learnt from the data's labels: full skew to 50 per
    class, none from 500, herding order from 3.2 to 500 per class, the last bin dropped below
    500) or ``"pretrained"`` (skew only
    up to 5 per class and no herding order: on Banking77's sentence embedding both lost to DQ's
    shares from 5 per class up).

    Raises:
        ValueError: if ``per_class`` is not a positive number or ``embedding`` is unknown.
    """
    if not per_class > 0:
        raise ValueError(f"per_class: expected a positive number of samples, got {per_class!r}")
    if embedding not in RULES:
        raise ValueError(f"embedding: expected one of {sorted(RULES)}, got {embedding!r}")
    rule = RULES[embedding]
    full, zero = rule["skew_full_below"], rule["skew_zero_at"]
    fraction = min(1.0, max(0.0, math.log(zero / per_class) / math.log(zero / full)))
    order = "greedy" if per_class < rule["greedy_below"] else "herding" if per_class < rule["herding_below"] else "uniform"
    return {"skew": rule["skew_max"] * fraction, "drop_last": bool(per_class < rule["drop_last_below"]), "order": order}


class DQBudget(DQ):
    """DQ's bins with shares that follow the budget (docs/selection.md; beyond the papers).

    Args:
        n_bins, precision, block_size: as :class:`~dsquant.methods.DQ`.
        skew: how much the shares lean to the early bins (> 0) or the late bins (< 0): bin k's
            weight is ``|B_k| exp(skew (1 - 2k / (K - 1)))``; ``"auto"`` (default) sets it from
            the per-class budget (:func:`budget_rule`).
        drop_last: give the last bin (the greedy's remainder) nothing; ``"auto"`` by the rule.
        order: ``"uniform"`` draws inside a (bin, class) cell as DQ does; ``"greedy"`` takes the
            greedy's first picks (the last bin, never ranked, is still drawn); ``"herding"``
            takes a cell's herding picks towards the cell's mean, in the embedding's features
            (:func:`dsquant.core.baselines.herding_cell_rank`; every bin, the last included);
            ``"auto"`` by the rule.

    With ``skew=0, drop_last=False, order="uniform"`` the indices are DQ's, to the bit.

    Raises:
        ValueError: naming the parameter, on a bad value.
    """

    name = "dq-budget"
    summary = "DQ's bins, shares that follow the budget: herding picks of the typical bins at small budgets, DQ at large (dsquant)"

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
            raise ValueError(f"order: expected 'uniform', 'greedy', 'herding' or 'auto', got {order!r}")
        self.skew, self.drop_last, self.order = skew, drop_last, order

    def config(self) -> dict:
        out = {**super().config(), "skew": self.skew, "drop_last": self.drop_last, "order": self.order}
        if "auto" in (self.skew, self.drop_last, self.order):
            out["rule"] = RULE_VERSION  # results of an older auto rule are not this method's
        return out

    def settings(self, n_selected: int, n_classes: int, embedding: str = "proxy") -> dict:
        """The skew, drop_last and order used for ``n_selected`` samples over ``n_classes``
        classes: the given ones, ``"auto"`` ones from :func:`budget_rule` (``embedding``:
        ``"proxy"`` or ``"pretrained"``)."""
        auto = budget_rule(n_selected / max(1, n_classes), embedding)
        return {
            "skew": auto["skew"] if self.skew == "auto" else float(self.skew),
            "drop_last": auto["drop_last"] if self.drop_last == "auto" else self.drop_last,
            "order": auto["order"] if self.order == "auto" else self.order,
        }

    def select(self, ctx: Context) -> Selection:
        n = len(ctx.dataset)
        total = budget(ctx.ratio, n)
        n_classes = 1 if ctx.labels is None else len(np.unique(ctx.labels))
        from ..embed import ProxyEncoder

        ctx.embedding()
        kind = "proxy" if isinstance(ctx.encoder, ProxyEncoder) else "pretrained"
        s = self.settings(total, n_classes, kind)
        greedy = s["order"] == "greedy"
        out = self.bins(ctx, return_rank=greedy)
        bins, rank = out if greedy else (out, None)
        counts = skewed_bin_counts([len(b) for b in bins], total, s["skew"], s["drop_last"])
        if s["order"] == "herding":
            rank = ctx.timed("sample", herding_cell_rank, ctx.embedding().features, bins, counts, ctx.labels)
        indices = ctx.timed("sample", sample_with_counts, bins, counts, ctx.labels, ctx.seed, rank)
        record = {**s, "per_class": round(total / max(1, n_classes), 3), "embedding": kind, "rule": RULE_VERSION, "counts": counts.tolist()}
        return Selection(indices, bins, record)

    @classmethod
    def report(cls, manifest: dict) -> list[str]:
        r = manifest.get(cls.name)
        if not r:
            return []
        return ["", f"  dq-budget: skew {r['skew']:.3g}, drop last bin {r['drop_last']}, order {r['order']} ({r['per_class']} per class, {r.get('embedding', 'proxy')} rule {r.get('rule', 1)})"]


class HerdingDrop(DQ):
    """Herding per class over DQ's bins but the last (docs/selection.md, ``herding-drop``;
    beyond the papers; :func:`dsquant.core.baselines.herding_drop_last`).

    DQ's last bin is what the greedy GraphCut never picked: a class's outliers, atypical and
    mislabelled samples. At small budgets herding's picks of the typical samples train better
    than random, and leaving the remainder out first keeps an outlier from being picked to pull
    the running mean towards it. Deterministic given the bins (the seed is not used).

    Args:
        n_bins, precision, block_size: as :class:`~dsquant.methods.DQ` (K = 1 is herding).

    Raises:
        ValueError: naming the parameter, on a bad value.
    """

    name = "herding-drop"
    summary = "herding per class over DQ's bins but the last (the GraphCut's remainder: outliers) (dsquant)"

    def select(self, ctx: Context) -> Selection:
        total = budget(ctx.ratio, len(ctx.dataset))
        bins = self.bins(ctx)
        indices = ctx.timed("sample", herding_drop_last, ctx.embedding().features, bins, total, ctx.labels)
        return Selection(indices, bins)
