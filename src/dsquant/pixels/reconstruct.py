"""Reconstructors: fill the dropped patches of stored images at load time.

* :class:`InpaintReconstructor` - OpenCV's Telea inpainting (classical, no training; default);
* :class:`MAEReconstructor` - a masked autoencoder: an official checkpoint (ViT-B/16, ViT-L/16,
  images resized to its 224 px input; an MAE patch is rebuilt if any of its pixels was dropped)
  or a ``tiny-mae`` trained on the dataset itself (same grid as the stored patches).

Every reconstructor pastes the kept pixels back, bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .mae import MaskedAutoencoderViT, load_mae
from .store import PatchStore

__all__ = ["InpaintReconstructor", "MAEReconstructor", "make_reconstructor", "reconstruct_store"]


class InpaintReconstructor:
    """OpenCV inpainting of every dropped pixel (``cv2.INPAINT_TELEA``, radius in pixels)."""

    def __init__(self, radius: int = 3, method: str = "telea") -> None:
        self.radius = radius
        self.method = method
        self.name = f"inpaint-{method}"

    def __call__(self, images: np.ndarray, keep_px: np.ndarray) -> np.ndarray:
        import cv2

        flag = cv2.INPAINT_TELEA if self.method == "telea" else cv2.INPAINT_NS
        out = np.empty_like(images)
        for i in range(len(images)):
            hole = (~keep_px[i]).astype(np.uint8) * 255
            img = images[i]
            filled = cv2.inpaint(img if img.shape[-1] == 3 else img[..., 0], hole, self.radius, flag)
            out[i] = filled.reshape(img.shape)
        out[keep_px] = images[keep_px]
        return out


class MAEReconstructor:
    """A masked autoencoder fills the dropped pixels.

    When the images match the model's input (size, channels, and the store's patch size is the
    model's), the mask is the store's mask. Otherwise images are resized to the model's input
    (bilinear), an MAE patch is rebuilt when any of its pixels was dropped, and the result is
    resized back; grayscale images are repeated to three channels for an RGB model.
    """

    def __init__(self, model: MaskedAutoencoderViT, batch_size: int = 64, device=None, name: str = "mae") -> None:
        from ..training import resolve_device

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.name = name

    @torch.no_grad()
    def __call__(self, images: np.ndarray, keep_px: np.ndarray) -> np.ndarray:
        cfg = self.model.config
        n, h, w, c = images.shape
        out = np.empty_like(images)
        p = cfg.patch_size
        for start in range(0, n, self.batch_size):
            x = torch.from_numpy(images[start : start + self.batch_size]).to(self.device).permute(0, 3, 1, 2).float() / 255.0
            k = torch.from_numpy(keep_px[start : start + self.batch_size]).to(self.device)[:, None].float()
            if c != cfg.in_chans:
                x = x.repeat(1, cfg.in_chans // c, 1, 1)
            resized = (h, w) != (cfg.img_size, cfg.img_size)
            if resized:
                x = F.interpolate(x, size=(cfg.img_size, cfg.img_size), mode="bilinear", align_corners=False)
                k = F.interpolate(k, size=(cfg.img_size, cfg.img_size), mode="nearest")
            # a model patch is kept only if all its pixels were kept
            keep = F.max_pool2d(1.0 - k, p).flatten(1) < 0.5
            rec = torch.empty_like(x)
            counts = keep.sum(1)
            for count in counts.unique():  # the encoder needs the same count per batch
                rows = (counts == count).nonzero().flatten()
                rec[rows] = self.model.reconstruct(x[rows], keep[rows])
            if resized:
                rec = F.interpolate(rec, size=(h, w), mode="bilinear", align_corners=False)
            if c != cfg.in_chans:
                rec = rec.mean(1, keepdim=True)
            arr = (rec.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            out[start : start + len(arr)] = arr
        out[keep_px] = images[keep_px]
        return out


INPAINTERS = {"inpaint": "telea", "inpaint-telea": "telea", "inpaint-ns": "ns"}
"""Reconstructor names without a checkpoint: OpenCV inpainting (Telea's method by default, or
Navier-Stokes). With one: ``mae:PATH`` (an MAE checkpoint) and ``tiny-mae:PATH`` (one written by
``dsquant train-mae``); ``compress`` also takes a bare ``tiny-mae``: train one on the data now."""
CHECKPOINT_PREFIXES = ("mae:", "tiny-mae:")
TRAIN_NOW = "tiny-mae"


def check_reconstructor(spec: str, train_now: bool = False) -> str:
    """``spec`` if it names a reconstructor (``train_now``: also the bare ``tiny-mae``); the one
    vocabulary of ``compress``, ``evaluate``, ``export`` and :func:`make_reconstructor`.

    Raises:
        ValueError: naming the accepted names, on any other.
    """
    if isinstance(spec, str) and (spec in INPAINTERS or (spec.startswith(CHECKPOINT_PREFIXES) and spec.split(":", 1)[1]) or (train_now and spec == TRAIN_NOW)):
        return spec
    names = ", ".join([*INPAINTERS, *([TRAIN_NOW] if train_now else []), *(f"{p}PATH" for p in CHECKPOINT_PREFIXES)])
    raise ValueError(f"reconstructor: expected one of {names}, got {spec!r}")


def make_reconstructor(spec: str, device=None):
    """The reconstructor named by ``spec`` (:func:`check_reconstructor`): ``inpaint`` (Telea),
    ``inpaint-telea``, ``inpaint-ns`` (Navier-Stokes), or ``mae:PATH`` / ``tiny-mae:PATH`` (a
    local MAE checkpoint).

    Raises:
        ValueError: on an unknown name or an unusable checkpoint.
    """
    check_reconstructor(spec)
    if spec in INPAINTERS:
        return InpaintReconstructor(method=INPAINTERS[spec])
    kind, path = spec.split(":", 1)
    return MAEReconstructor(load_mae(path), device=device, name=kind)


def reconstruct_store(store: PatchStore, reconstructor, chunk: int = 1024, progress: bool = False) -> np.ndarray:
    """(N, H, W, C) uint8: every stored image with its dropped patches rebuilt."""
    from tqdm.auto import tqdm

    holes = store.with_holes()
    keep_px = store.pixel_masks()
    out = np.empty_like(holes)
    for start in tqdm(range(0, len(holes), chunk), desc=f"reconstruct ({reconstructor.name})", unit="chunk", disable=not progress, leave=False):
        out[start : start + chunk] = reconstructor(holes[start : start + chunk], keep_px[start : start + chunk])
    return out
