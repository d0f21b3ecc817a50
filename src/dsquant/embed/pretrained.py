"""Pretrained image backbones: load a local checkpoint, embed a batch of normalised images.

A backbone maps ``(B, 3, crop, crop)`` float32 images, prepared as its :class:`Preprocessing`
says, to ``(B, dim)`` float32 features, one embedding per image. This module is the model side
only: reading and preparing the images is the encoder's.

Specs (:func:`load_backbone`):

* ``hf:DIR`` or ``hf:ORG/NAME``: a Hugging Face transformers vision model (``AutoModel``); its
  preprocessing comes from ``preprocessor_config.json`` (:func:`hf_preprocessing`).
* ``torchscript:PATH``: a TorchScript archive returning ``(B, d)`` or ``(B, d, 1, 1)``; its
  preprocessing from ``PATH.preprocessing.json`` beside it, if there is one.
* ``timm:NAME[:CHECKPOINT]`` and ``open_clip:NAME[:CHECKPOINT]``: need timm / open_clip_torch
  and a torchvision that imports.

Pooling of ``hf:`` models (``pool="auto"``, by ``model_type`` of ``config.json``):

=========================================  ==========  ==========================================
family                                     pooling     the embedding
=========================================  ==========  ==========================================
resnet, regnet, bit, convnext, convnextv2,  pooler      ``pooler_output``: global average pool of
efficientnet, mobilenet_v1/v2, other CNNs              the last stage, flattened ((B, C, 1, 1) to
                                                       (B, C)); ConvNeXt's is layer-normed
vit, deit                                  cls         token 0 of ``last_hidden_state``, after the
                                                       final layernorm (their tanh pooler, often
                                                       untrained, is not used)
dinov2, dinov2_with_registers, dinov3_vit  cls         token 0 of ``last_hidden_state``, after the
                                                       final layernorm (= their ``pooler_output``)
clip_vision_model                          pooler      the CLS token after ``post_layernorm``
                                                       (``last_hidden_state`` is before it)
siglip_vision_model, siglip2_vision_model  pooler      the attention-pooling head's output
clip, siglip, siglip2 (image-text models)  projection  ``get_image_features``: the vision tower's
                                                       pooled output in the joint image-text space
                                                       (CLIP's visual projection applied), the
                                                       same embedding as open_clip's
                                                       ``encode_image``; the text tower is unused
anything else                              pooler      ``pooler_output`` if the model has one, else
                                           or mean     the mean of ``last_hidden_state``
=========================================  ==========  ==========================================

``pool`` may also name one: ``"cls"`` (token 0), ``"mean"`` (mean over tokens, or over H and W
of a CNN's feature map), ``"pooler"`` (``pooler_output``, of the vision tower for an image-text
model) or ``"projection"`` (image-text models only). ``cls``, ``mean`` and ``pooler`` of an
image-text model read its vision tower's output.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

__all__ = ["Backbone", "Preprocessing", "load_backbone", "hf_preprocessing", "weights_digest", "resolve_precision", "cpu_has_fast_bf16"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POOLS = ("auto", "cls", "mean", "pooler", "projection")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_CLS_FAMILIES = {"vit", "deit", "dinov2", "dinov2_with_registers", "dinov3_vit"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
_SAMPLE = 1 << 20  # bytes hashed at each end of a weights file
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's numbers; any other filter becomes bicubic


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for a backbone: resize the shorter side to ``resize`` px (PIL
    resample ``interpolation``: ``"bilinear"`` or ``"bicubic"``), centre-crop ``crop`` x
    ``crop``, scale to [0, 1], normalise per channel with ``mean`` / ``std`` (RGB).

    Raises:
        ValueError: on a size that is not a positive integer, ``crop > resize``, a mean or std
            that is not 3 numbers (std > 0), or another interpolation.
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"preprocessing: {name} must be a positive integer, got {value!r}")
        if self.crop > self.resize:
            raise ValueError(f"preprocessing: crop ({self.crop}) must not exceed resize ({self.resize})")
        for name in ("mean", "std"):
            value = getattr(self, name)
            try:
                value = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                value = ()
            if len(value) != 3 or (name == "std" and min(value) <= 0):
                raise ValueError(f"preprocessing: {name} must be 3 numbers (RGB{', > 0' if name == 'std' else ''}), got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"preprocessing: interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}")

    def record(self) -> dict:
        """The settings as a JSON-serialisable dict (the keys of the constructor)."""
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out


DEFAULT_PREPROCESSING = Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD)


def weights_digest(paths) -> str:
    """Hex SHA-256 of ``paths`` (in the order given): each file's name, size and first and last
    1 MiB, so a checkpoint of any size is hashed in milliseconds, yet retrained weights (which
    change every tensor) give a new digest even at the same size and time stamp."""
    digest = hashlib.sha256()
    for path in map(Path, paths):
        size = path.stat().st_size
        name = path.name.encode()
        digest.update(len(name).to_bytes(8, "little") + name + size.to_bytes(8, "little"))
        with open(path, "rb") as f:
            digest.update(f.read(_SAMPLE))
            if size > _SAMPLE:
                f.seek(max(_SAMPLE, size - _SAMPLE))
                digest.update(f.read())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), the only case where
    bf16 autocast is faster than float32 on the CPU."""
    if torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """The compute dtype ``precision`` means on ``device``: ``"float32"``, ``"bfloat16"`` or
    ``"float16"``. ``"auto"`` is bf16 on CUDA (float16 where bf16 is unsupported), bf16 on a
    CPU with native bf16 (:func:`cpu_has_fast_bf16`), float32 otherwise.

    Raises:
        ValueError: on another name.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        if device.type == "cpu" and precision != "float32" and not cpu_has_fast_bf16():
            _slow_half_notice(precision)
        return precision
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if device.type == "cpu" and cpu_has_fast_bf16() else "float32"


@functools.lru_cache(maxsize=None)
def _slow_half_notice(precision: str) -> None:
    """One line, once per process: 16-bit compute on a CPU without native bf16 is emulated."""
    import logging

    logging.getLogger("dsquant").warning(f"dsquant: notice: {precision} on this CPU (no AMX/AVX512-BF16) is emulated, about 5x slower than float32 (measured on AVX2); precision auto would use float32")


def _ieee_float32(device: torch.device, dtype: torch.dtype):
    """float32 means float32 on CUDA too: cuDNN's convolutions otherwise round their inputs to
    TF32 (10-bit mantissa) by default, which moves features by 1e-3 between batch sizes."""
    if device.type != "cuda" or dtype != torch.float32:
        return contextlib.nullcontext()
    c = torch.backends.cudnn
    return c.flags(enabled=c.enabled, benchmark=c.benchmark, deterministic=c.deterministic, allow_tf32=False)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _is_cnn(model: torch.nn.Module) -> bool:
    """More than one 2-d convolution (a ViT has one: its patch embedding)."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) > 1


class Backbone:
    """A pretrained image model that embeds normalised images (made by :func:`load_backbone`).

    Attributes:
        spec: the spec it was loaded from, e.g. ``"hf:/models/dinov2-small"``.
        preprocessing: how its input images are prepared (:class:`Preprocessing`).
        dim: the feature dimension.
        pooling: how token or spatial features become one vector (``"cls"``, ``"mean"``,
            ``"pooler"``, ``"projection"``, or ``"output"``: the model's own output).
        precision: the compute dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (autocast).
        device: where the model runs.
        path: the resolved checkpoint path (None for a timm/open_clip pretrained tag).
        weights: :func:`weights_digest` of the checkpoint files (None without files).
    """

    def __init__(self, spec: str, model: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], preprocessing: Preprocessing,
                 *, pooling: str, precision: str, device: torch.device, path: str | None, weights: str | None, channels_last: bool = False,
                 spatial: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.spec, self.model, self._forward, self.preprocessing = spec, model, forward, preprocessing
        self._spatial = spatial
        self.pooling, self.precision, self.device, self.path, self.weights = pooling, precision, device, path, weights
        self.channels_last = channels_last
        crop = preprocessing.crop
        try:
            probe = self(torch.zeros(1, 3, crop, crop))
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"backbone {spec!r}: the model fails on a (1, 3, {crop}, {crop}) image ({_first_line(exc)})") from None
        self.dim = int(probe.shape[1])

    def config(self) -> dict:
        """Every setting that changes the embedding: spec, resolved path, weights digest,
        pooling, compute dtype and preprocessing (the device does not, beyond the dtype)."""
        return {"backbone": self.spec, "path": self.path, "weights": self.weights, "pooling": self.pooling,
                "precision": self.precision, "preprocessing": self.preprocessing.record()}

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, dim) float32 CPU embeddings of ``pixels``, (B, 3, crop, crop) float32 images
        normalised as :attr:`preprocessing` says (on any device), computed under
        ``torch.inference_mode`` in :attr:`precision`.

        Raises:
            ValueError: if ``pixels`` is not (B, 3, H, W), or the model's output is not
                (B, d) or (B, d, 1, 1).
        """
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"backbone {self.spec!r}: expected images of shape (B, 3, H, W), got {tuple(pixels.shape)}")
        x = self._input(pixels)
        with torch.inference_mode(), self._compute():
            out = self._forward(x)
        if out.ndim == 4 and out.shape[2:] == (1, 1):
            out = out.flatten(1)
        if out.ndim != 2 or len(out) != len(x):
            raise ValueError(f"backbone {self.spec!r}: expected the model to return (B, d) or (B, d, 1, 1) features, got {tuple(out.shape)}")
        out = out.float().cpu()
        return out.clone() if out.is_inference() else out  # an inference tensor refuses in-place updates later

    @property
    def has_spatial(self) -> bool:
        """Whether :meth:`forward_spatial` is available (``hf:`` models)."""
        return self._spatial is not None

    def forward_spatial(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding and a spatial feature map of ``pixels`` (as :meth:`__call__` takes
        them), with autograd on: what Grad-CAM++ patch importance needs
        (:func:`dsquant.pixels.gradcam.backbone_gradcam`).

        The map is a CNN's last feature map (its last hidden state, the one it pools), or for a
        transformer the patch tokens entering its last block (hidden state -2, the class and
        register tokens before them removed, reshaped to the square patch grid): the pooled
        class token's gradient reaches them through the last block's attention, as in the usual
        Grad-CAM recipe for ViTs (the last block's output patch tokens would get none).

        Returns:
            (pooled (B, dim) float32, hidden) computed under autocast in :attr:`precision`:
            ``hidden`` is the model's own hidden state in the graph of ``pooled`` (take
            gradients with respect to it), (B, C, h, w) or (B, L, D) tokens;
            :func:`spatial_map` puts it and its gradient on the grid.

        Raises:
            ValueError: for a backbone without one (``torchscript:``, ``timm:``, ``open_clip:``),
                or a token count that is not a square grid after at most 16 prefix tokens.
        """
        if self._spatial is None:
            raise ValueError(f"backbone {self.spec!r}: its spatial features are not reachable (only hf: models expose their hidden states); patch importance needs an hf: backbone")
        x = self._input(pixels)
        with torch.enable_grad(), self._compute():
            pooled, act = self._spatial(x)
        return pooled.flatten(1).float(), act

    def _input(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.device, torch.float32, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @contextlib.contextmanager
    def _compute(self):
        """Autocast in :attr:`precision` (IEEE float32 matmuls when that is float32)."""
        dtype = getattr(torch, self.precision)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32), _ieee_float32(self.device, dtype):
            yield

    def __repr__(self) -> str:
        return f"Backbone({self.spec!r}, dim={self.dim}, pooling={self.pooling!r}, precision={self.precision!r}, device={str(self.device)!r})"


def load_backbone(spec: str, device: str | None = None, pool: str = "auto", precision: str = "auto") -> Backbone:
    """The pretrained image backbone ``spec`` names, in eval mode on ``device``.

    Args:
        spec: ``"hf:DIR"`` / ``"hf:ORG/NAME"`` (a hub name downloads the ``*.json`` and
            ``*.safetensors`` files of the repository once; a local directory loads offline),
            ``"torchscript:PATH"``, ``"timm:NAME[:CHECKPOINT]"`` or
            ``"open_clip:NAME[:CHECKPOINT]"`` (see the module docstring).
        device: torch device (default CUDA when present, else the CPU).
        pool: ``"auto"`` (per family: the module docstring's table), ``"cls"``, ``"mean"``,
            ``"pooler"`` or ``"projection"``; only ``hf:`` models pool (the others return
            their own embedding and take ``"auto"`` only). An ``hf:`` checkpoint must hold
            every weight the embedding uses (a ViT classifier's checkpoint has no pooler:
            ``"pooler"`` is refused for it, ``"cls"`` is fine).
        precision: ``"auto"`` (:func:`resolve_precision`; CNNs other than TorchScript archives
            also run channels-last),
            ``"float32"`` (the plain reference path: float32, contiguous), ``"bfloat16"`` or
            ``"float16"`` (autocast). The output is float32 in every case.

    Weights are read without executing pickled code: safetensors where present, else
    ``torch.load(weights_only=True)``; ``trust_remote_code`` is never set. A TorchScript
    archive is a program, though a sandboxed one: load only archives you would run.

    Raises:
        ValueError: on an unknown prefix, a spec without its name or path, a directory without
            ``config.json``, a bad device, pool or precision, a pool the model lacks (naming
            those it has), a checkpoint without weights the embedding uses, or a model that
            fails on an image of its crop size.
        FileNotFoundError: if a named path does not exist (or a hub model cannot be had).
        ImportError: for ``timm:`` / ``open_clip:`` when that library (or torchvision) does
            not import, or ``hf:`` without transformers.
    """
    from ..training import resolve_device

    prefix, sep, arg = str(spec).partition(":")
    loaders = {"hf": _load_hf, "torchscript": _load_torchscript, "timm": _load_timm, "open_clip": _load_open_clip}
    if prefix not in loaders or not sep:
        raise ValueError(f"backbone: expected 'hf:DIR', 'torchscript:PATH', 'timm:NAME[:CHECKPOINT]' or 'open_clip:NAME[:CHECKPOINT]', got {spec!r}")
    if not arg.strip():
        raise ValueError(f"backbone {spec!r}: expected a model name or path after {prefix!r}:")
    if pool not in POOLS:
        raise ValueError(f"pool: expected one of {', '.join(POOLS)}, got {pool!r}")
    if pool != "auto" and prefix != "hf":
        raise ValueError(f"backbone {spec!r}: pool {pool!r} applies to hf: models only; {prefix}: models return their own embedding")
    dev = resolve_device(device)
    return loaders[prefix](spec, arg, dev, pool, precision)


# --- Hugging Face transformers -------------------------------------------------------------


def _edge(value, key: str) -> int | None:
    """The size named by ``value`` of a preprocessor config: an int, or a dict with ``key``."""
    if isinstance(value, dict):
        value = value.get(key)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def hf_preprocessing(config: dict) -> Preprocessing:
    """The :class:`Preprocessing` of a Hugging Face ``preprocessor_config.json`` (as a dict).

    ``size`` may be ``{"shortest_edge": N}`` (or a bare N) or ``{"height": H, "width": W}``
    (read as H); ``crop_size`` likewise. Without a centre crop (``do_center_crop`` false, or
    neither ``crop_size`` nor ``crop_pct``) the image is resized to the size and cropped square
    there, ``resize = crop``. ``crop_pct`` (ConvNeXt/ResNet processors: size below 384 means
    crop) gives ``resize = int(size / crop_pct)``. ``resample`` 2 is bilinear, 3 and any other
    bicubic. ``do_normalize: false`` gives mean 0, std 1. Absent values: resize 256, crop 224,
    ImageNet mean/std, bicubic.

    Raises:
        ValueError: on values :class:`Preprocessing` refuses.
    """
    size = config.get("size")
    edge = _edge(size, "shortest_edge") or _edge(size, "height")
    crop = _edge(config.get("crop_size"), "height")
    if edge is None:
        resize, crop = DEFAULT_PREPROCESSING.resize, crop or DEFAULT_PREPROCESSING.crop
        resize = max(resize, crop)
    elif config.get("do_center_crop") is False:
        resize = crop = edge
    elif crop is not None and (config.get("do_center_crop") or "crop_pct" not in config):
        resize = max(edge, crop)
    elif config.get("crop_pct") and edge < 384:
        resize, crop = int(edge / float(config["crop_pct"])), edge
    else:
        resize = crop = edge
    if config.get("do_normalize", True):
        mean, std = config.get("image_mean", IMAGENET_MEAN), config.get("image_std", IMAGENET_STD)
        mean = [mean] * 3 if isinstance(mean, (int, float)) else mean
        std = [std] * 3 if isinstance(std, (int, float)) else std
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return Preprocessing(resize, crop, mean, std, _RESAMPLE.get(config.get("resample"), "bicubic"))


def _hf_dir(spec: str, arg: str) -> Path:
    """The local model directory of ``hf:arg``: ``arg`` itself, or a hub name's snapshot."""
    path = Path(arg).expanduser()
    if not path.exists():
        if arg.startswith((".", "/", "~", "\\")) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", arg):
            raise FileNotFoundError(f"backbone {spec!r}: no such directory {str(path)!r}; expected a Hugging Face model directory with config.json")
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(arg, allow_patterns=["*.json", "*.safetensors"]))
        except Exception as exc:  # offline, unknown repository, gated: all one message
            raise FileNotFoundError(f"backbone {spec!r}: not a local directory, and the Hugging Face hub model {arg!r} cannot be had ({_first_line(exc)})") from None
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ValueError(f"backbone {spec!r}: expected a Hugging Face model directory with config.json, got {str(path)!r}")
    return path.resolve()


def _pool_hf(spec: str, pool: str, model_type: str, out, image_text: bool) -> str:
    """The pooling ``pool`` resolves to for a model of ``model_type`` whose forward returned
    ``out``; ValueError if the model lacks it."""
    hidden = getattr(out, "last_hidden_state", None)
    has = ["cls", "mean"] if hidden is not None and hidden.ndim == 3 else ["mean"] if hidden is not None and hidden.ndim == 4 else []
    if getattr(out, "pooler_output", None) is not None:
        has.append("pooler")
    if image_text:
        has.append("projection")
    if pool == "auto":
        pool = "projection" if image_text else "cls" if model_type in _CLS_FAMILIES else "pooler" if "pooler" in has else "mean"
    if pool not in has:
        raise ValueError(f"backbone {spec!r}: pool {pool!r} is not available for this {model_type or 'model'}; it has {', '.join(map(repr, has)) or 'none'}")
    return pool


def _load_hf(spec: str, arg: str, device: torch.device, pool: str, precision: str) -> Backbone:
    try:
        from transformers import AutoModel
    except ImportError as exc:
        raise ImportError(f"backbone {spec!r} needs transformers: pip install transformers") from exc
    from .text import _quiet_loading

    path = _hf_dir(spec, arg)
    safetensors = any(path.glob("*.safetensors"))
    try:
        with _quiet_loading():
            model, info = AutoModel.from_pretrained(path, local_files_only=True, trust_remote_code=False, use_safetensors=True if safetensors else None, output_loading_info=True)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, RuntimeError...
        raise ValueError(f"backbone {spec!r}: cannot load the model ({_first_line(exc)})") from None
    model = model.float().eval().to(device)
    model_type = getattr(model.config, "model_type", "")
    image_text = hasattr(model, "get_image_features") and isinstance(getattr(model, "vision_model", None), torch.nn.Module)
    tower = model.vision_model if image_text else model
    preprocessing = DEFAULT_PREPROCESSING
    if (path / "preprocessor_config.json").is_file():
        preprocessing = hf_preprocessing(_read_json(spec, path / "preprocessor_config.json"))
    crop = preprocessing.crop
    with torch.inference_mode():
        try:
            probe = tower(pixel_values=torch.zeros(1, 3, crop, crop, device=device))
        except Exception as exc:
            raise ValueError(f"backbone {spec!r}: the model fails on a (1, 3, {crop}, {crop}) image ({_first_line(exc)})") from None
    pooling = _pool_hf(spec, pool, model_type, probe, image_text)
    # Weights the checkpoint lacks are random: refuse them unless unused (a classifier checkpoint's ViT has no pooler).
    untrained = sorted(k for k in info.get("missing_keys", ()) if pooling == "pooler" or "pooler" not in k)
    if untrained:
        raise ValueError(f"backbone {spec!r}: the checkpoint lacks {len(untrained)} weights of this {model_type or 'model'} (first: {untrained[0]}); "
                         f"{'use pool cls or mean' if all('pooler' in k for k in untrained) else 'expected a complete checkpoint'}")

    def forward(x: torch.Tensor) -> torch.Tensor:
        if pooling == "projection":
            out = model.get_image_features(pixel_values=x)
            return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns the output object
        out = tower(pixel_values=x)
        if pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if pooling == "cls":
            return hidden[:, 0]
        return hidden.mean(dim=(2, 3) if hidden.ndim == 4 else 1)

    def spatial(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = tower(pixel_values=x, output_hidden_states=True)
        if pooling in ("projection", "pooler"):
            pooled = out.pooler_output
            if pooling == "projection" and isinstance(getattr(model, "visual_projection", None), torch.nn.Module):
                pooled = model.visual_projection(pooled)  # CLIP; SigLIP's image features are the pooler's
        else:
            hidden = out.last_hidden_state
            pooled = hidden[:, 0] if pooling == "cls" else hidden.mean(dim=(2, 3) if hidden.ndim == 4 else 1)
        return pooled, spatial_source(out.hidden_states)

    weights = [path / "config.json"] + sorted(p for p in path.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES))
    return _finish(spec, model, forward, preprocessing, pooling, precision, device, str(path), weights_digest(weights), spatial)


def spatial_source(hidden_states) -> torch.Tensor:
    """The hidden state Grad-CAM++ weights, from a transformers model's ``hidden_states``: the
    last one when it is a CNN's (B, C, h, w) map, else hidden state -2 (B, L, D), the tokens
    entering the last block (the only one if there is one). It is the tensor itself, in the
    graph of the model's output, so gradients can be taken with respect to it."""
    last = hidden_states[-1]
    if last.ndim == 4:
        return last
    return hidden_states[-2] if len(hidden_states) > 1 else last


def spatial_map(hidden: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w): a CNN's map as it is, or (B, L, D) tokens without their prefix (class,
    register) tokens on their square patch grid in row-major order (also for their gradients).

    Raises:
        ValueError: if no prefix of at most 16 tokens leaves a square number of patch tokens.
    """
    if hidden.ndim == 4:
        return hidden
    b, n, d = hidden.shape
    for prefix in range(min(n, 17)):
        side = math.isqrt(n - prefix)
        if side and side * side == n - prefix:
            return hidden[:, prefix:].transpose(1, 2).reshape(b, d, side, side)
    raise ValueError(f"hidden states of {n} tokens: no square patch grid after at most 16 prefix tokens")


def _finish(spec, model, forward, preprocessing, pooling, precision, device, path, weights, spatial=None) -> Backbone:
    """The backbone, with the precision policy applied (channels-last for CNNs unless float32)."""
    resolved = resolve_precision(precision, device)
    channels_last = precision != "float32" and _is_cnn(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return Backbone(spec, model, forward, preprocessing, pooling=pooling, precision=resolved, device=device, path=path, weights=weights, channels_last=channels_last, spatial=spatial)


def _read_json(spec: str, path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"backbone {spec!r}: cannot read {str(path)!r} as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"backbone {spec!r}: expected a JSON object in {str(path)!r}")
    return data


# --- TorchScript ----------------------------------------------------------------------------


def _load_torchscript(spec: str, arg: str, device: torch.device, pool: str, precision: str) -> Backbone:
    path = Path(arg).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"backbone {spec!r}: no such file {str(path)!r}; expected a TorchScript archive (torch.jit.save)")
    path = path.resolve()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ValueError(f"backbone {spec!r}: not a TorchScript archive ({_first_line(exc)})") from None
    model = model.float().eval().to(device)
    side = path.with_name(path.name + ".preprocessing.json")
    preprocessing, files = DEFAULT_PREPROCESSING, [path]
    if side.is_file():
        try:
            preprocessing = Preprocessing(**_read_json(spec, side))
        except TypeError as exc:
            raise ValueError(f"backbone {spec!r}: {str(side)!r}: expected the keys resize, crop, mean, std, interpolation ({exc})") from None
        files.append(side)
    return _finish(spec, model, model, preprocessing, "output", precision, device, str(path), weights_digest(files))


# --- timm and open_clip (optional) ----------------------------------------------------------


def _import(spec: str, module: str, package: str):
    """``module`` imported, or an ImportError that says how to get it working."""
    try:
        import importlib

        return importlib.import_module(module)
    except Exception as exc:  # a torchvision built for another torch fails with RuntimeError, not ImportError
        raise ImportError(
            f"backbone {spec!r} needs {package}, which does not import here ({_first_line(exc)}): "
            f"install a CPU torchvision matching your torch (pip install torchvision --index-url https://download.pytorch.org/whl/cpu) and {package}, or use an hf: model"
        ) from exc


def _split_checkpoint(spec: str, arg: str) -> tuple[str, str | None]:
    name, _, checkpoint = arg.partition(":")
    if not name:
        raise ValueError(f"backbone {spec!r}: expected NAME or NAME:CHECKPOINT")
    return name, checkpoint or None


def _state_dict(spec: str, path: Path) -> dict:
    """A checkpoint's tensors, read without executing pickled code (``module.`` prefixes of
    DataParallel dropped; a ``state_dict`` / ``model`` entry unwrapped)."""
    if not path.is_file():
        raise FileNotFoundError(f"backbone {spec!r}: no such checkpoint {str(path)!r}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"backbone {spec!r}: cannot read the checkpoint {str(path)!r} as safetensors or a weights-only torch file ({_first_line(exc)})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_timm(spec: str, arg: str, device: torch.device, pool: str, precision: str) -> Backbone:
    timm = _import(spec, "timm", "timm")
    name, checkpoint = _split_checkpoint(spec, arg)
    # The checkpoint is loaded here, not by timm (whose loader may unpickle arbitrary objects).
    model = timm.create_model(name, pretrained=False, num_classes=0)
    path = weights = None
    if checkpoint:
        path = Path(checkpoint).expanduser().resolve()
        missing, _ = model.load_state_dict(_state_dict(spec, path), strict=False)  # the classifier's weights are unexpected
        if missing:
            raise ValueError(f"backbone {spec!r}: the checkpoint lacks {len(missing)} weights of {name} (first: {missing[0]})")
        path, weights = str(path), weights_digest([path])
    data = _import(spec, "timm.data", "timm").resolve_data_config({}, model=model)
    crop = int(data["input_size"][-1])
    resize = max(crop, int(crop / float(data.get("crop_pct") or 1.0)))
    interpolation = data.get("interpolation") if data.get("interpolation") in ("bilinear", "bicubic") else "bicubic"
    preprocessing = Preprocessing(resize, crop, data["mean"], data["std"], interpolation)
    model = model.float().eval().to(device)
    return _finish(spec, model, model, preprocessing, "output", precision, device, path, weights)


def _load_open_clip(spec: str, arg: str, device: torch.device, pool: str, precision: str) -> Backbone:
    open_clip = _import(spec, "open_clip", "open_clip_torch")
    name, checkpoint = _split_checkpoint(spec, arg)
    path = Path(checkpoint).expanduser() if checkpoint else None
    if path is not None and (path.exists() or checkpoint.startswith((".", "/", "~")) or checkpoint.endswith(_WEIGHT_SUFFIXES)):
        # A file: loaded here without unpickling code; a tag ("openai", "laion2b_...") is open_clip's to fetch.
        model = open_clip.create_model_and_transforms(name, pretrained=None)[0]
        path = path.resolve()
        model.load_state_dict(_state_dict(spec, path))
        path, weights = str(path), weights_digest([path])
    else:
        model = open_clip.create_model_and_transforms(name, pretrained=checkpoint)[0]
        path, weights = None, None
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    crop = int(size[-1] if isinstance(size, (tuple, list)) else size)
    interpolation = cfg.get("interpolation") if cfg.get("interpolation") in ("bilinear", "bicubic") else "bicubic"
    preprocessing = Preprocessing(crop, crop, cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), cfg.get("std", open_clip.OPENAI_DATASET_STD), interpolation)
    model = model.float().eval().to(device)
    return _finish(spec, model, model.encode_image, preprocessing, "output", precision, device, path, weights)
