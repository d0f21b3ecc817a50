"""Coreset baselines that need only an embedding, as selection methods (issue 13). The
algorithms are in :mod:`dsquant.core.baselines`; these classes connect them to a run: they take
the run's embedding (the encoder's penultimate features, ``Embedding.features``), its labels (the
budget is split over the classes as :func:`dsquant.sample_uniform` splits it) and its seed.

Baselines that need training dynamics (EL2N, GraNd, forgetting, uncertainty, CCS) come with the
training hooks of the one training loop (issue 12); their scores are in the core already.
"""

from __future__ import annotations

from ..core import baselines as B
from ..core.sampling import budget
from .base import Context, Selection, SelectionMethod, check_int

__all__ = ["FacilityLocation", "Herding", "KCenterGreedy", "ModerateDS", "Prototypes", "TypiClust"]

_METRICS = ("cosine", "euclidean")


def _features(ctx: Context):
    return ctx.embedding().features


class KCenterGreedy(SelectionMethod):
    """k-center greedy in the embedding, per class (Sener & Savarese, ICLR 2018, Algorithm 1;
    :func:`dsquant.core.baselines.kcenter_greedy`): the first centre at random (the run's seed),
    then always the sample farthest from the centres picked."""

    name = "kcenter"
    summary = "k-center greedy in the embedding (Sener & Savarese 2018)"

    def select(self, ctx: Context) -> Selection:
        n = budget(ctx.ratio, len(ctx.dataset))
        return Selection(ctx.timed("sample", B.kcenter_greedy, _features(ctx), n, seed=ctx.seed, labels=ctx.labels))


class Herding(SelectionMethod):
    """Herding, per class (Welling 2009; the running-mean rule of iCaRL, Rebuffi et al. 2017;
    :func:`dsquant.core.baselines.herding`): picks whose mean stays closest to the class mean.
    Deterministic (the seed is not used)."""

    name = "herding"
    summary = "herding: running mean closest to the class mean (Welling 2009)"

    def select(self, ctx: Context) -> Selection:
        n = budget(ctx.ratio, len(ctx.dataset))
        return Selection(ctx.timed("sample", B.herding, _features(ctx), n, ctx.labels))


class FacilityLocation(SelectionMethod):
    """Submodular facility location maximised greedily, per class (Mirzasoleiman et al., CRAIG,
    ICML 2020; :func:`dsquant.core.baselines.facility_location`). Memory: one class's similarity
    matrix (n_c^2 x 4 bytes).

    Args:
        metric: ``"cosine"`` (similarity 0.5 + 0.5 cos, as DQ's) or ``"euclidean"``.
    """

    name = "facility-location"
    summary = "submodular facility location, lazy greedy (CRAIG, Mirzasoleiman et al. 2020)"

    def __init__(self, metric: str = "cosine") -> None:
        if metric not in _METRICS:
            raise ValueError(f"metric: expected 'cosine' or 'euclidean', got {metric!r}")
        self.metric = metric

    def config(self) -> dict:
        return {"metric": self.metric}

    def select(self, ctx: Context) -> Selection:
        n = budget(ctx.ratio, len(ctx.dataset))
        return Selection(ctx.timed("sample", B.facility_location, _features(ctx), n, ctx.labels, metric=self.metric))


class ModerateDS(SelectionMethod):
    """Moderate-DS, per class (Xia et al., ICLR 2023; :func:`dsquant.core.baselines.moderate_ds`):
    the samples whose distance to the class median is closest to the median distance."""

    name = "moderate-ds"
    summary = "Moderate-DS: distance to the class median closest to its median (Xia et al. 2023)"

    def select(self, ctx: Context) -> Selection:
        return Selection(ctx.timed("sample", B.moderate_ds, _features(ctx), ctx.ratio, ctx.labels))


class Prototypes(SelectionMethod):
    """Self-supervised prototypes, per class (Sorscher et al., NeurIPS 2022;
    :func:`dsquant.core.baselines.prototype_select`): k-means in the embedding, samples ranked by
    the distance to their centroid; ``keep="hard"`` keeps the far ones (the paper's rule when
    data is plentiful), ``"easy"`` the near ones (when it is scarce).

    Args:
        n_clusters: k-means clusters per class (>= 1).
        keep: ``"hard"`` or ``"easy"``.
        metric: ``"cosine"`` (spherical k-means) or ``"euclidean"``.
    """

    name = "prototypes"
    summary = "self-supervised prototypes: distance to the k-means centroid (Sorscher et al. 2022)"

    def __init__(self, n_clusters: int = 10, keep: str = "hard", metric: str = "cosine") -> None:
        self.n_clusters = check_int("n_clusters", n_clusters)
        if keep not in ("hard", "easy"):
            raise ValueError(f"keep: expected 'hard' or 'easy', got {keep!r}")
        if metric not in _METRICS:
            raise ValueError(f"metric: expected 'cosine' or 'euclidean', got {metric!r}")
        self.keep, self.metric = keep, metric

    def config(self) -> dict:
        return {"n_clusters": self.n_clusters, "keep": self.keep, "metric": self.metric}

    def select(self, ctx: Context) -> Selection:
        return Selection(ctx.timed("sample", B.prototype_select, _features(ctx), ctx.ratio, ctx.labels, n_clusters=self.n_clusters, seed=ctx.seed, keep=self.keep, metric=self.metric))


class TypiClust(SelectionMethod):
    """TypiClust, per class (Hacohen, Dekel & Weinshall, ICML 2022;
    :func:`dsquant.core.baselines.typiclust`): k-means into as many clusters as the class's
    quota, then the most typical sample (the smallest mean distance to its 20 nearest
    neighbours) of every cluster. Built for small budgets; the seed seeds k-means.

    Args:
        k_neighbors: neighbours of the typicality (>= 1; the paper's 20).
    """

    name = "typiclust"
    summary = "TypiClust: the most typical sample of each of budget-many k-means clusters (Hacohen et al. 2022)"

    def __init__(self, k_neighbors: int = 20) -> None:
        self.k_neighbors = check_int("k_neighbors", k_neighbors)

    def config(self) -> dict:
        return {"k_neighbors": self.k_neighbors}

    def select(self, ctx: Context) -> Selection:
        n = budget(ctx.ratio, len(ctx.dataset))
        return Selection(ctx.timed("sample", B.typiclust, _features(ctx), n, ctx.labels, seed=ctx.seed, k_neighbors=self.k_neighbors))
