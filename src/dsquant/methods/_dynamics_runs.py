"""The training runs behind :func:`dsquant.methods.dynamics.training_dynamics` (torch; imported
on first use, so that ``import dsquant`` stays light). Both go through the one training loop."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..training import fit, predict, resolve_device, set_threads, train_loop
from .dynamics import DynamicsRecorder

__all__ = ["LINEAR", "run_features", "run_images"]

# the linear classifier of feature / text datasets
LINEAR = {"batch_size": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}


def run_images(dataset, epochs: int, seed: int, device, progress: bool, desc: str) -> dict:
    """Train the proxy ResNet once (``ProxyEncoder(epochs, seed=seed)``'s model and settings)."""
    from ..embed import ProxyEncoder

    enc = ProxyEncoder(epochs=epochs, seed=seed)
    model = enc.build(dataset)
    rec = DynamicsRecorder(dataset.labels, epochs)
    dev = resolve_device(device)
    fit(model, dataset.images, dataset.labels, enc.train_config(), dev, progress, desc=desc, on_step=rec.on_step)
    logits, feats = predict(model, dataset.images, device=dev, progress=progress, desc="dynamics: predict", with_features=True)
    sq = np.einsum("ij,ij->i", feats.astype(np.float64), feats.astype(np.float64))
    return {"logits": logits.astype(np.float32), "sq_norms": sq, "seen": rec.seen}


class _LinearHead(nn.Module):
    """``logits = W standardise(x) + b``; the standardised x is GraNd's ``h``."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.fc = nn.Linear(len(mean), n_classes)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.standardise(x))


def _feature_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per dimension in float64, blockwise (X may be a memory map); std 1 where 0."""
    n = X.shape[0]
    s, s2 = np.zeros(X.shape[1]), np.zeros(X.shape[1])
    step = max(1, (1 << 24) // X.shape[1])
    for start in range(0, n, step):
        b = np.asarray(X[start : start + step], dtype=np.float64)
        s += b.sum(0)
        s2 += (b * b).sum(0)
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
    return mean, np.where(std > 1e-12, std, 1.0)


def run_features(X: np.ndarray, labels: np.ndarray, n_classes: int, epochs: int, seed: int, device, progress: bool, desc: str) -> dict:
    """Train a linear softmax classifier on the standardised features once, through the one
    training loop (cross-entropy step loss, SGD with Nesterov momentum, one-cycle schedule)."""
    dev = resolve_device(device)
    set_threads()
    mean, std = _feature_stats(X)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _LinearHead(mean, std, n_classes).to(dev)
    gen = torch.Generator().manual_seed(seed)
    y = torch.as_tensor(labels, dtype=torch.long)
    rec = DynamicsRecorder(labels, epochs)
    n = len(labels)

    def rows(idx) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(X[idx], dtype=np.float32)).to(dev)

    def step_loss(idx: np.ndarray):
        logits = model(rows(idx))
        return F.cross_entropy(logits, y[torch.from_numpy(idx)].to(dev)), logits.detach()

    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": LINEAR["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=LINEAR["lr"], momentum=LINEAR["momentum"], nesterov=True)
    train_loop(model, step_loss, opt, n, epochs, min(LINEAR["batch_size"], n), LINEAR["lr"], gen, "onecycle", 0.15,
               small_data_steps=True, progress=progress, desc=desc, on_step=rec.on_step)
    model.eval()
    logits, sq = [], []
    with torch.no_grad():
        for start in range(0, n, 4096):
            h = model.standardise(rows(np.arange(start, min(n, start + 4096))))
            logits.append(model.fc(h).float().cpu().numpy())
            sq.append((h.double() ** 2).sum(1).cpu().numpy())
    return {"logits": np.concatenate(logits).astype(np.float32), "sq_norms": np.concatenate(sq), "seen": rec.seen}


