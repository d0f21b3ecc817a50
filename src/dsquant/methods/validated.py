"""Choose the selection method per dataset and budget on a validation split carved from the
training set: dsquant's answer to "no one method wins everywhere" (docs/selection.md).

Measured on the test splits (docs/selection.md), ``dq-budget`` is far ahead of herding on
CIFAR-10's proxy embedding and behind it on Fashion-MNIST's, at the same budgets; which one a
dataset favours was not predictable from a rule frozen on other datasets. ``Validated`` asks the
data: it holds out a class-balanced slice of the training set (1/6 by default, seed 0), runs
every candidate method on the rest (the *pool*) at the run's per-class budget, trains a small
model on each candidate's pool selection and tests it on the held-out slice, and then runs the
first candidate on the whole training set unless another one was more than a margin better.
Nothing of a test split is read. The choice, every validation accuracy and the time spent are in the manifest.
"""

from __future__ import annotations

import time

import numpy as np

from ..core.sampling import budget, validation_indices
from .base import Context, Selection, SelectionMethod, check_int

__all__ = ["Validated"]

VERSION = 1  # of the validation protocol: cached choices of another version are not reused


class _PoolContext(Context):
    """The run's context restricted to the pool: the same encoder, ``emb`` the rows of the
    run's embedding that belong to the pool (nothing is embedded or trained again)."""

    def __init__(self, ctx: Context, pool, emb, ratio: float, seed: int) -> None:
        super().__init__(pool, ratio, seed, make_encoder=lambda: ctx.encoder, embed=lambda *a, **k: (emb, dict(ctx.embedding_record)), cache=None, device=ctx.device, progress=False, proxy_seed=ctx.proxy_seed, generate_bins=ctx.generate_bins)


class Validated(SelectionMethod):
    """The best of ``candidates`` on a validation split of the training set, then that
    candidate on the whole set (docs/selection.md, "validated"; beyond the papers).

    For a run of M samples over C classes (m = M / C per class):

    1. a class-balanced ``fraction`` of every class is held out (``validation_indices``, seed
       ``split_seed``); the rest is the pool;
    2. every candidate selects m per class from the pool, on the pool's rows of the run's
       embedding (the encoder is not trained again);
    3. on images, a model ``arch`` of the benchmark's ``preset`` trains on each selection, one
       run per seed 0 .. ``n_seeds`` - 1, and is tested on the held-out slice
       (:func:`dsquant.evaluate.train_and_test`); on text and given features, a logistic
       regression on the embedding (:func:`dsquant.evaluate.text.logreg_accuracy`);
    4. the first candidate (the incumbent, ``dq-budget`` by default) selects from the whole
       training set with the run's seed, unless the best of the others has a mean validation
       accuracy more than ``margin`` points above the incumbent's: then that one does.

    The first candidate is used unvalidated (:meth:`skip_reason`, recorded in the manifest) at
    ``max_per_class`` or more per class (the pruning regime, where training is costly and
    ``dq-budget`` is DQ), on unlabelled data, on streamed images and where classes are too small
    to hold a split out. The choice depends
    on the embedding and the budget only, so it is cached with them (``kind`` ``validation``):
    a benchmark's seeds validate once.

    Args:
        candidates: registered method names, at least one; methods that read pixels or train
            (ADQ, the training-dynamics scores) are refused.
        n_seeds: validation trainings per candidate (seeds 0 .. n_seeds - 1).
        margin: points of mean validation accuracy by which another candidate must beat the
            first to replace it, in [0, 100) (default 1: the validation model, an MLP, is not
            the model users train, and differences within about a point were noise on
            CIFAR-10's and Fashion-MNIST's validation splits, docs/selection.md).
        fraction: share of every class held out, in (0, 1).
        split_seed: seed of the held-out slice.
        arch, preset: the model and training preset of step 3 (images).
        max_per_class: per-class budget from which the first candidate is used unvalidated.
        n_bins, precision, block_size: passed to the candidates that take them.

    Raises:
        ValueError: naming the parameter, on a bad value; from :meth:`check`, what the
            candidates' checks raise on the whole dataset (e.g. fewer samples than bins).
    """

    name = "validated"
    summary = "dq-budget, or herding where it trains better on a validation split of the training set, per dataset and budget (dsquant)"
    # on images in memory it trains on the pool's pixels; streamed images and unlabelled data
    # take the first candidate unvalidated (skip_reason), so it runs wherever that one does
    needs_pixels = False

    def __init__(self, candidates=("dq-budget", "herding"), n_seeds: int = 5, margin: float = 1.0, fraction: float = 1 / 6, split_seed: int = 0, arch: str = "mlp", preset: str = "lowbudget", max_per_class: float = 500.0, n_bins: int = 10, precision: str = "float32", block_size: int | None = None) -> None:
        from . import METHODS, make_method

        if isinstance(candidates, str) or not candidates or len(set(candidates)) != len(candidates):
            raise ValueError(f"candidates: expected distinct method names, at least one, got {candidates!r}")
        for c in candidates:
            if c not in METHODS or c == self.name:
                raise ValueError(f"candidates: {c!r} is not a method to validate; expected names from {', '.join(m for m in METHODS if m != self.name)}")
            if METHODS[c].needs_pixels:
                raise ValueError(f"candidates: {c!r} trains or reads pixels itself; validated takes embedding methods (dq, dq-budget, herding, ...)")
        self.candidates = tuple(candidates)
        self.n_seeds = check_int("n_seeds", n_seeds)
        try:
            ok = 0.0 < float(fraction) < 1.0
        except (TypeError, ValueError):
            ok = False
        if not ok or isinstance(fraction, bool):
            raise ValueError(f"fraction: expected a share in (0, 1), got {fraction!r}")
        self.fraction = float(fraction)
        if isinstance(margin, bool) or not (isinstance(margin, (int, float)) and 0 <= margin < 100):
            raise ValueError(f"margin: expected points of accuracy in [0, 100), got {margin!r}")
        self.margin = float(margin)
        self.split_seed = check_int("split_seed", split_seed, low=0)
        from ..evaluate import ARCHITECTURES
        from ..evaluate.harness import PRESETS

        if arch not in ARCHITECTURES:
            raise ValueError(f"arch: expected one of {', '.join(ARCHITECTURES)}, got {arch!r}")
        if preset not in PRESETS:
            raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
        self.arch, self.preset = arch, preset
        if isinstance(max_per_class, bool) or not (isinstance(max_per_class, (int, float)) and max_per_class > 0):
            raise ValueError(f"max_per_class: expected a positive number, got {max_per_class!r}")
        self.max_per_class = float(max_per_class)
        self.n_bins = check_int("bins", n_bins)
        self._methods = [make_method(c, n_bins=n_bins, precision=precision, block_size=block_size) for c in self.candidates]

    def config(self) -> dict:
        return {
            "n_bins": self.n_bins,
            "candidates": {m.name: m.config() for m in self._methods},
            "n_seeds": self.n_seeds, "margin": self.margin, "fraction": self.fraction, "split_seed": self.split_seed,
            "arch": self.arch, "preset": self.preset, "max_per_class": self.max_per_class, "version": VERSION,
        }

    def check(self, dataset) -> None:
        for m in self._methods:
            m.check(dataset)

    def skip_reason(self, dataset, ratio: float) -> str | None:
        """Why the run cannot (or need not) be validated, or None: no labels, streamed images
        (the validation model trains in memory), a per-class budget at or above
        ``max_per_class``, or classes too small to hold out a split that the candidates can
        still bin. The first candidate is then used as it is."""
        if getattr(dataset, "labels", None) is None:
            return "no labels: nothing to validate against"
        if getattr(dataset, "streamed", False):
            return "streamed images: the validation model trains on images in memory"
        per_class = budget(ratio, len(dataset)) / len(np.unique(dataset.labels))
        if per_class >= self.max_per_class:
            return f"{per_class:.4g} per class, at or above max_per_class {self.max_per_class:g}"
        try:
            held = validation_indices(dataset.labels, self.fraction, self.split_seed, dataset.classes)
            rows = np.setdiff1d(np.arange(len(dataset)), held)
            pool = _Rows(dataset, rows)  # the checks read labels and sizes: no copy of the images
            for m in self._methods:
                m.check(pool)
        except ValueError as exc:
            return f"no validation split: {exc}"
        if budget(ratio, len(dataset)) > len(rows):
            return f"{per_class:.4g} per class does not fit the validation pool ({len(rows)} samples)"
        return None

    def validate(self, ctx: Context) -> dict:
        """Every candidate's validation accuracies at the run's per-class budget:
        ``{"accuracy": {name: [per seed]}, "mean": {name: mean}, "chosen": name, "pool": P,
        "validation": V, "per_class": m, "seconds": s}``."""
        n = len(ctx.dataset)
        n_classes = len(np.unique(ctx.labels))
        per_class = budget(ctx.ratio, n) / n_classes
        held = validation_indices(ctx.labels, self.fraction, self.split_seed)
        rows = np.setdiff1d(np.arange(n), held)
        pool, val = _subset(ctx.dataset, rows), _subset(ctx.dataset, held)
        ratio = per_class * n_classes / len(rows)
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio: {per_class:g} per class does not fit the validation pool ({len(rows)} samples); use a smaller ratio or method dq-budget")
        images = getattr(ctx.dataset, "kind", "") == "images"
        from ..embed.base import Embedding

        full = ctx.embedding()
        features = np.asarray(full.features)
        pool_emb = Embedding(features[rows], None if full.delta is None else full.delta[rows], full.kind, full.info)
        t = time.perf_counter()
        bar = None
        if ctx.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(self._methods) * self.n_seeds, desc="validate", unit="run", leave=False)
        acc: dict[str, list[float]] = {}
        last = None
        try:
            for method in self._methods:
                acc[method.name] = []
                for s in range(self.n_seeds):
                    idx = method.select(_PoolContext(ctx, pool, pool_emb, ratio, s)).indices
                    if images:
                        from ..evaluate import train_and_test

                        a = train_and_test(pool, idx, val, self.arch, self.preset, seed=s, device=ctx.device)["accuracy"]
                    elif s > 0 and np.array_equal(idx, last):
                        a = acc[method.name][-1]  # the same selection: the regression is deterministic
                    else:
                        from ..evaluate.text import logreg_accuracy

                        a = logreg_accuracy(pool_emb.features[idx], pool.labels[idx], features[held], val.labels, seed=s)
                    last = idx
                    acc[method.name].append(float(a))
                    if bar is not None:
                        bar.update()
        finally:
            if bar is not None:
                bar.close()
        mean = {k: float(np.mean(v)) for k, v in acc.items()}
        first = self.candidates[0]
        rival = max(self.candidates[1:], key=lambda k: (mean[k], -self.candidates.index(k)), default=None)
        chosen = rival if rival is not None and 100 * (mean[rival] - mean[first]) > self.margin else first
        return {"accuracy": acc, "mean": mean, "chosen": chosen, "margin": self.margin, "pool": int(len(rows)), "validation": int(len(held)), "per_class": round(per_class, 3), "seconds": round(time.perf_counter() - t, 2)}

    def select(self, ctx: Context) -> Selection:
        from ..cache import Cache, hash_key

        n = len(ctx.dataset)
        reason = self.skip_reason(ctx.dataset, ctx.ratio)
        if reason is not None:
            result = {"chosen": self.candidates[0], "validated": False, "reason": reason}
        else:
            ctx.embedding()
            key = ctx.embedding_record.get("key")
            key = None if key is None else hash_key({"embedding": key, "n": n, "budget": budget(ctx.ratio, n), "method": self.config()})
            hit = ctx.cache.load("validation", key, {"result": ("U", 0)}) if ctx.cache is not None and key is not None else None
            if hit is not None:
                result = {**Cache.unpack_json(hit["result"]), "cached": True}
            else:
                result = ctx.timed("validate", self.validate, ctx)
                if ctx.cache is not None and key is not None:
                    ctx.cache.save("validation", key, {"result": Cache.pack_json(result)})
                result = {**result, "cached": False}
            result["validated"] = True
        method = self._methods[self.candidates.index(result["chosen"])]
        selection = method.select(ctx)
        record = {**result, "record": selection.record}
        return Selection(selection.indices, selection.bins, record)

    @classmethod
    def report(cls, manifest: dict) -> list[str]:
        r = manifest.get(cls.name)
        if not r:
            return []
        from . import METHODS

        if not r.get("validated"):
            lines = ["", f"  validated: {r['chosen']}, not validated ({r.get('reason', 'at or above max_per_class')})"]
        else:
            means = ", ".join(f"{k} {100 * v:.2f}" for k, v in r["mean"].items())
            lines = ["", f"  validated: chose {r['chosen']} ({r['per_class']} per class; validation accuracy, mean of {len(next(iter(r['accuracy'].values())))} runs: {means}; pool {r['pool']}, held out {r['validation']})"]
        chosen = METHODS.get(r["chosen"])
        if chosen is not None and r.get("record"):  # the chosen method's own lines (dq-budget: its settings)
            lines += chosen.report({chosen.name: r["record"]})
        return lines


class _Rows:
    """What a candidate reads of a non-image dataset restricted to some rows (labels, classes,
    length): text and given features are evaluated on the embedding, never on the records."""

    def __init__(self, dataset, rows: np.ndarray) -> None:
        self.labels = np.asarray(dataset.labels)[rows]
        self.classes = list(dataset.classes)
        self.source = dataset.source
        self.kind = getattr(dataset, "kind", "features")
        self._n = len(rows)

    def __len__(self) -> int:
        return self._n


def _subset(dataset, rows: np.ndarray):
    """``dataset`` restricted to ``rows``: an image dataset of its own (models train on it), or
    the labels of the rows."""
    if getattr(dataset, "kind", "") == "images" and hasattr(dataset, "subset"):
        return dataset.subset(rows)
    return _Rows(dataset, rows)
