"""Outputs: dsquant never deletes or overwrites what it did not write, writes atomically, and
reports bad input in one line before the work starts (issue 11, items 1-4, 7, 8, 12, 14-17)."""

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dsquant.artifact as artifact
from dsquant.artifact import AtomicOutput, class_folders, read_output
from dsquant.cli import main


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code, err, pattern):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert pattern in lines[0], lines[0]


def features(path: Path, n=40, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, features=rng.standard_normal((n, 4)).astype(np.float32), labels=np.repeat([0, 1], n // 2))
    return path


def compress(capsys, data, out, *extra):
    return run(capsys, "compress", data, "--ratio", "0.25", "--bins", "2", "--out", out, "--quiet", *extra)


def tree(path: Path) -> dict:
    """Every file under ``path`` with its bytes (what must stay untouched)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- 1, 2: overwriting


def test_overwrite_replaces_only_a_dsquant_run(tmp_path, capsys):
    data = features(tmp_path / "f.npz")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    before = tree(notes)
    code, _, err = compress(capsys, data, notes, "--overwrite")
    one_line(code, err, "is not a dsquant output directory written by dsquant")
    assert tree(notes) == before
    # a regular file is never replaced, with or without --overwrite
    (tmp_path / "file.txt").write_text("keep me")
    for flag in ([], ["--overwrite"]):
        code, _, err = compress(capsys, data, tmp_path / "file.txt", *flag)
        one_line(code, err, "is a file, not a directory")
        assert (tmp_path / "file.txt").read_text() == "keep me"
    # a symbolic link is not followed
    (tmp_path / "link").symlink_to(notes, target_is_directory=True)
    code, _, err = compress(capsys, data, tmp_path / "link", "--overwrite")
    one_line(code, err, "symbolic link")
    assert tree(notes) == before
    # a run of dsquant is replaced, atomically, by the new one
    out = tmp_path / "run"
    assert compress(capsys, data, out)[0] == 0
    first = read_output(out).indices
    assert compress(capsys, data, out, "--overwrite", "--seed", "1")[0] == 0
    assert not np.array_equal(read_output(out).indices, first)
    assert sorted(os.listdir(tmp_path)) == ["f.npz", "file.txt", "link", "notes", "run"]  # no leftovers


def test_overwrite_never_replaces_the_input_or_the_working_directory(tmp_path, capsys, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    data = features(project / "f.npz")
    # make the project look like a dsquant run: still refused, it holds DATA
    assert compress(capsys, data, tmp_path / "run")[0] == 0
    for name in os.listdir(tmp_path / "run"):
        (project / name).write_bytes((tmp_path / "run" / name).read_bytes())
    assert artifact.is_run_dir(project)
    before = tree(project)
    code, _, err = compress(capsys, data, project, "--overwrite")
    one_line(code, err, "holds the input")
    assert tree(project) == before
    # an output inside an input directory would change the dataset
    folder = tmp_path / "images"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    code, _, err = compress(capsys, folder, folder / "runs" / "x")
    one_line(code, err, "lies inside the input directory")
    assert not (folder / "runs").exists()
    # the working directory, as '.' or by its path
    work = tmp_path / "run"
    monkeypatch.chdir(work)
    code, _, err = compress(capsys, data, ".", "--overwrite")
    one_line(code, err, "name a new directory")
    code, _, err = compress(capsys, data, work, "--overwrite")
    one_line(code, err, "holds the working directory")
    code, _, err = compress(capsys, data, tmp_path, "--overwrite")
    one_line(code, err, "holds")
    assert artifact.is_run_dir(work)


def test_export_never_replaces_without_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, "compress", "digits", "--method", "random", "--ratio", "0.05", "--out", out, "--quiet")[0] == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "paper.tex").write_text("draft")
    (tmp_path / "data.npz").write_bytes(b"my own bytes")
    for fmt, dest in (("imagefolder", mine), ("npz", tmp_path / "data.npz")):
        before = dest.read_bytes() if dest.is_file() else tree(dest)
        code, _, err = run(capsys, "export", out, "--format", fmt, "--dest", dest)
        one_line(code, err, "already exists")
        code, _, err = run(capsys, "export", out, "--format", fmt, "--dest", dest, "--overwrite")
        one_line(code, err, "is not an export written by dsquant")
        assert (dest.read_bytes() if dest.is_file() else tree(dest)) == before
    # an export of dsquant's own is replaced with --overwrite, not without
    for fmt, name in (("npz", "e.npz"), ("imagefolder", "e")):
        dest = tmp_path / name
        assert run(capsys, "export", out, "--format", fmt, "--dest", dest)[0] == 0
        code, _, err = run(capsys, "export", out, "--format", fmt, "--dest", dest)
        one_line(code, err, "already exists")
        assert run(capsys, "export", out, "--format", fmt, "--dest", dest, "--overwrite")[0] == 0
    # the run directory an export reads is never replaced by it
    code, _, err = run(capsys, "export", out, "--dest", tmp_path, "--format", "imagefolder", "--overwrite")
    one_line(code, err, "holds")
    assert artifact.is_run_dir(out)


# ----------------------------------------------------------------------------- 3, 4: concurrency, kills


def test_one_run_at_a_time_per_output(tmp_path, capsys):
    data = features(tmp_path / "f.npz")
    out = tmp_path / "run"
    with AtomicOutput(out):  # another run holds the output
        code, _, err = compress(capsys, data, out)
        one_line(code, err, "another dsquant run is writing it")
        code, _, err = compress(capsys, data, out, "--overwrite")
        one_line(code, err, "another dsquant run is writing it")
    assert not out.exists() and os.listdir(tmp_path) == ["f.npz"]
    assert compress(capsys, data, out)[0] == 0


def test_manifest_is_written_once_inside_the_atomic_write(tmp_path, capsys, monkeypatch):
    """Nothing in the output changes after the rename (two runs could otherwise mix files)."""
    data = features(tmp_path / "f.npz")
    out = tmp_path / "run"
    renamed = {}
    real_commit = AtomicOutput.commit

    def commit(self):
        renamed["files"] = tree(self.tmp)
        return real_commit(self)

    monkeypatch.setattr(AtomicOutput, "commit", commit)
    assert compress(capsys, data, out)[0] == 0
    assert tree(out) == renamed["files"]
    m = read_output(out).manifest
    assert {"write", "total"} <= set(m["timings_seconds"])


def test_kill_while_replacing_is_recovered(tmp_path, capsys, monkeypatch):
    data = features(tmp_path / "f.npz")
    out = tmp_path / "run"
    assert compress(capsys, data, out)[0] == 0
    old = tree(out)
    # the fallback without renameat2: old moved aside, then killed before the new one is in
    monkeypatch.setattr(artifact, "_renameat2", lambda *a: False)
    real_rename = os.rename

    def killed(src, dst):
        real_rename(src, dst)
        if ".old-" in str(dst):
            raise KeyboardInterrupt

    monkeypatch.setattr(artifact.os, "rename", killed)
    code, _, err = compress(capsys, data, out, "--overwrite", "--seed", "3")
    assert code == 130 and not out.exists()
    assert any(".run.old-" in n for n in os.listdir(tmp_path))
    monkeypatch.setattr(artifact.os, "rename", real_rename)
    # the next run puts the previous output back, then (with --overwrite) replaces it
    code, _, err = compress(capsys, data, out)
    assert code == 2 and "restored" in err and "already exists" in err
    assert tree(out) == old
    assert compress(capsys, data, out, "--overwrite", "--seed", "3")[0] == 0
    assert sorted(os.listdir(tmp_path)) == ["f.npz", "run"]


def test_leftovers_of_killed_runs_are_removed(tmp_path, capsys):
    data = features(tmp_path / "f.npz")
    out = tmp_path / "run"
    (tmp_path / ".run.tmp-999999-abc").mkdir()
    (tmp_path / ".run.tmp-999999-abc" / "indices.npy").write_bytes(b"half")
    (tmp_path / ".run.old-1").mkdir()
    (tmp_path / ".other.tmp-1-x").mkdir()  # another output's: not ours to touch
    (tmp_path / ".notes").write_text("user's")
    assert compress(capsys, data, out)[0] == 0
    assert sorted(os.listdir(tmp_path)) == [".notes", ".other.tmp-1-x", "f.npz", "run"]


def test_outputs_follow_the_umask(tmp_path, capsys):
    data = features(tmp_path / "f.npz")
    old = os.umask(0o027)
    try:
        assert compress(capsys, data, tmp_path / "run")[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o750


def test_disk_full_leaves_nothing_and_one_line(tmp_path, capsys, monkeypatch):
    data = features(tmp_path / "f.npz")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run"))

    monkeypatch.setattr(artifact, "file_sha256", full)
    code, _, err = compress(capsys, data, tmp_path / "run")
    one_line(code, err, "No space left on device")
    assert os.listdir(tmp_path) == ["f.npz"]


# ----------------------------------------------------------------------------- 7, 16: early checks


def test_ratio_that_rounds_to_no_sample_is_refused(tmp_path, capsys):
    code, _, err = run(capsys, "compress", "digits", "--method", "random", "--ratio", "1e-9", "--out", tmp_path / "o")
    one_line(code, err, "rounds to 0 samples")
    assert not (tmp_path / "o").exists()


def test_late_failures_are_caught_before_the_work(tmp_path, capsys, monkeypatch):
    import dsquant.pipeline as pipeline

    def no_work(*a, **k):
        raise AssertionError("the work started")

    monkeypatch.setattr(pipeline, "read_dataset", no_work)
    (tmp_path / "afile").write_text("x")
    code, _, err = run(capsys, "compress", "digits", "--out", tmp_path / "afile" / "run")
    assert code == 2 and "afile" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "compress", "digits", "--drop-ratio", "0.2", "--reconstructor", "mae:/missing/mae.pt", "--out", tmp_path / "o")
    one_line(code, err, "/missing/mae.pt: no such file or directory (reconstructor)")
    code, _, err = run(capsys, "compress", "digits", "--method", "adq", "--rep", tmp_path / "nope.npy", "--out", tmp_path / "o")
    one_line(code, err, "nope.npy: no such file or directory (representativeness)")
    code, _, err = run(capsys, "compress", "digits", "--proxy-checkpoint", tmp_path / "p.pt", "--out", tmp_path / "o")
    one_line(code, err, "(proxy checkpoint)")
    assert not (tmp_path / "o").exists()


def test_text_export_is_refused_before_embedding(tmp_path, capsys, monkeypatch):
    import dsquant.embed as embed

    monkeypatch.setattr(embed, "embed", lambda *a, **k: (_ for _ in ()).throw(AssertionError("embedded")))
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"text": f"record {i}"}) + "\n" for i in range(10)))
    code, _, err = run(capsys, "compress", path, "--export", "npz", "--bins", "2", "--out", tmp_path / "o")
    one_line(code, err, "format 'npz' is not available for text data")


# ----------------------------------------------------------------------------- 8, 12, 14: reading back


def test_read_output_reads_only_plain_regular_files_inside(tmp_path, capsys):
    data = features(tmp_path / "f.npz")
    out = tmp_path / "run"
    assert compress(capsys, data, out)[0] == 0
    m = json.loads((out / "manifest.json").read_text())
    (tmp_path / "secret").write_text("x")
    for name in ("../secret", "/etc/passwd", "sub/indices.npy", ".hidden"):
        bad = {**m, "files": {**m["files"], name: "0" * 64}}
        (out / "manifest.json").write_text(json.dumps(bad))
        code, _, err = run(capsys, "info", out)
        one_line(code, err, "not a plain file name")
    # a link to a device or a pipe is refused without opening it
    os.symlink("/dev/zero", out / "zero")
    os.mkfifo(out / "fifo")
    for name in ("zero", "fifo"):
        (out / "manifest.json").write_text(json.dumps({**m, "files": {**m["files"], name: "0" * 64}}))
        code, _, err = run(capsys, "info", out)
        one_line(code, err, "not a regular file")


@pytest.mark.parametrize(
    "indices, pattern",
    [
        (np.array([-1, 3, 5]), "must lie in [0, 40)"),
        (np.array([3, 40]), "must lie in [0, 40)"),
        (np.array([5, 3, 7]), "sorted and unique"),
        (np.array([3, 3, 7]), "sorted and unique"),
        (np.array([[1, 2]]), "1-D integer array"),
        (np.array([1.0, 2.0]), "1-D integer array"),
    ],
)
def test_bad_indices_are_refused(tmp_path, capsys, indices, pattern):
    data = features(tmp_path / "f.npz")
    out = tmp_path / "run"
    assert compress(capsys, data, out)[0] == 0
    np.save(out / "indices.npy", indices)
    m = json.loads((out / "manifest.json").read_text())
    m["files"]["indices.npy"] = artifact.file_sha256(out / "indices.npy")  # a consistent, hostile run
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=pattern.replace("[", r"\[").replace(")", r"\)")):
        read_output(out)
    code, _, err = run(capsys, "export", out, "--dest", tmp_path / "e.npz")
    one_line(code, err, "indices")


def test_export_checks_the_dataset_fingerprint(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    out = tmp_path / "run"
    assert run(capsys, "compress", root, "--method", "random", "--ratio", "0.5", "--out", out, "--no-cache", "--quiet")[0] == 0
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "a" / "0.png")  # the source changes
    code, _, err = run(capsys, "export", out, "--dest", tmp_path / "e.npz")
    one_line(code, err, "is not the one these indices refer to")
    assert not (tmp_path / "e.npz").exists()


def test_class_folders_are_unique_and_recorded(tmp_path, capsys):
    from PIL import Image

    from dsquant.data import load_dataset

    assert class_folders(["a:b", "a?b", "A:B", "cat", "a_b-1"]) == ["a_b", "a_b-1", "A_B-2", "cat", "a_b-1-4"]
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c in ("a:b", "a?b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    out = tmp_path / "run"
    assert run(capsys, "compress", root, "--method", "random", "--ratio", "1", "--out", out, "--export", "imagefolder", "--quiet")[0] == 0
    assert run(capsys, "export", out, "--format", "imagefolder", "--dest", tmp_path / "again")[0] == 0
    ds = load_dataset(root)
    for export in (out / "export", tmp_path / "again"):
        record = json.loads((export / artifact.EXPORT_RECORD).read_text())
        folders = {r["folder"]: r["class"] for r in record["classes"]}
        assert folders == {"a_b": "a:b", "a_b-1": "a?b"}
        for folder, cls in folders.items():  # every image is in its own class's folder
            files = sorted((export / folder).iterdir())
            assert len(files) == 4
            for f in files:
                i = int(f.stem)
                assert ds.classes[ds.labels[i]] == cls
                assert np.array_equal(np.asarray(Image.open(f)), ds.images[i])


# ----------------------------------------------------------------------------- 15: one-line errors


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["compress", "digits", "--seed", "-1"], "seed in [0, 2**32)"),
        (["compress", "digits", "--seed", str(2**70)], "seed in [0, 2**32)"),
        (["compress", "digits", "--device", "bogus"], "device"),
        (["compress", "digits", "--alpha", "nan"], "weight in [0, 1]"),
        (["compress", "digits", "--drop-ratio", "nan"], "drop ratio in [0, 1)"),
        (["train-mae", "digits", "--out", "m.pt", "--mask-ratio", "1.5"], "mask ratio in (0, 1)"),
        (["train-mae", "digits", "--out", "m.pt", "--mask-ratio", "nan"], "mask ratio in (0, 1)"),
        (["evaluate", "somewhere", "--seeds", "0", "-3"], "seed in [0, 2**32)"),
    ],
)
def test_bad_values_are_named_in_one_line(tmp_path, capsys, monkeypatch, args, pattern):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *args)
    one_line(code, err, pattern)
    assert os.listdir(tmp_path) == []


def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = run(capsys, "compress", "digits", "--device", "cuda", "--out", tmp_path / "o")
    one_line(code, err, "cuda")


def test_train_mae_never_overwrites_a_user_file(tmp_path, capsys):
    (tmp_path / "m.pt").write_text("my notes")
    code, _, err = run(capsys, "train-mae", "digits", "--out", tmp_path / "m.pt", "--epochs", "1")
    one_line(code, err, "already exists")
    code, _, err = run(capsys, "train-mae", "digits", "--out", tmp_path / "m.pt", "--epochs", "1", "--overwrite")
    one_line(code, err, "is not a checkpoint written by dsquant")
    assert (tmp_path / "m.pt").read_text() == "my notes"


def test_memory_error_and_bugs_are_one_line(tmp_path, capsys, monkeypatch):
    import dsquant.pipeline as pipeline

    def oom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(pipeline, "read_dataset", oom)
    code, _, err = run(capsys, "compress", "digits", "--out", tmp_path / "o")
    one_line(code, err, "out of memory")

    def bug(*a, **k):
        raise KeyError("oops")

    monkeypatch.setattr(pipeline, "read_dataset", bug)
    code, _, err = run(capsys, "compress", "digits", "--out", tmp_path / "o")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "internal error: KeyError" in err
    assert not (tmp_path / "o").exists()


def test_info_into_a_closed_pipe_is_quiet(tmp_path, capsys):
    data = features(tmp_path / "f.npz")
    out = tmp_path / "run"
    assert compress(capsys, data, out)[0] == 0
    code = "import sys; from dsquant.cli import main; raise SystemExit(main(['info', sys.argv[1]]))"
    # the reader exits at once: every write of dsquant meets a closed pipe
    proc = subprocess.run(f"{sys.executable} -c \"{code}\" {out} | true; echo ${{PIPESTATUS[0]}}", shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=60)
    assert proc.stderr == "" and proc.stdout.strip() == "141"


def test_torch_floor_excludes_releases_with_weights_only_bypasses():
    """torch.load(weights_only=True) can be bypassed before 2.6 (CVE-2025-32434), with a later
    fix in 2.10: the package must not admit those releases (item 18)."""
    import tomllib

    import torch
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    torch_req = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch")
    for old in ("2.1.0", "2.5.1", "2.6.0", "2.9.1"):
        assert not torch_req.specifier.contains(old), old
    assert torch_req.specifier.contains("2.10.0")
    assert Version(torch.__version__.split("+")[0]) >= Version("2.10")


def test_evaluate_json_never_replaces_a_user_file(tmp_path, capsys, monkeypatch):
    """--json is an output like the others: checked before the training, never written over a
    file dsquant did not write, replaced with --overwrite when it is an earlier result."""
    import dsquant.evaluate as evaluate

    out = tmp_path / "run"
    assert run(capsys, "compress", "digits", "--method", "random", "--ratio", "0.05", "--out", out, "--quiet")[0] == 0
    result = {"preset": {}, "runs": [], "summary": [], "n_train": 72, "n_test": 360, "trained_on": "selected images"}
    monkeypatch.setattr(evaluate, "evaluate_output", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    for flag in ([], ["--overwrite"]):
        code, _, err = run(capsys, "evaluate", out, "--json", notes, *flag)
        one_line(code, err, "already exists" if not flag else "is not an evaluation result written by dsquant")
    assert notes.read_text() == '{"mine": true}'
    monkeypatch.setattr(evaluate, "evaluate_output", lambda *a, **k: result)
    res = tmp_path / "res.json"
    assert run(capsys, "evaluate", out, "--json", res)[0] == 0
    assert json.loads(res.read_text()) == result
    code, _, err = run(capsys, "evaluate", out, "--json", res)
    one_line(code, err, "already exists")
    assert run(capsys, "evaluate", out, "--json", res, "--overwrite")[0] == 0
    assert sorted(os.listdir(tmp_path)) == ["notes.json", "res.json", "run"]
