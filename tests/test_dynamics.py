"""The coreset baselines that need training dynamics (issue 13): EL2N, GraNd, forgetting,
uncertainty and CCS as selection methods over one shared, cached training computation."""

import numpy as np
import pytest

import dsquant
from dsquant.cache import Cache
from dsquant.core import baselines as B
from dsquant.data import FeatureDataset, load_digits
from dsquant.embed import IdentityEncoder, embed
from dsquant.methods import Context
from dsquant.methods import dynamics as D
from dsquant.methods.dynamics import CCS, DYNAMICS_METHODS, EL2N, DynamicsRecorder, Forgetting, GraNd, training_dynamics

# image runs are the slow part (the proxy ResNet): 1 epoch, 2 runs, trained once per module
EPOCHS, RUNS = 1, 2
SCORES = {
    "el2n": lambda d, y: B.el2n_scores(d["probs"], y),
    "grand": lambda d, y: B.grand_scores(B.last_layer_grad_norm(d["probs"], y, np.sqrt(d["sq_norms"])[..., None])),
    "least-confidence": lambda d, y: np.mean([B.least_confidence(p) for p in d["probs"]], 0),
    "entropy": lambda d, y: np.mean([B.entropy(p) for p in d["probs"]], 0),
    "margin": lambda d, y: np.mean([B.margin(p) for p in d["probs"]], 0),
}


def context(dataset, cache, seed=0, ratio=0.1, proxy_seed=0):
    """A run's context; the training seed (proxy_seed) stays 0 while ``seed`` varies the sampling."""
    return Context(dataset, ratio, seed, make_encoder=IdentityEncoder, embed=embed, cache=cache, device="cpu", proxy_seed=proxy_seed)


@pytest.fixture(scope="module")
def digits():
    """The first 640 digits: 2 batches of 256 per epoch (the last 128 are not presented)."""
    from dsquant.data.images import ImageDataset

    ds = load_digits()
    return ImageDataset(ds.images[:640].copy(), ds.labels[:640].copy(), ds.classes, "digits-640", "train")


@pytest.fixture(scope="module")
def image_cache(tmp_path_factory, digits):
    """A cache holding the digits' dynamics (EPOCHS x RUNS), trained once for the module."""
    cache = Cache(tmp_path_factory.mktemp("dynamics"))
    training_dynamics(context(digits, cache), EPOCHS, RUNS)
    return cache


def flipped_digits_features(n_flip=144, seed=0):
    """Digits as a FeatureDataset (64 pixel features) with ``n_flip`` labels changed."""
    ds = load_digits()
    rng = np.random.default_rng(seed)
    y = ds.labels.copy()
    flip = rng.choice(len(y), n_flip, replace=False)
    y[flip] = (y[flip] + rng.integers(1, 10, n_flip)) % 10
    return FeatureDataset(ds.images.reshape(len(y), -1).astype(np.float32), y, [str(c) for c in range(10)]), flip


def test_forgetting_counts_from_the_hook_match_a_hand_built_sequence():
    labels = np.array([0, 1, 2, 0])
    rec = DynamicsRecorder(labels, epochs=5)

    def logits(pred):  # one-hot logits predicting ``pred``
        z = np.zeros((len(pred), 3))
        z[np.arange(len(pred)), pred] = 1.0
        return z

    # correct (1) / wrong (0) / not presented (.) per epoch:
    #   sample 0: 1 0 1 0 1 -> 2 events;  sample 1: 1 1 1 1 1 -> 0 (unforgettable)
    #   sample 2: 0 0 0 . 0 -> never learnt: T = 5;  sample 3: 1 . 0 1 . -> 1 event (the gap adds none)
    seq = {0: [1, 0, 1, 0, 1], 1: [1, 1, 1, 1, 1], 2: [0, 0, 0, None, 0], 3: [1, None, 0, 1, None]}
    for t in range(5):
        present = [i for i in range(4) if seq[i][t] is not None]
        for half in (present[:2], present[2:]):  # two batches per epoch, as the loop calls it
            idx = np.array(half, dtype=np.int64)
            pred = np.array([labels[i] if seq[i][t] else (labels[i] + 1) % 3 for i in idx], dtype=np.int64)
            if len(idx):
                rec.on_step(t, idx, logits(pred))
    assert rec.seen[:, 3].tolist() == [1, -1, 0, 1, -1]
    assert B.forgetting_events(rec.correct()).tolist() == [2.0, 0.0, 5.0, 1.0]
    # several runs: counts summed, as the released code
    both = np.stack([rec.correct(), rec.correct()])
    assert B.forgetting_events(both).tolist() == [4.0, 0.0, 10.0, 2.0]


def test_a_real_run_records_every_presentation(image_cache, digits):
    dyn = training_dynamics(context(digits, image_cache), EPOCHS, RUNS)
    n = len(digits)
    assert dyn["probs"].shape == (RUNS, n, 10) and dyn["correct"].shape == (RUNS, EPOCHS, n)
    assert np.allclose(dyn["probs"].sum(-1), 1.0) and (dyn["sq_norms"] > 0).all()
    # 2 full batches of 256 per epoch (the last partial one dropped): each seen exactly once
    assert ((dyn["seen"] >= 0).sum(-1) == 2 * 256).all()
    assert all(r["cached"] for r in dyn["runs"]) and len({r["seed"] for r in dyn["runs"]}) == RUNS


@pytest.mark.parametrize("method", ["el2n", "grand", "least-confidence", "entropy", "margin"])
def test_a_method_is_select_by_score_on_the_cached_dynamics(image_cache, digits, method):
    cls = {c.name: c for c in DYNAMICS_METHODS}[method]
    ctx = context(digits, image_cache, ratio=0.2)
    sel = cls(epochs=EPOCHS, n_runs=RUNS).select(ctx)
    dyn = training_dynamics(ctx, EPOCHS, RUNS)
    want = B.select_by_score(SCORES[method](dyn, digits.labels), 0.2, digits.labels)
    assert np.array_equal(sel.indices, want)
    assert np.bincount(digits.labels[sel.indices]).tolist() == B.class_quotas(len(want), digits.labels).tolist()
    unbalanced = cls(epochs=EPOCHS, n_runs=RUNS, balance=False).select(ctx).indices
    assert np.array_equal(unbalanced, B.select_by_score(SCORES[method](dyn, digits.labels), 0.2))
    assert sel.record["runs_cached"] == RUNS and 0.0 <= sel.record["train_accuracy"] <= 1.0


def test_forgetting_and_ccs_on_the_cached_dynamics(image_cache, digits):
    ctx = context(digits, image_cache, seed=3, ratio=0.2)
    dyn = training_dynamics(ctx, EPOCHS, RUNS)
    counts = B.forgetting_events(dyn["correct"])
    sel = Forgetting(epochs=EPOCHS, n_runs=RUNS).select(ctx).indices
    # ties (integer counts) broken at random with the seed: every kept count >= every dropped one, per class
    for c in range(10):
        mine = digits.labels == c
        kept = np.isin(np.arange(len(digits)), sel) & mine
        assert counts[kept].min() >= counts[mine & ~kept].max()
    other = Forgetting(epochs=EPOCHS, n_runs=RUNS).select(context(digits, image_cache, seed=4, ratio=0.2)).indices
    assert not np.array_equal(sel, other)  # the seed breaks the ties
    ccs = CCS(cutoff=0.3, n_strata=10, epochs=EPOCHS, n_runs=RUNS).select(ctx)
    assert np.array_equal(ccs.indices, B.ccs_sample(B.el2n_scores(dyn["probs"], digits.labels), 0.2, n_strata=10, cutoff=0.3, seed=3))
    # a cutoff that would leave fewer samples than the budget is lowered to 1 - ratio
    high = CCS(cutoff=0.5, epochs=EPOCHS, n_runs=RUNS).select(context(digits, image_cache, ratio=0.8))
    assert len(high.indices) == round(0.8 * len(digits)) and high.record["cutoff_used"] == pytest.approx(0.2)


def test_a_cache_hit_gives_the_same_indices_without_training(image_cache, digits, monkeypatch):
    first = {c.name: c(epochs=EPOCHS, n_runs=RUNS).select(context(digits, image_cache)).indices for c in DYNAMICS_METHODS}

    def no_training(*a, **k):
        raise AssertionError("trained again")

    from dsquant.methods import _dynamics_runs as R

    monkeypatch.setattr(R, "fit", no_training)
    monkeypatch.setattr(R, "run_features", no_training)
    for cls in DYNAMICS_METHODS:
        assert np.array_equal(cls(epochs=EPOCHS, n_runs=RUNS).select(context(digits, image_cache)).indices, first[cls.name])
    # fewer runs reuse the first ones; another sampling seed does not train either
    EL2N(epochs=EPOCHS, n_runs=1).select(context(digits, image_cache))
    CCS(epochs=EPOCHS, n_runs=RUNS).select(context(digits, image_cache, seed=9))
    with pytest.raises(AssertionError, match="trained again"):  # another proxy seed is another training
        EL2N(epochs=EPOCHS, n_runs=RUNS).select(context(digits, image_cache, proxy_seed=1))


def test_training_is_deterministic_for_a_seed(image_cache, digits):
    """A run trained again without the cache gives bitwise the cached run's outputs."""
    again = training_dynamics(context(digits, None), EPOCHS, 1)
    cached = training_dynamics(context(digits, image_cache), EPOCHS, RUNS)
    assert not again["runs"][0]["cached"] and cached["runs"][0]["cached"]
    assert np.array_equal(again["probs"][0], cached["probs"][0]) and np.array_equal(again["seen"][0], cached["seen"][0])
    assert np.array_equal(again["sq_norms"][0], cached["sq_norms"][0])


def test_through_compress_as_a_method_object(tmp_path, digits, image_cache):
    run = dsquant.compress(digits, ratio=0.1, method=EL2N(epochs=EPOCHS, n_runs=RUNS), cache_dir=image_cache.root, out=tmp_path / "s")
    m = run.manifest
    assert m["method"] == "el2n" and m["parameters"]["method"] == {"epochs": EPOCHS, "n_runs": RUNS, "balance": True}
    assert m["el2n"]["runs_cached"] == RUNS and len(run.indices) == 64
    assert np.array_equal(dsquant.open_run(tmp_path / "s").indices, run.indices)


def test_an_unlabelled_pool_is_refused_in_one_line():
    X = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    pool = FeatureDataset(X, None, [], source="pool.npy")
    for cls in DYNAMICS_METHODS:
        for call in (lambda: cls().check(pool), lambda: cls().select(context(pool, None)), lambda: dsquant.compress(pool, ratio=0.5, method=cls())):
            with pytest.raises(ValueError) as exc:
                call()
            msg = str(exc.value)
            assert msg.startswith(f"{cls.name}: needs labels") and "pool.npy has none" in msg and "\n" not in msg


def test_parameters_are_stored_unchanged_and_checked_once():
    m = CCS(score="forgetting", cutoff=0.25, n_strata=20, epochs=3, n_runs=4, balance=True)
    assert m.config() == {"score": "forgetting", "cutoff": 0.25, "n_strata": 20, "epochs": 3, "n_runs": 4, "balance": True}
    assert EL2N().config() == {"epochs": 5, "n_runs": 2, "balance": True}
    assert repr(GraNd(epochs=2)).startswith("GraNd(epochs=2")
    for bad, pattern in [
        (lambda: EL2N(epochs=0), "epochs: expected an integer >= 1, got 0"),
        (lambda: GraNd(n_runs=1.5), "n_runs: expected an integer >= 1, got 1.5"),
        (lambda: Forgetting(balance="yes"), "balance: expected True or False, got 'yes'"),
        (lambda: CCS(cutoff=1.0), "cutoff: expected a hard cutoff rate in [0, 1), got 1.0"),
        (lambda: CCS(cutoff=-0.1), "cutoff: expected a weight in [0, 1], got -0.1"),
        (lambda: CCS(n_strata=0), "n_strata: expected an integer >= 1, got 0"),
        (lambda: CCS(score="aum"), "score: expected one of 'el2n', 'grand', 'forgetting', got 'aum'"),
    ]:
        with pytest.raises(ValueError) as exc:
            bad()
        assert str(exc.value) == pattern


def test_grand_from_feature_norms_is_the_last_layer_norm():
    """GraNd needs only ||h||: the cached squared norms give exactly the norms of the features."""
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(4), size=(2, 30))
    h = rng.standard_normal((2, 30, 7))
    y = rng.integers(0, 4, 30)
    dyn = {"probs": p, "sq_norms": (h**2).sum(-1)}
    assert np.allclose(D._grand(dyn, y), B.grand_scores(B.last_layer_grad_norm(p, y, h)), rtol=1e-12)


def test_the_feature_path_trains_a_linear_classifier_on_the_embedding(tmp_path):
    ds, _ = flipped_digits_features(0)
    cache = Cache(tmp_path)
    ctx = context(ds, cache)
    dyn = training_dynamics(ctx, 3, 2)
    assert dyn["probs"].shape == (2, len(ds), 10) and dyn["seen"].shape == (2, 3, len(ds))
    assert min(r["train_accuracy"] for r in dyn["runs"]) > 0.85  # a linear model on digits' pixels
    # h is the standardised embedding
    X = ds.features.astype(np.float64)
    std = X.std(0)
    sq = (((X - X.mean(0)) / np.where(std > 1e-12, std, 1.0)) ** 2).sum(1)
    assert np.allclose(dyn["sq_norms"][0], sq, rtol=1e-4)
    res = dsquant.compress(ds, ratio=0.1, method=GraNd(epochs=3, n_runs=2), cache_dir=tmp_path)
    assert res.manifest["grand"]["runs_cached"] == 2 and len(res.indices) == 144
    assert np.array_equal(res.indices, B.select_by_score(D._grand(dyn, ds.labels), 0.1, ds.labels))


def test_el2n_prefers_the_flipped_labels(tmp_path):
    """Samples whose label was changed are the hard ones: EL2N's top 10 % holds most of them,
    against 10 % for any unrelated ranking."""
    ds, flip = flipped_digits_features(144)
    ctx = context(ds, Cache(tmp_path))
    picked = EL2N(epochs=3, n_runs=2, balance=False).select(ctx).indices
    precision = np.isin(picked, flip).mean()
    assert len(picked) == 144 and precision > 0.6, precision
    forgotten = Forgetting(epochs=3, n_runs=2, balance=False).select(ctx).indices
    assert np.isin(forgotten, flip).mean() > 0.4
    easy = B.select_by_score(B.el2n_scores(training_dynamics(ctx, 3, 2)["probs"], ds.labels), 0.1, largest=False)
    assert np.isin(easy, flip).mean() < 0.02
