"""Coreset baselines that need training dynamics, as selection methods (issue 13).

One shared computation, :func:`training_dynamics`, trains a classifier ``n_runs`` times on the
pool through the one training loop (:func:`dsquant.training.fit` /
:func:`~dsquant.training.train_loop`, watched by its ``on_step`` hook: no second loop) and
records per sample, for every run:

* ``correct``: whether the training step that saw the sample classified it correctly, every
  epoch (forgetting events, Toneva et al. 2019);
* ``logits`` after the short training (the EL2N paper's "early in training"): softmax
  probabilities for EL2N, GraNd and the uncertainty scores;
* ``sq_norms``: the squared norm of the penultimate features ``h`` fed to the linear head,
  all GraNd's last-layer gradient norm needs (``||g|| = ||p - onehot(y)|| sqrt(||h||^2 + 1)``).

The model is the proxy ResNet of :class:`dsquant.embed.ProxyEncoder` for image datasets, and a
linear softmax classifier on the run's embedding (``ctx.embedding().features``, standardised)
for text and feature datasets. Each run is cached on its own (kind ``"dynamics"``, keyed by the
dataset's fingerprint, the model's settings and the run's seed, and the embedding's key when
features are used), so the seven methods, reruns with other sampling seeds and a larger
``n_runs`` reuse what was trained. The algorithms are the pure functions of
:mod:`dsquant.core.baselines`.

Run seeds come from the run's ``proxy_seed`` (``SeedSequence((proxy_seed, r))``): fixing
``proxy_seed`` and varying ``seed`` varies only the sampling (CCS) and tie-breaking
(forgetting), not the training.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import special

from ..cache import Cache, hash_key
from ..core import baselines as B
from .base import Context, Selection, SelectionMethod, check_int, check_unit

__all__ = [
    "CCS",
    "DYNAMICS_METHODS",
    "DynamicsRecorder",
    "EL2N",
    "Entropy",
    "Forgetting",
    "GraNd",
    "LeastConfidence",
    "Margin",
    "filled_correctness",
    "training_dynamics",
]

_DYNAMICS_VERSION = 1
DEFAULT_EPOCHS = 5
DEFAULT_RUNS = 2

class DynamicsRecorder:
    """The ``on_step`` hook of the training loop that records, every epoch, whether each sample
    was classified correctly by the step that trained on it (Toneva et al.'s "presentations").

    Attributes:
        seen: (T, N) int8: 1 correct, 0 wrong, -1 not presented that epoch (the loop drops the
            last partial batch of an epoch).
    """

    def __init__(self, labels: np.ndarray, epochs: int) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.seen = np.full((epochs, len(self.labels)), -1, dtype=np.int8)

    def on_step(self, epoch: int, idx: np.ndarray, logits) -> None:
        """Record the batch ``idx`` (B,) of ``epoch`` from its logits (B, C) (a tensor or array)."""
        pred = logits.argmax(1)
        pred = pred.cpu().numpy() if hasattr(pred, "cpu") else np.asarray(pred)  # a tensor, or an array
        self.seen[epoch, idx] = pred == self.labels[idx]

    def correct(self) -> np.ndarray:
        """(T, N) bool correctness per epoch; an epoch where a sample was not presented repeats
        its previous value (False before its first presentation), which adds no forgetting
        event and does not mark it learnt: :func:`dsquant.core.baselines.forgetting_events`
        then counts exactly the events of its sequence of presentations."""
        return filled_correctness(self.seen)


def filled_correctness(seen: np.ndarray) -> np.ndarray:
    """(..., T, N) int8 (1 / 0 / -1 = not presented) to bool, forward-filled over T."""
    seen = np.asarray(seen)
    out = np.empty(seen.shape, dtype=bool)
    last = np.zeros(seen.shape[:-2] + seen.shape[-1:], dtype=bool)
    for t in range(seen.shape[-2]):
        now = seen[..., t, :]
        last = np.where(now >= 0, now == 1, last)
        out[..., t, :] = last
    return out


# ---------------------------------------------------------------------------------------------
# one run


def _run_seed(proxy_seed: int, run: int) -> int:
    return int(np.random.SeedSequence((int(proxy_seed), int(run))).generate_state(1, dtype=np.uint32)[0])


def _softmax(logits: np.ndarray) -> np.ndarray:
    return special.softmax(np.asarray(logits, dtype=np.float64), axis=-1)


# ---------------------------------------------------------------------------------------------
# the shared, cached computation


def _needs_labels(name: str, dataset) -> None:
    if dataset.labels is None:
        raise ValueError(f"{name}: needs labels (its scores come from training a classifier); {getattr(dataset, 'source', 'the dataset')} has none")


def training_dynamics(ctx: Context, epochs: int = DEFAULT_EPOCHS, n_runs: int = DEFAULT_RUNS, name: str = "dynamics") -> dict:
    """Train ``n_runs`` short runs on the pool and record what the dynamics scores need; each run
    read from ``ctx.cache`` when it was trained before.

    Images: the proxy ResNet (:class:`dsquant.embed.ProxyEncoder` ``(epochs, seed=s_r)``: its
    architecture, SGD, one-cycle schedule and augmentation) through :func:`dsquant.training.fit`.
    Text and features: a linear softmax classifier on the standardised run embedding
    (``ctx.embedding().features``) through :func:`dsquant.training.train_loop`. Run ``r`` is
    seeded with ``SeedSequence((ctx.proxy_seed, r))``.

    Args:
        ctx: the run's context (dataset with labels, proxy_seed, cache, device, progress).
        epochs: T, training epochs per run (the scores are taken after them: early training).
        n_runs: R, independent runs the scores are averaged over.
        name: the method asking, for the error message.

    Returns:
        A dict: ``probs`` (R, N, C) float64 softmax outputs after training; ``sq_norms`` (R, N)
        float64 squared norms of the features fed to the linear head; ``correct`` (R, T, N)
        bool per-epoch correctness during training (see :meth:`DynamicsRecorder.correct`);
        ``seen`` (R, T, N) int8 as recorded (-1 not presented); ``runs``: per run
        ``{"seed", "train_accuracy", "seconds", "cached"}`` (accuracy after training, on the
        pool, unaugmented; seconds of the training when it ran).

    Raises:
        ValueError: naming ``name`` when the dataset has no labels; on bad epochs / n_runs.
    """
    check_int("epochs", epochs)
    check_int("n_runs", n_runs)
    dataset = ctx.dataset
    _needs_labels(name, dataset)
    labels = np.asarray(ctx.labels, dtype=np.int64)
    n, n_classes = len(labels), len(dataset.classes)
    images = getattr(dataset, "kind", None) == "images"
    if images:
        from ..embed import ProxyEncoder

        base = {"model": ProxyEncoder(epochs=epochs).config()}
        base["model"]["train"].pop("seed")
        X = None
    else:
        X = ctx.embedding().features
        from ._dynamics_runs import LINEAR

        base = {"model": "linear-softmax-v1", "epochs": epochs, **LINEAR, "embedding": ctx.embedding_record.get("key")}
    base.update({"v": _DYNAMICS_VERSION, "data": dataset.fingerprint()})
    expect = {"logits": ("f", (n, n_classes)), "sq_norms": ("f", (n,)), "seen": ("i", (epochs, n)), "info": ("U", 0)}
    cache = ctx.cache
    runs, logits, sq, seen = [], [], [], []
    for r in range(n_runs):
        seed = _run_seed(ctx.proxy_seed, r)
        key = hash_key({**base, "seed": seed})
        hit = cache.load("dynamics", key, expect, lambda a: Cache.unpack_json(a["info"])["seed"] == seed) if cache is not None else None
        if hit is not None:
            info = {**Cache.unpack_json(hit["info"]), "cached": True}
        else:
            t0 = time.perf_counter()
            desc = f"{name}: run {r + 1}/{n_runs}"
            from . import _dynamics_runs as runs_

            if images:
                hit = runs_.run_images(dataset, epochs, seed, ctx.device, ctx.progress, desc)
            else:
                hit = runs_.run_features(X, labels, n_classes, epochs, seed, ctx.device, ctx.progress, desc)
            acc = float((hit["logits"].argmax(1) == labels).mean())
            info = {"seed": seed, "train_accuracy": round(acc, 4), "seconds": round(time.perf_counter() - t0, 2)}
            if cache is not None:
                cache.save("dynamics", key, {**hit, "info": Cache.pack_json(info)})
            info["cached"] = False
        runs.append(info)
        logits.append(hit["logits"])
        sq.append(np.asarray(hit["sq_norms"], dtype=np.float64))
        seen.append(np.asarray(hit["seen"], dtype=np.int8))
    seen_a = np.stack(seen)
    return {"probs": _softmax(np.stack(logits)), "sq_norms": np.stack(sq), "seen": seen_a, "correct": filled_correctness(seen_a), "runs": runs}


# ---------------------------------------------------------------------------------------------
# the methods


class _DynamicsMethod(SelectionMethod):
    """Shared parts: parameters ``epochs``, ``n_runs``, ``balance``; the labels check; the
    dynamics through :func:`training_dynamics`; a small record.

    ``needs_embedding`` is True: on text and feature data the scores come from a classifier on
    the run's embedding, so the benchmark grid must key them by the encoder options (on images
    they do not depend on them; keying them anyway only repeats a cached selection).
    """

    needs_embedding = True
    needs_pixels = True  # on images the dynamics train on them
    largest = True  # keep the highest scores (the hardest / most uncertain)

    def __init__(self, epochs: int = DEFAULT_EPOCHS, n_runs: int = DEFAULT_RUNS, balance: bool = True) -> None:
        self.epochs = check_int("epochs", epochs)
        self.n_runs = check_int("n_runs", n_runs)
        if not isinstance(balance, bool):
            raise ValueError(f"balance: expected True or False, got {balance!r}")
        self.balance = balance

    def config(self) -> dict:
        return {"epochs": self.epochs, "n_runs": self.n_runs, "balance": self.balance}

    def check(self, dataset) -> None:
        _needs_labels(self.name, dataset)

    def dynamics(self, ctx: Context) -> dict:
        """The run's dynamics at this method's ``(epochs, n_runs)``: from ``ctx.dynamics`` when
        this run computed them already (another method, or ``validated``), else computed (or
        read from the cache) and kept there."""
        key = (self.epochs, self.n_runs)
        if key not in ctx.dynamics:
            if getattr(ctx.dataset, "kind", None) != "images":
                ctx.embedding()  # timed as "embed", apart from the training
            ctx.dynamics[key] = ctx.timed("dynamics", training_dynamics, ctx, self.epochs, self.n_runs, self.name)
        return ctx.dynamics[key]

    def scores(self, dyn: dict, labels: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """(N,) scores, higher = harder, from the dynamics and the (N,) labels."""
        raise NotImplementedError

    def choose(self, ctx: Context, scores: np.ndarray) -> np.ndarray:
        return B.select_by_score(scores, ctx.ratio, ctx.labels if self.balance else None, largest=self.largest)

    def select(self, ctx: Context) -> Selection:
        _needs_labels(self.name, ctx.dataset)
        dyn = self.dynamics(ctx)
        scores = ctx.timed("scores", self.scores, dyn, np.asarray(ctx.labels))
        indices = ctx.timed("sample", self.choose, ctx, scores)
        return Selection(indices, record=self.record(dyn))

    def record(self, dyn: dict) -> dict:
        runs = dyn["runs"]
        return {
            "train_accuracy": round(float(np.mean([r["train_accuracy"] for r in runs])), 4),
            "runs_cached": sum(r["cached"] for r in runs),
            "train_seconds": round(float(sum(r["seconds"] for r in runs)), 2),
        }

    @classmethod
    def report(cls, manifest: dict) -> list[str]:
        rec = manifest.get(cls.name) or {}
        if "train_accuracy" not in rec:
            return []
        return [f"  {cls.name}: training accuracy {rec['train_accuracy']:.4f} of the dynamics runs ({rec['runs_cached']} cached, {rec['train_seconds']} s of training)"]


def _el2n(dyn: dict, labels: np.ndarray) -> np.ndarray:
    return B.el2n_scores(dyn["probs"], labels)


def _grand(dyn: dict, labels: np.ndarray) -> np.ndarray:
    # only ||h|| enters the last-layer norm: an (R, N, 1) "feature" of norm ||h|| gives it exactly
    return B.grand_scores(B.last_layer_grad_norm(dyn["probs"], labels, np.sqrt(dyn["sq_norms"])[..., None]))


def _forgetting(dyn: dict, labels: np.ndarray) -> np.ndarray:
    return B.forgetting_events(dyn["correct"])


class EL2N(_DynamicsMethod):
    """EL2N (Paul, Ganguli & Dziugaite, "Deep Learning on a Data Diet", NeurIPS 2021): keeps the
    samples with the largest expected error norm early in training,

        EL2N(x, y) = E_w || softmax(f(w, x)) - onehot(y) ||_2,

    the expectation over ``n_runs`` independent short trainings (``epochs`` epochs each; the
    paper scores at epoch 20 of 200 and averages 10 runs; :func:`training_dynamics`). Scores:
    :func:`dsquant.core.baselines.el2n_scores` on the (R, N, C) probabilities; selection:
    :func:`~dsquant.core.baselines.select_by_score` (highest first; per class when ``balance``).

    Args:
        epochs: training epochs per run (>= 1).
        n_runs: runs averaged (>= 1).
        balance: rank within each class with the class quotas of ``sample_uniform`` (True, as
            every dsquant method) or over the whole pool (False, the paper's pruning).
    """

    name = "el2n"
    summary = "EL2N: error norm early in training, hardest kept (Paul et al. 2021)"

    scores = staticmethod(_el2n)


class GraNd(_DynamicsMethod):
    """GraNd (Paul et al., NeurIPS 2021), the last-layer form DeepCore uses: keeps the samples
    with the largest expected norm of the cross-entropy gradient w.r.t. the linear head,

        GraNd(x, y) = E_w || (dL/dW, dL/db) ||_F = E_w || p - onehot(y) ||_2 sqrt(||h||_2^2 + 1),

    ``h`` the (N, d) features fed to the head (the proxy's penultimate features; the
    standardised embedding for the linear classifier of text / feature data), ``p`` its softmax
    output, averaged over ``n_runs`` short trainings. (The paper's GraNd takes the gradient of
    all parameters.) Scores: :func:`dsquant.core.baselines.last_layer_grad_norm` and
    :func:`~dsquant.core.baselines.grand_scores`. Arguments as :class:`EL2N`.
    """

    name = "grand"
    summary = "GraNd: last-layer gradient norm early in training, hardest kept (Paul et al. 2021)"

    scores = staticmethod(_grand)


class Forgetting(_DynamicsMethod):
    """Forgetting events (Toneva et al., "An Empirical Study of Example Forgetting during Deep
    Neural Network Learning", ICLR 2019): keeps the most forgotten samples. A forgetting event
    of sample i is an epoch t with ``acc_i^t > acc_i^{t+1}``, ``acc_i^t`` the correctness of the
    training step that presented it at epoch t (recorded by :class:`DynamicsRecorder`, the
    training loop's ``on_step`` hook); a sample never classified correctly counts T (the
    released code's rule); counts summed over runs
    (:func:`dsquant.core.baselines.forgetting_events` on the (R, T, N) correctness).

    With few epochs the counts are small integers with many ties: ties are broken at random
    with the run's ``seed`` (the only use of the seed), not by index. Arguments as :class:`EL2N`
    (the paper trains to convergence, 200 epochs; a few epochs give a coarse count).
    """

    name = "forgetting"
    summary = "forgetting events during training, most forgotten kept (Toneva et al. 2019)"

    scores = staticmethod(_forgetting)

    def choose(self, ctx: Context, scores: np.ndarray) -> np.ndarray:
        perm = np.random.default_rng(ctx.seed).permutation(len(scores))
        labels = None if not self.balance else np.asarray(ctx.labels)[perm]
        picked = B.select_by_score(scores[perm], ctx.ratio, labels, largest=True)
        return np.sort(perm[picked]).astype(np.int64)


class _Uncertainty(_DynamicsMethod):
    """Uncertainty of the trained classifier (Coleman et al., "Selection via Proxy", ICLR 2020):
    the score of every run's (N, C) probabilities, averaged over the runs; the most uncertain
    kept. Arguments as :class:`EL2N`."""

    metric = staticmethod(B.least_confidence)

    def scores(self, dyn: dict, labels: np.ndarray) -> np.ndarray:
        return np.mean([self.metric(p) for p in dyn["probs"]], axis=0)


class LeastConfidence(_Uncertainty):
    """Least confidence ``1 - max_c p_c`` of the trained proxy, averaged over ``n_runs``
    (Coleman et al., ICLR 2020; :func:`dsquant.core.baselines.least_confidence`); the most
    uncertain kept. Arguments as :class:`EL2N`."""

    name = "least-confidence"
    summary = "least confidence of a briefly trained proxy, most uncertain kept (Coleman et al. 2020)"
    metric = staticmethod(B.least_confidence)


class Entropy(_Uncertainty):
    """Predictive entropy ``-sum_c p_c log p_c`` of the trained proxy, averaged over ``n_runs``
    (Coleman et al., ICLR 2020; :func:`dsquant.core.baselines.entropy`); the most uncertain
    kept. Arguments as :class:`EL2N`."""

    name = "entropy"
    summary = "predictive entropy of a briefly trained proxy, most uncertain kept (Coleman et al. 2020)"
    metric = staticmethod(B.entropy)


class Margin(_Uncertainty):
    """Margin ``1 - (p_(1) - p_(2))`` of the trained proxy, averaged over ``n_runs`` (the
    smallest gap between the two most likely classes first; Scheffer et al. 2001, as in
    Coleman et al. 2020 and DeepCore; :func:`dsquant.core.baselines.margin`). Arguments as
    :class:`EL2N`."""

    name = "margin"
    summary = "smallest top-2 probability margin of a briefly trained proxy kept (Coleman et al. 2020)"
    metric = staticmethod(B.margin)


_CCS_SCORES = {"el2n": _el2n, "grand": _grand, "forgetting": _forgetting}


class CCS(_DynamicsMethod):
    """Coverage-centric Coreset Selection (Zheng et al., "Coverage-centric Coreset Selection
    for High Pruning Rates", ICLR 2023, Algorithm 1): prune the ``cutoff`` (beta) fraction of
    hardest samples by a difficulty score, split the rest into ``n_strata`` strata of equal
    score width, and sample the budget over the strata, smallest strata first, uniformly at
    random within each (the run's ``seed``; :func:`dsquant.core.baselines.ccs_sample`).

    Args:
        score: the difficulty score, ``"el2n"`` (default, the paper's choice for CIFAR),
            ``"grand"`` or ``"forgetting"`` (from the same cached dynamics).
        cutoff: beta in [0, 1) (the paper tunes it per ratio: 0 at low pruning rates, up to
            0.4 at 90 % pruning; 0.1 here). When ``cutoff`` would leave fewer samples than the
            budget (``cutoff > 1 - ratio``), ``1 - ratio`` is used; the record says which.
        n_strata: k >= 1 (paper: 50).
        epochs, n_runs: of the dynamics, as :class:`EL2N`.
        balance: False (default, the paper: one pool) or True (each class its quota, cutoff
            and strata).
    """

    name = "ccs"
    summary = "coverage-centric coreset selection: hardest pruned, stratified by EL2N (Zheng et al. 2023)"

    def __init__(self, score: str = "el2n", cutoff: float = 0.1, n_strata: int = 50, epochs: int = DEFAULT_EPOCHS, n_runs: int = DEFAULT_RUNS, balance: bool = False) -> None:
        super().__init__(epochs, n_runs, balance)
        if score not in _CCS_SCORES:
            raise ValueError(f"score: expected one of {', '.join(map(repr, _CCS_SCORES))}, got {score!r}")
        self.score = score
        self.cutoff = check_unit("cutoff", cutoff)
        if self.cutoff >= 1.0:
            raise ValueError(f"cutoff: expected a hard cutoff rate in [0, 1), got {cutoff!r}")
        self.n_strata = check_int("n_strata", n_strata)

    def config(self) -> dict:
        return {"score": self.score, "cutoff": self.cutoff, "n_strata": self.n_strata, **super().config()}

    def cutoff_for(self, ratio: float) -> float:
        """The cutoff used at keep ratio ``ratio``: ``min(cutoff, 1 - ratio)``."""
        return min(self.cutoff, max(0.0, 1.0 - float(ratio)))

    def scores(self, dyn: dict, labels: np.ndarray) -> np.ndarray:
        return _CCS_SCORES[self.score](dyn, labels)

    def choose(self, ctx: Context, scores: np.ndarray) -> np.ndarray:
        return B.ccs_sample(scores, ctx.ratio, ctx.labels if self.balance else None, n_strata=self.n_strata, cutoff=self.cutoff_for(ctx.ratio), seed=ctx.seed)

    def select(self, ctx: Context) -> Selection:
        sel = super().select(ctx)
        sel.record["cutoff_used"] = self.cutoff_for(ctx.ratio)
        return sel


DYNAMICS_METHODS = (EL2N, GraNd, Forgetting, LeastConfidence, Entropy, Margin, CCS)
"""The training-dynamics baselines, in report order."""
