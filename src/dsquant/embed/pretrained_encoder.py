"""Image encoders from pretrained backbones (``hf:``, ``torchscript:``, ``timm:``, ``open_clip:``).

The backbone (loading, pooling, precision) is :mod:`dsquant.embed.pretrained`; this module feeds
it: images decoded in worker processes straight to the backbone's input size
(:func:`dsquant.data.stream.iter_image_batches`, streamed or in-memory datasets alike),
normalised here, embedded in batches. Every sample is embedded on its own, so any subset of rows
can be embedded separately (:meth:`PretrainedEncoder.encode_rows`): what the sharded embedding
store (:mod:`dsquant.embed.store`) and ``--shard i/N`` rely on.

Embedding kinds: ``"features"`` (default) are the backbone's pooled features. ``"gradient"`` is
DQ's last-layer gradient embedding on top of them: a linear classifier (the "head") is fitted on
the features and labels (softmax regression, full batch L-BFGS, ``head_epochs`` iterations,
seeded), and each sample is represented by its factorised gradient
``[delta, vec(delta f^T)]`` with ``delta = softmax(W f + b) - onehot(y)`` (ALGORITHMS.md
section 1), as DQ uses its ImageNet-pretrained ResNet's classifier.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .base import Embedding

if TYPE_CHECKING:
    import torch

__all__ = ["PretrainedEncoder", "HFEncoder", "TorchScriptEncoder", "TimmEncoder", "OpenCLIPEncoder", "LinearHead", "fit_linear_classifier", "fit_linear_head"]


@dataclass
class LinearHead:
    """A softmax-regression classifier on standardised features (:func:`fit_linear_classifier`).

    Attributes:
        mean, std: (d,) float32 tensors standardising the features (std has 1e-6 added).
        weight: (d, C) float32 tensor.
        bias: (C,) float32 tensor.
    """

    mean: "torch.Tensor"
    std: "torch.Tensor"
    weight: "torch.Tensor"
    bias: "torch.Tensor"

    def logits(self, features):
        """(B, C) logits of (B, d) float32 features (a tensor on any device; autograd flows)."""
        dev = features.device
        return ((features - self.mean.to(dev)) / self.std.to(dev)) @ self.weight.to(dev) + self.bias.to(dev)


def fit_linear_classifier(features: np.ndarray, labels: np.ndarray, n_classes: int, iterations: int = 100, seed: int = 0, device=None) -> LinearHead:
    """Softmax regression on standardised ``features``: full-batch L-BFGS (strong Wolfe line
    search), ``iterations`` iterations, L2 weight 1e-4, seeded initialisation.

    Args:
        features: (N, d) float array.
        labels: (N,) int64 class ids in ``[0, n_classes)``.
        n_classes: C.
        iterations: L-BFGS iterations.
        seed: seeds the initialisation (torch, drawn on the CPU).
        device: where to fit (default the CPU; a GPU makes an ImageNet-size head, 1,000 classes
            on 2,048-d features, a matter of seconds).

    Returns:
        The fitted :class:`LinearHead` (its tensors on ``device``).
    """
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    g = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(np.asarray(features, dtype=np.float32)).to(dev)
    mean, std = x.mean(0), x.std(0) + 1e-6  # conditioning only: the head is fitted on it
    x = (x - mean) / std
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64)).to(dev)
    w = (torch.randn(x.shape[1], n_classes, generator=g) * 0.01).to(dev).requires_grad_()
    b = torch.zeros(n_classes, device=dev, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 1e-4 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearHead(mean, std, w.detach(), b.detach())


def fit_linear_head(features: np.ndarray, labels: np.ndarray, n_classes: int, iterations: int = 100, seed: int = 0) -> np.ndarray:
    """``delta = softmax(W f + b) - onehot(y)`` of a softmax regression fitted on ``features``
    (:func:`fit_linear_classifier`, the same arguments).

    Returns:
        (N, C) float32 delta: the logit gradients of the cross-entropy loss.
    """
    import torch

    head = fit_linear_classifier(features, labels, n_classes, iterations, seed)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    with torch.no_grad():
        p = torch.softmax(head.logits(torch.as_tensor(np.asarray(features, dtype=np.float32))), dim=1)
        p[torch.arange(len(y)), y] -= 1.0
    return p.numpy().astype(np.float32)


class PretrainedEncoder:
    """A pretrained image backbone as a dsquant encoder (:mod:`dsquant.embed.pretrained`).

    Args:
        location: what follows ``hf:`` (a local folder or a Hugging Face model id), ``torchscript:``
            (a file), ``timm:`` or ``open_clip:`` (a name, optionally ``:CHECKPOINT``).
        device: torch device (default CUDA when present).
        batch_size: images per forward pass.
        num_workers: decoding processes (default: all usable cores but one with a CUDA backbone,
            half of them on the CPU; :func:`dsquant.data.stream.default_workers`).
        pool: ``"auto"`` (per model family, see :func:`dsquant.embed.pretrained.load_backbone`),
            ``"cls"``, ``"mean"`` or ``"pooler"``.
        precision: ``"auto"`` (bf16 autocast on CPUs with AMX/AVX512-BF16, fp16/bf16 on CUDA) or
            ``"float32"``.
        embedding: ``"features"`` (default) or ``"gradient"`` (module docstring).
        head_epochs, seed: the gradient embedding's linear head (L-BFGS iterations, seed).
        skip_bad: leave out unreadable images (their rows are zero, listed in ``info["bad"]``).
    """

    name = "hf"
    kinds = ("images",)
    argument = "MODEL"
    summary = "a Hugging Face vision model (local folder or model id) through transformers' AutoModel, preprocessing from its config"
    cached = True

    def __init__(self, location: str, device: str | None = None, batch_size: int = 64, num_workers: int | None = None, pool: str = "auto", precision: str = "auto", embedding: str = "features", head_epochs: int = 100, seed: int = 0, skip_bad: bool = False) -> None:
        if embedding not in ("features", "gradient"):
            raise ValueError(f"embedding: expected 'features' or 'gradient', got {embedding!r}")
        self.location, self.device, self.batch_size, self.num_workers = location, device, batch_size, num_workers
        self.pool, self.precision, self.embedding = pool, precision, embedding
        self.head_epochs, self.seed, self.skip_bad = head_epochs, seed, skip_bad
        self._backbone = None

    def __getstate__(self) -> dict:  # sent to other processes (Ray actors): loaded there
        return dict(self.__dict__, _backbone=None)

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.location}"

    @property
    def backbone(self):
        """The loaded backbone (loaded on first use)."""
        if self._backbone is None:
            from .pretrained import load_backbone

            self._backbone = load_backbone(self.spec, device=self.device, pool=self.pool, precision=self.precision)
        return self._backbone

    @property
    def dim(self) -> int:
        return int(self.backbone.dim)

    def config(self) -> dict:
        cfg = {"encoder": self.name, "backbone": self.backbone.config(), "preprocessing": self.backbone.preprocessing.record()}
        if self.embedding == "gradient":
            cfg.update(embedding="gradient", head_epochs=self.head_epochs, seed=self.seed)
        return cfg

    def encode_rows(self, dataset, indices=None, progress: bool = False, bad: list | None = None) -> np.ndarray:
        """Embed the samples ``indices`` (default all) of ``dataset`` (streamed or in memory).

        Returns:
            (len(indices), dim) float32 features in the order of ``indices``; with ``skip_bad``
            the rows of unreadable images are zero and ``(index, message)`` is appended to ``bad``.

        Raises:
            DataError: naming the first unreadable image (without ``skip_bad``).
        """
        import torch

        from ..data.stream import iter_image_batches

        bb = self.backbone
        prep = bb.preprocessing
        idx = np.arange(len(dataset), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        out = np.zeros((len(idx), bb.dim), dtype=np.float32)
        # normalised on the encoder's device: uint8 crosses to a GPU (a quarter of the bytes), and
        # the main process does not spend a core per batch converting to float
        mean = (torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0).to(bb.device)
        std = (torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0).to(bb.device)
        for pos, batch in iter_image_batches(dataset, prep.resize, prep.crop, prep.interpolation, indices=idx, batch_size=self.batch_size, num_workers=self.num_workers, skip_bad=self.skip_bad, bad=bad, progress=progress, device=bb.device):
            x = (batch.to(bb.device, non_blocking=True).permute(0, 3, 1, 2).float() - mean) / std
            out[pos] = bb(x).numpy()
        return out

    def encode(self, dataset, progress: bool = False) -> Embedding:
        t0 = time.perf_counter()
        bad: list = []
        features = self.encode_rows(dataset, progress=progress, bad=bad)
        info = {"spec": self.spec, "dim": int(features.shape[1]), "encode_seconds": round(time.perf_counter() - t0, 3), "bad": [[int(i), m] for i, m in bad]}
        if self.embedding == "gradient":
            labels = getattr(dataset, "labels", None)
            if labels is None:
                raise ValueError(f"embedding: the gradient embedding needs labels; {dataset.source} has none (use embedding='features')")
            t = time.perf_counter()
            delta = fit_linear_head(features, labels, len(dataset.classes), self.head_epochs, self.seed)
            info["head_seconds"] = round(time.perf_counter() - t, 3)
            return Embedding(features, delta, "gradient", info)
        return Embedding(features, None, "features", info)


class HFEncoder(PretrainedEncoder):
    __doc__ = PretrainedEncoder.__doc__


class TorchScriptEncoder(PretrainedEncoder):
    """A TorchScript image model (``torchscript:FILE``); preprocessing from ``FILE.preprocessing.json``
    beside it, else resize 256, crop 224, ImageNet mean and std."""

    name = "torchscript"
    argument = "FILE"
    summary = "a TorchScript image model file (preprocessing from FILE.preprocessing.json, else ImageNet's)"


class TimmEncoder(PretrainedEncoder):
    """A timm model (``timm:NAME[:CHECKPOINT]``); needs timm and a torchvision that imports."""

    name = "timm"
    argument = "NAME[:CHECKPOINT]"
    summary = "a timm model (needs timm and torchvision)"


class OpenCLIPEncoder(PretrainedEncoder):
    """An OpenCLIP image tower (``open_clip:NAME[:CHECKPOINT]``); needs open_clip_torch and a
    torchvision that imports."""

    name = "open_clip"
    argument = "NAME[:CHECKPOINT]"
    summary = "an OpenCLIP image tower (needs open_clip_torch and torchvision)"
