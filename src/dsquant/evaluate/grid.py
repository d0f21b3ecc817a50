"""``dsquant benchmark``: datasets x methods x keep ratios x architectures x seeds.

Every finished cell is a row of a SQLite file (committed at once), so a rerun skips it and a
killed run loses at most the cell in progress. Selections are stored too. Cells are keyed by
the dataset's content (its fingerprint), not its file name: another dataset of the same name,
or the same one edited, runs its own cells, and the reports tell same-named datasets apart by
fingerprint. The results are written as CSV (every training, and a summary), a Markdown table
(mean +- std over seeds, and each method's difference from random paired by seed with its 95 %
Student's t interval) and a PNG plot of accuracy against keep ratio (means with their 95 % t
intervals), one panel per architecture.

Methods: ``full`` (the whole training set) and every registered selection method
(:data:`dsquant.methods.METHODS`; ``random`` is class-balanced random sampling, seeded like the
others). Budgets are keep ratios, or samples per class (``per_class``). The proxy is computed
once per dataset (proxy seed 0, cached); the seed varies the sampling and the training.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifact import write_atomic
from ..methods import ADQ, DQ, DQBudget, Random
from .archs import get_architecture
from .harness import PRESETS, Preset, summarise, train_and_test

__all__ = ["CONFIDENCE", "DEFAULT_METHODS", "FULL", "Grid", "run_grid", "summarise_grid", "write_reports"]

FULL = "full"
"""The grid's reference row: the whole training set (not a selection method)."""
DEFAULT_METHODS = (Random.name, DQ.name, ADQ.name, DQBudget.name)


def methods_in_order(present) -> list[str]:
    """The registered method names in ``present`` (any container of names), in report order:
    the baseline (random) first, then the registry's order; names not registered are left out.

    Returns:
        list of str."""
    from ..methods import METHODS

    order = [Random.name, *[m for m in METHODS if m != Random.name]]
    return [m for m in order if m in present]


def _uses_options(method: str) -> bool:
    """Whether a method's results depend on the compress options (the encoder's, the bins')."""
    from ..methods import METHODS

    return method in METHODS and METHODS[method].needs_embedding

# Cells are keyed by the dataset's fingerprint (a hash of the decoded train and test splits), so
# two datasets of the same file name, or a dataset edited between runs, never share results;
# ``dataset`` is the readable name the reports show.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    dataset TEXT, fingerprint TEXT, method TEXT, ratio REAL, arch TEXT, seed INTEGER, preset TEXT, options TEXT,
    accuracy REAL, n_train INTEGER, epochs INTEGER, batch_size INTEGER, seconds REAL, created TEXT,
    PRIMARY KEY (fingerprint, method, ratio, arch, seed, preset, options)
);
CREATE TABLE IF NOT EXISTS selections (
    dataset TEXT, fingerprint TEXT, method TEXT, ratio REAL, seed INTEGER, options TEXT, indices BLOB, seconds REAL,
    PRIMARY KEY (fingerprint, method, ratio, seed, options)
);
"""


@dataclass
class Grid:
    """What to run.

    Attributes:
        datasets: dataset paths (or ``"digits"``); each needs a test split.
        methods: ``full`` and registered selection methods (:data:`dsquant.methods.METHODS`).
        ratios: keep ratios in (0, 1] (``full`` ignores them).
        archs: architecture names.
        seeds: seeds of sampling and training.
        preset: training preset name.
        compress_options: extra keyword arguments of :func:`dsquant.compress` (n_bins, epochs,
            embedding, alpha, ...); part of every cell's key.
        per_class: budgets in samples per class (low-budget protocols), in addition to
            ``ratios``: each becomes the keep ratio ``per_class * n_classes / N`` of every
            dataset (:func:`dsquant.evaluate.protocols.per_class_ratio`).
    """

    datasets: list[str]
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    ratios: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1, 0.2])
    archs: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    preset: str = "cpu"
    compress_options: dict = field(default_factory=dict)
    per_class: list[float] = field(default_factory=list)

    def ratios_for(self, train) -> list[float]:
        """The keep ratios of ``train``: ``ratios``, then the ``per_class`` budgets as ratios."""
        from .protocols import per_class_ratio

        return [float(r) for r in self.ratios] + [per_class_ratio(m, train) for m in self.per_class]

    def options_key(self, method: str = DQ.name) -> str:
        """The compress options that matter for ``method`` (none for full and random)."""
        return _method_options(method, json.dumps(self.compress_options, sort_keys=True))


def _method_options(method: str, options: str) -> str:
    """The options key a result row of ``method`` carries: random and full do not depend on the
    compress options."""
    return options if _uses_options(method) else "{}"


def _connect(path: Path, log=print) -> sqlite3.Connection:
    """Open (or create) the results database. Tables of an older dsquant, whose cells are keyed by
    the dataset's file name only, are renamed ``<table>_legacy`` (kept, not deleted) and their
    cells run again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(path))
    for table in ("results", "selections"):
        cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
        if cols and "fingerprint" not in cols:
            legacy = f"{table}_legacy"
            n = 1
            while con.execute("SELECT 1 FROM sqlite_master WHERE name=?", (legacy,)).fetchone():
                n += 1
                legacy = f"{table}_legacy{n}"
            rows = con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            con.execute(f"ALTER TABLE {table} RENAME TO {legacy}")
            log(f"benchmark: {path}: {rows} {table} rows of an older dsquant (keyed by file name, not content) moved to table {legacy}; their cells run again")
    con.executescript(_SCHEMA)
    con.commit()
    return con


def _name(dataset: str) -> str:
    return "digits" if dataset == "digits" else Path(dataset).name.split(".")[0]


def _fingerprint(train, test) -> str:
    """What identifies a dataset's content: its train and test splits' fingerprints."""
    return hashlib.blake2b(f"{train.fingerprint()}:{test.fingerprint()}".encode(), digest_size=16).hexdigest()


def _selection(con, grid: Grid, dataset: str, fingerprint: str, train, method: str, ratio: float, seed: int, cache_dir) -> np.ndarray:
    key = (fingerprint, method, ratio, seed, grid.options_key(method))
    row = con.execute(
        "SELECT indices FROM selections WHERE fingerprint=? AND method=? AND ratio=? AND seed=? AND options=?", key
    ).fetchone()
    if row is not None:
        return np.frombuffer(row[0], dtype=np.int64).copy()
    t = time.perf_counter()
    if method == FULL:
        idx = np.arange(len(train), dtype=np.int64)
    else:
        from ..pipeline import compress

        opts = dict(grid.compress_options)
        seed_proxy = opts.pop("proxy_seed", 0)
        if seed_proxy == "seed":  # a proxy per seed: the paired intervals include its variance
            seed_proxy = seed
        if not _uses_options(method):
            opts = {}
        res = compress(train, ratio=ratio, method=method, seed=seed, proxy_seed=seed_proxy, cache_dir=cache_dir, **opts)
        idx = res.indices
    con.execute(
        "INSERT OR REPLACE INTO selections (dataset, fingerprint, method, ratio, seed, options, indices, seconds) VALUES (?,?,?,?,?,?,?,?)",
        (_name(dataset), *key, idx.astype(np.int64).tobytes(), time.perf_counter() - t),
    )
    con.commit()
    return idx


def run_grid(grid: Grid, out: str | os.PathLike, device=None, progress: bool = True, cache_dir=None, log=print) -> Path:
    """Run every missing cell of ``grid``; results go to ``out/results.sqlite``.

    Every dataset is read first (from the decoded-dataset cache when it is there) to key its
    cells by content. A database of an older dsquant is migrated (see :func:`_connect`).

    Returns:
        The path of the SQLite file.
    """
    from tqdm.auto import tqdm

    from ..cache import Cache
    from ..data import read_dataset

    out = Path(out)
    db = out / "results.sqlite"
    con = _connect(db, log)
    preset: Preset = PRESETS[grid.preset]
    archs = grid.archs or list(preset.archs)
    for a in archs:
        get_architecture(a)
    from ..methods import METHODS

    for m in grid.methods:
        if m != FULL and m not in METHODS:
            raise ValueError(f"methods: unknown method {m!r}; expected {FULL} or one of {', '.join(METHODS)}")
    done = {
        tuple(r[:5])
        for r in con.execute("SELECT fingerprint, method, ratio, seed, arch, options FROM results WHERE preset=?", (grid.preset,))
        if r[5] == grid.options_key(r[1])
    }
    cache = Cache(cache_dir)
    splits: dict[str, tuple] = {}  # dataset -> (fingerprint, train, test), for those with cells to run
    cells, todo = 0, []
    for ds in grid.datasets:
        train, test = read_dataset(ds, "train", cache=cache), read_dataset(ds, "test", cache=cache)
        fp = _fingerprint(train, test)
        for method in grid.methods:
            for ratio in [1.0] if method == FULL else grid.ratios_for(train):
                for seed in grid.seeds:
                    for arch in archs:
                        cells += 1
                        if (fp, method, float(ratio), seed, arch) not in done:
                            todo.append((ds, method, float(ratio), seed, arch))
                            splits[ds] = (fp, train, test)
    log(f"benchmark: {cells} cells, {cells - len(todo)} already done, {len(todo)} to run -> {db}")
    bar = tqdm(total=len(todo), desc="benchmark", unit="cell", disable=not progress)
    for ds, method, ratio, seed, arch in todo:
        fp, train, test = splits[ds]
        bar.set_postfix_str(f"{_name(ds)} {method} {ratio:g} {arch} s{seed}")
        idx = _selection(con, grid, ds, fp, train, method, ratio, seed, cache_dir)
        r = train_and_test(train, idx, test, arch, preset, seed, len(idx) / len(train), device)
        con.execute(
            "INSERT OR REPLACE INTO results (dataset, fingerprint, method, ratio, arch, seed, preset, options, accuracy, n_train, epochs, batch_size, seconds, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (_name(ds), fp, method, ratio, arch, seed, grid.preset, grid.options_key(method), r["accuracy"], r["n_train"], r["epochs"], r["batch_size"], r["seconds"], time.strftime("%Y-%m-%dT%H:%M:%S")),
        )
        con.commit()
        bar.update(1)
    bar.close()
    con.close()
    return db


def import_results(db: str | os.PathLike, csv_path: str | os.PathLike, log=print) -> int:
    """Add the trainings of a ``results.csv`` (:data:`RESULT_COLUMNS`, as every benchmark report
    writes it) to the database ``db``; a cell already there is kept. A later run then skips
    those cells and its reports include them: how the rows of several runs (other machines,
    other budgets) become one leaderboard. Returns the number of rows added.

    ``epochs`` and ``batch_size`` may be empty (the non-neural ``logreg`` has neither).

    Raises:
        DataError: naming the file, if it is not a results.csv (another header) or a value does
            not parse.
    """
    import csv

    from ..errors import DataError

    path = Path(csv_path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != RESULT_COLUMNS:
            raise DataError(f"{path}: not a dsquant results.csv (expected the columns {', '.join(RESULT_COLUMNS)})")
        rows = []
        for line, values in enumerate(reader, start=2):
            r = dict(zip(header, values))
            try:
                rows.append((r["dataset"], r["fingerprint"], r["method"], float(r["ratio"]), r["arch"], int(r["seed"]), r["preset"], r["options"],
                             float(r["accuracy"]), int(r["n_train"]), _int_or_none(r["epochs"]), _int_or_none(r["batch_size"]), float(r["seconds"]), f"imported from {path.name}"))
            except (KeyError, ValueError) as exc:
                raise DataError(f"{path}: line {line}: {exc}") from None
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    con = _connect(Path(db), log)
    before = con.total_changes
    con.executemany("INSERT OR IGNORE INTO results (dataset, fingerprint, method, ratio, arch, seed, preset, options, accuracy, n_train, epochs, batch_size, seconds, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    con.commit()
    added = con.total_changes - before
    con.close()
    return added


def _int_or_none(value: str) -> int | None:
    """An integer column that a non-neural learner leaves empty (``logreg``: no epochs, no batch
    size; written as ``""``)."""
    return None if value == "" else int(value)


def _rows(db: Path, preset: str | None = None, options: str | None = None) -> list[dict]:
    """Result rows; with ``options``, dq/adq rows of those compress options (random and full
    rows do not depend on them)."""
    con = sqlite3.connect(str(db))
    con.row_factory = sqlite3.Row
    q = "SELECT * FROM results"
    args: list = []
    if preset is not None:
        q += " WHERE preset=?"
        args.append(preset)
    rows = [dict(r) for r in con.execute(q, args)]
    con.close()
    if options is not None:
        rows = [r for r in rows if r["options"] == _method_options(r["method"], options)]
    # datasets of the same name but different content (other folders, or edited) are told apart
    versions: dict[str, set] = {}
    for r in rows:
        versions.setdefault(r["dataset"], set()).add(r.get("fingerprint"))
    for r in rows:
        if len(versions[r["dataset"]]) > 1:
            r["dataset"] = f"{r['dataset']} [{str(r.get('fingerprint'))[:8]}]"
    return rows


CONFIDENCE = 0.95
"""Level of the reports' intervals (of a mean, and of a method's paired difference from random)."""

SUMMARY_COLUMNS = [
    "dataset", "arch", "method", "ratio", "n", "mean", "std", "ci95_low", "ci95_high",
    "diff_vs_random", "diff_std", "n_pairs", "diff_ci95_low", "diff_ci95_high", "diff_excludes_zero",
]
"""Columns of ``summary.csv``: accuracies as fractions in [0, 1], as in ``results.csv``."""


def _row_order(r: dict) -> tuple:
    """A total order of result rows, so that the reports do not depend on the database's."""
    return (r["dataset"], r["arch"], r["method"], r["ratio"], str(r.get("preset")), r["seed"], str(r.get("options")), str(r.get("fingerprint")))


def _method_rank(method: str, present) -> tuple:
    order = methods_in_order(present)
    return (order.index(method) if method in order else len(order) + (method == FULL), method)


def summarise_grid(rows: list[dict], confidence: float = CONFIDENCE) -> list[dict]:
    """Per (dataset, arch, method, ratio): ``mean``, ``std``, ``n`` and the Student's t interval
    of the mean (``ci_low``, ``ci_high``); and for every method other than ``random`` and
    ``full``, its difference from ``random`` at the same (dataset, arch, ratio), paired by seed
    (:func:`dsquant.evaluate.stats.paired_difference`): ``diff`` (a
    :class:`~dsquant.evaluate.stats.PairedDifference`, or None where there is no random cell)
    and ``paired`` (``"ok"``, ``"no random"``, or ``"several runs per seed"`` when rows of
    several presets or compress options are mixed and a seed has more than one run: then no
    difference is computed).

    Seeds only one of the two has are left out of the difference (see ``diff.n``). Pairs are
    keyed by (preset, seed). Sorted like the Markdown report: dataset, arch, method (random
    first, full last), ratio.
    """
    from .stats import paired_difference

    rows = sorted(rows, key=_row_order)
    summary = summarise(rows, keys=("dataset", "arch", "method", "ratio"), confidence=confidence)
    per_seed: dict[tuple, dict] = {}
    several: set[tuple] = set()
    for r in rows:
        g = (r["dataset"], r["arch"], r["method"], r["ratio"])
        k = (str(r.get("preset")), r["seed"])
        if k in per_seed.setdefault(g, {}):
            several.add(g)
        per_seed[g][k] = r["accuracy"]
    for s in summary:
        s["diff"], s["paired"] = None, None
        if s["method"] in (Random.name, FULL):
            continue
        g = (s["dataset"], s["arch"], s["method"], s["ratio"])
        base = (s["dataset"], s["arch"], Random.name, s["ratio"])
        if base not in per_seed:
            s["paired"] = "no random"
        elif g in several or base in several:
            s["paired"] = "several runs per seed"
        else:
            s["diff"], s["paired"] = paired_difference(per_seed[g], per_seed[base], confidence), "ok"
    present = {s["method"] for s in summary}
    summary.sort(key=lambda s: (s["dataset"], s["arch"], _method_rank(s["method"], present), s["ratio"]))
    return summary


def _num(x) -> str:
    """A CSV number: ``repr`` of the float (exact, deterministic); empty for None or NaN."""
    if x is None or (isinstance(x, float) and x != x):
        return ""
    return repr(float(x)) if isinstance(x, float) else str(x)


def _summary_csv_row(s: dict) -> list[str]:
    d = s["diff"]
    row = [s["dataset"], s["arch"], s["method"], _num(s["ratio"]), str(s["n"]), _num(s["mean"]), _num(s["std"]), _num(s["ci_low"]), _num(s["ci_high"])]
    if d is None:
        return row + [""] * 6
    return row + [_num(d.mean), _num(d.std), str(d.n), _num(d.low), _num(d.high), str(d.excludes_zero)]


def _md_cell(s: dict, show_n: bool) -> str:
    """``50.93 ± 0.44 (+0.77 [+0.12, +1.42]*)``: mean ± std (%); the paired difference from
    random (percentage points) and its interval, * where it excludes 0."""
    parts = [f"n={s['n']}"] if show_n else []
    d = s["diff"]
    if s["paired"] == "several runs per seed":
        parts.append("not paired: several runs per seed")
    elif d is not None:
        pairs = f", {d.n} pairs" if d.n != s["n"] else ""
        if d.n >= 2:
            parts.append(f"{100 * d.mean:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]{'*' if d.excludes_zero else ''}{pairs}")
        elif d.n == 1:
            parts.append(f"{100 * d.mean:+.2f}, 1 pair: no interval")
        else:
            parts.append("no seed in common with random")
    cell = f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"
    return cell + (f" ({'; '.join(parts)})" if parts else "")


def write_reports(db: str | os.PathLike, out: str | os.PathLike | None = None, preset: str | None = None, options: str | None = None, title: str = "") -> dict[str, Path]:
    """Write ``results.csv`` (one row per training), ``summary.csv`` and ``results.md`` (per
    dataset, architecture, method and keep ratio: mean, std, n and the 95 % interval of the
    mean; for each method other than random and full, its difference from class-balanced random
    paired by seed, with its 95 % Student's paired t interval, see :func:`summarise_grid`) and
    ``accuracy.png`` (means with their 95 % t intervals) next to ``db`` (or into ``out``).

    The reports depend on the database's rows only, not on their order: the same database
    gives the same CSV and Markdown bytes.

    Returns:
        The paths written, by kind (``csv``, ``summary``, ``md``, ``png``).

    Raises:
        ValueError: if the output directory holds a file by a report's name that dsquant did not
            write (nothing is written then).
    """
    db = Path(db)
    return write_row_reports(_rows(db, preset, options), Path(out) if out is not None else db.parent, title)


RESULT_COLUMNS = ["dataset", "method", "ratio", "arch", "seed", "preset", "accuracy", "n_train", "epochs", "batch_size", "seconds", "options", "fingerprint"]
"""Columns of ``results.csv``: one row per training."""

_MD_MARK = "Test accuracy (%) of the final training epoch"
"""A sentence every ``results.md`` of :func:`write_row_reports` holds (how a rerun knows its own)."""


def _head(path: Path, n: int = 4096) -> str:
    with open(path, "rb") as f:
        return f.read(n).decode("utf-8", errors="replace")


def check_report_dir(out: str | os.PathLike) -> None:
    """Raise ValueError if ``out`` holds a report file (or something else by a report's name)
    that :func:`write_row_reports` did not write: dsquant never overwrites a file it did not
    write. Called before any work (``dsquant benchmark``, ``benchmarks/eval_text.py``) and again
    before the reports are written. Ours: the CSV headers, the Markdown's protocol sentence, and
    a plot whose PNG says ``Software: dsquant`` (or, written before that mark, beside our
    ``results.csv``)."""
    out, cols = Path(out), RESULT_COLUMNS

    def csv_ours(header: list[str]):
        return lambda p: _head(p).splitlines()[:1] == [",".join(header)]

    def png_ours(p: Path) -> bool:
        from PIL import Image

        try:
            with Image.open(p, formats=["PNG"]) as im:
                software = str(im.info.get("Software", ""))
        except (OSError, ValueError):
            return False
        legacy = software.startswith("Matplotlib") and (out / "results.csv").is_file() and csv_ours(cols)(out / "results.csv")
        return software.startswith("dsquant") or legacy

    checks = {
        "results.csv": csv_ours(cols),
        "summary.csv": csv_ours(SUMMARY_COLUMNS),
        "results.md": lambda p: _MD_MARK in _head(p),
        "accuracy.png": png_ours,
    }
    for name, ours in checks.items():
        path = out / name
        if path.is_symlink() or (path.exists() and not (path.is_file() and ours(path))):
            raise ValueError(f"{path}: exists and was not written by dsquant's reports; give another output directory (nothing was written)")


def write_row_reports(rows: list[dict], out: str | os.PathLike, title: str = "") -> dict[str, Path]:
    """:func:`write_reports` from result rows instead of a database: for evaluations outside
    :func:`run_grid` (e.g. the text benchmark, ``benchmarks/eval_text.py``).

    Args:
        rows: dicts with ``dataset``, ``method``, ``ratio``, ``arch``, ``seed``, ``preset`` and
            ``accuracy`` (in [0, 1]); ``n_train``, ``epochs``, ``batch_size``, ``seconds``,
            ``options`` and ``fingerprint`` are written to ``results.csv`` when present.
        out: the directory of the reports (created).
    """
    out = Path(out)
    cols = RESULT_COLUMNS
    check_report_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=_row_order)
    paths = {}
    # every report goes to a temporary file renamed into place: an interruption leaves the
    # previous report whole or none, never half of one
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", restval="")
    w.writeheader()
    for r in sorted(rows, key=lambda r: (r["dataset"], r["arch"], r["method"], r["ratio"], r["seed"])):
        w.writerow(r)
    paths["csv"] = out / "results.csv"
    write_atomic(paths["csv"], buf.getvalue().encode())
    summary = summarise_grid(rows, CONFIDENCE)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(SUMMARY_COLUMNS)
    for s in summary:
        w.writerow(_summary_csv_row(s))
    paths["summary"] = out / "summary.csv"
    write_atomic(paths["summary"], buf.getvalue().encode())
    level = f"{100 * CONFIDENCE:g} %"
    md = [f"# {title}" if title else "# Benchmark results", ""]
    md.append(
        f"{_MD_MARK}, mean ± sample std over seeds. In brackets, for "
        "each method other than random: its difference from class-balanced random at the same keep ratio "
        f"(percentage points), paired by seed, with its {level} interval by Student's paired t test "
        f"(t distribution, n − 1 degrees of freedom); * marks an interval that excludes 0."
    )
    md.append("")
    proxy = proxy_protocol(rows)
    if proxy:
        md += [proxy, ""]
    for ds in sorted({s["dataset"] for s in summary}):
        for arch in sorted({s["arch"] for s in summary if s["dataset"] == ds}):
            sub = [s for s in summary if s["dataset"] == ds and s["arch"] == arch]
            ratios = sorted({s["ratio"] for s in sub if s["method"] != FULL})
            methods = methods_in_order({s["method"] for s in sub})
            ns = {s["n"] for s in sub}
            show_n = len(ns) > 1
            md.append(f"## {ds} / {arch}")
            md.append("")
            if not show_n:
                n = next(iter(ns))
                md.append(f"{n} seed{'s' if n != 1 else ''} per cell.")
                md.append("")
            md.append("| method | " + " | ".join(f"{_percent(r)} %" for r in ratios) + " |")
            md.append("|---|" + "---|" * len(ratios))
            for m in methods:
                cells = []
                for r in ratios:
                    s = next((s for s in sub if s["method"] == m and s["ratio"] == r), None)
                    cells.append(_md_cell(s, show_n) if s else "-")
                md.append(f"| {m} | " + " | ".join(cells) + " |")
            full = next((s for s in sub if s["method"] == FULL), None)
            if full:
                md.append(f"| full (100 %) | {_md_cell(full, show_n)} |" + " |" * (len(ratios) - 1))
            md.append("")
    paths["md"] = out / "results.md"
    write_atomic(paths["md"], ("\n".join(md) + "\n").encode())
    if summary:
        paths["png"] = _plot(summary, out / "accuracy.png", title)
    return paths


def proxy_protocol(rows: list[dict]) -> str:
    """One sentence for ``results.md``: which proxy runs the selections of ``rows`` used, read
    from their ``options`` (``proxy_seed``: absent means 0, ``"seed"`` a new proxy per seed;
    ``--proxy-seed``). Rows of random and full, and rows without options (the text benchmark),
    say nothing; "" when no row does.

    With one proxy run for every seed, a deterministic method gives the same subset on every
    seed and its paired interval holds random's and the training's variance, not the proxy
    run's; with a new proxy per seed it holds all three.
    """
    seen: set = set()
    for r in rows:
        if r["method"] in (Random.name, FULL) or not r.get("options"):
            continue
        try:
            opts = json.loads(r["options"])
        except (TypeError, ValueError):
            continue
        if isinstance(opts, dict) and opts:
            seen.add(str(opts.get("proxy_seed", 0)))
    if not seen:
        return ""
    if seen == {"seed"}:
        return ("Proxy: a new run per seed (`--proxy-seed seed`): the proxy, its embedding and every "
                "selection from them are redone for each seed, so the intervals include the proxy run's variance.")
    if "seed" not in seen and len(seen) == 1:
        return (f"Proxy: one run (proxy seed {next(iter(seen))}) for every seed: a deterministic selection is the same "
                "subset on every seed, and the intervals leave out the proxy run's variance (`--proxy-seed seed` includes it).")
    return f"Proxy: rows of several protocols (proxy seeds {', '.join(sorted(seen))}; `seed`: a new proxy per seed); compare within one."


def _percent(ratio: float) -> str:
    """A keep ratio as the reports print it: per cent to 3 significant digits (``1 / 6000``, one
    image per class of Fashion-MNIST: ``"0.0167"``; ``0.05``: ``"5"``), in the tables' columns
    and on the plot's axis."""
    return f"{100 * ratio:.3g}"


def _plot(summary: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(s["dataset"], s["arch"]) for s in summary})
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    methods = methods_in_order({s["method"] for s in summary})
    # the baseline grey, the others from matplotlib's cycle, the same colour in every panel
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {m: "#7f7f7f" if i == 0 and m == Random.name else palette[i % len(palette)] for i, m in enumerate(methods)}
    for ax, (ds, arch) in zip(axes.flat, panels):
        sub = [s for s in summary if s["dataset"] == ds and s["arch"] == arch]
        for m in methods:
            pts = sorted((s["ratio"], s["mean"], s["ci_low"], s["ci_high"]) for s in sub if s["method"] == m)
            if pts:
                r, mu, lo, hi = map(np.array, zip(*pts))
                # the 95 % t interval of the mean; none drawn for a single seed
                yerr = np.nan_to_num(np.stack([mu - lo, hi - mu]), nan=0.0)
                ax.errorbar(100 * r, 100 * mu, yerr=100 * yerr, marker="o", ms=4, capsize=3, label=m, color=colors[m])
        full = next((s for s in sub if s["method"] == FULL), None)
        if full:
            ax.axhline(100 * full["mean"], ls="--", color="k", lw=1, label="full")
        ax.set_xscale("log")
        ratios = sorted({s["ratio"] for s in sub if s["method"] != FULL})
        ax.set_xticks([100 * r for r in ratios])
        ax.set_xticklabels([_percent(r) for r in ratios])  # as the report's columns
        ax.minorticks_off()
        ax.set_xlabel("keep ratio (%)")
        ax.set_ylabel(f"test accuracy (%), mean ± {100 * CONFIDENCE:g} % CI", fontsize=9)
        ax.set_title(f"{ds} / {arch}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    from .. import __version__

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120, metadata={"Software": f"dsquant {__version__}"})  # how a rerun knows its own plot
    write_atomic(path, png.getvalue())
    plt.close(fig)
    return path
