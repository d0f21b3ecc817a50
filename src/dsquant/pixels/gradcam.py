"""Grad-CAM++ (Chattopadhay et al. 2018), hook-based, batched.

pytorch-grad-cam (the maintained library) imports torchvision at import time, which does not
load beside this project's torch build; this is a short implementation of the same weights:

    alpha = g^2 / (2 g^2 + sum_ij(A) g^3)      (0 where g = 0)
    w_k   = sum_ij relu(g) * alpha
    cam   = relu(sum_k w_k A_k)

with A the target layer's activations and g the gradient of the target class's logit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

__all__ = ["gradcam_plusplus", "gradcam_plusplus_weights", "default_target_layer"]


def gradcam_plusplus_weights(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """(B, C) Grad-CAM++ channel weights from (B, C, h, w) activations and gradients."""
    g2 = grads.pow(2)
    g3 = g2 * grads
    sum_a = activations.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return (torch.relu(grads) * alpha).sum(dim=(2, 3))


def default_target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional stage of dsquant's models (``layers[-1]`` of a ResNet,
    ``features`` of the ConvNet); else the last Conv2d."""
    if hasattr(model, "layers"):
        return model.layers[-1]
    if hasattr(model, "features"):
        return model.features
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("model: no convolutional layer for Grad-CAM++")
    return convs[-1]


def gradcam_plusplus(
    model: nn.Module,
    images: np.ndarray,
    target_layer: nn.Module | None = None,
    classes: np.ndarray | None = None,
    batch_size: int = 256,
    device=None,
    progress: bool = False,
) -> np.ndarray:
    """Grad-CAM++ maps of ``model`` for every image, upsampled to the image size.

    Args:
        model: a classifier taking float (B, C, H, W) images in [0, 1] (dsquant's models
            normalise inside), in eval mode.
        images: (N, H, W, C) uint8.
        target_layer: the layer whose activations are weighted (default
            :func:`default_target_layer`).
        classes: (N,) the class whose logit is explained per image (default: the model's own
            prediction, as DQ does).

    Returns:
        (N, H, W) float32 non-negative maps (bilinear upsampling of the layer's map).
    """
    from tqdm.auto import tqdm

    from ..training import resolve_device, to_batch

    device = resolve_device(device)
    model = model.to(device).eval()
    layer = target_layer if target_layer is not None else default_target_layer(model)
    store: dict = {}

    def fwd_hook(_m, _i, out):
        store["a"] = out
        out.register_hook(lambda g: store.__setitem__("g", g))

    handle = layer.register_forward_hook(fwd_hook)
    maps = []
    try:
        for start in tqdm(range(0, len(images), batch_size), desc="grad-cam++", unit="batch", disable=not progress, leave=False):
            x = to_batch(images[start : start + batch_size], device)
            with torch.enable_grad():
                logits = model(x)
                target = logits.argmax(1) if classes is None else torch.as_tensor(classes[start : start + len(x)], device=device)
                model.zero_grad(set_to_none=True)
                logits.gather(1, target.view(-1, 1)).sum().backward()
            a, g = store["a"].detach(), store["g"].detach()
            w = gradcam_plusplus_weights(a, g)
            cam = torch.relu((w[:, :, None, None] * a).sum(1, keepdim=True))
            cam = torch.nn.functional.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
            maps.append(cam[:, 0].float().cpu().numpy())
    finally:
        handle.remove()
    return np.concatenate(maps)
