"""Encoders for ADQ's contrastive diversity score (ALGORITHMS.md section 5).

Every image is embedded under two random augmentations (random resized crop + horizontal flip,
seeded); :func:`dsquant.core.scores.contrastive_diversity` turns the two views into one score per
bin. Two encoders:

* ``proxy``: the penultimate features of the proxy classifier that made the bins (no extra
  training);
* ``simclr``: a small ResNet trained contrastively on the dataset itself (SimCLR's NT-Xent loss,
  temperature 0.5, a few epochs), the paper's choice; the embedding is its backbone's features
  (after ReLU and pooling, so cosines are >= 0 and ``1 / mean`` is defined), as SimCLR features
  are used downstream; the projection head only serves the training loss.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import check_width, proxy_resnet
from ..models import Normalize
from ..training import check_seed, resolve_device, set_threads, to_batch, train_loop

__all__ = ["random_resized_crop_flip", "two_view_embeddings", "SimCLREncoder", "nt_xent"]


def random_resized_crop_flip(
    x: torch.Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
) -> torch.Tensor:
    """A random resized crop (area fraction in ``scale``, aspect ratio in ``ratio``) and a random
    horizontal flip of every image of the batch, resized back to the input size (bilinear).

    Args:
        x: (B, C, H, W) float images.
        gen: CPU generator of all random draws (one crop and one coin per image).

    Returns:
        (B, C, H, W) float tensor.
    """
    b = x.shape[0]
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=gen)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)  # crop width / image width
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - w)  # centre in [-1, 1] coordinates
    cy = (torch.rand(b, generator=gen) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


@torch.no_grad()
def two_view_embeddings(
    embed_fn, images: np.ndarray, seed: int = 0, batch_size: int = 1024, device=None, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Embed two random augmentations of every image.

    Args:
        embed_fn: maps a float (B, C, H, W) batch in [0, 1] to (B, d) embeddings.
        images: (N, H, W, C) uint8.
        seed: seeds the augmentations.

    Returns:
        Two (N, d) float32 arrays (views a and b).
    """
    from tqdm.auto import tqdm

    device = resolve_device(device)
    set_threads()
    gen = torch.Generator().manual_seed(check_seed(seed))
    va, vb = [], []
    for start in tqdm(range(0, len(images), batch_size), desc="diversity views", unit="batch", disable=not progress, leave=False):
        x = to_batch(images[start : start + batch_size], device, channels_last=False)
        va.append(embed_fn(random_resized_crop_flip(x, gen).contiguous(memory_format=torch.channels_last)).float().cpu().numpy())
        vb.append(embed_fn(random_resized_crop_flip(x, gen).contiguous(memory_format=torch.channels_last)).float().cpu().numpy())
    return np.concatenate(va), np.concatenate(vb)


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent loss of a batch of positive pairs ``(z_a[i], z_b[i])``: each of the 2B
    embeddings must pick its partner among the other 2B - 1 by cosine similarity / temperature."""
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)
    sim = z @ z.t() / temperature
    n = z_a.shape[0]
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


class _Contrastive(nn.Module):
    def __init__(self, backbone: nn.Module, dim: int = 64) -> None:
        super().__init__()
        self.backbone = backbone
        d = backbone.feature_dim
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.embed(x)[0])


class SimCLREncoder:
    """A small ResNet (the proxy's architecture) trained with NT-Xent on the dataset itself.

    Args:
        epochs: passes over (up to ``max_samples`` of) the images.
        max_samples: train on a random subset of at most this many images (CPU budget).
        width, batch_size, lr, temperature, seed, device: the usual.

    Raises:
        ValueError: naming the parameter, on a width outside [1, 1024], a seed outside
            [0, 2**32) or an unusable device.
    """

    name = "simclr"

    def __init__(self, epochs: int = 2, max_samples: int = 20000, width: int = 32, batch_size: int = 256, lr: float = 0.3, temperature: float = 0.5, seed: int = 0, device=None) -> None:
        check_width(width)
        check_seed(seed)
        resolve_device(device)
        self.epochs, self.max_samples, self.width = epochs, max_samples, width
        self.batch_size, self.lr, self.temperature, self.seed = batch_size, lr, temperature, seed
        self.device = device
        self.model: _Contrastive | None = None
        self.info: dict = {}

    def config(self) -> dict:
        return {"encoder": self.name, "arch": "proxy_resnet-v1+mlp64", "embedding": "backbone", "epochs": self.epochs, "max_samples": self.max_samples, "width": self.width, "batch_size": self.batch_size, "lr": self.lr, "temperature": self.temperature, "seed": self.seed}

    def train(self, images: np.ndarray, n_classes_hint: int = 10, progress: bool = False) -> _Contrastive:
        device = resolve_device(self.device)
        set_threads()
        h, w, c = images.shape[1:]
        mean, std = Normalize.stats(images)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = _Contrastive(proxy_resnet(c, n_classes_hint, min(h, w), self.width, mean, std))
        model.to(device).to(memory_format=torch.channels_last).train()
        gen = torch.Generator().manual_seed(self.seed)
        n = len(images)
        pick = torch.randperm(n, generator=gen).numpy()[: min(n, self.max_samples)]
        opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
        t0 = time.perf_counter()

        def step_loss(idx: np.ndarray) -> torch.Tensor:
            x = to_batch(images[idx], device, channels_last=False)
            xa = random_resized_crop_flip(x, gen).contiguous(memory_format=torch.channels_last)
            xb = random_resized_crop_flip(x, gen).contiguous(memory_format=torch.channels_last)
            return nt_xent(model(xa), model(xb), self.temperature)

        losses = train_loop(model, step_loss, opt, n, self.epochs, self.batch_size, self.lr, gen, "cosine", pool=pick, progress=progress, desc="train simclr")
        self.model = model.eval()
        self.info = {"train_seconds": round(time.perf_counter() - t0, 2), "first_loss": round(losses[0], 4) if losses else None, "last_loss": round(float(np.mean(losses[-10:])), 4) if losses else None, "train_samples": int(len(pick))}
        return self.model

    def embed_fn(self):
        """Backbone features of the trained model (non-negative: ReLU then average pooling)."""
        backbone = self.model.backbone
        return lambda x: backbone.embed(x)[0]
