import json
import os
import tarfile

import numpy as np
import pytest

from dsquant.artifact import read_output
from dsquant.cli import main
from dsquant.data import load_dataset, load_digits
from dsquant.torch_data import SubsetSampler, load_subset

from conftest import shared


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_compress_digits_end_to_end(tmp_path, capsys):
    out = tmp_path / "digits"
    code, stdout, _ = run(capsys, "compress", "digits", "--method", "dq", "--ratio", "0.1", "--bins", "10", "--epochs", "1", "--out", out, "--quiet")
    assert code == 0
    assert "selected 144 of 1437 samples" in stdout and str(out) in stdout
    res = read_output(out)
    assert len(res.indices) == 144 and res.indices.dtype == np.int64
    assert np.all(np.diff(res.indices) > 0)
    assert len(res.bins) == 10 and np.array_equal(np.sort(np.concatenate(res.bins)), np.arange(1437))
    m = res.manifest
    assert m["method"] == "dq" and m["parameters"]["seed"] == 0 and m["parameters"]["n_bins"] == 10
    assert m["dataset"]["n_samples"] == 1437 and len(m["dataset"]["fingerprint"]) == 32
    # every class gives 10 % of itself, within one sample; so does every bin
    counts = np.bincount(load_digits().labels)
    assert np.all(np.abs(np.array(m["selection"]["per_class"]) - 0.1 * counts) < 1)
    assert all(abs(b["selected"] - 0.1 * b["size"]) < 1 for b in m["selection"]["bins"])
    assert {"read", "embed", "bins", "sample", "write", "total"} <= set(m["timings_seconds"])
    assert m["versions"]["numpy"] == np.__version__ and "torch" in m["versions"]
    # the same seed again (cached embedding) gives the same indices
    code, stdout, _ = run(capsys, "compress", "digits", "--method", "dq", "--epochs", "1", "--out", out, "--overwrite", "--quiet")
    assert code == 0 and "[cached]" in stdout
    assert np.array_equal(read_output(out).indices, res.indices)
    # --method dq-budget: on the same bins
    code, stdout, _ = run(capsys, "compress", "digits", "--method", "dq-budget", "--epochs", "1", "--out", out, "--overwrite", "--quiet")
    budget = read_output(out)
    assert code == 0 and budget.manifest["method"] == "dq-budget" and "dq-budget" in stdout
    assert all(np.array_equal(a, b) for a, b in zip(budget.bins, res.bins)) and len(budget.indices) == 144
    rec = budget.manifest["dq-budget"]  # images embedded by the proxy: the proxy rule, 14.4 per class
    assert rec["embedding"] == "proxy" and rec["order"] == "herding" and rec["drop_last"] and rec["skew"] == 2.0
    code, stdout, _ = run(capsys, "info", out)
    assert code == 0 and "bin" in stdout and "selected per class" in stdout
    # without --method: validated, the measured default; it chose one of its candidates and
    # selected what that candidate selects
    code, stdout, _ = run(capsys, "compress", "digits", "--epochs", "1", "--out", out, "--overwrite", "--quiet")
    auto = read_output(out)
    rec = auto.manifest["validated"]
    assert code == 0 and auto.manifest["method"] == "validated" and rec["validated"] and rec["chosen"] in ("dq", "dq-budget", "herding", "herding-drop")
    assert len(rec["accuracy"]["herding"]) == 5 and rec["pool"] + rec["validation"] == 1437
    if rec["chosen"] == "dq-budget":
        assert np.array_equal(auto.indices, budget.indices)
    code, stdout, _ = run(capsys, "info", out)
    assert code == 0 and f"validated: chose {rec['chosen']}" in stdout
    assert list(auto.manifest["parameters"]["method"]["pruning_candidates"]) == ["dq-budget", "el2n", "ccs"]
    # --pruning-candidates: the pruning regime's candidates, the incumbent first (here under
    # 500 per class, so only recorded)
    code, _, _ = run(capsys, "compress", "digits", "--epochs", "1", "--pruning-candidates", "dq", "forgetting", "--out", out, "--overwrite", "--quiet")
    assert code == 0 and list(read_output(out).manifest["parameters"]["method"]["pruning_candidates"]) == ["dq", "forgetting"]
    assert auto.manifest["parameters"]["method"]["ccs_from"] == 100.0
    # --ccs-from: from how many per class CCS with the large cut is a candidate (none: never)
    for flag, want in (("none", None), ("250", 250.0)):
        code, _, _ = run(capsys, "compress", "digits", "--epochs", "1", "--candidates", "dq", "--ccs-from", flag, "--out", out, "--overwrite", "--quiet")
        assert code == 0 and read_output(out).manifest["parameters"]["method"]["ccs_from"] == want
    code, _, stderr = run(capsys, "compress", "digits", "--ccs-from", "-3", "--out", out, "--overwrite", "--quiet")
    assert code != 0 and "--ccs-from: expected a positive number of samples per class or 'none', got '-3'" in stderr
    code, _, stderr = run(capsys, "compress", "digits", "--epochs", "1", "--pruning-candidates", "adq", "--out", out, "--overwrite", "--quiet")
    assert code != 0 and "adq" in stderr


def test_random_method_and_exports(tmp_path, capsys):
    out = tmp_path / "r"
    code, _, _ = run(capsys, "compress", "digits", "--method", "random", "--ratio", "0.05", "--out", out, "--export", "npz", "--quiet")
    assert code == 0
    res = read_output(out)
    digits = load_digits()
    with np.load(out / "export.npz") as z:
        assert np.array_equal(z["indices"], res.indices)
        assert np.array_equal(z["images"], digits.images[res.indices])
        assert np.array_equal(z["labels"], digits.labels[res.indices])
    # class-balanced: every class gives 5 % of itself, within one sample
    assert np.all(np.abs(np.bincount(digits.labels[res.indices], minlength=10) - 0.05 * np.bincount(digits.labels)) < 1)
    out2 = tmp_path / "f"
    code, _, _ = run(capsys, "compress", "digits", "--method", "random", "--ratio", "0.02", "--out", out2, "--export", "imagefolder", "--quiet")
    assert code == 0
    idx = read_output(out2).indices
    i = int(idx[0])
    from PIL import Image

    png = np.asarray(Image.open(out2 / "export" / digits.classes[digits.labels[i]] / f"{i:07d}.png"))
    assert np.array_equal(png, digits.images[i, ..., 0])


def test_subset_dataset_and_sampler(tmp_path, capsys):
    out = tmp_path / "s"
    run(capsys, "compress", "digits", "--method", "random", "--ratio", "0.1", "--out", out, "--quiet")
    subset = load_subset(out)
    idx = read_output(out).indices
    digits = load_digits()
    x, y = subset[3]
    assert x.shape == (1, 8, 8) and y == digits.labels[idx[3]]
    assert np.allclose(x.numpy()[0], digits.images[idx[3], ..., 0] / 255.0)
    sampler = SubsetSampler(idx, seed=1)
    first = list(sampler)
    assert sorted(first) == idx.tolist() and first != list(sampler) or len(idx) < 2
    assert list(SubsetSampler(idx, seed=1)) == first


@pytest.fixture(scope="module")
def cifar_slice(tmp_path_factory):
    """The first 20 train and 5 test images of every class of the real CIFAR-10 tar."""
    src = shared("cifar10", "cifar10-jpeg.tar")
    dst = tmp_path_factory.mktemp("cifar") / "cifar-slice.tar"
    keep = {}
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin:
            if not m.isfile() or m.name.count("/") != 2:
                continue
            split, cls, _ = m.name.split("/")
            n = keep.get((split, cls), 0)
            if n < (20 if split == "train" else 5):
                keep[(split, cls)] = n + 1
                tout.addfile(m, tin.extractfile(m))
    return dst


def test_compress_cifar_slice(tmp_path, capsys, cifar_slice):
    out = tmp_path / "c"
    code, stdout, _ = run(capsys, "compress", cifar_slice, "--ratio", "0.1", "--bins", "2", "--epochs", "1", "--width", "8", "--out", out, "--quiet")
    assert code == 0, stdout
    res = read_output(out)
    ds = load_dataset(cifar_slice)
    assert ds.classes[0] == "airplane" and len(ds) == 200
    assert len(res.indices) == 20 and np.bincount(ds.labels[res.indices]).tolist() == [2] * 10
    assert res.manifest["dataset"]["fingerprint"] == ds.fingerprint()


def _one_line_error(code, err, pattern):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert pattern in lines[0], lines[0]


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["digits", "--ratio", "0"], "ratio"),
        (["digits", "--ratio", "1.5"], "ratio"),
        (["digits", "--bins", "0"], "--bins"),
        (["digits", "--bins", "200"], "class '8' has only 141 samples"),
        (["/nonexistent/data.tar"], "no such file"),
    ],
)
def test_bad_arguments_fail_with_one_line_and_no_output(tmp_path, capsys, args, pattern):
    out = tmp_path / "o"
    code, _, err = run(capsys, "compress", *args, "--out", out, "--epochs", "0")
    _one_line_error(code, err, pattern)
    assert not out.exists()


def test_bad_files_fail_with_one_line_and_no_output(tmp_path, capsys):
    out = tmp_path / "o"
    (tmp_path / "corrupt.tar").write_bytes(b"\x1f\x8b this is not gzip")
    code, _, err = run(capsys, "compress", tmp_path / "corrupt.tar", "--out", out)
    _one_line_error(code, err, "corrupt.tar")
    np.save(tmp_path / "f.npy", np.ones((6, 3), np.float32))
    np.save(tmp_path / "l.npy", np.arange(5))
    code, _, err = run(capsys, "compress", tmp_path / "f.npy", "--labels", tmp_path / "l.npy", "--bins", "1", "--out", out)
    _one_line_error(code, err, "do not match 6 feature rows")
    bad = np.ones((6, 3), np.float32)
    bad[4, 1] = np.nan
    np.savez(tmp_path / "nan.npz", features=bad)
    code, _, err = run(capsys, "compress", tmp_path / "nan.npz", "--bins", "2", "--out", out)
    _one_line_error(code, err, "row 4 contains NaN or inf")
    np.savez(tmp_path / "empty.npz", features=np.zeros((0, 3), np.float32))
    code, _, err = run(capsys, "compress", tmp_path / "empty.npz", "--out", out)
    _one_line_error(code, err, "non-empty")
    np.save(tmp_path / "short.npy", np.ones((100, 2), np.float32))
    code, _, err = run(capsys, "compress", "digits", "--encoder", f"features:{tmp_path / 'short.npy'}", "--out", out)
    _one_line_error(code, err, "100 feature rows do not match the 1437 samples")
    (tmp_path / "emptydir").mkdir()
    code, _, err = run(capsys, "compress", tmp_path / "emptydir", "--out", out)
    _one_line_error(code, err, "no images found")
    assert not out.exists()


def test_features_input_and_existing_output(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "f.npz", features=rng.standard_normal((50, 4)).astype(np.float32), labels=np.repeat([0, 1], 25))
    out = tmp_path / "o"
    code, stdout, _ = run(capsys, "compress", tmp_path / "f.npz", "--ratio", "0.2", "--bins", "5", "--out", out, "--quiet")
    assert code == 0 and "selected 10 of 50" in stdout
    code, _, err = run(capsys, "compress", tmp_path / "f.npz", "--out", out)
    _one_line_error(code, err, "already exists")


def test_interrupted_run_leaves_nothing(tmp_path, capsys, monkeypatch):
    import dsquant.artifact as artifact

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifact, "export_subset", boom)
    out = tmp_path / "o"
    code, _, err = run(capsys, "compress", "digits", "--method", "random", "--out", out, "--export", "npz")
    assert code == 130 and "nothing was written" in err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_benchmark_import_may_be_repeated(tmp_path, capsys, monkeypatch):
    """`--import A --import B` adds both files (argparse's default "store" kept only the last,
    and the cells of the others were trained again)."""
    import dsquant.evaluate
    import dsquant.evaluate.grid as grid

    seen = []

    def spy(db, csv_path, log=print):
        seen.append(os.path.basename(csv_path))
        return 0

    monkeypatch.setattr(grid, "import_results", spy)
    monkeypatch.setattr(dsquant.evaluate, "run_grid", lambda *a, **k: (_ for _ in ()).throw(ValueError("stop after the imports")))
    code, _, stderr = run(capsys, "benchmark", "--data", "digits", "--methods", "random", "--ratios", "0.1", "--seeds", "0",
                          "--import", "a.csv", "--import", "b.csv", "c.csv", "--out", tmp_path / "b")
    assert code == 2 and "stop after the imports" in stderr and seen == ["a.csv", "b.csv", "c.csv"]


def test_benchmark_list_flags_may_be_repeated_and_keep_their_defaults(tmp_path, capsys, monkeypatch):
    """Every list flag extends what came before (``--methods a --methods b`` is ``a b``); an
    absent one takes its default, which a given one replaces (never extends)."""
    import dsquant.evaluate
    from dsquant.evaluate.grid import DEFAULT_METHODS

    grids = []

    def spy(grid, *a, **k):
        grids.append(grid)
        raise ValueError("stop before training")

    monkeypatch.setattr(dsquant.evaluate, "run_grid", spy)
    code, _, _ = run(capsys, "benchmark", "--data", "digits", "--methods", "random", "--methods", "dq", "herding",
                     "--per-class", "1", "--per-class", "5", "--seeds", "3", "--seeds", "4", "--arch", "mlp", "--arch", "logreg", "--out", tmp_path / "a")
    g = grids[-1]
    assert code == 2 and g.methods == ["random", "dq", "herding"] and g.per_class == [1, 5] and g.seeds == [3, 4]
    assert g.archs == ["mlp", "logreg"] and g.ratios == []
    code, _, _ = run(capsys, "benchmark", "--data", "digits", "--ratios", "0.1", "--ratios", "0.2", "--out", tmp_path / "b")
    g = grids[-1]
    assert code == 2 and g.methods == list(DEFAULT_METHODS) and g.ratios == [0.1, 0.2] and g.per_class == [] and g.seeds == list(range(10))
