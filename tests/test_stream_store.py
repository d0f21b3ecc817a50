"""Streamed image sources (dsquant.data.stream) and the sharded embedding store
(dsquant.embed.store): same samples as the in-memory readers, bytes read at their offsets,
errors in one line, resumable shards, bins from the store equal to bins from the array."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsquant import generate_bins
from dsquant.data import (
    DataError,
    detect_format,
    index_image_folder,
    index_image_tar,
    index_webdataset,
    read_dataset,
    read_image_folder,
    read_image_tar,
)
from dsquant.data.stream import decode_resized, iter_image_batches
from dsquant.embed.store import ShardedArray, embed_to_store, open_store, parse_shard, store_status


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c in ("cat", "dog", "eel"):
        (root / c).mkdir(parents=True)
        for j in range(4):
            (root / c / f"{j:02d}.png").write_bytes(_png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    return root


def _tar_of(root: Path, path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        tar.add(root, arcname=".")
    return path


def test_folder_index_matches_the_in_memory_reader(folder):
    ds = index_image_folder(folder)
    mem = read_image_folder(folder)
    assert ds.ids.tolist()[:2] == ["cat/00.png", "cat/01.png"] and len(ds) == 12
    assert ds.labels.tolist() == mem.labels.tolist() and ds.classes == mem.classes
    got = np.stack([ds.decode(i, 8, 8) for i in range(len(ds))])
    assert np.array_equal(got, mem.images)  # 8 px images at resize 8, crop 8: untouched


def test_tar_index_reads_each_member_at_its_offset(folder, tmp_path):
    tar = _tar_of(folder, tmp_path / "imgs.tar")
    ds = index_image_tar(tar)
    mem = read_image_tar(tar)
    assert ds.labels.tolist() == mem.labels.tolist()
    for i in (0, 5, 11):
        assert ds.read_bytes(i) == (folder / ds.ids[i]).read_bytes()
    batches = list(iter_image_batches(ds, 8, 8, batch_size=5, num_workers=0, as_numpy=True))
    assert [len(p) for p, _ in batches] == [5, 5, 2]
    assert np.array_equal(np.concatenate([b for _, b in batches]), mem.images)


def test_compressed_tar_is_refused_for_streaming_and_read_in_memory_automatically(folder, tmp_path):
    tgz = tmp_path / "imgs.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(folder, arcname=".")
    with pytest.raises(DataError, match="cannot stream a compressed tar"):
        index_image_tar(tgz)
    assert not getattr(read_dataset(tgz, stream=None), "streamed", False)  # automatic: in memory


def test_automatic_choice_streams_large_sources(folder, monkeypatch):
    assert not getattr(read_dataset(folder), "streamed", False)
    assert read_dataset(folder, stream=True).streamed
    import dsquant.data as data

    monkeypatch.setattr(data, "STREAM_MIN_IMAGES", 10)
    assert read_dataset(folder).streamed  # 12 images >= 10


def _shard(path: Path, samples: list[tuple[str, bytes, str | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, img, cls in samples:
            for ext, data in (("jpg", img), ("cls", None if cls is None else cls.encode())):
                if data is None:
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _jpeg(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w * h * 3).reshape(h, w, 3) + rng.normal(0, 8, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_webdataset_shards_by_brace_pattern(tmp_path):
    _shard(tmp_path / "s-000.tar", [("a0", _jpeg(40, 30, 0), "1"), ("a1", _jpeg(30, 40, 1), "0")])
    _shard(tmp_path / "s-001.tar", [("b0", _jpeg(50, 50, 2), "2")])
    pattern = str(tmp_path / "s-{000..001}.tar")
    assert detect_format(pattern) == "webdataset"
    assert detect_format(tmp_path / "s-000.tar") == "webdataset"  # a .cls member: not an ImageFolder tar
    ds = index_webdataset(pattern)
    assert ds.ids.tolist() == ["a0", "a1", "b0"] and ds.labels.tolist() == [1, 0, 2]
    assert ds.classes == ["0", "1", "2"] and ds.file_index.tolist() == [0, 0, 1]
    assert ds.decode(2, 24, 16).shape == (16, 16, 3)
    _shard(tmp_path / "s-002.tar", [("a0", _jpeg(20, 20, 3), "0")])
    with pytest.raises(DataError, match="a0: key also in"):
        index_webdataset(str(tmp_path / "s-{000..002}.tar"))
    _shard(tmp_path / "t.tar", [("x", _jpeg(20, 20, 3), None)])
    with pytest.raises(DataError, match=r"t.tar:x: no label member"):
        index_webdataset([tmp_path / "t.tar"])


def test_draft_decoding_matches_a_full_decode(tmp_path):
    data = _jpeg(960, 720, 5)
    fast = decode_resized(data, "x", 120, 112).astype(float)  # JPEG draft at 1/4 scale
    with Image.open(io.BytesIO(data)) as im:
        full = np.asarray(im.convert("RGB").resize((160, 120), Image.BILINEAR).crop((24, 4, 136, 116))).astype(float)
    assert fast.shape == (112, 112, 3)
    assert np.abs(fast - full).mean() < 3.0  # the same picture: draft scaling differs by a little


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image_one_line_or_skipped(folder, workers):
    bad_file = folder / "dog" / "01.png"
    bad_file.write_bytes(b"not an image at all")
    ds = index_image_folder(folder)
    with pytest.raises(DataError) as err:
        list(iter_image_batches(ds, 8, 8, batch_size=4, num_workers=workers))
    assert str(bad_file) in str(err.value) and "\n" not in str(err.value)
    bad: list = []
    got = [p for p, _ in iter_image_batches(ds, 8, 8, batch_size=4, num_workers=workers, skip_bad=True, bad=bad)]
    assert np.concatenate(got).tolist() == [i for i in range(12) if i != 5]
    assert [i for i, _ in bad] == [5]


# ----------------------------------------------------------------------------- the store


class _RowEncoder:
    """A stand-in encoder: row i of a fixed random matrix, the sample's own (so shards can be
    embedded separately); counts the rows it embedded."""

    name = "rows"

    def __init__(self, n: int, dim: int = 6, seed: int = 0) -> None:
        self.table = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
        self.dim, self.seed, self.calls, self.config_calls = dim, seed, [], 0

    def config(self) -> dict:
        self.config_calls += 1
        return {"encoder": self.name, "seed": self.seed}

    def encode_rows(self, dataset, indices, progress=False, bad=None):
        self.calls.append(list(map(int, indices)))
        return self.table[np.asarray(indices)]


def test_store_round_trip_resume_and_slices(folder, tmp_path):
    ds = index_image_folder(folder)
    enc = _RowEncoder(len(ds))
    out = tmp_path / "store"
    r = embed_to_store(ds, enc, out, shard_size=5, dtype="float32", shard=(1, 2))
    assert (r["written"], r["remaining"]) == (1, 2) and enc.calls == [list(range(5, 10))]  # shard 1 only
    with pytest.raises(DataError, match="2 of 3 shards are not finished.*resume"):
        open_store(out)
    st = store_status(out)
    assert (st["done"], st["first_missing"], st["bytes"]) == (1, "shard-00000", (out / "shard-00001.npy").stat().st_size)
    embed_to_store(ds, enc, out, shard_size=5, dtype="float32", shard=(0, 2))
    store = open_store(out)
    assert np.array_equal(np.asarray(store.features), enc.table)
    assert store.ids.tolist() == ds.ids.tolist() and store.labels.tolist() == ds.labels.tolist()
    rows = np.array([11, 0, 7, 3, 10])
    assert np.array_equal(store.features[rows], enc.table[rows]) and np.array_equal(store.features[2:8], enc.table[2:8])
    (out / "shard-00001.json").unlink()  # as if killed before the record was written
    enc.calls.clear()
    r = embed_to_store(ds, enc, out, shard_size=5, dtype="float32")
    assert enc.calls == [list(range(5, 10))] and (r["written"], r["done_before"], r["remaining"]) == (1, 2, 0)
    # the encoder's config (which may hash its weights) is computed once per run, not per shard
    enc.config_calls = 0
    embed_to_store(ds, enc, tmp_path / "whole", shard_size=5, dtype="float32")
    assert enc.config_calls == 2  # the store's manifest, then the shards' check


def test_store_refuses_other_embeddings_and_foreign_directories(folder, tmp_path):
    ds = index_image_folder(folder)
    out = tmp_path / "store"
    embed_to_store(ds, _RowEncoder(len(ds)), out, shard_size=5)
    with pytest.raises(DataError, match="holds a store of other embeddings"):
        embed_to_store(ds, _RowEncoder(len(ds), seed=1), out, shard_size=5)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not an embedding store"):
        embed_to_store(ds, _RowEncoder(len(ds)), mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    with pytest.raises(ValueError, match="i/N"):
        parse_shard("2/2")


def test_float16_store_and_bins_from_the_store_equal_bins_from_the_array(tmp_path):
    rng = np.random.default_rng(3)
    n, classes = 300, 3
    centers = rng.normal(size=(classes, 8)) * 3
    labels = np.repeat(np.arange(classes), n // classes)
    feats = (centers[labels] + rng.normal(size=(n, 8))).astype(np.float16).astype(np.float32)

    class _Data:
        source, split, classes = "<test>", "train", ["a", "b", "c"]

        def __init__(self):
            self.labels, self.ids = labels, np.array([f"s{i}" for i in range(n)])

        def __len__(self):
            return n

        def fingerprint(self):
            return "test"

    enc = _RowEncoder(n, dim=8)
    enc.table = feats
    embed_to_store(_Data(), enc, tmp_path / "st", shard_size=64)  # float16: exact for these values
    store = open_store(tmp_path / "st")
    assert isinstance(store.features, ShardedArray)
    bins_store = generate_bins(store.features, 4, store.labels)
    bins_array = generate_bins(feats, 4, labels)
    assert all(np.array_equal(a, b) for a, b in zip(bins_store, bins_array))

    from dsquant import compress
    from dsquant.data import FeatureDataset

    run = compress(tmp_path / "st", ratio=0.1, method="dq", n_bins=4, out=tmp_path / "run", use_cache=False)
    ref = compress(FeatureDataset(feats, labels, ["a", "b", "c"]), ratio=0.1, method="dq", n_bins=4, use_cache=False)
    assert np.array_equal(run.indices, ref.indices)
    ids = json.loads((tmp_path / "run" / "ids.json").read_text())
    assert ids == [f"s{i}" for i in run.indices]


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    """A tiny randomly initialised transformers ResNet saved locally, with a preprocessor config."""
    import torch
    from transformers import ResNetConfig, ResNetModel

    path = tmp_path_factory.mktemp("tiny-resnet")
    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 16}, "crop_size": {"height": 16, "width": 16}, "do_center_crop": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "resample": 2}))
    return path


def test_embed_command_store_compress_and_export_of_a_streamed_folder(folder, tiny_hf, tmp_path):
    from dsquant import compress, open_run
    from dsquant.cli import main
    from dsquant.embed import make_encoder

    store = tmp_path / "store"
    assert main(["embed", str(folder), "--encoder", f"hf:{tiny_hf}", "--out", str(store), "--dtype", "float32", "--shard-size", "5", "--workers", "0", "--precision", "float32", "--quiet"]) == 0
    enc = make_encoder(f"hf:{tiny_hf}", "images", num_workers=0, precision="float32")
    direct = enc.encode_rows(read_image_folder(folder))  # in memory, through the same preprocessing
    st = open_store(store)
    assert st.manifest["encoder"]["backbone"]["pooling"] == "pooler" and direct.shape == (12, 16)
    assert np.allclose(np.asarray(st.features), direct, atol=1e-5)

    run = compress(folder, ratio=0.25, method="dq", n_bins=2, encoder=f"hf:{tiny_hf}", embedding="features", stream=True, out=tmp_path / "run", use_cache=False)
    assert run.manifest["dataset"]["streamed"] is True and len(run.indices) == 3
    ids = json.loads((tmp_path / "run" / "ids.json").read_text())
    assert ids == [index_image_folder(folder).ids[i] for i in run.indices]
    back = open_run(tmp_path / "run")
    back.export("imagefolder")
    for i, name in zip(run.indices, ids):  # the source's bytes, unchanged
        cls = name.split("/")[0]
        assert (tmp_path / "run" / "export" / cls / f"{i:07d}.png").read_bytes() == (folder / name).read_bytes()

    from dsquant.torch_data import load_subset

    sub = load_subset(tmp_path / "run")
    img, label = sub[0]
    assert tuple(img.shape) == (3, 224, 224) and label == int(index_image_folder(folder).labels[run.indices[0]])


def test_streamed_data_refuses_encoders_and_methods_that_need_it_in_memory(folder, tiny_hf):
    from dsquant import compress

    with pytest.raises(ValueError, match="is streamed .* trains on the whole set in memory"):
        compress(folder, ratio=0.25, n_bins=2, stream=True, use_cache=False)
    with pytest.raises(ValueError, match="'el2n' reads the images in memory"):
        compress(folder, ratio=0.25, method="el2n", n_bins=2, encoder=f"hf:{tiny_hf}", stream=True, use_cache=False)


def test_default_decoding_workers_follow_the_encoder_device(monkeypatch):
    from dsquant.data import stream

    monkeypatch.setattr(stream.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert (stream.default_workers("cuda:0"), stream.default_workers("cpu"), stream.default_workers(None)) == (15, 8, 8)
    monkeypatch.setattr(stream.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert (stream.default_workers("cuda"), stream.default_workers("cpu")) == (1, 1)


def test_gradient_embedding_on_a_pretrained_backbone(folder, tiny_hf):
    """DQ's embedding on a pretrained backbone: a linear head fitted on its features; the rows
    of delta = softmax - onehot sum to zero, are negative at the true class only, and the fitted
    head classifies better than chance."""
    from dsquant.embed import make_encoder

    ds = read_image_folder(folder)
    enc = make_encoder(f"hf:{tiny_hf}", "images", embedding="gradient", num_workers=0, precision="float32")
    emb = enc.encode(ds)
    assert emb.kind == "gradient" and emb.delta.shape == (12, 3) and emb.features.shape == (12, 16)
    assert np.allclose(emb.delta.sum(1), 0, atol=1e-5)
    true = emb.delta[np.arange(12), ds.labels]
    assert np.all(true <= 0) and np.all(np.delete(emb.delta, ds.labels + 3 * np.arange(12)) >= 0)
    probs = emb.delta + np.eye(3)[ds.labels]  # softmax of the fitted head
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.mean(np.argmax(probs, 1) == ds.labels) > 0.5  # fits its own training set (chance: 1/3)


def test_handles_are_not_kept_per_image_and_bounded_per_shard(folder, tmp_path):
    from dsquant.data import stream

    ds = index_image_folder(folder)
    for i in range(len(ds)):
        ds.read_bytes(i)
    assert ds._handles == {}  # one file per image: opened and closed
    shards = [_shard(tmp_path / f"w-{k:02d}.tar", [(f"k{k}", _jpeg(20, 20, k), "0")]) for k in range(stream._OPEN_SHARDS + 4)]
    wds = index_webdataset(shards)
    for i in range(len(wds)):
        wds.read_bytes(i)
    assert len(wds._handles) == stream._OPEN_SHARDS


def test_store_review_cases(folder, tmp_path):
    """A directory holding only what another store process wrote first is joined, not refused;
    a process whose encoder differs from the store's is refused; float16 overflow is named;
    an unlabelled store gives labels None."""
    ds = index_image_folder(folder)
    out = tmp_path / "racing"
    out.mkdir()
    (out / ".ids.npy.k2x9qz").write_bytes(b"partial")  # another process's temporary ids file
    embed_to_store(ds, _RowEncoder(len(ds)), out, shard_size=6)
    assert open_store(out).features.shape == (12, 6)

    from dsquant.embed.store import prepare_store, write_shard

    root, manifest = prepare_store(ds, _RowEncoder(len(ds)), tmp_path / "s2", shard_size=6)
    with pytest.raises(DataError, match="encoder differs from the store's \\(seed\\)"):
        write_shard(root, manifest, ds, _RowEncoder(len(ds), seed=5), 0)
    big = _RowEncoder(len(ds))
    big.table = big.table * 1e6
    with pytest.raises(DataError, match="above float16's range.*--dtype float32"):
        embed_to_store(ds, big, tmp_path / "s3", shard_size=6)

    class Unlabelled:
        source, split, classes, labels, ids = "<u>", "train", [], None, None

        def __len__(self):
            return 12

        def fingerprint(self):
            return "u"

    embed_to_store(Unlabelled(), _RowEncoder(12), tmp_path / "u", shard_size=6)
    st = open_store(tmp_path / "u")
    assert st.labels is None and st.classes == []


def test_webdataset_export_names_files_by_their_format(tmp_path):
    from dsquant.artifact import write_streamed

    _shard(tmp_path / "s.tar", [("a", _jpeg(20, 20, 0), "0"), ("b", _png(np.zeros((4, 4, 3), np.uint8)), "1")])
    ds = index_webdataset([tmp_path / "s.tar"])
    dest = tmp_path / "export"
    dest.mkdir()
    write_streamed(dest, "imagefolder", ds, np.array([0, 1]))
    names = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file() and p.suffix != ".json")
    assert names == ["0/0000000.jpg", "1/0000001.png"]


def test_compress_webdataset_shards_by_brace_pattern(tmp_path, tiny_hf):
    """A brace pattern is DATA for compress (each shard checked to exist first); a missing shard
    is named before any work."""
    from dsquant import compress

    for k in range(2):
        _shard(tmp_path / f"s-{k}.tar", [(f"k{k}{j}", _jpeg(24, 20, 10 * k + j), str(j % 2)) for j in range(4)])
    run = compress(str(tmp_path / "s-{0..1}.tar"), ratio=0.5, method="dq", n_bins=2, encoder=f"hf:{tiny_hf}", embedding="features", out=tmp_path / "run", use_cache=False)
    assert run.manifest["dataset"]["format"] == "webdataset" and len(run.indices) == 4
    ids = json.loads((tmp_path / "run" / "ids.json").read_text())
    assert set(ids) <= {f"k{k}{j}" for k in range(2) for j in range(4)} and len(ids) == 4
    with pytest.raises(DataError, match=r"s-2.tar: no such file"):
        compress(str(tmp_path / "s-{0..2}.tar"), ratio=0.5, n_bins=2, encoder=f"hf:{tiny_hf}", use_cache=False)
