"""Pretrained backbones (dsquant.embed.pretrained), offline: tiny randomly initialised
transformers models saved to disk, a scripted module, and stand-ins for timm / open_clip."""

import json
import sys
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")

from dsquant.embed.pretrained import (  # noqa: E402
    Preprocessing,
    cpu_has_fast_bf16,
    hf_preprocessing,
    load_backbone,
    resolve_precision,
    weights_digest,
)

MEAN, STD = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]
PREPROCESSOR = {"size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32}, "do_center_crop": True,
                "image_mean": MEAN, "image_std": STD, "resample": 2}
VIT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)


def _vit():
    return transformers.ViTModel(transformers.ViTConfig(**VIT))


def _deit():
    return transformers.DeiTModel(transformers.DeiTConfig(**VIT))


def _dinov2():
    return transformers.Dinov2Model(transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8))


def _resnet():
    return transformers.ResNetModel(transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))


def _convnext():
    return transformers.ConvNextModel(transformers.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1]))


def _clip_vision():
    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VIT))


def _clip():
    text = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8)
    return transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=VIT, projection_dim=12))


def _cls(model, x):
    return model(pixel_values=x).last_hidden_state[:, 0]


def _pooler(model, x):
    return model(pixel_values=x).pooler_output.flatten(1)


def _projection(model, x):
    out = model.get_image_features(pixel_values=x)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# family: (build, reference embedding, pooling "auto" resolves to, dim)
FAMILIES = {
    "vit": (_vit, _cls, "cls", 32),
    "deit": (_deit, _cls, "cls", 32),
    "dinov2": (_dinov2, _cls, "cls", 32),
    "resnet": (_resnet, _pooler, "pooler", 16),
    "convnext": (_convnext, _pooler, "pooler", 16),
    "clip_vision": (_clip_vision, _pooler, "pooler", 32),
    "clip": (_clip, _projection, "projection", 12),
}


def _save(model, path, preprocessor=PREPROCESSOR):
    model.eval().save_pretrained(path)
    if preprocessor is not None:
        (path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every family saved once: name -> (the model in memory, its directory)."""
    out = {}
    for name, (build, *_rest) in FAMILIES.items():
        torch.manual_seed(0)
        model = build().eval()
        out[name] = (model, _save(model, tmp_path_factory.mktemp(name)))
    return out


def _pixels(n=3, size=32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_hf_matches_the_transformers_model(saved, family):
    model, path = saved[family]
    _build, reference, pooling, dim = FAMILIES[family]
    backbone = load_backbone(f"hf:{path}", device="cpu", precision="float32")
    x = _pixels()
    out = backbone(x)
    with torch.no_grad():
        expected = reference(model, x)
    assert backbone.pooling == pooling and backbone.dim == dim and backbone.precision == "float32"
    assert out.shape == (3, dim) and out.dtype == torch.float32 and out.device.type == "cpu"
    out += 0  # an ordinary tensor, not an inference tensor
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert backbone.preprocessing == Preprocessing(36, 32, tuple(MEAN), tuple(STD), "bilinear")


def test_preprocessing_read_exactly(saved):
    backbone = load_backbone(f"hf:{saved['vit'][1]}", device="cpu")
    p = backbone.preprocessing
    assert (p.resize, p.crop, p.mean, p.std, p.interpolation) == (36, 32, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "bilinear")
    assert p.record() == {"resize": 36, "crop": 32, "mean": MEAN, "std": STD, "interpolation": "bilinear"}
    json.dumps(backbone.config())


def test_hf_preprocessing_variants():
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert hf_preprocessing({}) == Preprocessing(256, 224, *imagenet, "bicubic")
    # ViT: height/width, no centre crop: resize = crop = height
    vit = {"size": {"height": 48, "width": 48}, "do_center_crop": False, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 3}
    assert hf_preprocessing(vit) == Preprocessing(48, 48, (0.5,) * 3, (0.5,) * 3, "bicubic")
    # ResNet/ConvNeXt processors: a bare size and crop_pct
    assert hf_preprocessing({"size": 224, "crop_pct": 0.875, "resample": 3}) == Preprocessing(256, 224, *imagenet, "bicubic")
    assert hf_preprocessing({"size": {"shortest_edge": 384}, "crop_pct": 0.875}).crop == 384
    p = hf_preprocessing({"size": {"shortest_edge": 40}, "crop_size": 32, "do_normalize": False, "resample": 1})
    assert (p.resize, p.crop, p.mean, p.std, p.interpolation) == (40, 32, (0.0,) * 3, (1.0,) * 3, "bicubic")
    with pytest.raises(ValueError, match="crop"):
        Preprocessing(32, 36, *imagenet)
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing(36, 32, *imagenet, "nearest")


def test_untrained_pooler_refused(tmp_path):
    """A checkpoint without the pooler (a ViT classifier's): its CLS is fine, its pooler random."""
    torch.manual_seed(0)
    path = _save(transformers.ViTModel(transformers.ViTConfig(**VIT), add_pooling_layer=False), tmp_path)
    assert load_backbone(f"hf:{path}", device="cpu").pooling == "cls"
    with pytest.raises(ValueError, match=r"lacks 2 weights.*pooler.*use pool cls or mean"):
        load_backbone(f"hf:{path}", device="cpu", pool="pooler")


def test_default_preprocessing_without_a_json(tmp_path):
    torch.manual_seed(0)
    path = _save(_resnet(), tmp_path, preprocessor=None)
    assert load_backbone(f"hf:{path}", device="cpu").preprocessing == Preprocessing(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_explicit_pools(saved):
    model, path = saved["vit"]
    x = _pixels()
    with torch.no_grad():
        out = model(pixel_values=x)
    mean = load_backbone(f"hf:{path}", device="cpu", pool="mean", precision="float32")
    torch.testing.assert_close(mean(x), out.last_hidden_state.mean(1), atol=1e-5, rtol=1e-5)
    pooler = load_backbone(f"hf:{path}", device="cpu", pool="pooler", precision="float32")
    torch.testing.assert_close(pooler(x), out.pooler_output, atol=1e-5, rtol=1e-5)
    assert mean.config() != pooler.config()
    resnet, rpath = saved["resnet"]
    with torch.no_grad():
        spatial = resnet(pixel_values=x).last_hidden_state.mean((2, 3))
    torch.testing.assert_close(load_backbone(f"hf:{rpath}", device="cpu", pool="mean", precision="float32")(x), spatial, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"hf:.*pool 'cls' is not available.*'mean', 'pooler'"):
        load_backbone(f"hf:{rpath}", device="cpu", pool="cls")
    with pytest.raises(ValueError, match="pool 'projection'"):
        load_backbone(f"hf:{path}", device="cpu", pool="projection")
    # an image-text model's cls/mean/pooler read its vision tower
    clip, cpath = saved["clip"]
    with torch.no_grad():
        tower = clip.vision_model(pixel_values=x).pooler_output
    torch.testing.assert_close(load_backbone(f"hf:{cpath}", device="cpu", pool="pooler", precision="float32")(x), tower, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_bfloat16_close_to_float32(saved, family):
    path = saved[family][1]
    x = _pixels(n=4)
    exact = load_backbone(f"hf:{path}", device="cpu", precision="float32")
    bf16 = load_backbone(f"hf:{path}", device="cpu", precision="bfloat16")
    out = bf16(x)
    assert out.dtype == torch.float32 and bf16.precision == "bfloat16" and bf16.config() != exact.config()
    assert bf16.channels_last == (family == "resnet") and not exact.channels_last
    cosine = torch.nn.functional.cosine_similarity(out, exact(x), dim=1)
    assert cosine.min() > 0.99


def test_auto_precision(saved):
    if not cpu_has_fast_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16/AMX): precision='auto' is float32 here")
    backbone = load_backbone(f"hf:{saved['vit'][1]}", device="cpu")
    assert backbone.precision == "bfloat16"
    exact = load_backbone(f"hf:{saved['vit'][1]}", device="cpu", precision="float32")
    assert torch.nn.functional.cosine_similarity(backbone(_pixels()), exact(_pixels()), dim=1).min() > 0.99


def test_resolve_precision():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bfloat16" if cpu_has_fast_bf16() else "float32")
    assert resolve_precision("float32", cpu) == "float32" and resolve_precision("float16", cpu) == "float16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", cpu)


def test_config_follows_the_weights(saved, tmp_path):
    path = saved["vit"][1]
    a, b = load_backbone(f"hf:{path}", device="cpu"), load_backbone(f"hf:{path}", device="cpu")
    assert a.config() == b.config() and a.config()["path"] == str(path.resolve())
    torch.manual_seed(1)  # same architecture, same file sizes, other weights
    other = load_backbone(f"hf:{_save(_vit(), tmp_path / 'other')}", device="cpu")
    assert other.config()["weights"] != a.config()["weights"]


def test_weights_digest_reads_both_ends(tmp_path):
    f = tmp_path / "w.bin"
    digests = []
    for at in (None, 0, -1, None):  # 3 MiB: a change in the first or last MiB changes the digest
        data = bytearray(3 << 20)
        if at is not None:
            data[at] = 1
        f.write_bytes(bytes(data))
        digests.append(weights_digest([f]))
    assert len(set(digests[:3])) == 3 and digests[3] == digests[0]


def test_hub_name_uses_its_snapshot(saved, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    asked = []

    def snapshot(repo_id, allow_patterns=None):
        asked.append((repo_id, allow_patterns))
        return str(saved["vit"][1])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    backbone = load_backbone("hf:someone/tiny-vit", device="cpu")
    assert asked == [("someone/tiny-vit", ["*.json", "*.safetensors"])] and backbone.dim == 32


class _Tiny(torch.nn.Module):
    def __init__(self, four_d: bool = True) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 5, 3)
        self.four_d = four_d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean(dim=(2, 3), keepdim=True)
        return y if self.four_d else y.flatten(1)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript(tmp_path):
    torch.manual_seed(0)
    module = _Tiny().eval()
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    backbone = load_backbone(f"torchscript:{path}", device="cpu", precision="float32")
    x = _pixels(size=224)
    with torch.no_grad():
        expected = module(x).flatten(1)
    assert backbone.dim == 5 and backbone.pooling == "output"
    torch.testing.assert_close(backbone(x), expected, atol=1e-6, rtol=1e-6)
    assert backbone.preprocessing == Preprocessing(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    before = backbone.config()
    side = tmp_path / "tiny.pt.preprocessing.json"
    side.write_text(json.dumps({"resize": 40, "crop": 32, "mean": MEAN, "std": STD, "interpolation": "bilinear"}))
    again = load_backbone(f"torchscript:{path}", device="cpu", precision="float32")
    assert again.preprocessing == Preprocessing(40, 32, tuple(MEAN), tuple(STD), "bilinear")
    assert again.config() != before
    side.write_text(json.dumps({"resize": 40, "crop": 32, "mean": MEAN, "std": STD, "size": 3}))
    with pytest.raises(ValueError, match="preprocessing.json"):
        load_backbone(f"torchscript:{path}", device="cpu")


def test_errors(tmp_path, saved):
    with pytest.raises(ValueError, match="'onnx:model.onnx'"):
        load_backbone("onnx:model.onnx", device="cpu")
    with pytest.raises(ValueError, match="after 'hf'"):
        load_backbone("hf:", device="cpu")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_backbone(f"hf:{tmp_path / 'missing'}", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        load_backbone(f"hf:{tmp_path / 'empty'}", device="cpu")
    with pytest.raises(FileNotFoundError, match="TorchScript"):
        load_backbone(f"torchscript:{tmp_path / 'missing.pt'}", device="cpu")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        load_backbone(f"torchscript:{tmp_path / 'junk.pt'}", device="cpu")
    with pytest.raises(ValueError, match="pool"):
        load_backbone(f"hf:{saved['vit'][1]}", device="cpu", pool="max")
    with pytest.raises(ValueError, match="hf: models only"):
        load_backbone(f"torchscript:{tmp_path / 'junk.pt'}", device="cpu", pool="cls")
    with pytest.raises(ValueError, match="precision"):
        load_backbone(f"hf:{saved['vit'][1]}", device="cpu", precision="half")
    with pytest.raises(ValueError, match="device"):
        load_backbone(f"hf:{saved['vit'][1]}", device="tpu")
    backbone = load_backbone(f"hf:{saved['vit'][1]}", device="cpu")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        backbone(torch.zeros(2, 32, 32))


@pytest.mark.parametrize("prefix,module", [("timm", "timm"), ("open_clip", "open_clip")])
def test_optional_libraries_missing(prefix, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as it does without torchvision
    with pytest.raises(ImportError, match="torchvision") as info:
        load_backbone(f"{prefix}:resnet50", device="cpu")
    assert "\n" not in str(info.value) and "hf:" in str(info.value)


def test_timm_missing_here():
    try:
        import timm  # noqa: F401
    except Exception:
        with pytest.raises(ImportError, match="pip install torchvision --index-url https://download.pytorch.org/whl/cpu"):
            load_backbone("timm:resnet18", device="cpu")
    else:
        pytest.skip("timm imports here")


def test_timm_and_open_clip_glue(tmp_path, monkeypatch):
    """Stand-ins for the two libraries: the checkpoint is read by dsquant (weights only), the
    preprocessing comes from the library's config."""
    safetensors = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    trained = _Tiny(four_d=False)
    ckpt = tmp_path / "model.safetensors"
    safetensors.save_file({"module." + k: v.contiguous() for k, v in trained.state_dict().items()}, str(ckpt))
    timm = types.ModuleType("timm")
    timm.create_model = lambda name, pretrained, num_classes: _Tiny(four_d=False)
    timm.data = types.ModuleType("timm.data")
    timm.data.resolve_data_config = lambda args, model: {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": MEAN, "std": STD, "crop_pct": 0.875}
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.data", timm.data)
    backbone = load_backbone(f"timm:tiny:{ckpt}", device="cpu", precision="float32")
    x = _pixels()
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), trained(x), atol=1e-6, rtol=1e-6)
    assert backbone.preprocessing == Preprocessing(36, 32, tuple(MEAN), tuple(STD), "bilinear")
    assert backbone.config()["weights"] == weights_digest([ckpt])

    class Clip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = _Tiny(four_d=False)
            self.visual.preprocess_cfg = {"size": 32, "mean": MEAN, "std": STD, "interpolation": "bicubic"}

        def encode_image(self, x):
            return 2 * self.visual(x)

    torch.manual_seed(0)
    clip = Clip()
    clip_ckpt = tmp_path / "clip.pt"
    torch.save({"state_dict": clip.state_dict()}, clip_ckpt)
    open_clip = types.ModuleType("open_clip")
    open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD = (0.5,) * 3, (0.5,) * 3
    open_clip.create_model_and_transforms = lambda name, pretrained: (Clip(), None, None)
    monkeypatch.setitem(sys.modules, "open_clip", open_clip)
    backbone = load_backbone(f"open_clip:ViT-Tiny:{clip_ckpt}", device="cpu", precision="float32")
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), clip.encode_image(x), atol=1e-6, rtol=1e-6)
    assert backbone.preprocessing == Preprocessing(32, 32, tuple(MEAN), tuple(STD), "bicubic")
