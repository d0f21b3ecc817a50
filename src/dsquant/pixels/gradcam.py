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

__all__ = ["gradcam_plusplus", "gradcam_plusplus_weights", "default_target_layer", "cam_from_gradients", "backbone_gradcam"]


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
            maps.append(cam_from_gradients(store["a"].detach(), store["g"].detach(), x.shape[2:]))
    finally:
        handle.remove()
    return np.concatenate(maps)


def cam_from_gradients(activations: torch.Tensor, grads: torch.Tensor, size) -> np.ndarray:
    """(B, H, W) float32 Grad-CAM++ maps ``relu(sum_k w_k A_k)`` from (B, C, h, w) activations
    and gradients, upsampled bilinearly to ``size`` (H, W)."""
    a, g = activations.float(), grads.float()
    w = gradcam_plusplus_weights(a, g)
    cam = torch.relu((w[:, :, None, None] * a).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)
    return cam[:, 0].cpu().numpy()


def backbone_gradcam(backbone, head, pixels: torch.Tensor, classes: np.ndarray | None = None) -> np.ndarray:
    """Grad-CAM++ maps of a pretrained backbone with a linear classifier on its embedding.

    The explained logit is ``head.logits(pooled)[c]`` for the head's predicted class ``c``
    (unless ``classes`` is given), the activations those of
    :meth:`dsquant.embed.pretrained.Backbone.forward_spatial` (a CNN's last feature map, a
    transformer's patch tokens entering its last block): DQ's patch importance (ALGORITHMS.md
    section 6) with the pretrained backbone and a fitted head in place of the trained proxy.

    Args:
        backbone: a :class:`dsquant.embed.pretrained.Backbone` with spatial features.
        head: a :class:`dsquant.embed.pretrained_encoder.LinearHead` on its embedding.
        pixels: (B, 3, crop, crop) float32 images normalised as the backbone's preprocessing says.
        classes: (B,) the class explained per image (default: the head's prediction).

    Returns:
        (B, crop, crop) float32 non-negative maps.

    Raises:
        ValueError: if the backbone has no spatial features (not ``hf:``).
    """
    from ..embed.pretrained import spatial_map

    pooled, hidden = backbone.forward_spatial(pixels)
    with torch.enable_grad():
        logits = head.logits(pooled)
        target = logits.argmax(1) if classes is None else torch.as_tensor(np.asarray(classes), device=logits.device)
        (grads,) = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), hidden)
    return cam_from_gradients(spatial_map(hidden.detach()), spatial_map(grads), pixels.shape[2:])
