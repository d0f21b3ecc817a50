"""Training and inference loops shared by the proxy encoder and the evaluation harness.

Images stay uint8 (N, H, W, C) in memory and are turned into normalised float batches on the
fly; augmentation is random crop (zero padding) + horizontal flip, done on tensors. Every random
choice comes from one seeded ``torch.Generator``; the global torch RNG is left untouched.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import re
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import Normalize  # noqa: F401  (its home is models.py; imported here for earlier callers)

__all__ = [
    "TrainConfig",
    "Normalize",
    "check_seed",
    "load_checkpoint",
    "resolve_device",
    "fit",
    "train_loop",
    "predict",
    "to_batch",
    "augment",
    "set_threads",
    "lr_at",
    "optimizer_step",
]


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """The torch device named by ``spec``: None for CUDA when present, else the CPU; ``"cpu"``,
    ``"cuda"``, ``"cuda:N"`` or ``"mps"`` (or a ``torch.device`` of those). Every device of
    dsquant is resolved here, so a bad one is refused before any work.

    Raises:
        ValueError: on any other name, or a device that is not available here.
    """
    if torch.cuda.is_available() and not torch.cuda.is_initialized():
        # deterministic cuBLAS (training under deterministic()) needs this before cuBLAS starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(spec).strip().lower()
    m = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", text)
    if m is None:
        raise ValueError(f"device: expected 'cpu', 'cuda', 'cuda:N' or 'mps', got {str(spec)!r}")
    if m[1] == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {text!r} requested but no CUDA device is available; use 'cpu'")
        count = torch.cuda.device_count()
        if m[2] is not None and int(m[2]) >= count:
            raise ValueError(f"device: {text!r} requested but this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    if m[1] == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device: {text!r} requested but no MPS device is available; use 'cpu'")
    return torch.device(text)


MAX_SEED = 2**32


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as an int, if it is an integer in [0, 2**32) (the range that numpy's and
    torch's seeding both take).

    Raises:
        ValueError: naming ``name``, for anything else (negative, too large, not an integer).
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < MAX_SEED:
        raise ValueError(f"{name}: expected an integer in [0, 2**32), got {seed!r}")
    return int(seed)


def load_checkpoint(path, what: str = "checkpoint", map_location="cpu"):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only.

    Raises:
        DataError: naming the file, if it is missing, not a torch file, or holds other objects
            (refused by ``weights_only=True``, so nothing of it was loaded).
    """
    import pickle

    from .data import DataError

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: no such {what} file") from None
    except MemoryError:
        raise
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
            raise DataError(f"{path}: holds objects other than tensors and plain containers (refused by torch.load(weights_only=True)), so it was not loaded") from None
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: cannot read as a torch {what} ({msg})") from None


def affinity_cores() -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, cgroup cpusets, Slurm),
    not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on macOS / Windows
        return os.cpu_count() or 1


def available_cores() -> int:
    """The cores this process's torch threads may use: :func:`affinity_cores`, capped at
    ``OMP_NUM_THREADS`` when the user set it."""
    n = affinity_cores()
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        n = min(n, int(env))
    return max(1, n)


def set_threads() -> None:
    """Use every core this process may run on for torch's CPU kernels (:func:`available_cores`):
    more threads than cores makes torch's kernels spin against each other (a 4 s training
    measured at 100 s)."""
    torch.set_num_threads(available_cores())


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`fit`.

    Attributes:
        epochs: passes over the data (>= 1).
        batch_size: samples per step.
        lr: peak learning rate of SGD.
        momentum, weight_decay, nesterov: SGD settings.
        schedule: ``"cosine"`` (annealed to 0 over all steps) or ``"onecycle"`` (linear warm-up
            over the first 15 % of steps, then cosine).
        augment: random crop (padding ``H // 8``) + horizontal flip.
        flip: allow horizontal flips (off for data where left/right matters).
        label_smoothing: cross-entropy label smoothing.
        seed: seeds the initialisation, the shuffling and the augmentation.
    """

    epochs: int = 5
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    schedule: str = "onecycle"
    augment: bool = True
    flip: bool = True
    label_smoothing: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def to_batch(images: np.ndarray, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """uint8 (B, H, W, C) numpy -> float (B, C, H, W) tensor in [0, 1] on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True)
    t = t.permute(0, 3, 1, 2).float().div_(255.0)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t.contiguous()


def augment(x: torch.Tensor, gen: torch.Generator, pad: int, flip: bool = True) -> torch.Tensor:
    """Random crop of the zero-padded batch (``pad`` pixels each side) and random horizontal
    flip, one draw per sample from ``gen`` (on the CPU)."""
    b, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
        x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    if flip:
        mask = (torch.rand(b, generator=gen) < 0.5).to(x.device).view(b, 1, 1, 1)
        x = torch.where(mask, x.flip(3), x)
    return x.contiguous(memory_format=torch.channels_last)


def lr_at(step: int, total: int, peak: float, schedule: str = "cosine", warmup: float = 0.15) -> float:
    """Learning rate at ``step`` of ``total``: ``"cosine"`` anneals ``peak`` to 0;
    ``"onecycle"`` warms up linearly over the first ``warmup`` fraction of the steps, then
    anneals by cosine.

    Raises:
        ValueError: on an unknown schedule.
    """
    if schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
    if schedule == "onecycle":
        warm = max(1, int(warmup * total))
        if step < warm:
            return peak * (step + 1) / warm
        return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    raise ValueError(f"schedule: expected 'cosine' or 'onecycle', got {schedule!r}")


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> float:
    """One update at learning rate ``lr``; returns the loss as a float."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def train_loop(
    model: nn.Module,
    step_loss: Callable[[np.ndarray], "torch.Tensor | tuple[torch.Tensor, object]"],
    opt: torch.optim.Optimizer,
    n: int,
    epochs: int,
    batch_size: int,
    lr: float,
    gen: torch.Generator,
    schedule: str = "onecycle",
    warmup: float = 0.15,
    pool: np.ndarray | None = None,
    small_data_steps: bool = False,
    min_batch: int = 1,
    progress: bool = False,
    desc: str = "train",
    on_step: Callable[[int, np.ndarray, object], None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """The one training loop of dsquant: the proxy classifier (:func:`fit`), the SimCLR
    diversity encoder and the tiny MAE differ only in ``step_loss`` and the optimizer.

    Every epoch shuffles ``pool`` (default ``arange(n)``) with ``gen``, cuts it into batches of
    ``batch_size`` (indices sorted within a batch), and takes one optimizer step per batch at
    the learning rate of ``schedule`` (:func:`lr_at`). Every random draw comes from ``gen``,
    shared with ``step_loss`` (augmentation, masks), so a seed fixes the whole run.

    Args:
        model: put in train mode at the start of every epoch.
        step_loss: maps a batch's sorted (B,) int64 sample indices to the loss, or to
            (loss, outputs) where ``outputs`` (e.g. the logits) is passed to ``on_step``.
        opt: the optimizer (its learning rate is set at every step).
        n: samples of the data (when ``pool`` is None).
        epochs, batch_size, lr, schedule, warmup: passes, batch size, peak learning rate and
            its schedule.
        gen: the CPU generator of the shuffling (and of ``step_loss``'s draws).
        pool: the sample indices trained on (a subset), in place of ``arange(n)``.
        small_data_steps: steps per epoch: by default ``len(pool) // batch_size`` (the last
            partial batch dropped, at least one step); when True and the pool holds fewer than
            two batches, ``ceil(len(pool) / batch_size)`` (nothing dropped).
        min_batch: batches smaller than this are skipped (2 for BatchNorm) unless the pool
            itself is smaller.
        on_step: hook called after every step with (epoch, batch indices, outputs): how
            training-dynamics scores (forgetting events, EL2N) watch the run.
        on_epoch: hook called after every epoch with (epoch, mean loss).

    Returns:
        The loss of every step, as floats.
    """
    with deterministic(next(model.parameters(), torch.empty(0)).device):
        return _train_loop(model, step_loss, opt, n, epochs, batch_size, lr, gen, schedule, warmup, pool, small_data_steps, min_batch, progress, desc, on_step, on_epoch)


@contextlib.contextmanager
def deterministic(device: torch.device):
    """On CUDA, deterministic kernels for the duration (cuDNN's deterministic algorithms, no
    autotuning, torch's deterministic mode with warnings for ops that have no such kernel), so
    that a seed gives the same model there too; the previous settings are restored afterwards.
    Nothing changes on the CPU, whose kernels are deterministic for a fixed thread count."""
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    before = (cudnn.deterministic, cudnn.benchmark, torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn.deterministic, cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = before[0], before[1]
        torch.use_deterministic_algorithms(before[2], warn_only=before[3])


def _train_loop(model, step_loss, opt, n, epochs, batch_size, lr, gen, schedule, warmup, pool, small_data_steps, min_batch, progress, desc, on_step, on_epoch) -> list[float]:
    from tqdm.auto import tqdm

    order_of = (lambda: torch.randperm(n, generator=gen).numpy()) if pool is None else (lambda: pool[torch.randperm(len(pool), generator=gen).numpy()])
    size = n if pool is None else len(pool)
    bs = max(1, batch_size)
    steps_per_epoch = max(1, size // bs)
    if small_data_steps and size < 2 * bs:
        steps_per_epoch = math.ceil(size / bs)
    total = epochs * steps_per_epoch
    losses: list[float] = []
    step = 0
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=False)
    for epoch in range(epochs):
        model.train()
        order = order_of()
        epoch_losses = []
        for b in range(steps_per_epoch):
            idx = np.sort(order[b * bs : (b + 1) * bs])
            if len(idx) < min_batch and size >= min_batch:
                continue
            out = step_loss(idx)
            loss, outputs = out if isinstance(out, tuple) else (out, None)
            value = optimizer_step(opt, loss, lr_at(step, total, lr, schedule, warmup))
            losses.append(value)
            epoch_losses.append(value)
            if on_step is not None:
                on_step(epoch, idx, outputs)
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{value:.4g}")
        if on_epoch is not None:
            on_epoch(epoch, float(np.mean(epoch_losses)) if epoch_losses else float("nan"))
    bar.close()
    return losses


def fit(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    cfg: TrainConfig,
    device: torch.device | None = None,
    progress: bool = False,
    desc: str = "train",
    on_epoch: Callable[[int, float], None] | None = None,
    on_step: Callable[[int, np.ndarray, torch.Tensor], None] | None = None,
) -> nn.Module:
    """Train ``model`` (logits out) with SGD and cross-entropy on uint8 images, through
    :func:`train_loop`.

    Args:
        model: a module taking float (B, C, H, W) images in [0, 1] and returning logits.
        images: (N, H, W, C) uint8.
        labels: (N,) int64 class ids.
        cfg: the hyper-parameters.
        device: where to train (default: CUDA when present).
        progress: show a progress bar over the steps.
        on_epoch: called with (epoch, mean loss) after every epoch.
        on_step: called after every step with (epoch, batch indices, the batch's logits
            (B, C), detached): the hook of training-dynamics scores.

    Returns:
        The trained model, in eval mode.

    Raises:
        ValueError: if there are no training samples, images and labels differ in length, or
            the seed or device is invalid.
    """
    n = len(labels)
    if n == 0 or len(images) != n:
        raise ValueError(f"fit: expected one label per image and at least one sample, got {len(images)} images and {n} labels")
    check_seed(cfg.seed)
    device = resolve_device(device)
    set_threads()
    gen = torch.Generator().manual_seed(int(cfg.seed))
    model.to(device).to(memory_format=torch.channels_last)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
    )
    pad = images.shape[1] // 8 if cfg.augment else 0
    y_all = torch.as_tensor(labels, dtype=torch.long)

    def step_loss(idx: np.ndarray):
        x = to_batch(images[idx], device)
        if cfg.augment:
            x = augment(x, gen, pad, cfg.flip)
        logits = model(x)
        loss = F.cross_entropy(logits, y_all[idx].to(device), label_smoothing=cfg.label_smoothing)
        return loss, (logits.detach() if on_step is not None else None)

    # the last partial batch is dropped (BatchNorm needs > 1 sample) unless the data is small
    train_loop(model, step_loss, opt, n, cfg.epochs, min(cfg.batch_size, n), cfg.lr, gen, cfg.schedule, 0.15,
               small_data_steps=True, min_batch=2, progress=progress, desc=desc, on_step=on_step, on_epoch=on_epoch)
    return model.eval()


@torch.no_grad()
def predict(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = 1024,
    device: torch.device | None = None,
    progress: bool = False,
    desc: str = "embed",
    with_features: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (N, C) float32 of ``model`` in eval mode, and its penultimate features (N, d)
    float32 when ``with_features`` (the model must have ``embed(x) -> (features, logits)``)."""
    from tqdm.auto import tqdm

    device = resolve_device(device)
    set_threads()
    model.to(device).eval()
    logits, feats = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        x = to_batch(images[start : start + batch_size], device)
        if with_features:
            f, z = model.embed(x)
            feats.append(f.float().cpu().numpy())
        else:
            z = model(x)
        logits.append(z.float().cpu().numpy())
    return np.concatenate(logits), (np.concatenate(feats) if with_features else None)
