"""Train unseen architectures from scratch on a compressed set and test them on the held-out
split, as the papers evaluate (ALGORITHMS.md section 7), with two honest differences from the
official script: the figure reported is the *final* epoch's test accuracy (the official script
picks the best epoch on the test set), and it is the mean and standard deviation over seeds.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .archs import get_architecture

__all__ = ["PRESETS", "Preset", "train_and_test", "evaluate_output", "summarise"]


@dataclass(frozen=True)
class Preset:
    """A training protocol.

    Attributes:
        name: registry key.
        archs: the architectures evaluated by default.
        epochs: a fixed number of epochs (the papers' protocol), or None for a sample budget.
        samples: with ``epochs`` None: train for ``ceil(samples / n_train)`` epochs, clipped to
            [min_epochs, max_epochs], so that every keep ratio gets about the same compute.
        lr, momentum, weight_decay, nesterov, schedule: SGD and its learning-rate schedule.
        batch_size: samples per step; ``small_batch_size`` when the keep ratio is at most
            ``small_ratio`` (the DQ protocol uses 16 at <= 10 %).
        logreg_c, logreg_max_iter: the logistic regression's inverse regularisation and
            iterations.
        augment: random crop and horizontal flip while training (off: the pixels as they are).
    """

    name: str
    archs: tuple[str, ...]
    epochs: int | None = None
    samples: int | None = None
    min_epochs: int = 1
    max_epochs: int = 1000
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    batch_size: int = 128
    small_batch_size: int | None = None
    small_ratio: float = 0.1
    logreg_c: float = 0.1
    logreg_max_iter: int = 300
    augment: bool = True

    def epochs_for(self, n_train: int) -> int:
        if self.epochs is not None:
            return self.epochs
        return int(min(self.max_epochs, max(self.min_epochs, math.ceil(self.samples / max(1, n_train)))))

    def batch_for(self, keep_ratio: float, n_train: int) -> int:
        bs = self.small_batch_size if (self.small_batch_size and keep_ratio <= self.small_ratio) else self.batch_size
        return max(2, min(bs, n_train))


# small models and a fixed sample budget (about the same compute at every keep ratio): the
# CIFAR-10 grid of 108 trainings fits in 90 minutes on 2 CPU cores (docs/evaluation.md)
_CPU = Preset(
    "cpu",
    ("convnet", "resnet18-narrow", "mlp"),
    samples=15_000,
    min_epochs=2,
    max_epochs=60,
    lr=0.05,
    nesterov=True,
    schedule="onecycle",
    batch_size=128,
    small_batch_size=64,
    small_ratio=0.1,
)

PRESETS: dict[str, Preset] = {
    # the DQ papers' CIFAR protocol, for a GPU: ResNet-18, 200 epochs, SGD 0.1, cosine
    "paper": Preset("paper", ("resnet18",), epochs=200, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine", batch_size=128, small_batch_size=16, small_ratio=0.1),
    "cpu": _CPU,
    # "cpu" with the convnet trained about 7x longer (about 3 minutes per training at 10 % of
    # CIFAR-10 on 2 cores): checks whether a ranking of methods under "cpu" survives more training
    "cpu-long": replace(_CPU, name="cpu-long", archs=("convnet",), samples=100_000, max_epochs=200),
    # low budgets (1-50 images per class): 200 epochs, enough for the training loss to flatten
    # at every budget (benchmarks/lowbudget_curve.py, docs/evaluation.md)
    "lowbudget": Preset("lowbudget", ("convnet", "mlp"), epochs=200, lr=0.05, nesterov=True, schedule="onecycle", batch_size=32, small_batch_size=None),
    # pruning (keep 30-90 % of Fashion-MNIST-size data): the MLP, 10 epochs, where the
    # validation accuracy has stopped rising (benchmarks/lowbudget_curve.py --preset pruning,
    # docs/evaluation.md); the convnet is too slow for a 10-seed grid on 2 cores (about 45 s per
    # epoch at 30,000 images)
    "pruning": Preset("pruning", ("mlp",), epochs=10, lr=0.05, nesterov=True, schedule="onecycle", batch_size=256, small_batch_size=None, augment=False),
}


def _logreg(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, preset: Preset, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    flat = lambda a: a.reshape(len(a), -1).astype(np.float32) / 255.0  # noqa: E731
    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=preset.logreg_c, max_iter=preset.logreg_max_iter, random_state=seed)
    )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter: the budget is the protocol
        model.fit(flat(train_x), train_y)
    return model.predict(flat(test_x))


def train_and_test(
    train,
    indices: np.ndarray,
    test,
    arch: str,
    preset: Preset | str = "cpu",
    seed: int = 0,
    keep_ratio: float | None = None,
    device=None,
    progress: bool = False,
) -> dict:
    """Train ``arch`` from scratch on ``train[indices]`` and return its final test accuracy.

    Args:
        train, test: :class:`~dsquant.data.ImageDataset` splits with the same classes.
        indices: (M,) int indices of the training subset.
        arch: a name from :data:`dsquant.evaluate.ARCHITECTURES`.
        preset: a :class:`Preset` or its name.
        seed: seeds the initialisation, shuffling and augmentation.
        keep_ratio: M / N, which picks the batch size (default computed from the sizes).
        device: torch device (default CUDA when present).

    Returns:
        ``{"accuracy", "n_train", "epochs", "batch_size", "seconds"}`` (accuracy in [0, 1], of
        the last epoch).

    Raises:
        ValueError: on an unknown architecture or preset, mismatched classes or image shapes,
            empty or out-of-range indices, or an invalid seed or device.
    """
    import torch

    from ..torch_data import check_indices
    from ..models import Normalize
    from ..training import TrainConfig, check_seed, fit, predict, resolve_device

    preset = PRESETS[preset] if isinstance(preset, str) else preset
    spec = get_architecture(arch)
    check_seed(seed)
    resolve_device(device)
    if train.classes != test.classes:
        raise ValueError(f"test: classes {test.classes[:5]}... differ from the training set's {train.classes[:5]}...")
    if train.image_shape != test.image_shape:
        raise ValueError(f"test: images {test.image_shape} differ from the training set's {train.image_shape}")
    indices = check_indices(indices, len(train))
    if len(indices) == 0:
        raise ValueError("indices: the training subset is empty (0 samples); nothing to train on")
    n = len(indices)
    keep = keep_ratio if keep_ratio is not None else n / len(train)
    x, y = train.images[indices], train.labels[indices]
    t0 = time.perf_counter()
    if spec.build is None:
        pred = _logreg(x, y, test.images, preset, seed)
        return {"accuracy": float((pred == test.labels).mean()), "n_train": n, "epochs": None, "batch_size": None, "seconds": round(time.perf_counter() - t0, 2)}
    h, w, c = train.image_shape
    mean, std = Normalize.stats(x)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.build(c, len(train.classes), min(h, w), mean, std)
    cfg = TrainConfig(
        epochs=preset.epochs_for(n),
        batch_size=preset.batch_for(keep, n),
        lr=preset.lr,
        momentum=preset.momentum,
        weight_decay=preset.weight_decay,
        nesterov=preset.nesterov,
        schedule=preset.schedule,
        augment=preset.augment,
        seed=seed,
    )
    fit(model, x, y, cfg, device, progress=progress, desc=f"{arch} seed {seed}")
    logits, _ = predict(model, test.images, device=device)
    acc = float((logits.argmax(1) == test.labels).mean())
    return {"accuracy": acc, "n_train": n, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "seconds": round(time.perf_counter() - t0, 2)}


def summarise(records: list[dict], keys: tuple[str, ...] = ("arch",), confidence: float | None = None) -> list[dict]:
    """Mean and sample standard deviation of ``accuracy`` per group of ``keys``.

    Groups come in the order of their first record, and each group's values in record order
    (pass the records sorted for results that do not depend on their order to the last bit).
    ``std`` is 0.0 for a group of one.

    With ``confidence`` (e.g. 0.95), each group also gets ``ci_low`` and ``ci_high``: the
    Student's t interval of the mean, ``mean -+ t_{(1 + c)/2, n - 1} * std / sqrt(n)``
    (:func:`dsquant.evaluate.stats.mean_interval`; NaN for a group of one).
    """
    groups: dict[tuple, list[float]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r["accuracy"])
    out = []
    for key, accs in groups.items():
        a = np.array(accs)
        s = {**dict(zip(keys, key)), "mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}
        if confidence is not None:
            from .stats import mean_interval

            s["ci_low"], s["ci_high"] = mean_interval(a, confidence)
        out.append(s)
    return out


def evaluate_output(
    out_dir,
    archs: tuple[str, ...] | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    preset: str = "cpu",
    test_data=None,
    device=None,
    progress: bool = False,
    unmodified: bool = False,
    reconstructor: str | None = None,
) -> dict:
    """Evaluate the compressed set of a ``dsquant compress`` output directory.

    With pixel quantization (``patches.dsqp``), models train on the reconstructed images
    (``reconstructor`` overrides the run's), or on the same images unmodified with
    ``unmodified=True``.

    The training split is read from the manifest's source (its fingerprint must match); the
    test split from the same source with ``split="test"``, or from ``test_data``.

    Returns:
        ``{"runs": [per (arch, seed) records], "summary": [per arch mean/std], "preset": ...}``.

    Raises:
        ValueError: naming ``out_dir``, if the compressed set is empty or its indices do not fit
            the dataset, the source has no test split and ``test_data`` is not given, or the
            dataset does not match the manifest.
    """
    from ..artifact import read_output
    from ..cache import Cache
    from ..data import DataError
    from ..data import read_dataset
    from ..torch_data import check_indices

    res = read_output(out_dir)
    info = res.manifest["dataset"]
    if info.get("kind") != "images":
        raise ValueError(f"{out_dir}: evaluation trains image models; this run compressed {info.get('kind')} data")
    if len(res.indices) == 0:
        raise ValueError(f"{out_dir}: the compressed set is empty (0 training samples); nothing to evaluate (compress with a larger keep ratio)")
    cache = Cache()
    image_size = res.manifest["parameters"].get("image_size")
    train = res.open_dataset(cache=cache)  # verifies the fingerprint
    check_indices(res.indices, len(train), f"{out_dir}: indices")
    try:
        test = read_dataset(test_data or info["source"], split="test", image_size=image_size, cache=cache)
    except DataError as exc:
        raise ValueError(f"{exc}; pass the test set with --test") from None
    trained_on = "selected images"
    if res.manifest.get("pixels") and not unmodified:
        from ..data import ImageDataset
        from ..pixels import load_reconstructed

        rebuilt, store = load_reconstructed(out_dir, reconstructor, device, progress)
        images = train.images.copy()
        images[store.indices] = rebuilt
        train = ImageDataset(images, train.labels, train.classes, train.source, train.split)
        trained_on = f"reconstructed images ({reconstructor or res.manifest['pixels']['reconstructor']})"
    spec = PRESETS[preset] if isinstance(preset, str) else preset
    archs = tuple(archs or spec.archs)
    for a in archs:
        get_architecture(a)
    runs = []
    keep = len(res.indices) / len(train)
    for arch in archs:
        for seed in seeds:
            r = train_and_test(train, res.indices, test, arch, spec, seed, keep, device, progress)
            runs.append({"arch": arch, "seed": seed, **r})
    return {"preset": asdict(spec), "runs": runs, "summary": summarise(runs), "n_train": len(res.indices), "n_test": len(test), "trained_on": trained_on}
