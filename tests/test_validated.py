"""The ``validated`` method: the best candidate on a validation split carved from the training set
(docs/selection.md). Checked against a naive reimplementation: the split, every candidate's pool
selection, every validation accuracy, the choice, and the final selection."""

import numpy as np
import pytest

import dsquant
import dsquant.data
from dsquant.core.baselines import herding
from dsquant.core.sampling import validation_indices
from dsquant.evaluate.protocols import validation_split
from dsquant.evaluate.text import logreg_accuracy
from dsquant.methods import Validated
from dsquant.methods.validated import choose


def _digits_features():
    ds = dsquant.data.load_digits()
    feats = ds.images.reshape(len(ds), -1).astype(np.float32)
    return dsquant.data.FeatureDataset(feats, ds.labels, ds.classes, "digits-pixels")


def test_validation_indices_by_hand_and_as_the_split():
    labels = np.array([0] * 12 + [1] * 6 + [2] * 2)
    held = validation_indices(labels, 1 / 6, seed=0)
    # round(12/6) = 2, round(6/6) = 1, round(2/6) = 0 -> at least 1
    assert np.bincount(labels[held]).tolist() == [2, 1, 1] and np.all(np.diff(held) > 0)
    assert np.array_equal(held, validation_indices(labels, 1 / 6, seed=0))
    assert not np.array_equal(held, validation_indices(labels, 1 / 6, seed=1))
    fds = _digits_features()
    pool, val = validation_split(fds, seed=3)
    held = validation_indices(fds.labels, seed=3)
    assert np.array_equal(val.features, fds.features[held]) and len(pool) + len(val) == len(fds)
    with pytest.raises(ValueError, match="class 'b' has 1 sample"):
        validation_indices(np.array([0, 0, 1]), classes=["a", "b"])
    with pytest.raises(ValueError, match="fraction: expected a share"):
        validation_indices(labels, 1.0)


def _naive_paired(acc: dict, names: list) -> str:
    """The paired rule from scratch: a rival whose seed-by-seed gains over the incumbent have a
    95 % Student t interval above zero (and not a point), the highest mean of those."""
    from scipy.stats import t as student

    first, ok = names[0], []
    for k in names[1:]:
        d = np.asarray(acc[k]) - np.asarray(acc[first])
        half = student.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        if d.mean() - half > 0 and half > 0:
            ok.append(k)
    return max(ok, key=lambda k: np.mean(acc[k])) if ok else first


def test_choice_matches_a_naive_validation():
    fds = _digits_features()
    n, m = len(fds), 30  # 3 per class
    run = dsquant.compress(fds, ratio=m / n, method="validated", seed=4)
    rec = run.manifest["validated"]
    held = validation_indices(fds.labels, 1 / 6, 0)
    rows = np.setdiff1d(np.arange(n), held)
    pool = dsquant.data.FeatureDataset(fds.features[rows], fds.labels[rows], fds.classes, "pool")
    expect = {}
    names = ["dq", "dq-budget", "herding", "herding-drop"]  # the defaults, the incumbent (DQ) first
    for name in names:
        accs = []
        for s in range(5):
            idx = dsquant.compress(pool, ratio=m / len(rows), method=name, seed=s).indices
            assert len(idx) == m
            accs.append(logreg_accuracy(pool.features[idx], pool.labels[idx], fds.features[held], fds.labels[held], seed=s))
        expect[name] = accs
    assert rec["accuracy"] == expect and rec["pool"] == len(rows) and rec["validation"] == len(held)
    chosen = _naive_paired(expect, names)
    assert chosen != "dq"  # on these pixels a rival is proven better than DQ: the switch is exercised
    assert rec["chosen"] == chosen and rec["validated"] and not rec["cached"] and rec["rule"].startswith("paired")
    assert set(rec["gain"]) == set(names[1:])
    assert np.array_equal(run.indices, dsquant.compress(fds, ratio=m / n, method=chosen, seed=4).indices)
    # the choice depends on the embedding and the budget, not the run's seed: cached
    again = dsquant.compress(fds, ratio=m / n, method="validated", seed=9)
    assert again.manifest["validated"]["cached"] and again.manifest["validated"]["accuracy"] == rec["accuracy"]
    # version 2's rule: dq-budget unless herding is more than `margin` points ahead
    old = dict(candidates=("dq-budget", "herding"), rule="margin")
    gap = 100 * (np.mean(expect["herding"]) - np.mean(expect["dq-budget"]))
    assert gap > 1.0
    v2 = dsquant.compress(fds, ratio=m / n, method=Validated(**old), seed=4)
    assert v2.manifest["validated"]["chosen"] == "herding" and v2.manifest["validated"]["margin"] == 1.0
    keep = dsquant.compress(fds, ratio=m / n, method=Validated(margin=gap + 0.5, **old), seed=4)
    assert keep.manifest["validated"]["chosen"] == "dq-budget"
    assert {k: keep.manifest["validated"]["accuracy"][k] for k in old["candidates"]} == {k: expect[k] for k in old["candidates"]}
    assert np.array_equal(keep.indices, dsquant.compress(fds, ratio=m / n, method="dq-budget", seed=4).indices)
    best = dsquant.compress(fds, ratio=m / n, method=Validated(margin=0, candidates=("herding", "dq-budget"), rule="margin"), seed=4)
    assert best.manifest["validated"]["chosen"] == "herding"


def test_choose_by_hand():
    a = [0.50, 0.60, 0.70]
    # gains 0.02, 0.03, 0.01: mean 0.02, sd 0.01, half width t(0.975, 2) 0.01 / sqrt(3) = 0.02484
    wide = {"a": a, "b": [0.52, 0.63, 0.71]}
    chosen, gain = choose(wide, ["a", "b"], "paired")
    assert chosen == "a" and gain["b"] == pytest.approx([0.02, 0.02 - 0.024841, 0.02 + 0.024841], abs=1e-5)
    assert choose(wide, ["a", "b"], "margin", margin=1.0)[0] == "b"  # 2 points > 1
    assert choose(wide, ["a", "b"], "margin", margin=2.5)[0] == "a"
    # gains 0.02, 0.025, 0.015: sd 0.005, half width 0.01242: low 0.0076 > 0
    narrow = {"a": a, "b": [0.52, 0.625, 0.715], "c": [0.51, 0.61, 0.71], "d": [0.53, 0.64, 0.725]}
    assert choose(narrow, ["a", "b"], "paired")[0] == "b"
    # c: a point interval (every gain 0.01) is no evidence; d: proven and ahead of b
    assert choose(narrow, ["a", "c"], "paired")[0] == "a"
    assert choose(narrow, ["a", "b", "c", "d"], "paired")[0] == "d"
    assert choose(narrow, ["a", "c", "b"], "paired")[0] == "b"
    one = {"a": [0.5], "b": [0.9]}  # one seed: no interval
    chosen, gain = choose(one, ["a", "b"], "paired")
    assert chosen == "a" and gain["b"][0] == pytest.approx(0.4) and gain["b"][1:] == [None, None]
    assert choose(one, ["a"], "paired")[0] == "a" and choose(one, ["a"], "margin")[0] == "a"
    with pytest.raises(ValueError, match="rule: expected one of paired, margin"):
        choose(one, ["a", "b"], "vote")


def test_large_budgets_without_pruning_candidates_take_the_fallback_unvalidated():
    fds = _digits_features()
    run = dsquant.compress(fds, ratio=0.5, method=Validated(max_per_class=50, pruning_candidates=()), seed=2)
    rec = run.manifest["validated"]
    assert rec["chosen"] == "dq-budget" and not rec["validated"] and "accuracy" not in rec and "max_per_class" in rec["reason"]
    lines = Validated.report(run.manifest)  # `dsquant info`: the reason, then the chosen method's own lines
    assert "not validated" in lines[1] and any(line.startswith("  dq-budget: skew 0") for line in lines)
    assert np.array_equal(run.indices, dsquant.compress(fds, ratio=0.5, method="dq-budget", seed=2).indices)
    other = dsquant.compress(fds, ratio=0.5, method=Validated(fallback="herding", max_per_class=50, pruning_candidates=()), seed=2)
    assert np.array_equal(other.indices, herding(fds.features, len(other.indices), fds.labels))


def test_images_train_the_model_on_the_pool():
    from dsquant.cache import Cache
    from dsquant.embed import ProxyEncoder, embed
    from dsquant.evaluate import train_and_test

    ds = dsquant.data.load_digits()
    m = 20  # 2 per class
    method = Validated(n_seeds=1, candidates=("herding", "random"))
    run = dsquant.compress(ds, ratio=m / len(ds), method=method, epochs=1, seed=0)
    rec = run.manifest["validated"]
    emb, hit = embed(ProxyEncoder(epochs=1, seed=0), ds, Cache())
    assert hit["cached"]  # the run's embedding, as the run computed it
    held = validation_indices(ds.labels, 1 / 6, 0)
    rows = np.setdiff1d(np.arange(len(ds)), held)
    pool, val = ds.subset(rows), ds.subset(held)
    idx = herding(emb.features[rows], m, pool.labels)
    assert rec["accuracy"]["herding"] == [pytest.approx(train_and_test(pool, idx, val, "mlp", "lowbudget", seed=0)["accuracy"])]
    a = rec["accuracy"]
    assert 0.0 < a["random"][0] < 1.0 and rec["chosen"] == ("random" if a["random"][0] > a["herding"][0] + 0.01 else "herding")


def test_bad_parameters_and_data():
    for bad, match in (
        (dict(candidates=("dq", "nope")), "candidates: 'nope' is not a method"),
        (dict(candidates=("adq",)), "candidates: 'adq' trains or reads pixels"),
        (dict(candidates=()), "candidates: expected distinct"),
        (dict(candidates=("dq", "dq")), "candidates: expected distinct"),
        (dict(candidates="dq"), "candidates: expected distinct"),
        (dict(fraction=0), "fraction: expected a share"),
        (dict(n_seeds=0), "n_seeds: expected an integer >= 1"),
        (dict(arch="vgg99"), "arch: expected one of"),
        (dict(max_per_class=-1), "max_per_class: expected a positive"),
        (dict(margin=-0.5), "margin: expected points"),
        (dict(rule="best"), "rule: expected one of paired, margin"),
        (dict(fallback="adq"), "fallback: 'adq' trains or reads pixels"),
        (dict(fallback="nope"), "fallback: 'nope' is not a method"),
        (dict(pruning_candidates=("dq", "adq")), "pruning_candidates: 'adq' trains or reads pixels itself; validated takes embedding methods .* and the training-dynamics"),
        (dict(candidates=("dq", "el2n")), "candidates: 'el2n' trains or reads pixels"),
        (dict(pruning_preset="slow"), "pruning_preset: expected one of"),
    ):
        with pytest.raises(ValueError, match=match):
            Validated(**bad)


def test_what_cannot_be_validated_takes_the_first_candidate():
    fds = _digits_features()
    unlabelled = dsquant.data.FeatureDataset(fds.features, None, [], "pool.npy")
    run = dsquant.compress(unlabelled, ratio=0.1, method="validated", seed=1)
    assert run.manifest["validated"]["reason"].startswith("no labels") and not run.manifest["validated"]["validated"]
    assert np.array_equal(run.indices, dsquant.compress(unlabelled, ratio=0.1, method="dq-budget", seed=1).indices)
    # 12 samples per class and 10 bins: the pool (10 per class) still bins, 11 would not
    small = np.concatenate([np.flatnonzero(fds.labels == c)[:12] for c in range(10)])
    tiny = dsquant.data.FeatureDataset(fds.features[small], fds.labels[small], fds.classes, "tiny")
    assert Validated().skip_reason(tiny, 0.1) is None
    assert "no validation split" in Validated(fraction=0.25).skip_reason(tiny, 0.1)  # 3 held out, 9 < 10 bins
    assert "max_per_class" in Validated(max_per_class=1, pruning_candidates=()).skip_reason(tiny, 0.1)
    assert Validated(max_per_class=1).skip_reason(tiny, 0.1) is None  # the pruning candidates are validated


def test_pruning_regime_matches_a_naive_validation(tmp_path):
    """At max_per_class or more per class: the pruning candidates (dq-budget, EL2N, CCS), the
    dynamics of the whole set restricted to the pool, and the paired rule."""
    from scipy import stats

    from dsquant.cache import Cache
    from dsquant.core import baselines as B
    from dsquant.embed import IdentityEncoder, embed
    from dsquant.methods import Context
    from dsquant.methods.dynamics import training_dynamics

    fds = _digits_features()
    n, ratio = len(fds), 0.8  # 144 per class: the pruning regime at max_per_class 50
    method = Validated(max_per_class=50)
    run = dsquant.compress(fds, ratio=ratio, method=method, seed=3, cache_dir=tmp_path)
    rec = run.manifest["validated"]
    held = validation_indices(fds.labels, 1 / 6, 0)
    rows = np.setdiff1d(np.arange(n), held)
    pool = dsquant.data.FeatureDataset(fds.features[rows], fds.labels[rows], fds.classes, "pool")
    r = ratio  # pruning: the run's keep ratio of the pool
    m = round(r * len(rows))
    dyn = training_dynamics(Context(fds, ratio, 3, make_encoder=IdentityEncoder, embed=embed, cache=Cache(tmp_path / "ref")), 5, 2)
    el2n = B.el2n_scores(dyn["probs"][:, rows], pool.labels)  # scored on the whole set, read on the pool
    pick = {
        "dq-budget": lambda s: dsquant.compress(pool, ratio=r, method="dq-budget", seed=s).indices,
        "el2n": lambda s: B.select_by_score(el2n, r, pool.labels, largest=True),
        "ccs": lambda s: B.ccs_sample(el2n, r, None, n_strata=50, cutoff=min(0.1, 1 - r), seed=s),
    }
    acc = {}
    for name, f in pick.items():
        acc[name] = []
        for s in range(5):
            idx = f(s)
            assert len(idx) == m
            acc[name].append(logreg_accuracy(pool.features[idx], pool.labels[idx], fds.features[held], fds.labels[held], seed=s))
    assert rec["accuracy"] == acc and rec["regime"] == "pruning" and rec["preset"] == "pruning"
    # the paired rule: a rival replaces dq-budget only when its 95 % t interval of the gain is above 0
    low = {}
    for k in ("el2n", "ccs"):
        d = np.subtract(acc[k], acc["dq-budget"])
        low[k] = d.mean() - stats.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
        assert rec["gain"][k][1] == pytest.approx(low[k])
    proven = [k for k in ("el2n", "ccs") if low[k] > 0]
    assert proven == ["el2n"]  # on these pixels EL2N is ahead at 80 % and CCS is not: the switch is exercised
    assert rec["chosen"] == "el2n"
    assert np.array_equal(run.indices, dsquant.compress(fds, ratio=ratio, method="el2n", seed=3, cache_dir=tmp_path).indices)
    # the dynamics train with the run's proxy_seed (here its seed): another one validates again
    assert dsquant.compress(fds, ratio=ratio, method=method, seed=3, cache_dir=tmp_path).manifest["validated"]["cached"]
    assert not dsquant.compress(fds, ratio=ratio, method=method, seed=4, cache_dir=tmp_path).manifest["validated"]["cached"]
    lines = Validated.report(run.manifest)
    assert "pruning regime" in lines[1] and any(line.strip().startswith("el2n minus dq-budget: +") for line in lines)
    # one seed has no interval: the incumbent stays; no pruning candidates: unvalidated
    one = dsquant.compress(fds, ratio=ratio, method=Validated(max_per_class=50, n_seeds=1), seed=3, cache_dir=tmp_path).manifest["validated"]
    assert one["chosen"] == "dq-budget" and one["gain"]["el2n"][1] is None and one["gain"]["el2n"][0] > 0
    off = dsquant.compress(fds, ratio=ratio, method=Validated(max_per_class=50, pruning_candidates=()), seed=3).manifest["validated"]
    assert not off["validated"] and "no pruning_candidates" in off["reason"]
    assert Validated(pruning_candidates=None).pruning_candidates == ()
    # seed-independent selections (EL2N, margin) scored by the deterministic regression: every
    # paired difference is the same, the interval a point, no evidence: the incumbent stays
    point = dsquant.compress(fds, ratio=0.6, method=Validated(max_per_class=50, pruning_candidates=("el2n", "margin")), seed=3, cache_dir=tmp_path).manifest["validated"]
    m, lo, hi = point["gain"]["margin"]
    assert m > 0 and lo == hi == m and point["chosen"] == "el2n", point  # ahead, but no evidence
    # the candidates' order is part of the cached choice (the first is the incumbent)
    swapped = dsquant.compress(fds, ratio=0.6, method=Validated(max_per_class=50, pruning_candidates=("margin", "el2n")), seed=3, cache_dir=tmp_path).manifest["validated"]
    assert not swapped["cached"] and swapped["chosen"] == "margin" and list(swapped["gain"]) == ["el2n"]



def test_pruning_regime_on_images_trains_the_pruning_preset_on_the_pool():
    from dsquant.cache import Cache
    from dsquant.core import baselines as B
    from dsquant.embed import ProxyEncoder, embed
    from dsquant.evaluate import train_and_test
    from dsquant.methods import Context
    from dsquant.methods.dynamics import training_dynamics

    ds = dsquant.data.load_digits()
    method = Validated(max_per_class=50, n_seeds=1, pruning_candidates=("dq-budget", "el2n"))
    run = dsquant.compress(ds, ratio=0.8, method=method, epochs=1, seed=0)
    rec = run.manifest["validated"]
    held = validation_indices(ds.labels, 1 / 6, 0)
    rows = np.setdiff1d(np.arange(len(ds)), held)
    pool, val = ds.subset(rows), ds.subset(held)
    ctx = Context(ds, 0.8, 0, make_encoder=lambda: ProxyEncoder(epochs=1, seed=0), embed=embed, cache=Cache())
    dyn = training_dynamics(ctx, 5, 2)
    assert all(r["cached"] for r in dyn["runs"])  # the run's dynamics, of the whole set
    idx = B.select_by_score(B.el2n_scores(dyn["probs"][:, rows], pool.labels), 0.8, pool.labels, largest=True)
    assert rec["accuracy"]["el2n"] == [pytest.approx(train_and_test(pool, idx, val, "mlp", "pruning", seed=0)["accuracy"])]
    # version 5: 144 per class (from ccs_from 100) and no pruning ccs: CCS with the large cut is
    # a candidate, its cut min(0.5, 1 - 0.8), class-balanced, on the pool's rows of the dynamics
    idx = B.ccs_sample(B.el2n_scores(dyn["probs"][:, rows], pool.labels), 0.8, pool.labels, n_strata=50, cutoff=1 - 0.8, seed=0)
    assert list(rec["accuracy"]) == ["dq-budget", "el2n", "ccs(cutoff=0.5)"]
    assert rec["accuracy"]["ccs(cutoff=0.5)"] == [pytest.approx(train_and_test(pool, idx, val, "mlp", "pruning", seed=0)["accuracy"])]
    assert rec["preset"] == "pruning" and rec["chosen"] == "dq-budget"  # one seed: no interval, the incumbent stays


def test_without_a_cache_the_dynamics_train_once_per_run(monkeypatch):
    """Validation and the chosen dynamics method share the run's dynamics (``ctx.dynamics``):
    with the cache off they are not trained again for the final selection."""
    import dsquant.methods.dynamics as D

    calls = []
    real = D.training_dynamics

    def counted(ctx, *a, **k):
        calls.append(len(ctx.dataset))
        return real(ctx, *a, **k)

    monkeypatch.setattr(D, "training_dynamics", counted)
    fds = _digits_features()
    run = dsquant.compress(fds, ratio=0.8, method=Validated(max_per_class=50, pruning_candidates=("el2n", "ccs")), seed=3, use_cache=False)
    assert run.manifest["validated"]["validated"] and calls == [len(fds)]  # once, on the whole set


def test_hundreds_per_class_add_ccs_with_the_large_cut(monkeypatch):
    """Version 4: from ccs_from per class on images, CCS (class-balanced, hard cut ccs_cutoff)
    is a small-budget candidate: trained on its pool selection from the whole set's dynamics,
    and, when chosen, it selects with that cut (not the pruning regime's ccs, cut 0.1)."""
    from dsquant.cache import Cache
    from dsquant.core import baselines as B
    from dsquant.embed import ProxyEncoder, embed
    from dsquant.evaluate import train_and_test
    from dsquant.methods import CCS, Context
    from dsquant.methods import validated as V
    from dsquant.methods.dynamics import training_dynamics

    ds = dsquant.data.load_digits()
    m = 10 * 10  # 10 per class
    method = Validated(n_seeds=1, candidates=("herding",), ccs_from=10, ccs_cutoff=0.5)
    assert [x.name for x in method._regime_methods("lowbudget", ds, m / len(ds))] == ["herding", "ccs"]
    assert [x.name for x in method._regime_methods("lowbudget", ds, 90 / len(ds))] == ["herding"]  # 9 per class
    assert [x.name for x in Validated(ccs_from=None)._regime_methods("lowbudget", ds, m / len(ds))] == ["dq", "dq-budget", "herding", "herding-drop"]
    assert [x.name for x in method._regime_methods("lowbudget", _digits_features(), m / 1797)] == ["herding"]  # images only
    # version 5: in the pruning regime too, where its cut at the keep ratio is above the pruning ccs's
    pruning = Validated(max_per_class=50, ccs_from=10, ccs_cutoff=0.5)
    for ratio, want in ((0.5, True), (0.8, True), (0.9, False), (0.95, False)):  # cut min(0.5, 1 - r) against min(0.1, 1 - r)
        names = [pruning.label(x) for x in pruning._regime_methods("pruning", ds, ratio)]
        assert names == ["dq-budget", "el2n", "ccs", *(["ccs(cutoff=0.5)"] if want else [])], (ratio, names)
    assert [x.name for x in Validated(max_per_class=50, ccs_from=None)._regime_methods("pruning", ds, 0.5)] == ["dq-budget", "el2n", "ccs"]
    assert [x.name for x in Validated(max_per_class=50, pruning_candidates=("el2n",))._regime_methods("pruning", ds, 0.9)] == ["el2n", "ccs"]  # no pruning ccs: its cut 0.1 is above none
    assert [x.name for x in pruning._regime_methods("pruning", _digits_features(), 0.5)] == ["dq-budget", "el2n", "ccs"]  # images only
    assert Validated(max_per_class=50, pruning_candidates=())._regime_methods("pruning", ds, 0.5) == []
    monkeypatch.setattr(V, "choose", lambda acc, names, rule, margin: ("ccs(cutoff=0.5)", {}))
    run = dsquant.compress(ds, ratio=m / len(ds), method=method, epochs=1, seed=0)
    rec = run.manifest["validated"]
    held = validation_indices(ds.labels, 1 / 6, 0)
    rows = np.setdiff1d(np.arange(len(ds)), held)
    pool, val = ds.subset(rows), ds.subset(held)
    ctx = Context(ds, m / len(ds), 0, make_encoder=lambda: ProxyEncoder(epochs=1, seed=0), embed=embed, cache=Cache())
    dyn = training_dynamics(ctx, 5, 2)
    assert all(r["cached"] for r in dyn["runs"])  # the run's dynamics, of the whole set
    idx = B.ccs_sample(B.el2n_scores(dyn["probs"][:, rows], pool.labels), m / len(rows), pool.labels, n_strata=50, cutoff=0.5, seed=0)
    assert rec["accuracy"]["ccs(cutoff=0.5)"] == [pytest.approx(train_and_test(pool, idx, val, "mlp", "lowbudget", seed=0)["accuracy"])]
    assert rec["chosen"] == "ccs(cutoff=0.5)" and rec["regime"] == "lowbudget"
    whole = B.ccs_sample(B.el2n_scores(dyn["probs"], ds.labels), m / len(ds), ds.labels, n_strata=50, cutoff=0.5, seed=0)
    assert np.array_equal(run.indices, whole)
    assert np.array_equal(run.indices, dsquant.compress(ds, ratio=m / len(ds), method=CCS(cutoff=0.5, balance=True), epochs=1, seed=0).indices)
    with pytest.raises(ValueError, match="ccs_from"):
        Validated(ccs_from=0)
    with pytest.raises(ValueError, match="cutoff"):
        Validated(ccs_cutoff=1.0)
