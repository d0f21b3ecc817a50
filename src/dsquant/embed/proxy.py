"""The proxy encoder: a small ResNet trained briefly on the dataset itself.

This is the DQ paper's selection network ("early training", as in DeepCore): no pretrained
weights are needed, so it works offline. After training, every image gives its penultimate
features ``e`` and the logit gradient ``delta = softmax(z) - onehot(y)``; bins use the
factorised last-layer gradient ``[delta, vec(delta e^T)]`` (ALGORITHMS.md section 1) or ``e``.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..models import check_width, proxy_resnet
from ..models import Normalize
from ..training import TrainConfig, check_seed, fit, load_checkpoint, predict, resolve_device
from .base import Embedding

__all__ = ["ProxyEncoder", "softmax_delta", "state_to_arrays", "arrays_to_state"]


def softmax_delta(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, C) float32 ``softmax(z) - onehot(y)``: dL/dz of the cross-entropy, computed once
    (the official DQ code applies softmax twice here)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1.0
    return p.astype(np.float32)


def state_to_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """A model's state_dict as numpy arrays (stored as .npz: no pickle)."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def arrays_to_state(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}


class ProxyEncoder:
    """Train a small ResNet on the dataset for a few epochs, then embed every image.

    Args:
        epochs: training epochs (default 5: about 5 minutes for CIFAR-10 on 2 CPU cores).
        width: channels of the first stage (features are ``4 * width``-d), at most
            :data:`~dsquant.models.MAX_WIDTH` (1024).
        batch_size, lr: SGD batch size and peak learning rate (one-cycle schedule).
        seed: seeds initialisation, shuffling and augmentation.
        embedding: ``"gradient"`` (DQ's default) or ``"features"`` (penultimate features).
        checkpoint: a local ``state_dict`` (``.pt`` loaded with ``weights_only=True``, or
            ``.npz``) of this architecture to use instead of training.
        device: torch device (default CUDA when present).

    Raises:
        ValueError: naming the parameter, on a negative epoch count, a width outside [1, 1024],
            a seed outside [0, 2**32), an unknown embedding or an unusable device.
    """

    name = "proxy"
    kinds = ("images",)
    summary = "a small ResNet trained on the data a few epochs (DQ's proxy); its last-layer gradients or features"
    argument = None
    cached = True

    def __init__(
        self,
        epochs: int = 5,
        width: int = 32,
        batch_size: int = 256,
        lr: float = 0.1,
        seed: int = 0,
        embedding: str = "gradient",
        checkpoint: str | Path | None = None,
        device: str | None = None,
    ) -> None:
        if epochs < 0:
            raise ValueError(f"epochs: expected an integer >= 0, got {epochs}")
        if embedding not in ("gradient", "features"):
            raise ValueError(f"embedding: expected 'gradient' or 'features', got {embedding!r}")
        check_width(width)
        check_seed(seed)
        resolve_device(device)
        self.epochs, self.width, self.batch_size, self.lr = epochs, width, batch_size, lr
        self.seed, self.embedding = seed, embedding
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.device = device
        self.model: torch.nn.Module | None = None

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed)

    def config(self) -> dict:
        """Everything that changes the embedding (the device does not)."""
        cfg = {
            "encoder": self.name,
            "arch": "proxy_resnet-v1",
            "width": self.width,
            "embedding": self.embedding,
            "train": self.train_config().to_dict(),
        }
        if self.checkpoint is not None:
            from ..cache import file_digest
            from ..data import DataError

            try:  # by content: a checkpoint rewritten in place is a new one
                cfg["checkpoint"] = {"sha256": file_digest(self.checkpoint)}
            except OSError as exc:
                raise DataError(f"{self.checkpoint}: cannot read the checkpoint ({exc.strerror or exc})") from None
            del cfg["train"]
        return cfg

    def build(self, dataset) -> torch.nn.Module:
        """The untrained proxy for ``dataset``'s image shape and classes."""
        h, w, c = dataset.image_shape
        mean, std = Normalize.stats(dataset.images)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return proxy_resnet(c, len(dataset.classes), min(h, w), self.width, mean, std)

    def load_checkpoint(self, model: torch.nn.Module) -> None:
        """Load ``self.checkpoint`` into ``model``.

        Raises:
            DataError: naming the file, if it is missing or unreadable, holds objects other than
                tensors and plain containers, or is not a proxy of this dataset's shape.
        """
        from ..data import DataError

        path = self.checkpoint
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    state = arrays_to_state({k: z[k] for k in z.files})
            else:
                state = load_checkpoint(path, "proxy checkpoint")
                if isinstance(state, dict) and "state_dict" in state:
                    state = state["state_dict"]
            model.load_state_dict(state)
        except FileNotFoundError:
            raise DataError(f"{path}: no such checkpoint file") from None
        except DataError:
            raise
        except (RuntimeError, ValueError, OSError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile) as exc:
            msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(f"{path}: not a proxy checkpoint for this dataset ({msg})") from None

    def train(self, dataset, progress: bool = False) -> torch.nn.Module:
        """Build the proxy and train it (or load the checkpoint); keeps it as ``self.model``."""
        model = self.build(dataset)
        if self.checkpoint is not None:
            self.load_checkpoint(model)
        elif self.epochs > 0:
            fit(model, dataset.images, dataset.labels, self.train_config(), resolve_device(self.device), progress, desc="train proxy")
        self.model = model.eval()
        return self.model

    def encode(self, dataset, progress: bool = False) -> Embedding:
        """Train (or load) the proxy, then embed every image of ``dataset``."""
        t0 = time.perf_counter()
        model = self.model if self.model is not None else self.train(dataset, progress)
        t1 = time.perf_counter()
        logits, feats = predict(model, dataset.images, device=resolve_device(self.device), progress=progress, desc="embed", with_features=True)
        t2 = time.perf_counter()
        accuracy = float((logits.argmax(1) == dataset.labels).mean())
        delta = softmax_delta(logits, dataset.labels)
        info = {"train_seconds": round(t1 - t0, 2), "embed_seconds": round(t2 - t1, 2), "train_accuracy": round(accuracy, 4)}
        return Embedding(feats.astype(np.float32), delta, self.embedding, info)
