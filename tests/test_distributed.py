"""Partitioned greedy (dsquant.core.partitioned) against naive references and the exact bins, and
the Ray engine (dsquant.distributed) on a real local cluster: identical bins, the same store."""

from __future__ import annotations

import numpy as np
import pytest

from dsquant import generate_bins
from dsquant.core.partitioned import graphcut_objective, part_greedy, partitioned_bins, unit_sum


def _clustered(n: int, d: int = 12, centres: int = 15, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d)) * 2
    return (c[rng.integers(0, centres, n)] + rng.normal(size=(n, d))).astype(np.float32)


def _naive_part_greedy(x: np.ndarray, coverage: np.ndarray, budget: int, lam: float = 1.0) -> list[int]:
    """The textbook greedy: score(x) = 0.5 lam <u_x, U_V> - sum_{j in S} cos(x, j), in float64,
    the lowest index on ties."""
    u = x.astype(np.float64)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    score = 0.5 * lam * (u @ coverage)
    picked: list[int] = []
    for _ in range(budget):
        s = score.copy()
        s[picked] = -np.inf
        j = int(np.argmax(s))
        picked.append(j)
        score -= u @ u[j]
    return picked


def test_part_greedy_with_a_global_coverage_term_matches_the_naive_greedy():
    x = _clustered(600, seed=1)
    part = np.sort(np.random.default_rng(2).choice(600, 150, replace=False))
    coverage = unit_sum(x, np.arange(600))  # the whole pool's, not the part's
    got = part_greedy(x, part, coverage, 40).tolist()
    assert got == _naive_part_greedy(x[part], coverage, 40)
    own = part_greedy(x, part, unit_sum(x, part), 40).tolist()
    assert own != got  # the coverage term matters: the part's own sum picks differently


def test_one_part_is_the_exact_greedy_and_more_parts_stay_close():
    x = _clustered(3000)
    exact, rank = generate_bins(x, 5, return_rank=True)
    one, one_rank = partitioned_bins(x, 5, 1, return_rank=True)
    assert all(np.array_equal(a, b) for a, b in zip(exact, one))
    assert np.array_equal(rank, one_rank)
    parts = partitioned_bins(x, 5, 4, seed=3)
    assert [len(b) for b in parts] == [len(b) for b in exact]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(3000))
    pool_e = pool_p = np.arange(3000)
    for k in range(4):  # each bin's GraphCut objective on its own remaining pool
        ratio = graphcut_objective(x, parts[k], pool_p) / graphcut_objective(x, exact[k], pool_e)
        assert ratio > 0.99
        pool_e, pool_p = np.setdiff1d(pool_e, exact[k]), np.setdiff1d(pool_p, parts[k])


def test_graphcut_objective_by_unit_sums_equals_the_pairwise_sum():
    x = _clustered(80, seed=4)
    x64 = x.astype(np.float64)
    u = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    s = 0.5 + 0.5 * u @ u.T
    pool, sel = np.arange(10, 80), np.array([12, 30, 31, 77])
    want = 1.0 * s[np.ix_(pool, sel)].sum() - s[np.ix_(sel, sel)].sum()
    assert graphcut_objective(x, sel, pool) == pytest.approx(want, rel=1e-12)


def test_partitions_refuse_labels_and_bad_counts():
    from dsquant.distributed import partitioned_engine

    x = _clustered(100)
    with pytest.raises(ValueError, match="unlabelled pool"):
        partitioned_engine(2)(x, 3, np.zeros(100, dtype=int))
    with pytest.raises(ValueError, match="n_parts"):
        partitioned_bins(x, 3, 0)


# ----------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="the Ray engine's tests need the ray extra (pip install 'dsquant[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_bins_are_the_exact_bins_on_arrays_stores_and_in_compress(ray_local, tmp_path):
    from dsquant import compress
    from dsquant.data import FeatureDataset
    from dsquant.distributed import partitioned_engine, ray_generate_bins
    from dsquant.embed.store import embed_to_store, open_store

    x = _clustered(1200, seed=5)
    labels = np.arange(1200) % 4
    exact, rank = generate_bins(x, 6, labels, return_rank=True)
    got, got_rank = ray_generate_bins(x, 6, labels, return_rank=True)
    assert all(np.array_equal(a, b) for a, b in zip(exact, got)) and np.array_equal(rank, got_rank)

    class Rows:
        name, dim = "rows", 12

        def config(self):
            return {"encoder": "rows"}

        def encode_rows(self, dataset, idx, progress=False, bad=None):
            return x[idx]

    class Data:
        source, split, classes, ids = "<x>", "train", ["a", "b", "c", "d"], None

        def __init__(self):
            self.labels = labels

        def __len__(self):
            return 1200

        def fingerprint(self):
            return "x"

    embed_to_store(Data(), Rows(), tmp_path / "st", shard_size=500, dtype="float32")
    st = open_store(tmp_path / "st")
    assert all(np.array_equal(a, b) for a, b in zip(exact, ray_generate_bins(st.features, 6, st.labels)))

    local = compress(FeatureDataset(x, labels, Data.classes), ratio=0.1, method="dq", n_bins=6, use_cache=False)
    remote = compress(FeatureDataset(x, labels, Data.classes), ratio=0.1, method="dq", n_bins=6, use_cache=False, engine="ray")
    assert np.array_equal(local.indices, remote.indices) and remote.manifest["parameters"]["engine"] == "ray"

    seq = partitioned_engine(3, seed=1)(x, 4)
    par = partitioned_engine(3, seed=1, use_ray=True)(x, 4)
    assert all(np.array_equal(a, b) for a, b in zip(seq, par))  # the parts as Ray tasks: the same


@pytest.mark.slow
def test_ray_embed_writes_the_single_machine_store_and_resumes(ray_local, tmp_path):
    import io
    import json

    import torch
    from PIL import Image
    from transformers import ResNetConfig, ResNetModel

    from dsquant.data import index_image_folder
    from dsquant.distributed import ray_embed
    from dsquant.embed import make_encoder
    from dsquant.embed.store import embed_to_store, open_store

    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for j in range(5):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(buf, format="PNG")
            (root / c / f"{j}.png").write_bytes(buf.getvalue())
    model = tmp_path / "tiny"
    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(model)
    (model / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 16}, "crop_size": {"height": 16, "width": 16}, "image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    ds = index_image_folder(root)
    enc = make_encoder(f"hf:{model}", "images", num_workers=0, precision="float32")
    embed_to_store(ds, enc, tmp_path / "local", shard_size=4, dtype="float32")
    r = ray_embed(ds, make_encoder(f"hf:{model}", "images", precision="float32"), tmp_path / "ray", shard_size=4, dtype="float32")
    assert (r["written"], r["remaining"]) == (3, 0)
    a, b = open_store(tmp_path / "local"), open_store(tmp_path / "ray")
    assert a.ids.tolist() == b.ids.tolist() and a.manifest["encoder_hash"] == b.manifest["encoder_hash"]
    assert np.allclose(np.asarray(a.features), np.asarray(b.features), atol=1e-5)
    (tmp_path / "ray" / "shard-00001.json").unlink()  # killed before this record was written
    r = ray_embed(ds, make_encoder(f"hf:{model}", "images", precision="float32"), tmp_path / "ray", shard_size=4, dtype="float32")
    assert (r["written"], r["done_before"], r["remaining"]) == (1, 2, 0)


def test_compress_partitions_from_the_command_line(tmp_path):
    """--partitions on an unlabelled pool: the partitioned bins, recorded in the manifest; with
    one part the exact run's indices."""
    import json

    from dsquant.cli import main

    x = _clustered(400, seed=6)
    np.save(tmp_path / "x.npy", x)
    assert main(["compress", str(tmp_path / "x.npy"), "--method", "dq", "--bins", "4", "--ratio", "0.2", "--partitions", "3", "--out", str(tmp_path / "p3"), "--no-cache", "--quiet"]) == 0
    m = json.loads((tmp_path / "p3" / "manifest.json").read_text())
    assert (m["parameters"]["partitions"], m["parameters"]["engine"], m["selection"]["n_selected"]) == (3, "local", 80)
    bins = np.load(tmp_path / "p3" / "bins.npz")
    want = partitioned_bins(x, 4, 3, seed=0)
    assert all(np.array_equal(bins[f"bin_{k}"], want[k]) for k in range(4))
    main(["compress", str(tmp_path / "x.npy"), "--method", "dq", "--bins", "4", "--ratio", "0.2", "--partitions", "1", "--out", str(tmp_path / "p1"), "--no-cache", "--quiet"])
    main(["compress", str(tmp_path / "x.npy"), "--method", "dq", "--bins", "4", "--ratio", "0.2", "--out", str(tmp_path / "exact"), "--no-cache", "--quiet"])
    assert np.array_equal(np.load(tmp_path / "p1" / "indices.npy"), np.load(tmp_path / "exact" / "indices.npy"))
    main(["compress", str(tmp_path / "x.npy"), "--method", "dq", "--bins", "4", "--ratio", "0.2", "--partitions", "3", "--no-partition-union", "--out", str(tmp_path / "shares"), "--no-cache", "--quiet"])
    shares = np.load(tmp_path / "shares" / "bins.npz")
    want = partitioned_bins(x, 4, 3, seed=0, union_greedy=False)
    assert all(np.array_equal(shares[f"bin_{k}"], want[k]) for k in range(4))
    assert json.loads((tmp_path / "shares" / "manifest.json").read_text())["parameters"]["partition_union"] is False


def test_without_the_union_step_each_part_takes_its_share():
    """union_greedy=False: the bin is the parts' picks, each part exactly its share (largest
    remainder), each part's picks its own greedy's first ones; one part is still exact."""
    x = _clustered(900, seed=7)
    one = partitioned_bins(x, 3, 1, union_greedy=False)
    assert all(np.array_equal(a, b) for a, b in zip(one, generate_bins(x, 3)))
    bins, rank = partitioned_bins(x, 3, 4, seed=2, union_greedy=False, return_rank=True)
    parts = [np.sort(p) for p in np.array_split(np.random.default_rng(2).permutation(900), 4)]
    coverage = unit_sum(x, np.arange(900))
    for part in parts:  # bin 0 holds each part's first greedy picks, its share of 300
        share = len(np.intersect1d(bins[0], part))
        assert share == 75
        assert set(part[part_greedy(x, part, coverage, share)]) == set(np.intersect1d(bins[0], part))
    assert sorted(rank[bins[0]]) == list(range(300))
