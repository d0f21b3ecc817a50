"""Pixel quantization of streamed image data (issue 15): the chunked kept-patch writer gives the
same file as the in-memory one, Grad-CAM++ on pretrained backbones matches hand-derived and
naive references, and ``compress`` writes only the selected images' kept patches."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsquant.pixels import PatchStore, keep_masks, kept_psnr, n_kept, patch_scores
from dsquant.pixels.store import Codec, PatchStoreWriter

transformers = pytest.importorskip("transformers")


def _random_store(rng, n=23, shape=(32, 32, 3), patch=4, theta=0.25):
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    gh, gw = shape[0] // patch, shape[1] // patch
    masks = keep_masks(rng.random((n, gh, gw)), theta)
    return PatchStore.from_images(images, rng.integers(0, 5, n), rng.permutation(1000)[:n], masks, patch, list("abcde"), {"k": 1}), images


@pytest.mark.parametrize("codec", [Codec("webp"), Codec("png"), Codec("jpeg", 80), Codec("webp", 90)])
def test_writer_gives_the_in_memory_file_byte_for_byte(tmp_path, codec, monkeypatch):
    from dsquant.pixels import store as store_module

    monkeypatch.setattr(store_module, "TILE_PIXELS", 5 * 32 * 32)  # 5 images per tile: several tiles, a partial last one
    rng = np.random.default_rng(0)
    store, images = _random_store(rng, n=23)
    path = tmp_path / "w.dsqp"
    with PatchStoreWriter(path, (32, 32, 3), 4, store.classes, store.meta, codec) as w:
        start = 0
        for size in (1, 7, 0, 2, 9, 4):  # chunks that straddle tile boundaries
            part = slice(start, start + size)
            w.add(images[part], store.labels[part], store.indices[part], store.masks[part])
            start += size
        assert start == 23 and not path.exists()  # nothing at the path before close
    psnr = w.psnr  # complete after close
    assert path.read_bytes() == store.to_bytes(codec)
    back = PatchStore.load(path)
    assert psnr == pytest.approx(kept_psnr(store, back)) and (psnr == float("inf")) == codec.lossless
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.dsqp"]  # no temporary file left


def test_writer_leaves_nothing_when_interrupted_and_refuses_bad_chunks(tmp_path):
    rng = np.random.default_rng(1)
    store, images = _random_store(rng, n=4)
    (tmp_path / "w.dsqp").write_bytes(b"earlier")
    with pytest.raises(KeyboardInterrupt):
        with PatchStoreWriter(tmp_path / "w.dsqp", (32, 32, 3), 4, store.classes) as w:
            w.add(images, store.labels, store.indices, store.masks)
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["w.dsqp"] and (tmp_path / "w.dsqp").read_bytes() == b"earlier"
    w = PatchStoreWriter(tmp_path / "x.dsqp", (32, 32, 3), 4, store.classes)
    with pytest.raises(ValueError, match=r"expected \(n, 32, 32, 3\) uint8"):
        w.add(images[:, :16], store.labels, store.indices, store.masks)
    w.add(images[:2], store.labels[:2], store.indices[:2], store.masks[:2])
    fewer = store.masks[2:].copy()
    fewer[:, 0, :] = False
    with pytest.raises(ValueError, match="same number of patches"):
        w.add(images[2:], store.labels[2:], store.indices[2:], fewer)
    w.abort()
    assert not (tmp_path / "x.dsqp").exists() and len(list(tmp_path.iterdir())) == 1


def test_spatial_map_puts_tokens_on_their_grid():
    from dsquant.embed.pretrained import spatial_map, spatial_source

    for prefix, side in ((1, 4), (5, 3), (0, 2)):  # CLS; CLS + 4 registers; none (SigLIP)
        n = prefix + side * side
        tokens = torch.arange(n, dtype=torch.float32).view(1, n, 1).repeat(2, 1, 3)  # token t holds t
        assert spatial_source((tokens, tokens * 0 - 1)) is tokens  # hidden state -2: the last block's input
        grid = spatial_map(tokens)
        assert grid.shape == (2, 3, side, side)
        assert grid[0, 0].tolist() == [[prefix + r * side + c for c in range(side)] for r in range(side)]
    cnn = torch.randn(2, 5, 3, 3)
    assert spatial_source((torch.randn(2, 5, 6, 6), cnn)) is cnn and spatial_map(cnn) is cnn  # a CNN's last map
    with pytest.raises(ValueError, match="no square patch grid"):
        spatial_map(torch.zeros(1, 99, 2))  # 83..99 tokens after 16..0 prefix tokens: no square


def _tiny_resnet(path):
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).eval().save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 16}, "crop_size": {"height": 16, "width": 16}, "do_center_crop": True, "image_mean": [0.5] * 3, "image_std": [0.25] * 3, "resample": 2}))
    return path


def _tiny_vit(path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=4)).eval().save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 16, "width": 16}, "do_center_crop": False, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 2}))
    return path


def _head(d, c, seed=0):
    from dsquant.embed.pretrained_encoder import LinearHead

    g = torch.Generator().manual_seed(seed)
    return LinearHead(torch.randn(d, generator=g), torch.rand(d, generator=g) + 0.5, torch.randn(d, c, generator=g), torch.randn(c, generator=g))


def test_backbone_gradcam_of_a_cnn_matches_the_closed_form(tmp_path):
    """Global average pooling then a linear head: the gradient of logit c at every position of
    channel k is W'_kc / (h w), so Grad-CAM++'s weight is relu(g) alpha h w with
    alpha = g^2 / (2 g^2 + g^3 sum_ij A_kij) (ALGORITHMS.md section 6), computed here by hand."""
    from dsquant.embed.pretrained import load_backbone
    from dsquant.pixels.gradcam import backbone_gradcam

    bb = load_backbone(f"hf:{_tiny_resnet(tmp_path / 'r')}", device="cpu", precision="float32")
    head = _head(16, 3)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    maps = backbone_gradcam(bb, head, x)
    with torch.no_grad():
        a = bb.model(pixel_values=x).last_hidden_state.numpy().astype(np.float64)  # (4, 16, 2, 2)
        logits = head.logits(torch.as_tensor(a.mean(axis=(2, 3)), dtype=torch.float32)).numpy()
    h, w = a.shape[2:]
    ref = []
    for i in range(4):
        c = int(np.argmax(logits[i]))
        g = (head.weight[:, c].numpy().astype(np.float64) / head.std.numpy()) / (h * w)
        s = a[i].sum(axis=(1, 2))
        alpha = np.where(g != 0, g**2 / (2 * g**2 + s * g**3 + 1e-6), 0.0)
        weight = np.maximum(g, 0) * alpha * h * w
        ref.append(np.maximum((weight[:, None, None] * a[i]).sum(0), 0))
    ref = torch.nn.functional.interpolate(torch.as_tensor(np.stack(ref))[:, None].float(), size=(16, 16), mode="bilinear", align_corners=False)[:, 0].numpy()
    assert maps.shape == (4, 16, 16) and maps.dtype == np.float32 and maps.max() > 0
    np.testing.assert_allclose(maps, ref, rtol=1e-4, atol=1e-6 * ref.max())


def test_backbone_gradcam_of_a_vit_matches_a_naive_reference(tmp_path):
    """The patch tokens entering the last block, their gradient taken by a hook on that block,
    put on the grid one token at a time, weighted by the Grad-CAM++ formula in loops."""
    from dsquant.embed.pretrained import load_backbone
    from dsquant.pixels.gradcam import backbone_gradcam

    bb = load_backbone(f"hf:{_tiny_vit(tmp_path / 'v')}", device="cpu", precision="float32")
    head = _head(16, 3, seed=1)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    maps = backbone_gradcam(bb, head, x)

    seen = {}
    block = (bb.model.layers if hasattr(bb.model, "layers") else bb.model.encoder.layer)[-1]  # transformers 5 and 4
    hook = block.register_forward_pre_hook(lambda m, args, kwargs: seen.__setitem__("t", args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    try:
        out = bb.model(pixel_values=x)
    finally:
        hook.remove()
    tokens = seen["t"]
    logits = head.logits(out.last_hidden_state[:, 0])
    target = logits.argmax(1)
    (grads,) = torch.autograd.grad(logits[torch.arange(2), target].sum(), tokens)
    A, G = tokens.detach().numpy().astype(np.float64), grads.numpy().astype(np.float64)
    side = 4
    ref = np.zeros((2, side, side))
    for i in range(2):
        a = np.zeros((16, side, side))
        g = np.zeros((16, side, side))
        for t in range(1, 1 + side * side):  # token 0 is the class token
            r, c = divmod(t - 1, side)
            a[:, r, c], g[:, r, c] = A[i, t], G[i, t]
        for k in range(16):
            alpha = np.where(g[k] != 0, g[k] ** 2 / (2 * g[k] ** 2 + a[k].sum() * g[k] ** 3 + 1e-6), 0.0)
            ref[i] += (np.maximum(g[k], 0) * alpha).sum() * a[k]
    ref = np.maximum(ref, 0)
    ref = torch.nn.functional.interpolate(torch.as_tensor(ref)[:, None].float(), size=(16, 16), mode="bilinear", align_corners=False)[:, 0].numpy()
    assert maps.max() > 0
    np.testing.assert_allclose(maps, ref, rtol=1e-3, atol=1e-5 * ref.max())


def test_head_rows_are_class_balanced_and_seeded():
    from dsquant.pixels.streamed import head_rows

    labels = np.repeat([0, 1, 2], [10, 3, 30])
    rows = head_rows(labels, 3, limit=12, seed=5)
    assert np.all(np.diff(rows) > 0) and np.bincount(labels[rows]).tolist() == [4, 3, 4]  # 12 // 3 per class, all of the small one
    assert np.array_equal(rows, head_rows(labels, 3, limit=12, seed=5)) and not np.array_equal(rows, head_rows(labels, 3, limit=12, seed=6))
    assert np.array_equal(head_rows(labels, 3, limit=43), np.arange(43))  # at most the limit: every row


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
def folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c in ("cat", "dog", "eel"):
        (root / c).mkdir(parents=True)
        for j in range(6):
            side = int(rng.integers(12, 30))  # varied sizes: decoded to the backbone's 16 px
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (side, side + 3, 3), dtype=np.uint8)).save(buf, format="PNG")
            (root / c / f"{j:02d}.png").write_bytes(buf.getvalue())
    return root


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    return _tiny_resnet(tmp_path_factory.mktemp("tiny-resnet"))


def test_compress_of_a_streamed_folder_stores_the_kept_patches_of_the_selected_images(folder, tiny_hf, tmp_path):
    from dsquant import compress
    from dsquant.cli import main
    from dsquant.data import index_image_folder
    from dsquant.data.stream import iter_image_batches
    from dsquant.embed import make_encoder
    from dsquant.embed.pretrained import load_backbone
    from dsquant.embed.pretrained_encoder import fit_linear_classifier
    from dsquant.pixels import load_reconstructed
    from dsquant.pixels.gradcam import backbone_gradcam

    out = tmp_path / "run"
    run = compress(folder, ratio=0.5, method="dq", n_bins=2, encoder=f"hf:{tiny_hf}", embedding="features", encoder_precision="float32",
                   stream=True, drop_ratio=0.25, patch_codec="png", out=out, use_cache=False)
    assert run.manifest["dataset"]["streamed"] is True and len(run.indices) == 9
    px = run.manifest["pixels"]
    assert px["image_shape"] == [16, 16, 3] and px["patch"] == 2 and px["grid"] == [8, 8] and px["kept_per_image"] == n_kept(64, 0.25) == 48
    assert px["bytes"]["png"] is None and px["bytes"]["raw_uint8"] == 9 * 16 * 16 * 3 and px["kept_psnr_db"] is None
    assert px["effective_keep_ratio"] == pytest.approx(0.5 * 48 / 64) and px["head"]["rows"] == 18

    store = PatchStore.load(out / "patches.dsqp")
    assert store.indices.tolist() == run.indices.tolist() and store.image_shape == (16, 16, 3)
    ds = index_image_folder(folder)
    assert store.labels.tolist() == ds.labels[run.indices].tolist()
    images = np.concatenate([b for _, b in iter_image_batches(ds, 16, 16, "bilinear", indices=run.indices, num_workers=0, as_numpy=True)])
    # the masks: DQ's rule on Grad-CAM++ of a head fitted on the run's embedding, recomputed here
    bb = load_backbone(f"hf:{tiny_hf}", device="cpu", precision="float32")
    features = make_encoder(f"hf:{tiny_hf}", "images", num_workers=0, precision="float32").encode_rows(ds)
    head = fit_linear_classifier(features, ds.labels, 3, 100, 0)
    x = (torch.as_tensor(images).permute(0, 3, 1, 2).float() - 127.5) / 63.75
    masks = keep_masks(patch_scores(backbone_gradcam(bb, head, x), 2), 0.25)
    assert np.array_equal(store.masks, masks) and 0 < masks.sum(axis=0).min() < 9  # image-dependent masks
    expected = PatchStore.from_images(images, store.labels, store.indices, masks, 2, ds.classes)
    assert np.array_equal(store.patches, expected.patches)  # lossless: the kept pixels exactly
    rebuilt, _ = load_reconstructed(out)
    keep = store.pixel_masks()
    assert np.array_equal(rebuilt[keep], images[keep])
    assert main(["info", str(out)]) == 0


def test_streamed_pixel_quantization_refuses_what_it_cannot_do(folder, tiny_hf, tmp_path):
    from dsquant import compress

    common = dict(ratio=0.5, method="dq", n_bins=2, stream=True, drop_ratio=0.25, use_cache=False)
    with pytest.raises(ValueError, match="'tiny-mae' trains on every image in memory"):
        compress(folder, encoder=f"hf:{tiny_hf}", reconstructor="tiny-mae", out=tmp_path / "a", **common)
    with pytest.raises(ValueError, match="give an output directory"):
        compress(folder, encoder=f"hf:{tiny_hf}", **common)

    class Pool(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    script = tmp_path / "pool.pt"
    torch.jit.save(torch.jit.script(Pool()), str(script))
    with pytest.raises(ValueError, match="needs an hf: encoder"):
        compress(folder, encoder=f"torchscript:{script}", out=tmp_path / "b", **common)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.fixture
def pixel_run(tmp_path, monkeypatch) -> Path:
    """A pixel run of digits (144 images, drop ratio 0.25) whose kept-patch file holds tiles of
    10 images."""
    from dsquant.cli import main
    from dsquant.pixels import store as store_module

    monkeypatch.setattr(store_module, "TILE_PIXELS", 10 * 8 * 8)  # digits: 10 images per tile
    out = tmp_path / "px"
    assert main(["compress", "digits", "--method", "random", "--ratio", "0.1", "--drop-ratio", "0.25", "--patch", "2", "--epochs", "1", "--width", "8", "--out", str(out), "--quiet"]) == 0
    return out


def _count_reads(monkeypatch) -> tuple[list, list]:
    """From now on: the size of every tile read, and one entry per verification of a kept-patch
    file (each reads the whole body); reading the whole file at once fails the test."""
    from dsquant.pixels import PatchReader
    from dsquant.pixels import store as store_module

    tiles, verified = [], []
    real_tiles, real_verified = PatchReader.tiles, store_module._verified_file
    monkeypatch.setattr(PatchReader, "tiles", lambda self: (tiles.append(len(c)) or c for c in real_tiles(self)))
    monkeypatch.setattr(store_module, "_verified_file", lambda f: verified.append(f.name) or real_verified(f))
    monkeypatch.setattr(PatchStore, "load", classmethod(lambda cls, *a, **k: pytest.fail("read the whole file")))
    return tiles, verified


def test_imagefolder_export_of_a_pixel_run_rebuilds_a_tile_at_a_time(pixel_run, monkeypatch):
    """The export reads patches.dsqp tile by tile, verifying it once, and writes what
    rebuilding the whole file at once gives, every file."""
    from dsquant.cli import main
    from dsquant.pixels import load_reconstructed

    out = pixel_run
    whole, store = load_reconstructed(out)
    seen, verified = _count_reads(monkeypatch)
    assert main(["export", str(out), "--format", "imagefolder", "--quiet"]) == 0
    assert len(seen) == 15 and max(seen) == 10 and sum(seen) == len(store) == 144
    assert verified == [str(out / "patches.dsqp")]
    record = json.loads((out / "export" / "dsquant-export.json").read_text())
    assert record["files"] == 144 and len(list((out / "export").glob("*/*.png"))) == 144
    classes = [c["folder"] for c in record["classes"]]
    for img, label, idx in zip(whole, store.labels, store.indices):
        png = np.asarray(Image.open(out / "export" / classes[label] / f"{idx:07d}.png"))
        assert np.array_equal(png, img[..., 0])


def test_npz_export_and_reconstructed_dataset_rebuild_a_tile_at_a_time(pixel_run, tmp_path, monkeypatch):
    """``export --format npz`` and ``ReconstructedDataset(in_memory=False)`` rebuild into a
    memory-mapped unnamed temporary file a tile at a time, the kept-patch file verified once
    (the whole file is never loaded), and give what rebuilding it at once gives: the npz in
    dataset-index order, the dataset in file order; nothing is left beside the export."""
    from dsquant.cli import main
    from dsquant.artifact import file_sha256
    from dsquant.pixels import ReconstructedDataset, load_reconstructed, rebuild_to_file

    out = pixel_run
    # the file in another order than the indices' (a streamed run writes as the images come):
    # the export's reordering is exercised
    store = PatchStore.load(out / "patches.dsqp")
    perm = np.random.default_rng(0).permutation(len(store))
    shuffled = PatchStore(store.indices[perm], store.labels[perm], store.masks[perm], store.patches[perm], store.patch, store.image_shape, store.classes, store.meta)
    shuffled.save(out / "patches.dsqp", codec="png")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["patches.dsqp"] = file_sha256(out / "patches.dsqp")
    (out / "manifest.json").write_text(json.dumps(manifest))
    whole, store = load_reconstructed(out)
    assert np.array_equal(store.indices, shuffled.indices) and not np.all(np.diff(store.indices) > 0)
    order = np.argsort(store.indices, kind="stable")
    in_memory = ReconstructedDataset(out)
    seen, verified = _count_reads(monkeypatch)
    before = sorted(p.name for p in out.iterdir())
    assert main(["export", str(out), "--format", "npz", "--quiet"]) == 0
    assert len(seen) == 15 and max(seen) == 10 and sum(seen) == 144 and len(verified) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted([*before, "export.npz"])  # no temporary file left
    with np.load(out / "export.npz", allow_pickle=False) as z:
        assert np.array_equal(z["images"], whole[order]) and np.array_equal(z["indices"], store.indices[order])
        assert np.array_equal(z["labels"], store.labels[order]) and list(z["classes"]) == store.classes
    seen.clear(), verified.clear()
    lazy = ReconstructedDataset(out, in_memory=False, tmp_dir=tmp_path)
    assert isinstance(lazy.images, np.memmap) and lazy.store is None and sum(seen) == 144 and len(verified) == 1
    assert np.array_equal(lazy.images, whole) and np.array_equal(lazy.indices, store.indices) and np.array_equal(lazy.labels, store.labels)
    for i in (0, 77, 143):
        a, b = lazy[i], in_memory[i]
        assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["px"]  # the temporary file has no name
    with pytest.raises(ValueError, match="order"):
        rebuild_to_file(out, order="label")
