"""``dsquant benchmark``: datasets x methods x keep ratios x architectures x seeds.

Every finished cell is a row of a SQLite file (committed at once), so a rerun skips it and a
killed run loses at most the cell in progress. Selections are stored too. Cells are keyed by
the dataset's content (its fingerprint), not its file name: another dataset of the same name,
or the same one edited, runs its own cells, and the reports tell same-named datasets apart by
fingerprint. The results are written as CSV, a Markdown table (mean +- std over seeds) and a
PNG plot of accuracy against keep ratio, one panel per architecture.

Methods: ``full`` (the whole training set), ``random`` (class-balanced random sampling, seeded
like the others), ``dq`` and ``adq``. The proxy and the bins are computed once per dataset
(proxy seed 0, cached); the seed varies the sampling and the training.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..methods import ADQ, DQ, Random
from .archs import get_architecture
from .harness import PRESETS, Preset, summarise, train_and_test

__all__ = ["DEFAULT_METHODS", "FULL", "Grid", "run_grid", "write_reports"]

FULL = "full"
"""The grid's reference row: the whole training set (not a selection method)."""
DEFAULT_METHODS = (Random.name, DQ.name, ADQ.name)


def _methods_in_order(present) -> list[str]:
    """Registered methods in report order (the baseline first), those in ``present`` only."""
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
    """

    datasets: list[str]
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    ratios: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1, 0.2])
    archs: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    preset: str = "cpu"
    compress_options: dict = field(default_factory=dict)

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
    from ..pipeline import read_dataset

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
            for ratio in [1.0] if method == FULL else grid.ratios:
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


def write_reports(db: str | os.PathLike, out: str | os.PathLike | None = None, preset: str | None = None, options: str | None = None, title: str = "") -> dict[str, Path]:
    """Write ``results.csv``, ``results.md`` and ``accuracy.png`` next to (or into ``out``).

    Returns:
        The paths written, by kind.
    """
    db = Path(db)
    out = Path(out) if out is not None else db.parent
    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(db, preset, options)
    paths = {}
    csv_path = out / "results.csv"
    cols = ["dataset", "method", "ratio", "arch", "seed", "preset", "accuracy", "n_train", "epochs", "batch_size", "seconds", "options", "fingerprint"]
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in sorted(rows, key=lambda r: (r["dataset"], r["arch"], r["method"], r["ratio"], r["seed"])):
            w.writerow(r)
    paths["csv"] = csv_path
    summary = summarise(rows, keys=("dataset", "arch", "method", "ratio"))
    md = [f"# {title}" if title else "# Benchmark results", ""]
    for ds in sorted({s["dataset"] for s in summary}):
        for arch in sorted({s["arch"] for s in summary if s["dataset"] == ds}):
            sub = [s for s in summary if s["dataset"] == ds and s["arch"] == arch]
            ratios = sorted({s["ratio"] for s in sub if s["method"] != FULL})
            methods = _methods_in_order({s["method"] for s in sub})
            md.append(f"## {ds} / {arch}")
            md.append("")
            md.append("| method | " + " | ".join(f"{100 * r:g} %" for r in ratios) + " |")
            md.append("|---|" + "---|" * len(ratios))
            for m in methods:
                cells = []
                for r in ratios:
                    s = next((s for s in sub if s["method"] == m and s["ratio"] == r), None)
                    cells.append(f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} (n={s['n']})" if s else "-")
                md.append(f"| {m} | " + " | ".join(cells) + " |")
            full = next((s for s in sub if s["method"] == FULL), None)
            if full:
                md.append(f"| full (100 %) | {100 * full['mean']:.2f} ± {100 * full['std']:.2f} (n={full['n']}) |" + " |" * (len(ratios) - 1))
            md.append("")
    md_path = out / "results.md"
    md_path.write_text("\n".join(md) + "\n")
    paths["md"] = md_path
    if summary:
        paths["png"] = _plot(summary, out / "accuracy.png", title)
    return paths


def _plot(summary: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(s["dataset"], s["arch"]) for s in summary})
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    methods = _methods_in_order({s["method"] for s in summary})
    # the baseline grey, the others from matplotlib's cycle, the same colour in every panel
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {m: "#7f7f7f" if i == 0 and m == Random.name else palette[i % len(palette)] for i, m in enumerate(methods)}
    for ax, (ds, arch) in zip(axes.flat, panels):
        sub = [s for s in summary if s["dataset"] == ds and s["arch"] == arch]
        for m in methods:
            pts = sorted((s["ratio"], s["mean"], s["std"]) for s in sub if s["method"] == m)
            if pts:
                r, mu, sd = map(np.array, zip(*pts))
                ax.errorbar(100 * r, 100 * mu, yerr=100 * sd, marker="o", ms=4, capsize=3, label=m, color=colors[m])
        full = next((s for s in sub if s["method"] == FULL), None)
        if full:
            ax.axhline(100 * full["mean"], ls="--", color="k", lw=1, label="full")
        ax.set_xscale("log")
        ticks = sorted({100 * s["ratio"] for s in sub if s["method"] != FULL})
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("keep ratio (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{ds} / {arch}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
