"""The evaluation architectures, by name. None of them is the selection proxy
(:func:`dsquant.models.proxy_resnet`): subsets are judged on architectures that never saw the
selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


__all__ = ["ARCHITECTURES", "Architecture", "get_architecture"]


@dataclass(frozen=True)
class Architecture:
    """A named model family.

    Attributes:
        name: registry key.
        description: one line for docs and ``--help``.
        build: ``build(in_channels, n_classes, image_size, mean, std) -> nn.Module``; None for
            the non-neural learner.
    """

    name: str
    description: str
    build: Callable | None


# builders import torch when called, so that listing the architectures stays cheap


def _resnet18(c, k, size, mean, std):
    from ..models import cifar_resnet18

    return cifar_resnet18(c, k, 64, mean, std)


def _resnet18_narrow(c, k, size, mean, std):
    from ..models import ResNet

    return ResNet(c, k, 16, (2, 2, 2, 2), 1, mean, std)


def _convnet(c, k, size, mean, std):
    from ..models import ConvNet

    return ConvNet(c, k, size, 64, mean, std)


def _mlp(c, k, size, mean, std):
    from ..models import MLP

    return MLP(c, k, size, 512, mean, std)


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in [
        Architecture("resnet18", "CIFAR ResNet-18 of the DQ papers (width 64, 11.2M parameters)", _resnet18),
        Architecture("resnet18-narrow", "the same ResNet-18 at width 16 (0.7M parameters)", _resnet18_narrow),
        Architecture("convnet", "ConvNet: 3 x (conv 3x3, 64 ch - BN - ReLU - avgpool 2), linear head", _convnet),
        Architecture("mlp", "MLP on pixels: 2 hidden ReLU layers of 512", _mlp),
        Architecture("logreg", "scikit-learn logistic regression on standardised pixels (non-neural)", None),
    ]
}


def get_architecture(name: str) -> Architecture:
    """The architecture registered as ``name``.

    Raises:
        ValueError: on an unknown name (the message lists the known ones).
    """
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"arch: unknown architecture {name!r}; expected one of {', '.join(ARCHITECTURES)}") from None
