import csv
import sqlite3
from dataclasses import replace

import numpy as np
import pytest

from dsquant.cli import main
from dsquant.data import load_digits
from dsquant.evaluate import ARCHITECTURES, PRESETS, Grid, Preset, run_grid, summarise, train_and_test, write_reports

TINY = Preset("tiny", ("mlp",), samples=20000, min_epochs=2, max_epochs=40, lr=0.1, schedule="onecycle", batch_size=64)


def test_presets_follow_the_protocols():
    paper = PRESETS["paper"]
    assert paper.archs == ("resnet18",) and paper.epochs_for(5000) == 200
    assert (paper.lr, paper.momentum, paper.weight_decay, paper.schedule) == (0.1, 0.9, 5e-4, "cosine")
    assert paper.batch_for(0.1, 5000) == 16 and paper.batch_for(0.2, 10000) == 128
    cpu = PRESETS["cpu"]
    # a sample budget: about the same compute at every keep ratio, within the epoch bounds
    assert cpu.epochs_for(500) == 30 and cpu.epochs_for(5000) == 3 and cpu.epochs_for(50000) == 2
    long = PRESETS["cpu-long"]
    assert long.epochs_for(500) == 200 and long.epochs_for(5000) == 20 and long.epochs_for(50000) == 2
    low = PRESETS["lowbudget"]  # a fixed 200 epochs at every budget, batch 32 (or the subset)
    assert low.epochs_for(10) == low.epochs_for(500) == 200 and low.batch_for(1e-4, 10) == 10 and low.batch_for(0.01, 600) == 32
    assert low.augment
    prune = PRESETS["pruning"]  # converged training of the MLP at 30-90 % keep, no augmentation
    assert prune.archs == ("mlp",) and prune.epochs_for(18_000) == prune.epochs_for(54_000) == 10
    assert prune.batch_for(0.3, 18_000) == 256 and not prune.augment
    assert "logreg" in ARCHITECTURES and all(a in ARCHITECTURES for a in cpu.archs)
    assert not any(a.startswith("proxy") for a in ARCHITECTURES)


def test_summarise_mean_and_sample_std():
    rows = [{"arch": "a", "accuracy": x} for x in (0.5, 0.7, 0.9)] + [{"arch": "b", "accuracy": 0.4}]
    s = {r["arch"]: r for r in summarise(rows)}
    assert s["a"]["mean"] == pytest.approx(0.7) and s["a"]["std"] == pytest.approx(0.2) and s["a"]["n"] == 3
    assert s["b"]["std"] == 0.0


def test_training_beats_chance_and_more_data_helps():
    train, test = load_digits("train"), load_digits("test")
    rng = np.random.default_rng(0)
    small = rng.choice(len(train), 50, replace=False)
    r_small = train_and_test(train, small, test, "mlp", TINY, seed=0)
    r_all = train_and_test(train, np.arange(len(train)), test, "mlp", TINY, seed=0)
    assert r_small["n_train"] == 50 and r_all["n_train"] == 1437
    assert 0.3 < r_small["accuracy"] < r_all["accuracy"]
    assert r_all["accuracy"] > 0.85
    again = train_and_test(train, small, test, "mlp", TINY, seed=0)
    assert again["accuracy"] == r_small["accuracy"]  # seeded: the same run twice
    lr = train_and_test(train, np.arange(len(train)), test, "logreg", TINY)
    assert lr["accuracy"] > 0.85


def test_evaluate_cli_on_digits(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(PRESETS, "cpu", Preset("cpu", ("mlp",), samples=10000, min_epochs=2, max_epochs=40, lr=0.1, schedule="onecycle"))
    out = tmp_path / "d"
    assert main(["compress", "digits", "--method", "random", "--ratio", "0.2", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--seeds", "0", "1", "--quiet", "--json", str(tmp_path / "r.json")]) == 0
    stdout = capsys.readouterr().out
    assert "287 training samples (selected images), 360 test samples" in stdout and "mlp" in stdout
    import json

    res = json.loads((tmp_path / "r.json").read_text())
    assert len(res["runs"]) == 2 and res["summary"][0]["n"] == 2
    assert all(0.5 < r["accuracy"] <= 1 for r in res["runs"])


def test_benchmark_grid_resumes_and_reports(tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "tiny", TINY)
    grid = Grid(["digits"], ["full", "random", "dq"], [0.1, 0.3], ["mlp", "logreg"], [0, 1], "tiny", {"n_bins": 3, "epochs": 1})
    db = run_grid(grid, tmp_path, progress=False, log=lambda *a: None)
    con = sqlite3.connect(db)
    n = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    # full: 1 ratio; random, dq: 2 ratios; x 2 archs x 2 seeds
    assert n == (1 + 2 + 2) * 2 * 2
    con.execute("DELETE FROM results WHERE method='dq' AND ratio=0.3 AND seed=1 AND arch='mlp'")
    con.commit()
    messages = []
    run_grid(grid, tmp_path, progress=False, log=messages.append)
    assert "19 already done, 1 to run" in messages[0]
    assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == n
    paths = write_reports(db, tmp_path, title="digits")
    rows = list(csv.DictReader(open(paths["csv"])))
    assert len(rows) == n and {r["method"] for r in rows} == {"full", "random", "dq"}
    md = paths["md"].read_text()
    assert "## digits / mlp" in md and "| random |" in md and "full (100 %)" in md
    assert paths["png"].stat().st_size > 10_000
    # the same selection is reused by every architecture of a cell
    sel = con.execute("SELECT COUNT(*) FROM selections WHERE method='dq'").fetchone()[0]
    assert sel == 2 * 2


def test_benchmark_proxy_seed_per_seed(tmp_path, monkeypatch):
    """--proxy-seed seed: every seed's selection comes from its own proxy (compress gets
    proxy_seed = seed), and those rows are keyed apart from the one-proxy rows."""
    import dsquant.pipeline as pipeline
    from dsquant.cli import main

    calls = []
    real = pipeline.compress

    def spy(*args, **kwargs):
        calls.append((kwargs["method"], kwargs["seed"], kwargs["proxy_seed"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "compress", spy)
    monkeypatch.setitem(PRESETS, "tiny", TINY)
    grid = Grid(["digits"], ["random", "dq"], [0.1], ["logreg"], [0, 1, 2], "tiny", {"n_bins": 3, "epochs": 1, "proxy_seed": "seed"})
    db = run_grid(grid, tmp_path / "a", progress=False, log=lambda *a: None)
    assert sorted(c for c in calls if c[0] == "dq") == [("dq", 0, 0), ("dq", 1, 1), ("dq", 2, 2)]
    options = {r[0] for r in sqlite3.connect(db).execute("SELECT options FROM results WHERE method='dq'")}
    assert len(options) == 1 and '"proxy_seed": "seed"' in options.pop()
    calls.clear()
    run_grid(Grid(["digits"], ["dq"], [0.1], ["logreg"], [0, 1, 2], "tiny", {"n_bins": 3, "epochs": 1}), tmp_path / "b", progress=False, log=lambda *a: None)
    assert sorted(calls) == [("dq", 0, 0), ("dq", 1, 0), ("dq", 2, 0)]  # the default: one proxy
    assert main(["benchmark", "--data", "digits", "--proxy-seed", "every", "--out", str(tmp_path / "c")]) != 0
    assert not (tmp_path / "c").exists()


def test_validation_split_and_per_class_budgets(tmp_path, monkeypatch):
    """The low-budget protocols: budgets in samples per class become keep ratios per dataset;
    a validation split carved from the training set, class-balanced, disjoint, seeded."""
    from dsquant.evaluate.protocols import per_class_ratio, validation_split

    ds = load_digits()
    pool, val = validation_split(ds, fraction=0.2, seed=3)
    counts = np.bincount(ds.labels)
    assert np.array_equal(np.bincount(val.labels), np.round(0.2 * counts).astype(int))
    assert len(pool) + len(val) == len(ds) and pool.split == "train-pool" and val.split == "train-val"
    # disjoint and together the training set: every image appears once (digits has no duplicates per label)
    rows = {(im.tobytes(), int(y)) for im, y in zip(np.concatenate([pool.images, val.images]), np.concatenate([pool.labels, val.labels]))}
    assert len(rows) == len({(im.tobytes(), int(y)) for im, y in zip(ds.images, ds.labels)})
    assert pool.fingerprint() != ds.fingerprint()
    again, _ = validation_split(ds, fraction=0.2, seed=3)
    assert np.array_equal(again.images, pool.images)
    assert per_class_ratio(10, ds) == pytest.approx(100 / 1437)
    with pytest.raises(ValueError, match=r"per_class: 200 per class of 1437 samples is a keep ratio of 1.392, outside \(0, 1\]"):
        per_class_ratio(200, ds)

    monkeypatch.setitem(PRESETS, "tiny", TINY)
    grid = Grid(["digits"], ["random"], [], ["logreg"], [0], "tiny", per_class=[2, 5])
    db = run_grid(grid, tmp_path, progress=False, log=lambda *a: None)
    rows = sqlite3.connect(db).execute("SELECT ratio, n_train FROM results ORDER BY ratio").fetchall()
    assert [n for _, n in rows] == [20, 50] and rows[0][0] == pytest.approx(20 / 1437)


def test_preset_augmentation_reaches_the_training(monkeypatch):
    import dsquant.training as training
    from dsquant.data import load_digits

    seen = []
    real_fit = training.fit

    def spy(model, x, y, cfg, *a, **k):
        seen.append(cfg.augment)
        return real_fit(model, x[:8], y[:8], replace(cfg, epochs=1), *a, **k)

    monkeypatch.setattr(training, "fit", spy)
    train, test = load_digits("train"), load_digits("test")
    for augment in (True, False):
        preset = Preset("t", ("mlp",), epochs=1, augment=augment)
        train_and_test(train, np.arange(40), test, "mlp", preset, seed=0)
    assert seen == [True, False]


def test_import_results_adds_a_results_csv_once_and_refuses_other_files(tmp_path):
    import csv

    from dsquant.data import DataError
    from dsquant.evaluate.grid import RESULT_COLUMNS, _rows, import_results, write_row_reports

    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RESULT_COLUMNS)
        w.writerow(["fm", "random", 0.1, "mlp", 0, "lowbudget", 0.8125, 600, 30, 10, 4.5, "{}", "abc"])
        w.writerow(["fm", "dq", 0.1, "mlp", 0, "lowbudget", 0.8250, 600, 30, 10, 5.5, '{"n_bins": 10}', "abc"])
    db = tmp_path / "out" / "results.sqlite"
    assert import_results(db, path, log=lambda *_: None) == 2
    assert import_results(db, path, log=lambda *_: None) == 0  # the same cells: kept, not doubled
    rows = sorted(_rows(db), key=lambda r: r["method"])
    assert [(r["method"], r["accuracy"], r["seed"], r["options"]) for r in rows] == [("dq", 0.825, 0, '{"n_bins": 10}'), ("random", 0.8125, 0, "{}")]
    # the logistic regression has no epochs and no batch size: its rows, as the reports write
    # them, import back
    logreg = {"dataset": "fm", "method": "random", "ratio": 0.1, "arch": "logreg", "seed": 1, "preset": "lowbudget", "accuracy": 0.79, "n_train": 600, "epochs": None, "batch_size": None, "seconds": 0.3, "options": "{}", "fingerprint": "abc"}
    write_row_reports([logreg], tmp_path / "lr")
    assert import_results(db, tmp_path / "lr" / "results.csv", log=lambda *_: None) == 1
    (back,) = [r for r in _rows(db) if r["arch"] == "logreg"]
    assert (back["epochs"], back["batch_size"], back["accuracy"], back["n_train"]) == (None, None, 0.79, 600)
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="other.csv: not a dsquant results.csv"):
        import_results(db, bad)
