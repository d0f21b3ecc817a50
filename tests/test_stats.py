"""Issue 13: paired statistics of the benchmark reports (a method against class-balanced random,
matched by seed, Student's paired t interval)."""

import csv
import math
import random as pyrandom
import sqlite3

import numpy as np
import pytest
from scipy import stats as sps

from dsquant.cli import main
from dsquant.evaluate import summarise, write_reports
from dsquant.evaluate.grid import write_row_reports
from dsquant.evaluate.grid import SUMMARY_COLUMNS, _connect, summarise_grid
from dsquant.evaluate.stats import mean_interval, paired_difference, t_quantile

T_975_2 = 4.302652729911275  # t_{0.975, 2}, from tables (Student's t, 2 degrees of freedom)


def test_paired_difference_by_hand():
    # differences [1, 2, 3]: mean 2, sample sd 1, n 3
    d = paired_difference([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert (d.mean, d.std, d.n) == (pytest.approx(2.0), pytest.approx(1.0), 3)
    assert t_quantile(3) == pytest.approx(T_975_2, rel=1e-9)
    half = T_975_2 / math.sqrt(3)
    assert d.low == pytest.approx(2 - half) and d.high == pytest.approx(2 + half)
    assert d.low == pytest.approx(-0.4841, abs=1e-4) and not d.excludes_zero
    # shifted away from zero: [4, 5, 6] -> [5 - 2.484, 5 + 2.484] excludes 0
    e = paired_difference([4.0, 5.0, 6.0], [0.0, 0.0, 0.0])
    assert e.low == pytest.approx(5 - half) and e.excludes_zero
    # a negative difference is an interval below zero
    assert paired_difference([0.0, 0.0, 0.0], [4.0, 5.0, 6.0]).excludes_zero
    # another level: t_{0.95, 2} = 2.919986
    f = paired_difference([11.0, 12.0, 13.0], [10.0] * 3, confidence=0.9)
    assert f.high == pytest.approx(2 + 2.919986 / math.sqrt(3), abs=1e-6) and f.confidence == 0.9


def test_interval_excludes_zero_iff_paired_t_test_rejects():
    rng = np.random.default_rng(0)
    seen = set()
    for trial in range(300):
        n = int(rng.integers(2, 12))
        b = rng.normal(0.6, 0.02, n)
        a = b + rng.normal(rng.uniform(-0.02, 0.02), 0.01, n)
        d = paired_difference(a, b)
        p = sps.ttest_rel(a, b).pvalue
        assert d.excludes_zero == (p < 0.05), (trial, p, d)
        seen.add(d.excludes_zero)
        # the interval is the one-sample t interval of the differences
        lo, hi = sps.t.interval(0.95, n - 1, loc=np.mean(a - b), scale=sps.sem(a - b))
        assert (d.low, d.high) == (pytest.approx(lo), pytest.approx(hi))
    assert seen == {True, False}  # both outcomes were exercised


def test_unpaired_seeds_are_dropped_not_misaligned():
    a = {3: 0.70, 0: 0.60, 1: 0.62, 7: 0.99}  # seed 7: only the method has it
    b = {0: 0.50, 2: 0.10, 1: 0.51, 3: 0.58}  # seed 2: only random has it
    d = paired_difference(a, b)
    assert d.n == 3 and d.keys == (0, 1, 3)
    ref = paired_difference([0.60, 0.62, 0.70], [0.50, 0.51, 0.58])
    assert (d.mean, d.std, d.low, d.high) == pytest.approx((ref.mean, ref.std, ref.low, ref.high))
    # the wrong, positional pairing of the same values would give something else
    assert d.mean != pytest.approx(np.mean(np.array([0.70, 0.60, 0.62, 0.99]) - np.array([0.50, 0.10, 0.51, 0.58])))
    with pytest.raises(ValueError, match="paired by position"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(TypeError):
        paired_difference({0: 1.0}, [1.0])
    with pytest.raises(ValueError, match="finite"):
        paired_difference([1.0, float("nan")], [1.0, 2.0])


def test_fewer_than_two_pairs_have_no_interval():
    one = paired_difference({0: 0.7, 1: 0.8}, {0: 0.5})
    assert one.n == 1 and one.mean == pytest.approx(0.2)
    assert math.isnan(one.std) and math.isnan(one.low) and math.isnan(one.high) and one.excludes_zero is False
    none = paired_difference({1: 0.7}, {0: 0.5})
    assert none.n == 0 and math.isnan(none.mean) and none.excludes_zero is False
    assert all(math.isnan(x) for x in mean_interval([0.5]))


def test_mean_interval_and_summarise_confidence():
    x = [0.5, 0.7, 0.9]
    lo, hi = mean_interval(x)
    assert (lo, hi) == pytest.approx(sps.t.interval(0.95, 2, loc=0.7, scale=0.2 / math.sqrt(3)))
    rows = [{"arch": "a", "accuracy": v} for v in x] + [{"arch": "b", "accuracy": 0.4}]
    s = {r["arch"]: r for r in summarise(rows, confidence=0.95)}
    assert (s["a"]["ci_low"], s["a"]["ci_high"]) == pytest.approx((lo, hi))
    assert math.isnan(s["b"]["ci_low"]) and s["b"]["std"] == 0.0
    assert "ci_low" not in summarise(rows)[0]  # opt-in: evaluate's summary is unchanged


# ---- the benchmark reports, on a results database written by hand (no training) ------------

RANDOM = {0.1: [0.50, 0.52, 0.54], 0.2: [0.60, 0.61, 0.62]}
DQ = {0.1: [0.51, 0.54, 0.57], 0.2: [0.63, 0.65, 0.67]}  # differences [1, 2, 3] and [3, 4, 5] points


def _db(path, shuffle_seed=None, extra=(), preset="tiny", options='{"n_bins": 3}'):
    con = _connect(path, log=lambda *a: None)
    rows = [("digits", "fp", "full", 1.0, "mlp", s, preset, "{}", 0.9 + 0.01 * s) for s in range(3)]
    for method, table in (("random", RANDOM), ("dq", DQ)):
        opts = "{}" if method == "random" else options
        for ratio, accs in table.items():
            rows += [("digits", "fp", method, ratio, "mlp", s, preset, opts, acc) for s, acc in enumerate(accs)]
    rows += list(extra)
    if shuffle_seed is not None:
        pyrandom.Random(shuffle_seed).shuffle(rows)
    con.executemany(
        "INSERT INTO results (dataset, fingerprint, method, ratio, arch, seed, preset, options, accuracy, n_train, epochs, batch_size, seconds, created) "
        "VALUES (?,?,?,?,?,?,?,?,?, 10, 2, 64, 0.1, 'then')",
        rows,
    )
    con.commit()
    con.close()
    return path


def test_reports_give_the_paired_difference_from_random(tmp_path):
    db = _db(tmp_path / "a" / "results.sqlite")
    paths = write_reports(db, title="digits")
    md = paths["md"].read_text()
    assert "Student's paired t test" in md and "95 %" in md and "final training epoch" in md
    assert "3 seeds per cell." in md
    # +2.00 [2 - 2.48, 2 + 2.48]: includes 0, no star; +4.00 [+1.52, +6.48]: excludes 0
    assert "| dq | 54.00 ± 3.00 (+2.00 [-0.48, +4.48]) | 65.00 ± 2.00 (+4.00 [+1.52, +6.48]*) |" in md
    assert "| random | 52.00 ± 2.00 | 61.00 ± 1.00 |" in md
    assert "| full (100 %) | 91.00 ± 1.00 |" in md
    rows = list(csv.DictReader(open(paths["summary"])))
    assert list(rows[0]) == SUMMARY_COLUMNS
    assert [(r["method"], r["ratio"]) for r in rows] == [("random", "0.1"), ("random", "0.2"), ("dq", "0.1"), ("dq", "0.2"), ("full", "1.0")]
    dq = rows[3]
    assert float(dq["diff_vs_random"]) == pytest.approx(0.04) and float(dq["diff_std"]) == pytest.approx(0.01) and dq["n_pairs"] == "3"
    assert float(dq["diff_ci95_low"]) == pytest.approx(0.04 - 0.01 * T_975_2 / math.sqrt(3)) and dq["diff_excludes_zero"] == "True"
    assert rows[2]["diff_excludes_zero"] == "False"
    assert rows[0]["diff_vs_random"] == "" and rows[4]["diff_excludes_zero"] == ""  # random, full: none
    assert float(rows[0]["ci95_high"]) == pytest.approx(0.52 + 0.02 * T_975_2 / math.sqrt(3))
    assert len(list(csv.DictReader(open(paths["csv"])))) == 15  # results.csv: one row per training, as before
    assert paths["png"].stat().st_size > 10_000


def test_row_reports_match_the_database_reports(tmp_path):
    # the text benchmark's rows carry no epochs or batch size: the same tables, empty CSV cells
    rows = [
        {"dataset": "digits", "method": m, "ratio": r, "arch": "mlp", "seed": s, "preset": "tiny", "accuracy": a}
        for m, table in (("random", RANDOM), ("dq", DQ))
        for r, accs in table.items()
        for s, a in enumerate(accs)
    ]
    md = write_row_reports(rows, tmp_path / "out")["md"].read_text()
    assert "| dq | 54.00 ± 3.00 (+2.00 [-0.48, +4.48]) | 65.00 ± 2.00 (+4.00 [+1.52, +6.48]*) |" in md
    csv_rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert len(csv_rows) == 12 and csv_rows[0]["epochs"] == "" and csv_rows[0]["method"] == "dq"


def test_reports_never_overwrite_files_dsquant_did_not_write(tmp_path):
    rows = [{"dataset": "d", "method": "random", "ratio": 0.1, "arch": "mlp", "seed": s, "preset": "t", "accuracy": 0.5} for s in range(2)]
    write_row_reports(rows, tmp_path / "ours")
    again = write_row_reports(rows, tmp_path / "ours")  # a rerun replaces its own reports
    assert set(again) == {"csv", "summary", "md", "png"}
    for name, content in [("results.csv", b"my,own\n1,2\n"), ("summary.csv", b"x\n"), ("results.md", b"# my notes\n"), ("accuracy.png", b"not a png")]:
        out = tmp_path / name
        out.mkdir()
        (out / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{name}: exists and was not written by dsquant"):
            write_row_reports(rows, out)
        assert (out / name).read_bytes() == content and sorted(q.name for q in out.iterdir()) == [name]  # nothing written
    # a plot of an older dsquant (matplotlib's own Software mark) beside our results.csv is ours
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    legacy = tmp_path / "legacy"
    write_row_reports(rows, legacy)
    fig = plt.figure()
    fig.savefig(legacy / "accuracy.png")
    plt.close(fig)
    write_row_reports(rows, legacy)
    alone = tmp_path / "alone"
    alone.mkdir()
    fig = plt.figure()
    fig.savefig(alone / "accuracy.png")  # a user's matplotlib plot, with no report of ours beside it
    plt.close(fig)
    with pytest.raises(ValueError, match="accuracy.png: exists"):
        write_row_reports(rows, alone)


def test_reports_are_deterministic(tmp_path):
    outs = []
    for i, seed in enumerate([None, 1, 2]):  # the same rows inserted in other orders
        db = _db(tmp_path / str(i) / "results.sqlite", shuffle_seed=seed)
        paths = write_reports(db)
        outs.append({k: paths[k].read_bytes() for k in ("csv", "summary", "md")})
        again = write_reports(db)
        assert {k: again[k].read_bytes() for k in ("csv", "summary", "md")} == outs[-1]
    assert outs[0] == outs[1] == outs[2]


def test_reports_pair_by_seed_and_say_so(tmp_path):
    # dq has a seed random lacks (3): it counts in dq's mean, not in the difference
    extra = [("digits", "fp", "dq", 0.1, "mlp", 3, "tiny", '{"n_bins": 3}', 0.99)]
    db = _db(tmp_path / "results.sqlite", extra=extra)
    md = write_reports(db)["md"].read_text()
    assert "seeds per cell." not in md  # n differs between cells: every cell says its n
    assert "(n=4; +2.00 [-0.48, +4.48], 3 pairs)" in md
    assert "| random | 52.00 ± 2.00 (n=3) |" in md
    s = {(x["method"], x["ratio"]): x for x in summarise_grid(_read(db))}
    assert s[("dq", 0.1)]["diff"].keys == (("tiny", 0), ("tiny", 1), ("tiny", 2))


def test_reports_do_not_pair_mixed_runs(tmp_path):
    # another compress option set of dq, same seeds: without options= both are in the report,
    # and a seed has two dq runs; no difference is computed for them
    extra = [("digits", "fp", "dq", 0.1, "mlp", s, "tiny", '{"n_bins": 5}', 0.5) for s in range(3)]
    db = _db(tmp_path / "results.sqlite", extra=extra)
    md = write_reports(db)["md"].read_text()
    assert "not paired: several runs per seed" in md
    md = write_reports(db, options='{"n_bins": 3}')["md"].read_text()
    assert "(+2.00 [-0.48, +4.48])" in md


def _read(db):
    con = sqlite3.connect(str(db))
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM results")]
    con.close()
    return rows


def test_cli_benchmark_seeds(tmp_path, monkeypatch, capsys):
    import dsquant.evaluate

    seen = []

    def fake_run_grid(grid, out, device=None, progress=True, **kw):
        seen.append(list(grid.seeds))
        return _db(tmp_path / f"run{len(seen)}" / "results.sqlite", preset=grid.preset, options=grid.options_key())

    monkeypatch.setattr(dsquant.evaluate, "run_grid", fake_run_grid)
    base = ["benchmark", "--data", "digits", "--methods", "random", "dq", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "o1")]) == 0
    assert main([*base, "--out", str(tmp_path / "o2"), "--n-seeds", "4"]) == 0
    assert main([*base, "--out", str(tmp_path / "o3"), "--n-seeds", "4", "--seeds", "7", "8"]) == 0
    assert seen == [list(range(10)), [0, 1, 2, 3], [7, 8]]
    out = capsys.readouterr().out
    assert "summary.csv" in out and "(+4.00 [+1.52, +6.48]*)" in out
    assert main([*base, "--out", str(tmp_path / "o4"), "--n-seeds", "0"]) != 0
    assert "--n-seeds: expected an integer >= 1" in capsys.readouterr().err and len(seen) == 3


def test_results_md_says_which_proxy_runs_the_selections_used(tmp_path):
    """One proxy for every seed (the default), a new one per seed, or both: read from the rows'
    options; random's rows and rows without options say nothing."""
    from dsquant.evaluate.grid import proxy_protocol

    def rows(*options):
        out = [{"dataset": "d", "method": "random", "ratio": 0.1, "arch": "mlp", "seed": s, "preset": "t", "accuracy": 0.5, "options": "{}"} for s in range(2)]
        return out + [{"dataset": "d", "method": "dq", "ratio": 0.1, "arch": "mlp", "seed": s, "preset": "t", "accuracy": 0.6, "options": o} for s, o in enumerate(options)]

    one = rows('{"n_bins": 10}', '{"n_bins": 10}')
    md = write_row_reports(one, tmp_path / "one")["md"].read_text()
    assert "Proxy: one run (proxy seed 0) for every seed" in md and "leave out the proxy run's variance" in md
    assert proxy_protocol(rows('{"proxy_seed": 3}', '{"proxy_seed": 3}')).startswith("Proxy: one run (proxy seed 3)")
    per_seed = rows('{"n_bins": 10, "proxy_seed": "seed"}', '{"n_bins": 10, "proxy_seed": "seed"}')
    md = write_row_reports(per_seed, tmp_path / "per-seed")["md"].read_text()
    assert "Proxy: a new run per seed" in md and "one run" not in md
    assert proxy_protocol(rows('{"n_bins": 10}', '{"proxy_seed": "seed"}')) == "Proxy: rows of several protocols (proxy seeds 0, seed; `seed`: a new proxy per seed); compare within one."
    assert proxy_protocol(rows()) == "" and proxy_protocol([{k: v for k, v in r.items() if k != "options"} for r in one]) == ""
    md = write_row_reports(rows(), tmp_path / "random-only")["md"].read_text()
    assert "Proxy:" not in md


def test_plot_ticks_print_keep_ratios_as_the_table_columns(tmp_path, monkeypatch):
    import matplotlib.axes

    ticks = []
    original = matplotlib.axes.Axes.set_xticklabels

    def record(self, labels, *args, **kwargs):
        ticks.append(list(labels))
        return original(self, labels, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_xticklabels", record)
    # one image per class of a 60,000-image set: 1/6000, 0.0166667 % before, now 0.0167 as in the table
    extra = [("digits", "fp", "random", 1 / 6000, "mlp", s, "tiny", "{}", 0.3) for s in range(3)]
    paths = write_reports(_db(tmp_path / "results.sqlite", extra=extra))
    assert "| method | 0.0167 % | 10 % | 20 % |" in paths["md"].read_text()
    assert ticks == [["0.0167", "10", "20"]]
