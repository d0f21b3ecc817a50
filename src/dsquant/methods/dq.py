"""Random, DQ and ADQ: the selection methods of the two papers and their baseline."""

from __future__ import annotations

import numpy as np

from ..core.sampling import sample_uniform
from .base import Context, Selection, SelectionMethod, check_int, check_unit

__all__ = ["ADQ", "DQ", "Random"]

PRECISIONS = ("float32", "float64")


class Random(SelectionMethod):
    """Class-balanced random sampling: every class gives ``round``-ed ``ratio`` of itself, drawn
    uniformly with the run's seed (ALGORITHMS.md section 4, one bin). The baseline."""

    name = "random"
    summary = "class-balanced random sampling (the baseline; no embedding)"
    needs_embedding = False

    def select(self, ctx: Context) -> Selection:
        n = len(ctx.dataset)
        indices = ctx.timed("sample", sample_uniform, [np.arange(n)], ctx.ratio, ctx.labels, ctx.seed)
        return Selection(indices)


class DQ(SelectionMethod):
    """Dataset Quantization (Zhou et al., ICCV 2023): K bins per class by repeated greedy
    GraphCut over the embedding, then the same fraction ``ratio`` of every bin
    (ALGORITHMS.md sections 2-4; :func:`dsquant.generate_bins`, :func:`dsquant.sample_uniform`).

    Args:
        n_bins: K, the number of bins (>= 1, at most the size of the smallest class).
        precision: ``"float32"`` or ``"float64"`` similarity rows (the bins are the exact
            greedy's either way; float32 is faster).
        block_size: similarity rows held per class (default: as many as fit in 2 GiB).

    Raises:
        ValueError: naming the parameter, on a bad value; from :meth:`check`, when a class has
            fewer samples than bins.
    """

    name = "dq"
    summary = "GraphCut bins + the same fraction of every bin (Dataset Quantization, ICCV 2023)"

    def __init__(self, n_bins: int = 10, precision: str = "float32", block_size: int | None = None) -> None:
        self.n_bins = check_int("bins", n_bins)
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected 'float32' or 'float64', got {precision!r}")
        self.precision = precision
        self.block_size = None if block_size is None else check_int("block_size", block_size)

    def config(self) -> dict:
        return {"n_bins": self.n_bins, "precision": self.precision, "block_size": self.block_size}

    def check(self, dataset) -> None:
        labels, n, k = dataset.labels, len(dataset), self.n_bins
        if labels is None:
            if n < k:
                raise ValueError(f"bins: {k} bins but only {n} samples")
            return
        counts = np.bincount(labels, minlength=len(dataset.classes))
        present = counts[counts > 0]
        if present.min() < k:
            c = int(np.flatnonzero(counts == present.min())[0])
            raise ValueError(
                f"bins: {k} bins but class '{dataset.classes[c]}' has only {int(present.min())} samples; "
                f"use at most {int(present.min())} bins"
            )

    def bins(self, ctx: Context, return_rank: bool = False):
        """The K bins of the run's embedding (and, with ``return_rank``, every sample's greedy
        step: :func:`dsquant.generate_bins`), with a progress bar; NaN/inf features name their
        source."""
        from ..data import DataError

        emb = ctx.embedding()
        bar = None
        if ctx.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(emb), desc="bins", unit="sample", leave=False)
        try:
            return ctx.timed(
                "bins",
                ctx.generate_bins,
                emb.for_binning(),
                self.n_bins,
                ctx.labels,
                block_size=self.block_size,
                dtype=np.float32 if self.precision == "float32" else np.float64,
                progress=bar.update if bar is not None else None,
                return_rank=return_rank,
            )
        except ValueError as exc:
            if "NaN or inf" not in str(exc):
                raise
            source = (ctx.encoder.config() if ctx.encoder is not None else {}).get("path", ctx.dataset.source)
            raise DataError(f"{source}: {exc}") from None
        finally:
            if bar is not None:
                bar.close()

    def select(self, ctx: Context) -> Selection:
        bins = self.bins(ctx)
        return Selection(ctx.timed("sample", sample_uniform, bins, ctx.ratio, ctx.labels, ctx.seed), bins)


class ADQ(DQ):
    """Adaptive Dataset Quantization (Li et al., AAAI 2025): DQ's bins, each bin's share of the
    budget following its importance (texture representativeness + contrastive diversity), mixed
    with its size by ``alpha`` (ALGORITHMS.md section 5; :func:`dsquant.importance_scores`,
    :func:`dsquant.sample_adaptive`). With ``alpha=0`` it is DQ, counts and indices.

    Args:
        n_bins, precision, block_size: as :class:`DQ`.
        alpha: weight of bin importance against bin size, in [0, 1] (paper: 0.6).
        representativeness: ``"texture"`` (images, default), ``"embedding"``, or per-sample
            scores (an (N,) array or a ``.npy`` path).
        diversity_encoder: ``"simclr"`` (default) or ``"proxy"``.
        simclr_options: options of :class:`dsquant.embed.diversity.SimCLREncoder`.

    Raises:
        ValueError: naming the parameter, on a bad value.
    """

    name = "adq"
    summary = "DQ's bins, per-bin shares from importance and size (Adaptive DQ, AAAI 2025)"
    needs_pixels = True  # on images: texture representativeness and the contrastive encoder

    def __init__(
        self,
        n_bins: int = 10,
        alpha: float = 0.6,
        representativeness=None,
        diversity_encoder: str = "simclr",
        simclr_options: dict | None = None,
        precision: str = "float32",
        block_size: int | None = None,
    ) -> None:
        from ..adq import DIVERSITY_ENCODERS

        super().__init__(n_bins, precision, block_size)
        self.alpha = check_unit("alpha", alpha)
        if diversity_encoder not in DIVERSITY_ENCODERS:
            raise ValueError(f"diversity_encoder: expected one of {', '.join(DIVERSITY_ENCODERS)}, got {diversity_encoder!r}")
        self.diversity_encoder = diversity_encoder
        self.representativeness = representativeness
        self.simclr_options = dict(simclr_options or {})

    def config(self) -> dict:
        rep = self.representativeness
        return {
            **super().config(),
            "alpha": self.alpha,
            "representativeness": rep if rep is None or isinstance(rep, str) else ("scores" if not hasattr(rep, "__fspath__") else str(rep)),
            "diversity_encoder": self.diversity_encoder,
        }

    def check(self, dataset) -> None:
        from ..adq import check_representativeness

        super().check(dataset)
        # a scores file is read and checked now, not after the embedding
        self.representativeness = check_representativeness(self.representativeness, dataset)

    def select(self, ctx: Context) -> Selection:
        from ..adq import bin_scores
        from ..core.scores import adaptive_counts, sample_adaptive

        bins = self.bins(ctx)
        emb = ctx.embedding()
        proxy = ctx.proxy()
        scores = ctx.timed(
            "scores",
            bin_scores,
            ctx.dataset,
            bins,
            features=emb.features,
            labels=ctx.labels,
            representativeness=self.representativeness,
            diversity_encoder=self.diversity_encoder,
            proxy=proxy,
            seed=ctx.proxy_seed,
            cache=ctx.cache,
            device=ctx.device,
            progress=ctx.progress,
            simclr_options=self.simclr_options,
        )
        shares, counts = adaptive_counts([len(b) for b in bins], ctx.ratio, scores["importance"], self.alpha)
        indices = ctx.timed("sample", sample_adaptive, bins, ctx.ratio, scores["importance"], self.alpha, ctx.labels, ctx.seed)
        record = {
            "alpha": self.alpha,
            **scores["info"],
            "per_bin": [
                {"bin": k, "size": len(b), "rep": float(scores["rep"][k]), "div": float(scores["div"][k]), "importance": float(scores["importance"][k]), "share": float(shares[k]), "count": int(counts[k])}
                for k, b in enumerate(bins)
            ],
        }
        return Selection(indices, bins, record)

    @classmethod
    def report(cls, manifest: dict) -> list[str]:
        adq = manifest.get(cls.name)
        if not adq:
            return []
        lines = [
            "",
            f"  ADQ (alpha {adq['alpha']}): Rep = {adq['representativeness']}; Div = {adq['diversity']}",
            f"  {'bin':>3} {'size':>7} {'Rep':>9} {'Div':>9} {'I_hat':>7} {'r':>7} {'q':>6}",
        ]
        for b in adq["per_bin"]:
            lines.append(f"  {b['bin']:>3} {b['size']:>7} {b['rep']:>9.4f} {b['div']:>9.4f} {b['importance']:>7.4f} {b['share']:>7.4f} {b['count']:>6}")
        return lines
