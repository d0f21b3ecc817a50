"""Network architectures: the selection proxy and the evaluation models.

Every model takes float images (B, C, H, W) in [0, 1], normalises them itself (so a saved
``state_dict`` carries its normalisation), returns logits from ``forward`` and
``(penultimate features, logits)`` from ``embed``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


__all__ = ["BasicBlock", "Normalize", "ResNet", "ConvNet", "MLP", "proxy_resnet", "cifar_resnet18", "check_width", "MAX_WIDTH"]

# the widest proxy (first-stage channels): width 1024 is already ~310 M parameters, far beyond
# what selection needs (the default is 32)
MAX_WIDTH = 1024


def check_width(width, name: str = "width") -> int:
    """``width`` as an int if it is an integer in [1, MAX_WIDTH].

    Raises:
        ValueError: naming ``name``, otherwise.
    """
    import numbers

    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"{name}: expected an integer in [1, {MAX_WIDTH}], got {width!r}")
    return int(width)


class Normalize(nn.Module):
    """Maps uint8-range images scaled to [0, 1] to zero mean, unit variance per channel."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float32)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(np.asarray(std, dtype=np.float32)).view(1, -1, 1, 1))

    @staticmethod
    def stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std of uint8 (N, H, W, C) images, in [0, 1] units."""
        x = images.reshape(-1, images.shape[-1])
        step = 1 << 22
        total = np.zeros(x.shape[1])
        sq = np.zeros(x.shape[1])
        for i in range(0, len(x), step):
            part = x[i : i + step].astype(np.float64) / 255.0
            total += part.sum(0)
            sq += (part * part).sum(0)
        mean = total / len(x)
        std = np.sqrt(np.maximum(sq / len(x) - mean * mean, 1e-12))
        return mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, identity or 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._shortcut(x))

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.shortcut) == 0:
            return x
        conv, bn = self.shortcut
        sy, sx = conv.stride
        if (sy, sx) == (1, 1):
            return bn(conv(x))
        # A strided 1x1 convolution is the 1x1 convolution of the subsampled input. It is computed
        # so because oneDNN's strided 1x1 weight gradient (channels_last, 2-7 input channels, as
        # in PyTorch 2.13's CPU build) is wrong and writes out of bounds: training was not
        # repeatable and crashed on one thread (docs/reliability.md). Same parameters, same
        # result (bitwise at the default widths).
        return bn(F.conv2d(x[:, :, ::sy, ::sx], conv.weight))


class ResNet(nn.Module):
    """A ResNet for small images: 3x3 stem (stride 1 or 2), stages of basic blocks doubling the
    width and halving the resolution, global average pooling, linear head.

    Args:
        in_channels: image channels (1 or 3).
        n_classes: outputs.
        width: channels of the first stage.
        blocks: basic blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        stem_stride: 2 halves the resolution before the first stage (4x fewer operations).
        mean, std: per-channel statistics for the built-in normalisation.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        width: int = 64,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        stem_stride: int = 1,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        mean = np.full(in_channels, 0.5) if mean is None else mean
        std = np.full(in_channels, 0.25) if std is None else std
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        layers = []
        cin = width
        for stage, count in enumerate(blocks):
            cout = width * 2**stage
            for b in range(count):
                layers.append(BasicBlock(cin, cout, 2 if (b == 0 and stage > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, n_classes)
        self.feature_dim = cin

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.layers(self.stem(self.normalize(x)))
        # the same mean; on CUDA adaptive pooling's backward has no deterministic kernel (CPU kept as it was: same indices)
        feats = h.mean((2, 3)) if h.is_cuda else F.adaptive_avg_pool2d(h, 1).flatten(1)
        return feats, self.fc(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)[1]


class ConvNet(nn.Module):
    """The dataset-distillation ConvNet: three conv(3x3)-BN-ReLU-avgpool(2) blocks, linear head."""

    def __init__(self, in_channels: int, n_classes: int, image_size: int, width: int = 128, mean=None, std=None) -> None:
        super().__init__()
        mean = np.full(in_channels, 0.5) if mean is None else mean
        std = np.full(in_channels, 0.25) if std is None else std
        self.normalize = Normalize(mean, std)
        layers, cin, size = [], in_channels, image_size
        for _ in range(3):
            layers += [nn.Conv2d(cin, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            if size >= 2:
                layers.append(nn.AvgPool2d(2))
                size //= 2
            cin = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width * size * size, n_classes)
        self.feature_dim = width * size * size

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(self.normalize(x)).flatten(1)
        return feats, self.fc(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)[1]


class MLP(nn.Module):
    """Two hidden ReLU layers on the flattened, normalised pixels."""

    def __init__(self, in_channels: int, n_classes: int, image_size: int, hidden: int = 512, mean=None, std=None) -> None:
        super().__init__()
        mean = np.full(in_channels, 0.5) if mean is None else mean
        std = np.full(in_channels, 0.25) if std is None else std
        self.normalize = Normalize(mean, std)
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size * image_size, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(hidden, n_classes)
        self.feature_dim = hidden

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body(self.normalize(x))
        return feats, self.fc(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)[1]


def proxy_resnet(in_channels: int, n_classes: int, image_size: int, width: int = 32, mean=None, std=None) -> ResNet:
    """The selection proxy: a 3-stage ResNet (one basic block per stage), stride-2 stem for images
    of 24 pixels or more. Width 32 gives 128-d features and trains at about 850 CIFAR images/s
    on 2 CPU cores (measured, benchmarks/bench_proxy.py)."""
    return ResNet(in_channels, n_classes, width, (1, 1, 1), 2 if image_size >= 24 else 1, mean, std)


def cifar_resnet18(in_channels: int, n_classes: int, width: int = 64, mean=None, std=None) -> ResNet:
    """The CIFAR ResNet-18 of the DQ papers (3x3 stem, no max-pool; width 64 = full size)."""
    return ResNet(in_channels, n_classes, width, (2, 2, 2, 2), 1, mean, std)
