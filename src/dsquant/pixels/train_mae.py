"""``dsquant train-mae``: train a small masked autoencoder on a dataset's own images.

The model is a :class:`~dsquant.pixels.mae.MaskedAutoencoderViT` (the official layout) at the
images' native resolution, with the patch size of the kept-patch files, so at load time its
mask is exactly the dropped patches.
"""

from __future__ import annotations

import numbers
import time

import numpy as np
import torch

from ..cache import Cache
from ..models import Normalize
from ..training import check_seed, resolve_device, set_threads, to_batch, train_loop
from .mae import MAEConfig, MaskedAutoencoderViT

__all__ = ["cached_tiny_mae", "tiny_mae_config", "train_tiny_mae", "random_keep", "check_mask_ratio", "save_mae", "mae_to_arrays", "mae_from_arrays", "MAE_ENTRY"]


def check_mask_ratio(mask_ratio, n_patches: int | None = None) -> int | None:
    """Validate the training mask ratio: a number in (0, 1); with ``n_patches`` (the patch grid
    of the images), it must also mask at least one patch (at least one always stays visible:
    the count masked is ``round(mask_ratio * n_patches)``, at most ``n_patches - 1``).

    Returns:
        The number of patches masked per image (None without ``n_patches``).

    Raises:
        ValueError: naming mask_ratio and the value, otherwise.
    """
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, numbers.Real) or not 0.0 < float(mask_ratio) < 1.0:
        raise ValueError(f"mask_ratio: expected a number in (0, 1), got {mask_ratio!r}")
    if n_patches is None:
        return None
    masked = min(n_patches - 1, int(round(mask_ratio * n_patches)))
    if masked < 1:
        if n_patches < 2:
            raise ValueError("mask_ratio: the images hold a single patch, so none can be masked; use a smaller patch")
        raise ValueError(f"mask_ratio: {mask_ratio!r} masks no patch of the {n_patches} patches per image; expected more than {0.5 / n_patches:.3g}")
    return masked


def tiny_mae_config(image_shape: tuple[int, int, int], patch: int, mean, std, dim: int = 128, depth: int = 4, decoder_dim: int = 96, decoder_depth: int = 2) -> MAEConfig:
    """A small MAE for (H, W, C) images (square), ``patch``-pixel patches."""
    h, w, c = image_shape
    if h != w:
        raise ValueError(f"tiny MAE: square images only, got {h}x{w}")
    return MAEConfig(
        img_size=h, patch_size=patch, in_chans=c, embed_dim=dim, depth=depth, num_heads=max(1, dim // 32),
        decoder_embed_dim=decoder_dim, decoder_depth=decoder_depth, decoder_num_heads=max(1, decoder_dim // 32),
        mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
    )


def random_keep(batch: int, n_patches: int, keep: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, n_patches) bool with exactly ``keep`` True per row, uniformly at random."""
    noise = torch.rand(batch, n_patches, generator=gen)
    ids = torch.argsort(noise, dim=1)[:, :keep]
    out = torch.zeros(batch, n_patches, dtype=torch.bool)
    out.scatter_(1, ids, True)
    return out


def train_tiny_mae(
    images: np.ndarray,
    patch: int,
    epochs: int = 10,
    mask_ratio: float = 0.4,
    max_samples: int | None = None,
    batch_size: int = 256,
    lr: float = 1.5e-3,
    seed: int = 0,
    device=None,
    progress: bool = False,
    **arch,
) -> tuple[MaskedAutoencoderViT, dict]:
    """Train a tiny MAE to rebuild randomly masked patches of ``images``.

    Args:
        images: (N, H, W, C) uint8, square.
        patch: patch size (must divide H).
        epochs: passes over (up to ``max_samples`` of) the images.
        mask_ratio: fraction of patches masked in training, in (0, 1), masking at least one
            patch of the grid (:func:`check_mask_ratio`).
        seed: seeds initialisation, sampling, masks and flips, in [0, 2**32).
        arch: overrides of :func:`tiny_mae_config` (dim, depth, decoder_dim, decoder_depth).

    Returns:
        (the model in eval mode, training info: seconds, first and last loss).

    Raises:
        ValueError: naming the parameter, on a mask ratio, seed or device that is not usable,
            or images that are not square.
    """
    check_mask_ratio(mask_ratio)
    check_seed(seed)
    device = resolve_device(device)
    set_threads()
    mean, std = Normalize.stats(images)
    config = tiny_mae_config(images.shape[1:], patch, mean, std, **arch)
    n_patches = config.grid**2
    keep = n_patches - check_mask_ratio(mask_ratio, n_patches)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MaskedAutoencoderViT(config)
    model.to(device).train()
    gen = torch.Generator().manual_seed(seed)
    n = len(images)
    pool = torch.randperm(n, generator=gen).numpy()[: min(n, max_samples or n)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    t0 = time.perf_counter()

    def step_loss(idx: np.ndarray) -> torch.Tensor:
        x = to_batch(images[idx], device, channels_last=False)
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x = torch.where(flip.to(device).view(-1, 1, 1, 1), x.flip(3), x)
        mask = random_keep(len(idx), n_patches, keep, gen).to(device)
        return model(x, mask)[0]

    losses = train_loop(model, step_loss, opt, n, epochs, batch_size, lr, gen, "onecycle", warmup=0.05, pool=pool, progress=progress, desc="train tiny MAE")
    info = {
        "seconds": round(time.perf_counter() - t0, 1),
        "epochs": epochs,
        "train_samples": int(len(pool)),
        "mask_ratio": mask_ratio,
        "first_loss": round(losses[0], 4) if losses else None,
        "last_loss": round(float(np.mean(losses[-20:])), 4) if losses else None,
    }
    return model.eval(), info


def save_mae(model: MaskedAutoencoderViT, path, info: dict | None = None) -> None:
    """``torch.save({"model": state_dict, "config": ..., "info": ...})``: loadable with
    ``torch.load(..., weights_only=True)`` (tensors, strings, numbers, lists only)."""
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"model": model.state_dict(), "config": model.config.to_json(), "info": info or {}}, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# what a cached tiny MAE holds besides its state_dict (Cache.load's ``expect``)
MAE_ENTRY = {"__config__": ("U", 0), "__info__": ("U", 0)}


def mae_to_arrays(model: MaskedAutoencoderViT, info: dict) -> dict[str, np.ndarray]:
    """A tiny MAE as arrays for the cache: its state_dict, config and training info."""
    from ..embed.proxy import state_to_arrays

    return {**state_to_arrays(model), "__config__": Cache.pack_json(model.config.to_json()), "__info__": Cache.pack_json(info)}


def mae_from_arrays(arrays: dict[str, np.ndarray]) -> tuple[MaskedAutoencoderViT, dict] | None:
    """(model in eval mode, info) from :func:`mae_to_arrays`'s arrays, or None when they do not
    hold a loadable model (an unknown config, missing or misshapen weights)."""
    from ..embed.proxy import arrays_to_state

    try:
        arrays = dict(arrays)
        config = MAEConfig.from_json(Cache.unpack_json(arrays.pop("__config__")))
        info = Cache.unpack_json(arrays.pop("__info__"))
        model = MaskedAutoencoderViT(config)
        model.load_state_dict(arrays_to_state(arrays))
    except (KeyError, TypeError, ValueError, RuntimeError, AssertionError, AttributeError, ZeroDivisionError):
        return None
    return (model.eval(), info) if isinstance(info, dict) else None


def cached_tiny_mae(dataset, patch: int, cache=None, seed: int = 0, device=None, progress: bool = False, options: dict | None = None):
    """A tiny MAE trained on ``dataset``'s images (:func:`train_tiny_mae`), cached by the data's
    fingerprint and the settings; an entry that does not hold a loadable model is trained again
    and overwritten.

    Returns:
        (the model, its training record with ``cached``: whether it came from the cache).
    """
    from ..cache import hash_key

    options = dict(options or {})
    settings = {"patch": patch, "seed": seed, **options}
    key = hash_key({"v": 1, "data": dataset.fingerprint(), "tiny_mae": settings})
    hit = cache.load("mae", key, MAE_ENTRY) if cache is not None else None
    loaded = mae_from_arrays(hit) if hit is not None else None
    if loaded is not None:
        model, info = loaded
        return model, {**info, "cached": True}
    model, info = train_tiny_mae(dataset.images, patch, seed=seed, device=device, progress=progress, **options)
    if cache is not None:
        cache.save("mae", key, mae_to_arrays(model, info))
    return model, {**info, "cached": False}
