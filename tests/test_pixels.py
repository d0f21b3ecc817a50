import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from dsquant.artifact import read_output
from dsquant.cli import main
from dsquant.data import load_digits
from dsquant.pixels import PatchStore, gradcam_plusplus, keep_masks, n_kept, patch_scores
from dsquant.pixels.gradcam import gradcam_plusplus_weights
from dsquant.pixels.mae import OFFICIAL_CONFIGS, MAEConfig, MaskedAutoencoderViT, load_mae, sincos_pos_embed
from dsquant.pixels.reconstruct import InpaintReconstructor, MAEReconstructor, reconstruct_store


def test_gradcam_plusplus_weights_hand_computed():
    # one channel, constant gradient g = 0.5 over a 2x2 map with activations summing to 4:
    # alpha = g^2 / (2 g^2 + 4 g^3) = 0.25 / (0.5 + 0.5) = 0.25 at each of the 4 pixels;
    # w = sum relu(g) * alpha = 4 * 0.5 * 0.25 = 0.5. A negative-gradient channel gets 0.
    a = torch.tensor([[[[1.0, 2.0], [0.5, 0.5]], [[1.0, 1.0], [1.0, 1.0]]]])
    g = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]], [[-1.0, -1.0], [-1.0, -1.0]]]])
    w = gradcam_plusplus_weights(a, g)
    assert w[0, 0].item() == pytest.approx(0.5, rel=1e-5) and w[0, 1].item() == 0.0


class _Tiny(nn.Module):
    """conv (fixed) -> ReLU -> global average pool -> linear: Grad-CAM++ is analytic here."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU())
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.features[0].weight[:] = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
            self.fc.weight[:] = torch.tensor([[1.0, -1.0], [0.0, 3.0]])

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_gradcam_plusplus_map_matches_the_closed_form():
    img = np.zeros((1, 4, 4, 1), np.uint8)
    img[0, :2, :2, 0] = 255  # bright top-left quadrant
    model = _Tiny()
    cam = gradcam_plusplus(model, img, classes=np.array([1]))
    # class 1 logit = 3 * mean(A_1): g = 3 / 16 on channel 1, 0 on channel 0
    x = img[0, ..., 0] / 255.0
    a1 = 2 * x
    g = 3 / 16
    alpha = g**2 / (2 * g**2 + a1.sum() * g**3)
    w1 = 16 * g * alpha
    assert np.allclose(cam[0], np.maximum(w1 * a1, 0), atol=1e-5)
    assert cam[0, 0, 0] > 0 and cam[0, 3, 3] == 0


def test_patch_scores_and_keep_masks_hand_computed():
    maps = np.array([[[1, 1, 5, 5], [1, 1, 5, 5], [2, 2, 0, 0], [2, 2, 0, 0]]], dtype=np.float32)
    scores = patch_scores(maps, 2)
    assert scores[0].tolist() == [[1, 5], [2, 0]]
    assert keep_masks(scores, 0.25)[0].tolist() == [[True, True], [True, False]]  # floor(0.75*4)=3
    assert keep_masks(scores, 0.5)[0].tolist() == [[False, True], [True, False]]
    # ties go to the lower patch index
    assert keep_masks(np.ones((1, 2, 2)), 0.5)[0].tolist() == [[True, True], [False, False]]
    assert n_kept(64, 0.2) == 51
    with pytest.raises(ValueError, match="drop_ratio"):
        n_kept(64, 1.0)


def test_patch_store_round_trip_and_checksum(tmp_path, rng):
    images = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    masks = keep_masks(rng.random((5, 4, 4)), 0.25)
    store = PatchStore.from_images(images, np.arange(5), np.array([9, 3, 7, 1, 4]), masks, 2, ["a", "b", "c", "d", "e"], {"x": 1})
    holes = store.with_holes()
    px = store.pixel_masks()
    assert np.array_equal(holes[px], images[px]) and np.all(holes[~px] == 0)
    n = store.save(tmp_path / "p.dsqp")
    back = PatchStore.load(tmp_path / "p.dsqp")
    assert np.array_equal(back.patches, store.patches) and np.array_equal(back.masks, masks)
    assert back.indices.tolist() == [9, 3, 7, 1, 4] and back.meta == {"x": 1}
    # 12 of 16 patches kept: 3/4 of the raw pixels; random pixels do not compress, so the file
    # (format version 2, lossless WebP) is about those, the masks, indices, labels and a header
    assert store.patches.nbytes == 5 * 12 * 2 * 2 * 3 == 0.75 * images.nbytes
    assert n - store.patches.nbytes - 5 * (2 + 16) < 1500
    data = bytearray((tmp_path / "p.dsqp").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "bad.dsqp").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad.dsqp: checksum mismatch"):
        PatchStore.load(tmp_path / "bad.dsqp")


def _official_keys(depth, dec_depth=8):
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
             "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    keys = ["cls_token", "pos_embed", "mask_token", "decoder_pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
            "norm.weight", "norm.bias", "decoder_embed.weight", "decoder_embed.bias", "decoder_norm.weight", "decoder_norm.bias",
            "decoder_pred.weight", "decoder_pred.bias"]
    keys += [f"blocks.{i}.{b}" for i in range(depth) for b in block]
    keys += [f"decoder_blocks.{i}.{b}" for i in range(dec_depth) for b in block]
    return set(keys)


def test_mae_state_dict_matches_the_official_layout(tmp_path):
    model = MaskedAutoencoderViT(OFFICIAL_CONFIGS["vit_base_patch16"])
    sd = model.state_dict()
    assert set(sd) == _official_keys(12) and len(sd) == 254
    assert sd["patch_embed.proj.weight"].shape == (768, 3, 16, 16)
    assert sd["pos_embed"].shape == (1, 197, 768) and sd["decoder_pos_embed"].shape == (1, 197, 512)
    assert sd["blocks.11.attn.qkv.weight"].shape == (2304, 768) and sd["decoder_pred.weight"].shape == (768, 512)
    # the fixed sin-cos table: cls row zero, values of the official formula
    pe = sincos_pos_embed(768, 14)
    assert np.allclose(sd["pos_embed"][0].numpy(), pe) and np.all(pe[0] == 0)
    assert pe[2, 0] == pytest.approx(np.sin(1.0))  # token 1 = (row 0, column 1): w first
    torch.save({"model": sd}, tmp_path / "mae_visualize_vit_base.pth")
    loaded = load_mae(tmp_path / "mae_visualize_vit_base.pth")
    assert loaded.config.embed_dim == 768 and torch.equal(loaded.state_dict()["blocks.3.mlp.fc1.weight"], sd["blocks.3.mlp.fc1.weight"])
    encoder_only = {k: v for k, v in sd.items() if not k.startswith(("decoder", "mask_token"))}
    torch.save({"model": encoder_only}, tmp_path / "mae_pretrain_vit_base.pth")
    with pytest.raises(ValueError, match="encoder only"):
        load_mae(tmp_path / "mae_pretrain_vit_base.pth")


def test_mae_large_layout_without_allocating():
    with torch.device("meta"):
        model = MaskedAutoencoderViT(OFFICIAL_CONFIGS["vit_large_patch16"])
    sd = model.state_dict()
    assert set(sd) == _official_keys(24) and len(sd) == 398
    assert tuple(sd["blocks.23.mlp.fc1.weight"].shape) == (4096, 1024)


def test_mae_patchify_round_trip_and_reconstruct_keeps_kept_pixels(rng):
    cfg = MAEConfig(img_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    model = MaskedAutoencoderViT(cfg).eval()
    x = torch.rand(3, 3, 8, 8)
    p = model.patchify(x)
    assert p.shape == (3, 16, 12) and torch.equal(model.unpatchify(p), x)
    # patch 0 of image 0 holds pixels (0..1, 0..1), each (row, col, channel)
    assert torch.equal(p[0, 0], x[0, :, :2, :2].permute(1, 2, 0).reshape(-1))
    keep = torch.zeros(3, 16, dtype=torch.bool)
    keep[:, :12] = True
    out = model.reconstruct(x, keep)
    kept_px = keep.view(3, 1, 4, 4).repeat_interleave(2, 2).repeat_interleave(2, 3).expand(-1, 3, -1, -1)
    assert torch.equal(out[kept_px], x[kept_px])


def test_inpaint_fills_a_smooth_image_well():
    ramp = np.tile(np.linspace(0, 255, 16), (16, 1)).astype(np.uint8)
    images = np.repeat(ramp[None, ..., None], 3, axis=3)
    keep = np.ones((1, 16, 16), bool)
    keep[0, 4:8, 8:12] = False
    out = InpaintReconstructor()(images.copy() * keep[..., None], keep)
    assert np.array_equal(out[0][keep[0]], images[0][keep[0]])
    err = np.abs(out[0][~keep[0]].astype(float) - images[0][~keep[0]])
    assert err.mean() < 12  # a linear ramp is easy to continue


def test_compress_with_drop_ratio_export_in_index_order(tmp_path, capsys):
    out = tmp_path / "px"
    code = main(["compress", "digits", "--method", "random", "--ratio", "0.1", "--drop-ratio", "0.25", "--patch", "2", "--epochs", "1", "--width", "8", "--out", str(out), "--quiet"])
    assert code == 0
    m = read_output(out).manifest
    px = m["pixels"]
    assert px["grid"] == [4, 4] and px["kept_per_image"] == 12 and px["effective_keep_ratio"] == pytest.approx(m["selection"]["n_selected"] / 1437 * 0.75)
    # the file: 12/16 of the pixels, lossless WebP, under those raw; digits has no source files
    b = px["bytes"]
    assert (out / "patches.dsqp").stat().st_size == b["patches.dsqp"] < 0.75 * b["raw_uint8"]
    assert b["png"] > 0 and b["source_files"] is None and "no file per sample" in px["source_files"]
    assert px["codec"] == {"name": "webp", "lossless": True, "quality": None, "effort": 1} and px["kept_psnr_db"] is None
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bytes on disk" in text and "whole images, PNG" in text and f"{b['patches.dsqp']:,}" in text
    # lossy: the kept pixels' PSNR recorded and shown (on digits' 8x8 images of 16 grey levels
    # lossy WebP is larger than lossless; bytes against quality: tests/test_patch_store.py)
    lossy = tmp_path / "px-lossy"
    assert main(["compress", "digits", "--method", "random", "--ratio", "0.1", "--drop-ratio", "0.25", "--patch", "2", "--epochs", "1", "--width", "8", "--patch-quality", "80", "--out", str(lossy), "--quiet"]) == 0
    lpx = read_output(lossy).manifest["pixels"]
    assert lpx["codec"]["quality"] == 80 and 25 < lpx["kept_psnr_db"] < 60
    capsys.readouterr()  # a quality without patch dropping is refused, not ignored
    assert main(["compress", "digits", "--method", "random", "--ratio", "0.1", "--patch-quality", "80", "--out", str(tmp_path / "no-drop"), "--quiet"]) == 2
    assert "patch_quality" in capsys.readouterr().err and not (tmp_path / "no-drop").exists()
    capsys.readouterr()
    assert main(["info", str(lossy)]) == 0 and f"PSNR {lpx['kept_psnr_db']} dB" in capsys.readouterr().out
    assert main(["export", str(out), "--format", "npz", "--quiet"]) == 0
    digits = load_digits()
    store = PatchStore.load(out / "patches.dsqp")
    with np.load(out / "export.npz") as z:
        idx, images = z["indices"], z["images"]
    assert np.array_equal(idx, np.sort(read_output(out).indices))
    # image i of the export is the reconstruction of dataset index idx[i]: its kept pixels are
    # that image's pixels
    order = np.argsort(store.indices)
    keep_px = store.pixel_masks()[order]
    for i in range(len(idx)):
        assert np.array_equal(images[i][keep_px[i]], digits.images[idx[i]][keep_px[i]])
    assert main(["export", str(out), "--format", "imagefolder", "--quiet"]) == 0
    from PIL import Image

    png = np.asarray(Image.open(out / "export" / digits.classes[digits.labels[idx[0]]] / f"{idx[0]:07d}.png"))
    assert np.array_equal(png, images[0][..., 0])


def test_tiny_mae_trains_and_round_trips(tmp_path):
    from dsquant.pixels.train_mae import save_mae, train_tiny_mae

    images = load_digits().images[:512]
    model, info = train_tiny_mae(images, 2, epochs=4, batch_size=64, dim=32, depth=1, decoder_dim=32, decoder_depth=1)
    assert info["last_loss"] < info["first_loss"]
    save_mae(model, tmp_path / "tiny.pt", info)
    back = load_mae(tmp_path / "tiny.pt")
    assert back.config.img_size == 8 and back.config.patch_size == 2 and back.config.in_chans == 1
    rec = MAEReconstructor(back)
    keep = np.ones((3, 8, 8), bool)
    keep[:, 2:4, 2:4] = False
    out = rec(images[:3] * keep[..., None], keep)
    assert np.array_equal(out[keep], images[:3][keep])
