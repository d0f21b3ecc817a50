"""Pixel quantization of a streamed image dataset (issue 15): only the selected images are read,
a batch at a time, and their kept patches go straight into the ``.dsqp`` file
(:class:`~dsquant.pixels.store.PatchStoreWriter`), so memory does not grow with the number of
images.

The patch importance is DQ's (ALGORITHMS.md section 6: Grad-CAM++ of the model's predicted
class, mean per patch) with the run's pretrained backbone in place of the trained proxy: a
softmax-regression head (:func:`dsquant.embed.pretrained_encoder.fit_linear_classifier`) is fitted
on the backbone's embeddings of a class-balanced sample, and Grad-CAM++ explains its predicted
class on the backbone's last spatial features
(:func:`dsquant.pixels.gradcam.backbone_gradcam`). Images are decoded as the backbone embeds them
(resize, centre crop to its input size), so the stored images are ``crop x crop``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .patches import keep_masks, n_kept, patch_grid, patch_scores
from .store import Codec, PatchStoreWriter

__all__ = ["HEAD_ROWS", "head_rows", "quantize_streamed"]

HEAD_ROWS = 20_000
"""Most embeddings the importance head is fitted on (class-balanced, seeded): 20 per class of
ImageNet-1k, enough for a head whose only use is the class Grad-CAM++ explains, and a full-batch
fit of 20,000 x 2,048 features to 1,000 classes stays small."""


def head_rows(labels: np.ndarray, n_classes: int, limit: int = HEAD_ROWS, seed: int = 0) -> np.ndarray:
    """Sorted rows for fitting the head: every sample when there are at most ``limit``, else
    ``limit // n_classes`` per class (all of a smaller class), drawn without replacement with
    ``seed``."""
    labels = np.asarray(labels)
    if len(labels) <= limit:
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    per = max(1, limit // max(1, n_classes))
    rows = [rng.permutation(np.flatnonzero(labels == c))[:per] for c in range(n_classes)]
    return np.sort(np.concatenate(rows)).astype(np.int64)


def quantize_streamed(
    dataset,
    indices: np.ndarray,
    encoder,
    path: str | Path,
    drop_ratio: float = 0.2,
    patch: int | None = None,
    codec: Codec | None = None,
    features: np.ndarray | None = None,
    head_iterations: int = 100,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
    meta: dict | None = None,
) -> dict:
    """Score the patches of the selected images of a streamed ``dataset`` and write the kept ones
    to ``path`` (a version-2 ``.dsqp`` file, temporary file then rename).

    Args:
        dataset: a labelled image dataset (:class:`dsquant.data.stream.StreamedImageDataset`
            or in memory).
        indices: (M,) int64 selected samples, in the order they are stored.
        encoder: the run's :class:`dsquant.embed.pretrained_encoder.PretrainedEncoder` (an
            ``hf:`` backbone: the others do not expose spatial features).
        path: the file to write.
        drop_ratio: theta, the fraction of patches dropped per image, in [0, 1).
        patch: patch size in pixels (default :func:`dsquant.pixels.default_patch` of the
            backbone's crop: 16 px at 224).
        codec: how the kept pixels are encoded (default lossless WebP).
        features: (N, d) the backbone's embedding of every sample (the run's), to fit the head
            on; None embeds the selected images first (one more pass over them).
        head_iterations, seed: the head's L-BFGS iterations and seed (also seeds the sample of
            :func:`head_rows`).
        batch_size: images per Grad-CAM++ pass (default the encoder's).

    Returns:
        A record: image shape, patch, grid, kept per image, file bytes, the kept pixels' PSNR
        (None when exact), the head's training accuracy and rows, seconds per stage.

    Raises:
        ValueError: on a bad drop ratio or patch, an unlabelled dataset, a backbone without
            spatial features, or ``features`` of the wrong length.
        DataError: naming the first unreadable image.
    """
    import torch

    from ..data.stream import iter_image_batches
    from ..embed.pretrained_encoder import fit_linear_classifier
    from . import default_patch
    from .gradcam import backbone_gradcam

    t0 = time.perf_counter()
    idx = np.asarray(indices, dtype=np.int64)
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise ValueError(f"drop_ratio: patch importance fits a classifier head on the labels; {dataset.source} has none")
    n_kept(1, drop_ratio)
    bb = encoder.backbone
    if not bb.has_spatial:
        raise ValueError(f"encoder: pixel quantization of a streamed dataset needs an hf: backbone (its hidden states give the Grad-CAM++ maps); {encoder.spec!r} does not expose them")
    prep = bb.preprocessing
    shape = (prep.crop, prep.crop, 3)
    patch = patch or default_patch(shape)
    patch_grid(shape[:2], patch)
    codec = codec or Codec()
    n_classes = len(dataset.classes)

    # the importance head, on the run's embedding (or the selected images' own)
    if features is not None:
        if len(features) != len(dataset):
            raise ValueError(f"features: {len(features)} rows for {len(dataset)} samples")
        rows = head_rows(labels, n_classes, seed=seed)
        x, y = np.asarray(features[rows], dtype=np.float32), labels[rows]
    else:
        sub = head_rows(labels[idx], n_classes, seed=seed)
        x, y = encoder.encode_rows(dataset, idx[sub], progress=progress), labels[idx[sub]]
    t = time.perf_counter()
    head = fit_linear_classifier(x, y, n_classes, head_iterations, seed, device=bb.device)
    with torch.no_grad():
        head_accuracy = float((head.logits(torch.as_tensor(x, device=bb.device)).argmax(1).cpu().numpy() == y).mean())
    t_head = time.perf_counter() - t

    mean = (torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0).to(bb.device)
    std = (torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0).to(bb.device)
    t = time.perf_counter()
    with PatchStoreWriter(path, shape, patch, dataset.classes, meta, codec) as writer:
        for pos, batch in iter_image_batches(dataset, prep.resize, prep.crop, prep.interpolation, indices=idx, batch_size=batch_size or encoder.batch_size, num_workers=encoder.num_workers, progress=progress, device=bb.device):
            x = (batch.to(bb.device, non_blocking=True).permute(0, 3, 1, 2).float() - mean) / std
            maps = backbone_gradcam(bb, head, x)
            masks = keep_masks(patch_scores(maps, patch), drop_ratio)
            rows = idx[np.asarray(pos)]
            writer.add(batch.cpu().numpy(), labels[rows], rows, masks)
        size = writer.close()
    psnr = writer.psnr  # after close: the last tile is checked there
    grid = patch_grid(shape[:2], patch)
    return {
        "image_shape": list(shape),
        "preprocessing": prep.record(),
        "patch": int(patch),
        "grid": list(grid),
        "kept_per_image": n_kept(grid[0] * grid[1], drop_ratio),
        "bytes": int(size),
        "kept_psnr_db": None if psnr == float("inf") else round(psnr, 2),
        "head": {"rows": int(len(y)), "on": "the run's embedding" if features is not None else "the selected images", "train_accuracy": round(head_accuracy, 4), "iterations": head_iterations, "seed": seed},
        "seconds": {"head": round(t_head, 3), "gradcam_and_write": round(time.perf_counter() - t, 3), "total": round(time.perf_counter() - t0, 3)},
    }
