"""Selection methods as objects in one registry (issue 12): a new method is one class and one
registry line, and the CLI, the benchmark grid and `dsquant info` take it unchanged."""

import numpy as np
import pytest

import dsquant
from dsquant.core import baselines as B
from dsquant.artifact import read_output
from dsquant.cli import main
from dsquant.data import load_digits
from dsquant.methods import ADQ, DQ, METHODS, Random, Selection, SelectionMethod, make_method, register_method


class EveryKth(SelectionMethod):
    """A toy method: every k-th sample of the dataset, as many as the budget."""

    name = "every-kth"
    summary = "every k-th sample (a test method)"
    needs_embedding = False

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset

    def config(self) -> dict:
        return {"offset": self.offset}

    def select(self, ctx) -> Selection:
        n = len(ctx.dataset)
        m = int(round(ctx.ratio * n))
        return Selection(np.sort((self.offset + np.arange(m) * (n // m)) % n).astype(np.int64), record={"offset": self.offset})

    @classmethod
    def report(cls, manifest):
        return [f"  every-kth offset {manifest[cls.name]['offset']}"]


@pytest.fixture
def toy():
    register_method(EveryKth)
    yield EveryKth
    METHODS.pop(EveryKth.name, None)


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_registered_method_runs_through_the_cli(tmp_path, capsys, toy):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "compress", "digits", "--method", "every-kth", "--ratio", "0.1", "--out", out, "--quiet")
    assert code == 0, err
    res = read_output(out)
    assert res.manifest["method"] == "every-kth" and res.manifest["every-kth"] == {"offset": 0}
    assert res.indices.tolist() == list(range(0, 1437, 1437 // 144))[:144]
    code, stdout, _ = run(capsys, "info", out)
    assert code == 0 and "every-kth offset 0" in stdout


def test_registered_method_runs_through_the_grid(tmp_path, toy):
    from dsquant.evaluate import Grid, run_grid, write_reports

    grid = Grid(["digits"], ["random", "every-kth"], [0.2], ["logreg"], [0], "cpu")
    db = run_grid(grid, tmp_path / "b", progress=False, log=lambda *a: None)
    paths = write_reports(db, tmp_path / "b", preset="cpu", options=grid.options_key())
    md = paths["md"].read_text()
    assert "| every-kth |" in md and "| random |" in md
    import sqlite3

    rows = sqlite3.connect(str(db)).execute("SELECT method, options FROM results ORDER BY method").fetchall()
    assert rows == [("every-kth", "{}"), ("random", "{}")]


def test_method_objects_and_names_give_the_same_indices(tmp_path):
    ds = load_digits()
    by_name = dsquant.compress(ds, ratio=0.1, method="random", seed=3)
    by_object = dsquant.compress(ds, ratio=0.1, method=Random(), seed=3)
    assert np.array_equal(by_name.indices, by_object.indices)
    f = np.random.default_rng(0).standard_normal((200, 6)).astype(np.float32)
    feats = dsquant.data.FeatureDataset(f, np.repeat(np.arange(4), 50), [])
    a = dsquant.compress(feats, ratio=0.2, method="dq", n_bins=5, seed=1)
    b = dsquant.compress(feats, ratio=0.2, method=DQ(n_bins=5), seed=1)
    assert np.array_equal(a.indices, b.indices) and all(np.array_equal(x, y) for x, y in zip(a.bins, b.bins))
    assert b.manifest["parameters"]["method"] == {"n_bins": 5, "precision": "float32", "block_size": None}


def test_parameters_are_stored_unchanged_and_checked_once():
    m = ADQ(n_bins=4, alpha=0.25, diversity_encoder="proxy")
    assert (m.n_bins, m.alpha, m.diversity_encoder) == (4, 0.25, "proxy")
    assert m.config()["alpha"] == 0.25 and repr(m).startswith("ADQ(n_bins=4")
    for bad, pattern in [
        (lambda: DQ(n_bins=0), "bins: expected an integer >= 1, got 0"),
        (lambda: DQ(n_bins=2.5), "bins: expected an integer >= 1, got 2.5"),
        (lambda: DQ(precision="float16"), "precision: expected 'float32' or 'float64', got 'float16'"),
        (lambda: ADQ(alpha=float("nan")), "alpha: expected a weight in [0, 1], got nan"),
        (lambda: ADQ(alpha=1.5), "alpha: expected a weight in [0, 1], got 1.5"),
        (lambda: ADQ(diversity_encoder="clip"), "diversity_encoder: expected one of"),
        (lambda: make_method("kmeans"), "method: expected one of dq, adq, dq-budget, validated, random, kcenter, herding"),
        (lambda: make_method("prototypes", n_clusters=0), "n_clusters: expected an integer >= 1, got 0"),
        (lambda: make_method("facility-location", metric="l1"), "metric: expected 'cosine' or 'euclidean', got 'l1'"),
    ]:
        with pytest.raises(ValueError) as exc:
            bad()
        assert str(exc.value).startswith(pattern), str(exc.value)


def test_register_method_refuses_what_is_not_a_new_method(toy):
    with pytest.raises(ValueError, match="exists"):
        register_method(type("Other", (SelectionMethod,), {"name": "every-kth"}))
    with pytest.raises(ValueError, match="SelectionMethod subclass"):
        register_method(object)
    assert register_method(EveryKth) is EveryKth  # the same class again is fine


def test_public_api_at_the_top_level():
    for name in ("compress", "open_run", "load_subset", "DQ", "ADQ", "Random", "generate_bins", "sample_uniform",
                 "sample_adaptive", "importance_scores", "texture_level", "GradientEmbedding", "DataError"):
        assert name in dsquant.__all__ and getattr(dsquant, name) is not None
    assert dsquant.open_run is dsquant.artifact.read_output


@pytest.mark.parametrize(
    "method, core",
    [
        ("kcenter", lambda X, n, y, r: B.kcenter_greedy(X, n, seed=7, labels=y)),
        ("herding", lambda X, n, y, r: B.herding(X, n, y)),
        ("facility-location", lambda X, n, y, r: B.facility_location(X, n, y)),
        ("moderate-ds", lambda X, n, y, r: B.moderate_ds(X, r, y)),
        ("prototypes", lambda X, n, y, r: B.prototype_select(X, r, y, n_clusters=10, seed=7)),
        ("typiclust", lambda X, n, y, r: B.typiclust(X, n, y, seed=7)),
    ],
)
def test_baseline_methods_are_their_core_functions_on_the_run(method, core):
    """A registered baseline selects exactly what its core function selects on the run's
    embedding, labels, budget and seed; class-balanced as sample_uniform."""
    from dsquant.data import FeatureDataset

    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 8)).astype(np.float32)
    y = np.repeat(np.arange(3), 100)
    res = dsquant.compress(FeatureDataset(X, y, []), ratio=0.1, method=method, seed=7)
    assert res.manifest["method"] == method and len(res.indices) == 30
    assert np.array_equal(res.indices, core(X, 30, y, 0.1))
    assert np.bincount(y[res.indices]).tolist() == [10, 10, 10]


def test_a_baseline_from_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "f.npz", features=rng.standard_normal((60, 4)).astype(np.float32), labels=np.repeat([0, 1], 30))
    code, stdout, err = run(capsys, "compress", tmp_path / "f.npz", "--method", "kcenter", "--ratio", "0.2", "--out", tmp_path / "o", "--quiet")
    assert code == 0, err
    assert "selected 12 of 60" in stdout


def test_the_proxy_is_fitted_once_for_every_stage(monkeypatch):
    """The embedding, ADQ's proxy diversity and the Grad-CAM++ patch scores share one fitted
    proxy: it is trained once per run, with or without a cache."""
    from dsquant.embed.proxy import ProxyEncoder

    calls = []
    real = ProxyEncoder.train

    def counted(self, dataset, progress=False):
        calls.append(id(self))
        return real(self, dataset, progress)

    monkeypatch.setattr(ProxyEncoder, "train", counted)
    ds = load_digits()
    res = dsquant.compress(ds, ratio=0.1, method=ADQ(n_bins=4, diversity_encoder="proxy"), epochs=1, drop_ratio=0.25, use_cache=False)
    assert len(calls) == 1 and res.manifest["pixels"]["drop_ratio"] == 0.25
    calls.clear()
    dsquant.compress(ds, ratio=0.1, method="random", epochs=1, drop_ratio=0.25, use_cache=False)
    assert len(calls) == 1  # random has no embedding: the pixel stage fits the proxy itself, once


def test_compress_and_open_run_give_one_run_type(tmp_path):
    run = dsquant.compress("digits", ratio=0.05, method="random", out=tmp_path / "r")
    back = dsquant.open_run(tmp_path / "r")
    assert type(run) is type(back) is dsquant.Run and run.path == back.path == tmp_path / "r"
    assert np.array_equal(run.indices, back.indices) and run.manifest == back.manifest
    assert run.open_dataset() is run.dataset  # held, not read again
    ds = back.open_dataset()  # read and checked by fingerprint
    assert ds.fingerprint() == run.dataset.fingerprint() and back.open_dataset() is ds


def test_an_encoder_object_is_used_as_given_and_fitted_once(monkeypatch):
    from dsquant.embed.proxy import ProxyEncoder

    ds = load_digits()
    by_name = dsquant.compress(ds, ratio=0.1, method=DQ(n_bins=4), encoder="proxy", epochs=1, proxy_width=8, use_cache=False)
    enc = ProxyEncoder(epochs=1, width=8)
    by_object = dsquant.compress(ds, ratio=0.1, method=DQ(n_bins=4), encoder=enc, use_cache=False)
    assert np.array_equal(by_name.indices, by_object.indices) and enc.model is not None
    calls = []
    monkeypatch.setattr(ProxyEncoder, "train", lambda self, *a, **k: calls.append(1))
    again = dsquant.compress(ds, ratio=0.1, method=ADQ(n_bins=4, diversity_encoder="proxy"), encoder=enc, use_cache=False, seed=1)
    assert calls == [] and len(again.indices) == 144  # the fitted proxy served the embedding and ADQ
    with pytest.raises(ValueError, match="encoder: expected a name"):
        dsquant.compress(ds, ratio=0.1, encoder=42)


class MeanColour:
    """A toy encoder: every image's mean colour per channel (N, C)."""

    name = "mean-colour"
    kinds = ("images",)
    summary = "mean colour (a test encoder)"
    argument = None
    cached = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def config(self) -> dict:
        return {"encoder": self.name}

    def encode(self, dataset, progress=False):
        from dsquant.embed import Embedding

        return Embedding(dataset.images.reshape(len(dataset), -1, dataset.image_shape[2]).mean(1).astype(np.float32))


@pytest.fixture
def toy_encoder():
    from dsquant.embed import ENCODERS, register_encoder

    register_encoder(MeanColour)
    yield MeanColour
    ENCODERS.pop(MeanColour.name, None)


def test_registered_encoder_runs_through_the_cli(tmp_path, capsys, toy_encoder):
    """An encoder is one class and one register_encoder: `--encoder NAME` then builds it with
    the shorthand options it takes (seed), and the run embeds with it; nothing is cached."""
    out = tmp_path / "run"
    cache = tmp_path / "cache"
    code, _, err = run(capsys, "compress", "digits", "--method", "kcenter", "--encoder", "mean-colour", "--ratio", "0.1", "--out", out, "--cache-dir", cache, "--quiet")
    assert code == 0, err
    res = read_output(out)
    assert res.manifest["parameters"]["encoder"] == {"encoder": "mean-colour"} and res.manifest["embedding"]["dim"] == 1
    ds = load_digits()
    feats = ds.images.reshape(len(ds), -1, 1).mean(1).astype(np.float32)
    assert np.array_equal(res.indices, np.sort(B.kcenter_greedy(feats, 144, seed=0, labels=ds.labels)))
    assert not list(cache.glob("embeddings/*"))  # cached = False is honoured


def test_make_encoder_names_kinds_and_errors(toy_encoder):
    from dsquant.embed import IdentityEncoder, PrecomputedEncoder, ProxyEncoder, SentenceEncoder, make_encoder

    assert isinstance(make_encoder(None, "images", epochs=3, model="ignored"), ProxyEncoder)
    assert make_encoder(None, "images", epochs=3).epochs == 3
    assert isinstance(make_encoder(None, "text"), SentenceEncoder) and isinstance(make_encoder(None, "features"), IdentityEncoder)
    assert make_encoder("features:/x.npy", "text").path.name == "x.npy" and isinstance(make_encoder("features:/x.npy"), PrecomputedEncoder)
    assert make_encoder("mean-colour", "images", seed=4).seed == 4
    with pytest.raises(ValueError, match=r"'pixels' embeds images, not text; for text use 'features:PATH', 'sentence'"):
        make_encoder("pixels", "text")
    for bad in ("clip", "features", "proxy:3", "features:"):
        with pytest.raises(ValueError, match=r"^encoder: expected one of .*'proxy'.*got"):
            make_encoder(bad, "images")


def test_an_unknown_encoder_is_refused_before_the_data_is_read(monkeypatch, tmp_path):
    import dsquant.pipeline as P

    monkeypatch.setattr(P, "read_dataset", lambda *a, **k: pytest.fail("the data was read"))
    with pytest.raises(ValueError, match="encoder: expected one of"):
        dsquant.compress("digits", encoder="clip", out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_import_dsquant_stays_light():
    """`import dsquant` (the core and the methods registry) loads no torch and no scikit-learn:
    the training code of the dynamics methods is imported on first use."""
    import subprocess
    import sys

    code = "import sys, dsquant, dsquant.methods; dsquant.METHODS; print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
