"""Choose the selection method per dataset and budget on a validation split carved from the
training set: dsquant's answer to "no one method wins everywhere" (docs/selection.md).

Measured on the test splits (docs/selection.md), ``dq-budget`` is far ahead of herding on
CIFAR-10's proxy embedding and behind it on Fashion-MNIST's, at the same budgets; which one a
dataset favours was not predictable from a rule frozen on other datasets. ``Validated`` asks the
data: it holds out a class-balanced slice of the training set (1/6 by default, seed 0), runs
every candidate method on the rest (the *pool*) at the run's per-class budget, trains a small
model on each candidate's pool selection and tests it on the held-out slice, and then runs the
first candidate (DQ, which ties random by design) on the whole training set unless another one
beat it on the held-out slice with a paired 95 % interval above zero. From ``max_per_class`` per
class (the pruning regime) the candidates are DQ and the hard-first scores EL2N and CCS (on
images below 90 % keep, CCS keeping the easier half too), and the model trains with the
``pruning`` preset. Nothing of a test split is read. The choice, every
validation accuracy and the time spent are in the manifest.
"""

from __future__ import annotations

import time

import numpy as np

from ..core.sampling import budget, validation_indices
from .base import Context, Selection, SelectionMethod, check_int

__all__ = ["Validated", "choose"]

CCS_FROM = 100.0  # per class, on images: CCS with the large cut joins the small-budget candidates (version 4)

RULES = ("paired", "margin")  # how validation accuracies become a choice (:func:`choose`)

VERSION = 5  # of the validation protocol: cached choices of another version are not reused
# (2: the pruning regime is validated too, with its own candidates and the paired rule; 3: small
# budgets too take the paired rule, with DQ as the incumbent and herding-drop as a candidate,
# chosen by nested validation, benchmarks/validation_rule.py; 4: from ccs_from per class on
# images, CCS with a large hard cut (ccs_cutoff) joins the small-budget candidates; 5: and the
# pruning regime's, wherever its cut there is above the pruning CCS's, labelled ccs(cutoff=...))


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
    2. every candidate selects m per class from the pool (in the pruning regime, below: the
       run's keep ratio of the pool), on the pool's rows of the run's embedding (the encoder is
       not trained again);
    3. on images, a model ``arch`` of the benchmark's ``preset`` trains on each selection, one
       run per seed 0 .. ``n_seeds`` - 1, and is tested on the held-out slice
       (:func:`dsquant.evaluate.train_and_test`); on text and given features, a logistic
       regression on the embedding (:func:`dsquant.evaluate.text.logreg_accuracy`);
    4. the first candidate (the incumbent, ``dq`` by default: it ties random by design)
       selects from the whole training set with the run's seed, unless a rival's paired gain
       over it (the same training seed, rival minus incumbent, over the ``n_seeds`` trainings)
       has a 95 % t interval above zero; of several such rivals the one with the highest mean
       (:func:`choose`, ``rule="paired"``). ``rule="margin"`` (version 2's) takes the best rival
       when its mean is more than ``margin`` points above the incumbent's instead.

    **The pruning regime** (``max_per_class`` or more per class) has its own candidates,
    ``pruning_candidates`` (default ``dq-budget``, which is DQ there, then ``el2n`` and ``ccs``:
    the hard-first scores that beat random at large keep ratios, docs/evaluation.md), its own
    training preset ``pruning_preset``, and always the paired rule (differences there are
    tenths of a point, under any fixed margin). With one seed there is no interval, and where
    every paired difference is the same (seed-independent selections scored by the
    deterministic regression of text and features) the interval is a point: the incumbent
    stays in both cases. The
    training-dynamics candidates score the whole training set once (:meth:`dynamics
    <dsquant.methods.dynamics.EL2N.dynamics>`, cached) and select from the pool on the pool's
    rows of those scores, as the embedding candidates do on the pool's rows of the embedding.

    **Hundreds per class** (version 4): on images, from ``ccs_from`` per class, the small-budget
    candidates also include CCS keeping the easier samples: class-balanced, the ``ccs_cutoff``
    share of the hardest by EL2N cut (the paper's beta; it raises beta with the pruning rate),
    the rest sampled by strata (:class:`~dsquant.methods.CCS`), labelled
    ``ccs(cutoff=0.5)`` in the manifest. On the validation splits at 5 % keep it was 2.8 points
    above DQ on CIFAR-10 and 1.5 below on Fashion-MNIST (docs/selection.md): dataset-dependent,
    so validated. It costs the EL2N dynamics (minutes; cached). Version 5: it is a pruning
    candidate too (images, from ``ccs_from`` per class), wherever its cut at the run's keep
    ratio (``min(ccs_cutoff, 1 - ratio)``) is above that of every CCS among
    ``pruning_candidates`` (so below 90 % keep with the defaults: elsewhere it would repeat
    theirs).

    ``fallback`` (default ``dq-budget``) is used unvalidated (:meth:`skip_reason`, recorded in
    the manifest) on unlabelled data, on streamed images, where classes are too small to hold a
    split out, and in the pruning regime when ``pruning_candidates`` is empty. The choice depends
    on the embedding and the budget only (and the ``proxy_seed`` the training-dynamics
    candidates train with), so it is cached with them (``kind`` ``validation``): a benchmark's
    seeds validate once.

    Args:
        candidates: registered method names, the incumbent first, at least one; methods that
            read pixels or train (ADQ, the training-dynamics scores) are refused.
        n_seeds: validation trainings per candidate (seeds 0 .. n_seeds - 1).
        rule: ``"paired"`` (default) or ``"margin"``: how small budgets choose (:func:`choose`;
            the pruning regime is always paired). Chosen by nested validation, no test split
            (docs/selection.md, ``benchmarks/validation_rule.py``).
        margin: points of mean validation accuracy by which another candidate must beat the
            first to replace it under ``rule="margin"``, in [0, 100).
        fallback: the registered method used where nothing can be validated (above).
        fraction: share of every class held out, in (0, 1).
        split_seed: seed of the held-out slice.
        arch, preset: the model and training preset of step 3 (images).
        max_per_class: per-class budget from which the pruning regime's candidates, preset and
            rule apply.
        pruning_candidates: registered names, the incumbent first; embedding methods and the
            training-dynamics scores (``el2n``, ``ccs``, ...). Empty or None: the pruning regime
            takes ``fallback`` unvalidated (version 1's behaviour).
        pruning_preset: the training preset of step 3 in the pruning regime (images).
        ccs_from: per-class budget from which CCS with the large cut is a candidate (images
            only; in the pruning regime where its cut is the largest); None: never.
        ccs_cutoff: that CCS's hard cutoff rate beta, in [0, 1).
        n_bins, precision, block_size: passed to the candidates that take them.

    Raises:
        ValueError: naming the parameter, on a bad value; from :meth:`check`, what the
            candidates' checks raise on the whole dataset (e.g. fewer samples than bins).
    """

    name = "validated"
    summary = "DQ, or a candidate that trains better on a validation split of the training set with a paired interval above zero (dq-budget, herding, herding-drop at small budgets, CCS with a large cut from 100 per class; EL2N, CCS and that CCS when pruning), per dataset and budget (dsquant)"
    # on images in memory it trains on the pool's pixels (and, pruning, the dynamics on the whole
    # set's); streamed images and unlabelled data take ``fallback`` unvalidated
    # (skip_reason), so it runs wherever that one does
    needs_pixels = False

    def __init__(self, candidates=("dq", "dq-budget", "herding", "herding-drop"), n_seeds: int = 5, rule: str = "paired", margin: float = 1.0, fallback: str = "dq-budget", fraction: float = 1 / 6, split_seed: int = 0, arch: str = "mlp", preset: str = "lowbudget", max_per_class: float = 500.0, pruning_candidates=("dq-budget", "el2n", "ccs"), pruning_preset: str = "pruning", ccs_from: float | None = CCS_FROM, ccs_cutoff: float = 0.5, n_bins: int = 10, precision: str = "float32", block_size: int | None = None) -> None:
        from . import make_method

        self.candidates = _check_candidates("candidates", candidates, self.name, dynamics=False)
        self.fallback = _check_candidates("fallback", (fallback,), self.name, dynamics=False)[0]
        self.pruning_candidates = _check_candidates("pruning_candidates", pruning_candidates, self.name, dynamics=True) if pruning_candidates is not None and len(pruning_candidates) else ()
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
        if rule not in RULES:
            raise ValueError(f"rule: expected one of {', '.join(RULES)}, got {rule!r}")
        self.rule = rule
        self.split_seed = check_int("split_seed", split_seed, low=0)
        from ..evaluate import ARCHITECTURES
        from ..evaluate.harness import PRESETS

        if arch not in ARCHITECTURES:
            raise ValueError(f"arch: expected one of {', '.join(ARCHITECTURES)}, got {arch!r}")
        for what, p in (("preset", preset), ("pruning_preset", pruning_preset)):
            if p not in PRESETS:
                raise ValueError(f"{what}: expected one of {', '.join(PRESETS)}, got {p!r}")
        self.arch, self.preset, self.pruning_preset = arch, preset, pruning_preset
        if isinstance(max_per_class, bool) or not (isinstance(max_per_class, (int, float)) and max_per_class > 0):
            raise ValueError(f"max_per_class: expected a positive number, got {max_per_class!r}")
        self.max_per_class = float(max_per_class)
        self.n_bins = check_int("bins", n_bins)
        opts = {"n_bins": n_bins, "precision": precision, "block_size": block_size}
        self._methods = [make_method(c, **opts) for c in self.candidates]
        self._fallback = next((m for m in self._methods if m.name == self.fallback), None) or make_method(self.fallback, **opts)
        self._pruning = [make_method(c, **opts) for c in self.pruning_candidates]
        if ccs_from is not None and (isinstance(ccs_from, bool) or not (isinstance(ccs_from, (int, float)) and ccs_from > 0)):
            raise ValueError(f"ccs_from: expected a positive number of samples per class or None, got {ccs_from!r}")
        self.ccs_from = None if ccs_from is None else float(ccs_from)
        self._ccs = make_method("ccs", cutoff=ccs_cutoff, balance=True)  # checks the cutoff
        self.ccs_cutoff = self._ccs.cutoff

    def config(self) -> dict:
        return {
            "n_bins": self.n_bins,
            "candidates": {m.name: m.config() for m in self._methods},
            "n_seeds": self.n_seeds, "rule": self.rule, "margin": self.margin, "fallback": self._fallback.config() | {"name": self.fallback}, "fraction": self.fraction, "split_seed": self.split_seed,
            "arch": self.arch, "preset": self.preset, "max_per_class": self.max_per_class,
            "pruning_candidates": {m.name: m.config() for m in self._pruning}, "pruning_preset": self.pruning_preset,
            "ccs_from": self.ccs_from, "ccs": self._ccs.config(), "version": VERSION,
        }

    def check(self, dataset) -> None:
        for m in [*self._methods, self._fallback]:
            m.check(dataset)

    def regime(self, dataset, ratio: float) -> str:
        """``"pruning"`` at ``max_per_class`` or more per class, else ``"lowbudget"``."""
        return "pruning" if _per_class(dataset, ratio) >= self.max_per_class else "lowbudget"

    def label(self, method) -> str:
        """A candidate's key in the manifest's accuracies and ``chosen``: its registered name,
        ``ccs(cutoff=...)`` for CCS with the large cut (the pruning regime's ``ccs`` is another)."""
        return f"ccs(cutoff={self.ccs_cutoff:g})" if method is self._ccs else method.name

    def _regime_methods(self, regime: str, dataset, ratio: float) -> list:
        """The candidates validated in ``regime`` (:meth:`regime` of ``dataset`` at ``ratio``):
        on images from ``ccs_from`` per class, CCS with the large cut too (in the pruning regime
        only where its cut at ``ratio`` is above every pruning CCS's: elsewhere it repeats one)."""
        from .dynamics import CCS

        large = self.ccs_from is not None and getattr(dataset, "kind", "") == "images" and _per_class(dataset, ratio) >= self.ccs_from
        methods = self._pruning if regime == "pruning" else self._methods
        if large and regime == "pruning":
            large = self._ccs.cutoff_for(ratio) > max((m.cutoff_for(ratio) for m in methods if isinstance(m, CCS)), default=0.0)
        return [*methods, self._ccs] if large and methods else methods

    def skip_reason(self, dataset, ratio: float) -> str | None:
        """Why the run cannot (or need not) be validated, or None: no labels, streamed images
        (the validation model trains in memory), a per-class budget at or above
        ``max_per_class`` with no ``pruning_candidates``, or classes too small to hold out a
        split that the regime's candidates can still bin. ``fallback`` is then used as it is."""
        if getattr(dataset, "labels", None) is None:
            return "no labels: nothing to validate against"
        if getattr(dataset, "streamed", False):
            return "streamed images: the validation model trains on images in memory"
        per_class = _per_class(dataset, ratio)
        regime = self.regime(dataset, ratio)
        if regime == "pruning" and not self._pruning:
            return f"{per_class:.4g} per class, at or above max_per_class {self.max_per_class:g}, and no pruning_candidates"
        try:
            held = validation_indices(dataset.labels, self.fraction, self.split_seed, dataset.classes)
            rows = np.setdiff1d(np.arange(len(dataset)), held)
            pool = _Rows(dataset, rows)  # the checks read labels and sizes: no copy of the images
            for m in self._regime_methods(regime, dataset, ratio):
                m.check(pool)
        except ValueError as exc:
            return f"no validation split: {exc}"
        if regime == "lowbudget" and budget(ratio, len(dataset)) > len(rows):
            return f"{per_class:.4g} per class does not fit the validation pool ({len(rows)} samples)"
        return None

    def split(self, ctx: Context) -> tuple:
        """``(held, rows, pool_embedding)``: the (V,) held-out and (P,) pool indices into the
        run's dataset (sorted int64; ``validation_indices`` with ``fraction`` and
        ``split_seed``), and the pool's rows of the run's embedding (nothing is embedded
        again)."""
        from ..embed.base import Embedding

        held = validation_indices(ctx.labels, self.fraction, self.split_seed)
        rows = np.setdiff1d(np.arange(len(ctx.dataset)), held)
        full = ctx.embedding()
        features = np.asarray(full.features)
        return held, rows, Embedding(features[rows], None if full.delta is None else full.delta[rows], full.kind, full.info)

    def validate(self, ctx: Context) -> dict:
        """Every candidate's validation accuracies at the run's per-class budget:
        ``{"accuracy": {name: [per seed]}, "mean": {name: mean}, "chosen": name, "regime":
        "lowbudget" | "pruning", "rule": ..., "gain": ..., "pool": P, "validation": V,
        "per_class": m, "seconds": s}``; ``"gain"``: per rival, the mean paired gain over the
        incumbent and its 95 % interval, ``[mean, low, high]`` (fractions; :func:`choose`)."""
        n = len(ctx.dataset)
        n_classes = len(np.unique(ctx.labels))
        per_class = budget(ctx.ratio, n) / n_classes
        regime = self.regime(ctx.dataset, ctx.ratio)
        methods = self._regime_methods(regime, ctx.dataset, ctx.ratio)
        preset = self.pruning_preset if regime == "pruning" else self.preset
        held, rows, pool_emb = self.split(ctx)
        pool, val = _subset(ctx.dataset, rows), _subset(ctx.dataset, held)
        # small budgets: the run's samples per class; pruning: the run's keep ratio of the pool
        ratio = ctx.ratio if regime == "pruning" else per_class * n_classes / len(rows)
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio: {per_class:g} per class does not fit the validation pool ({len(rows)} samples); use a smaller ratio or method dq-budget")
        images = getattr(ctx.dataset, "kind", "") == "images"
        from .dynamics import _DynamicsMethod

        features = np.asarray(ctx.embedding().features)
        pool_labels = np.asarray(ctx.labels)[rows]
        t = time.perf_counter()
        for method in methods:  # the whole set's dynamics, once (kept in ctx for the final selection)
            if isinstance(method, _DynamicsMethod):
                method.dynamics(ctx)
        pool_dynamics = {k: _rows_of(d, rows) for k, d in ctx.dynamics.items()}
        bar = None
        if ctx.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(methods) * self.n_seeds, desc=f"validate ({regime})", unit="run", leave=False)
        acc: dict[str, list[float]] = {}
        last = None
        try:
            for method in methods:
                name = self.label(method)
                acc[name] = []
                for s in range(self.n_seeds):
                    pctx = _PoolContext(ctx, pool, pool_emb, ratio, s)
                    pctx.dynamics.update(pool_dynamics)
                    idx = method.select(pctx).indices
                    if images:
                        from ..evaluate import train_and_test

                        a = train_and_test(pool, idx, val, self.arch, preset, seed=s, device=ctx.device)["accuracy"]
                    elif s > 0 and np.array_equal(idx, last):
                        a = acc[name][-1]  # the same selection: the regression is deterministic
                    else:
                        from ..evaluate.text import logreg_accuracy

                        a = logreg_accuracy(pool_emb.features[idx], pool_labels[idx], features[held], val.labels, seed=s)
                    last = idx
                    acc[name].append(float(a))
                    if bar is not None:
                        bar.update()
        finally:
            if bar is not None:
                bar.close()
        mean = {k: float(np.mean(v)) for k, v in acc.items()}
        names = [self.label(m) for m in methods]
        out = {"accuracy": acc, "mean": mean, "regime": regime, "preset": preset}
        rule = "paired" if regime == "pruning" else self.rule
        chosen, gain = choose(acc, names, rule, self.margin)
        out.update(gain=gain)
        if rule == "paired":
            out.update(rule="paired: a rival's 95 % interval of its gain over the incumbent above zero")
        else:
            out.update(margin=self.margin, rule=f"margin: a rival's mean more than {self.margin:g} points above the incumbent's")
        return {**out, "chosen": chosen, "pool": int(len(rows)), "validation": int(len(held)), "per_class": round(per_class, 3), "seconds": round(time.perf_counter() - t, 2)}

    def select(self, ctx: Context) -> Selection:
        from ..cache import Cache, hash_key
        from .dynamics import _DynamicsMethod

        n = len(ctx.dataset)
        reason = self.skip_reason(ctx.dataset, ctx.ratio)
        methods: list = []
        if reason is not None:
            result = {"chosen": self.fallback, "validated": False, "reason": reason}
        else:
            ctx.embedding()
            key = ctx.embedding_record.get("key")
            # the training-dynamics candidates train with the run's proxy_seed: it keys the choice too
            # and in the pruning regime the pool keeps the run's keep ratio, not only its budget;
            # the candidates' order (the first is the incumbent) is lost in the config's dict
            regime = self.regime(ctx.dataset, ctx.ratio)
            pruning = regime == "pruning"
            methods = self._regime_methods(regime, ctx.dataset, ctx.ratio)
            dyn = any(isinstance(m, _DynamicsMethod) for m in methods)
            key = None if key is None else hash_key({"embedding": key, "n": n, "budget": budget(ctx.ratio, n), "method": self.config(), "order": [list(self.candidates), list(self.pruning_candidates)], **({"proxy_seed": ctx.proxy_seed} if dyn else {}), **({"ratio": ctx.ratio} if pruning else {})})
            hit = ctx.cache.load("validation", key, {"result": ("U", 0)}) if ctx.cache is not None and key is not None else None
            if hit is not None:
                result = {**Cache.unpack_json(hit["result"]), "cached": True}
            else:
                result = ctx.timed("validate", self.validate, ctx)
                if ctx.cache is not None and key is not None:
                    ctx.cache.save("validation", key, {"result": Cache.pack_json(result)})
                result = {**result, "cached": False}
            result["validated"] = True
        method = {self.label(m): m for m in [self._fallback, *methods]}[result["chosen"]]
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
            regime = f", {r['regime']} regime" if "regime" in r else ""
            lines = ["", f"  validated: chose {r['chosen']} ({r['per_class']} per class{regime}; validation accuracy, mean of {len(next(iter(r['accuracy'].values())))} runs: {means}; pool {r['pool']}, held out {r['validation']})"]
            for k, (m, lo, hi) in (r.get("gain") or {}).items():
                interval = "no interval (one run)" if lo is None else f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"
                lines.append(f"    {k} minus {next(iter(r['mean']))}: {100 * m:+.2f} points, 95 % interval {interval}")
        chosen = METHODS.get(r["chosen"].split("(")[0])  # ccs(cutoff=0.5): ccs
        if chosen is not None and r.get("record"):  # the chosen method's own lines (dq-budget: its settings)
            lines += chosen.report({chosen.name: r["record"]})
        return lines


def _per_class(dataset, ratio: float) -> float:
    """The run's budget per class: ``budget(ratio, N) / classes``."""
    return budget(ratio, len(dataset)) / len(np.unique(dataset.labels))


def choose(acc: dict, names, rule: str = "paired", margin: float = 1.0) -> tuple[str, dict]:
    """The candidate a rule takes from validation accuracies, and every rival's paired gain.

    Args:
        acc: ``{name: (S,) accuracies (fractions) per training seed}``, seeds in the same order
            for every name.
        names: the candidates, the incumbent first.
        rule: ``"paired"``: a rival replaces the incumbent only when the 95 % paired t interval
            of its gain (:func:`dsquant.evaluate.stats.paired_difference`, rival minus
            incumbent, seed by seed) is above zero and not a point (every difference equal:
            seed-independent selections scored by a deterministic model say nothing of the
            noise); of several such rivals the one with the highest mean. One seed gives no
            interval, so the incumbent stays. ``"margin"``: the rival with the highest mean
            replaces it when that mean is more than ``margin`` points above the incumbent's.
        margin: points of accuracy (rule ``"margin"``).

    Returns:
        ``(chosen, gain)``: the chosen name, and per rival ``[mean, low, high]`` of its paired
        gain (fractions; None where not finite). Ties go to the earlier name.

    Raises:
        ValueError: on an unknown rule.
    """
    from ..evaluate.stats import paired_difference

    if rule not in RULES:
        raise ValueError(f"rule: expected one of {', '.join(RULES)}, got {rule!r}")
    first, rivals = names[0], list(names[1:])
    mean = {k: float(np.mean(acc[k])) for k in names}
    diff = {k: paired_difference(acc[k], acc[first]) for k in rivals}
    gain = {k: [_finite_or_none(d.mean), _finite_or_none(d.low), _finite_or_none(d.high)] for k, d in diff.items()}
    if rule == "paired":
        eligible = [k for k in rivals if diff[k].low > 0.0 and diff[k].high > diff[k].low]
    else:
        best = max(rivals, key=lambda k: (mean[k], -names.index(k)), default=None)
        eligible = [best] if best is not None and 100 * (mean[best] - mean[first]) > margin else []
    chosen = max(eligible, key=lambda k: (mean[k], -names.index(k))) if eligible else first
    return chosen, gain


def _check_candidates(what: str, names, own: str, dynamics: bool) -> tuple:
    """``names`` as a tuple of distinct registered methods that ``validated`` can run on a pool:
    embedding methods, and (``dynamics``) the training-dynamics scores."""
    from . import METHODS
    from .dynamics import _DynamicsMethod

    if isinstance(names, str) or not names or len(set(names)) != len(names):
        raise ValueError(f"{what}: expected distinct method names, at least one, got {names!r}")
    for c in names:
        if c not in METHODS or c == own:
            raise ValueError(f"{what}: {c!r} is not a method to validate; expected names from {', '.join(m for m in METHODS if m != own)}")
        if METHODS[c].needs_pixels and not (dynamics and issubclass(METHODS[c], _DynamicsMethod)):
            takes = "embedding methods (dq, dq-budget, herding, ...) and the training-dynamics scores (el2n, ccs, ...)" if dynamics else "embedding methods (dq, dq-budget, herding, ...)"
            raise ValueError(f"{what}: {c!r} trains or reads pixels itself; validated takes {takes}")
    return tuple(names)


def _rows_of(dyn: dict, rows: np.ndarray) -> dict:
    """The training dynamics of the whole set (:func:`~dsquant.methods.dynamics.training_dynamics`)
    restricted to ``rows`` (the sample axis is the last of ``seen`` / ``correct``, the second of
    ``probs`` / ``sq_norms``)."""
    return {"probs": dyn["probs"][:, rows], "sq_norms": dyn["sq_norms"][:, rows], "seen": dyn["seen"][..., rows], "correct": dyn["correct"][..., rows], "runs": dyn["runs"]}


def _finite_or_none(x: float):
    return None if not np.isfinite(x) else float(x)


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
