"""What the benchmark's protocols share beyond their presets: a validation split carved from the
training set (the only place a rule may be tuned: never the test split), and budgets given in
samples per class."""

from __future__ import annotations

import numpy as np

__all__ = ["per_class_ratio", "validation_split"]


def validation_split(dataset, fraction: float = 1 / 6, seed: int = 0):
    """Split a labelled dataset into (pool, validation), class-balanced and seeded: every class
    gives ``round(fraction * its size)`` samples to the validation split (at least one, and at
    least one stays in the pool).

    Args:
        dataset: an :class:`~dsquant.data.ImageDataset` or
            :class:`~dsquant.data.FeatureDataset` with labels.
        fraction: share of every class held out, in (0, 1) (default 1/6: Fashion-MNIST's 60,000
            become 50,000 + 10,000, the size of its test split).
        seed: the split's seed.

    Returns:
        (pool, validation): datasets of the same type, samples in their original order,
        ``split`` ``"train-pool"`` and ``"train-val"``.

    Raises:
        ValueError: on an unlabelled dataset, a fraction outside (0, 1), or a class of one sample.
    """
    from dataclasses import replace

    from ..core.sampling import validation_indices

    if getattr(dataset, "labels", None) is None:
        raise ValueError(f"{dataset.source}: a validation split needs labels; this dataset has none")
    try:
        held = validation_indices(dataset.labels, fraction, seed, dataset.classes)
    except ValueError as exc:
        raise ValueError(f"{dataset.source}: {exc}" if str(exc).startswith("class") else str(exc)) from None
    mask = np.zeros(len(dataset), dtype=bool)
    mask[held] = True

    def part(keep: np.ndarray, split: str):
        fields = {"labels": dataset.labels[keep], "split": split}
        if getattr(dataset, "kind", "") == "images":
            fields["images"] = dataset.images[keep]
        else:
            fields["features"] = np.asarray(dataset.features[keep])
        return replace(dataset, **fields, _fingerprint=None)  # a new dataset: its own fingerprint

    return part(~mask, "train-pool"), part(mask, "train-val")


def per_class_ratio(per_class: float, dataset) -> float:
    """The keep ratio that selects ``per_class`` samples per class on average:
    ``per_class * n_classes / N``.

    Raises:
        ValueError: if it is not in (0, 1].
    """
    n_classes = len(np.unique(dataset.labels)) if getattr(dataset, "labels", None) is not None else 1
    ratio = float(per_class) * n_classes / len(dataset)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"per_class: {per_class} per class of {len(dataset)} samples is a keep ratio of {ratio:.4g}, outside (0, 1]")
    return ratio
