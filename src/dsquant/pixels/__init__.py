"""Pixel quantization (ALGORITHMS.md section 6): score the patches of every selected image by
Grad-CAM++, keep the top ``floor((1 - theta) P)``, store only those (:class:`PatchStore`), and
rebuild the rest at load time (:mod:`.reconstruct`).

Both papers' official code reconstructs the whole training set offline into full-size files (no
storage saved) and then indexes them in another order than it selected them; here the file holds
only the kept patches, and every image carries its dataset index.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .gradcam import gradcam_plusplus
from .patches import keep_masks, n_kept, patch_grid, patch_scores
from .reconstruct import InpaintReconstructor, MAEReconstructor, make_reconstructor, reconstruct_store
from .store import Codec, PatchReader, PatchStore, kept_psnr

__all__ = [
    "Codec",
    "PatchStore",
    "PatchReader",
    "kept_psnr",
    "source_file_bytes",
    "InpaintReconstructor",
    "MAEReconstructor",
    "default_patch",
    "gradcam_plusplus",
    "keep_masks",
    "make_reconstructor",
    "n_kept",
    "patch_grid",
    "patch_scores",
    "quantize_pixels",
    "reconstruct_store",
    "png_bytes",
    "ReconstructedDataset",
    "load_reconstructed",
    "iter_reconstructed",
    "rebuild_to_file",
]


def default_patch(image_shape: tuple[int, int, int]) -> int:
    """Patch size giving an 8 x 8 grid on small images (4 px on 32 x 32, the papers' CIFAR
    choice) and 16 px (14 x 14 on 224 x 224) on large ones; the largest divisor otherwise."""
    h, w = image_shape[:2]
    if h >= 112 and h % 16 == 0 and w % 16 == 0:
        return 16
    for p in (h // 8, 4, 2, 1):
        if p >= 1 and h % p == 0 and w % p == 0:
            return p
    return 1


def png_bytes(images: np.ndarray) -> int:
    """Total size of the images saved one by one as PNG (Pillow, default compression)."""
    from PIL import Image

    total = 0
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
        total += buf.tell()
    return total


def source_file_bytes(dataset, indices: np.ndarray) -> tuple[int | None, str]:
    """Bytes of the selected samples' files as they are in the source, and what they are.

    An image folder: the files' sizes; a plain ``.tar``: its members' sizes, from the member
    headers (the images are not read). The files are matched to dataset indices in the
    readers' order (:func:`dsquant.data.images.source_files`); if the source no longer holds as many images
    as the dataset, the sizes are not given.

    Returns:
        (total bytes, a description such as ``"6,250 members of x.tar (.jpg)"``), or (None, why)
        for sources without one file per sample (IDX, a CIFAR python archive, arrays, digits),
        a compressed tar (listing it means decompressing all of it) or an unreadable source.
    """
    from collections import Counter

    from ..data import DataError, detect_format
    from ..data.images import source_files

    source = str(getattr(dataset, "source", ""))
    try:
        fmt = detect_format(source)
        if fmt == "imagefolder":
            what = f"files under {Path(source).name}/"
        elif fmt == "tar" and source.lower().endswith(".tar"):
            what = f"members of {Path(source).name}"
        elif fmt == "tar":
            return None, "compressed tar: not listed (that would decompress all of it)"
        else:
            return None, f"no file per sample in the source ({fmt})"
        files = source_files(source, getattr(dataset, "split", None))
        if len(files) != len(dataset):
            return None, f"{source} now holds {len(files)} images of the split, the dataset {len(dataset)}"
        chosen = [files[i] for i in np.asarray(indices, dtype=np.int64)]
        kinds = Counter(Path(name).suffix.lower() for name, _ in chosen)
        return int(sum(size for _, size in chosen)), f"{len(chosen):,} {what} ({', '.join(kinds)})"
    except (DataError, OSError) as exc:
        return None, f"not measured ({str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__})"


def quantize_pixels(dataset, indices: np.ndarray, model, drop_ratio: float = 0.2, patch: int | None = None, classes: np.ndarray | None = None, device=None, progress: bool = False, meta: dict | None = None) -> PatchStore:
    """Score the patches of ``dataset.images[indices]`` with Grad-CAM++ of ``model`` (its own
    predicted class unless ``classes`` is given) and keep the top ``floor((1 - theta) P)``.

    Raises:
        ValueError: on a drop ratio outside [0, 1) or a patch size that does not tile the images.
    """
    indices = np.asarray(indices, dtype=np.int64)
    images = dataset.images[indices]
    patch = patch or default_patch(dataset.image_shape)
    patch_grid(dataset.image_shape[:2], patch)
    n_kept(1, drop_ratio)  # validates theta
    maps = gradcam_plusplus(model, images, classes=classes, device=device, progress=progress)
    masks = keep_masks(patch_scores(maps, patch), drop_ratio)
    return PatchStore.from_images(images, dataset.labels[indices], indices, masks, patch, dataset.classes, meta)


def load_reconstructed(out_dir, reconstructor: str | None = None, device=None, progress: bool = False) -> tuple[np.ndarray, PatchStore]:
    """The reconstructed images of a compression run with pixel quantization.

    ``reconstructor`` defaults to the one recorded in the manifest (a relative checkpoint path
    is resolved against ``out_dir``).

    Returns:
        ((N, H, W, C) uint8 images in the order of ``store.indices``, the store).
    """
    spec, path = _reconstruction_spec(out_dir, reconstructor)
    store = PatchStore.load(path)
    return reconstruct_store(store, make_reconstructor(spec, device=device), progress=progress), store


def iter_reconstructed(out_dir, reconstructor: str | None = None, device=None, progress: bool = False):
    """:func:`load_reconstructed` a tile of the kept-patch file at a time
    (:meth:`PatchStore.open`): memory bounded by one tile whatever the run's size.

    Yields:
        ((n, H, W, C) uint8 rebuilt images, the store of those n images), in store order.
    """
    spec, path = _reconstruction_spec(out_dir, reconstructor)
    rec = make_reconstructor(spec, device=device)
    with PatchStore.open(path) as reader:
        yield from _rebuilt_tiles(reader, rec, progress)


def _rebuilt_tiles(reader, rec, progress: bool):
    """(rebuilt images, store) of every tile of an open :class:`PatchReader`, in file order."""
    from tqdm.auto import tqdm

    with tqdm(total=len(reader), desc=f"reconstruct ({rec.name})", unit="img", disable=not progress, leave=False) as bar:
        for store in reader.tiles():
            yield reconstruct_store(store, rec), store
            bar.update(len(store))


def rebuild_to_file(out_dir, reconstructor: str | None = None, device=None, progress: bool = False, order: str = "store", tmp_dir=None) -> tuple[np.ndarray, dict]:
    """:func:`load_reconstructed` into a memory-mapped unnamed temporary file, a tile of the
    kept-patch file at a time (as :func:`iter_reconstructed`), the file opened and verified once
    (:meth:`PatchStore.open`): memory bounded by one tile (and the page cache) whatever the
    run's size, disk N x H x W x C bytes.

    Args:
        order: ``"store"`` (the file's order) or ``"index"`` (ascending dataset index).
        tmp_dir: where the temporary file goes (default: the system's temporary directory); it
            has no name, and the system frees it when the returned array is dropped.

    Returns:
        ((N, H, W, C) uint8 ``np.memmap`` of the rebuilt images, ``{"indices", "labels",
        "image_shape", "classes"}`` in that order: :meth:`PatchStore.read_index`).

    Raises:
        ValueError: as :func:`load_reconstructed`, or ``order`` not one of the two.
    """
    import tempfile

    if order not in ("store", "index"):
        raise ValueError(f"order: expected 'store' or 'index', got {order!r}")
    spec, path = _reconstruction_spec(out_dir, reconstructor)
    rec = make_reconstructor(spec, device=device)
    with PatchStore.open(path) as reader:  # verified once; the index and the tiles from it
        info = reader.index
        n = len(info["indices"])
        perm = np.argsort(info["indices"], kind="stable") if order == "index" else np.arange(n)
        row = np.empty(n, dtype=np.int64)
        row[perm] = np.arange(n)  # image i of the file goes to row[i]
        shape = (n, *info["image_shape"])
        if n == 0:
            return np.zeros(shape, dtype=np.uint8), info
        with tempfile.TemporaryFile(dir=tmp_dir, prefix="dsquant-rebuild-") as f:
            f.truncate(int(np.prod(shape)))
            images = np.memmap(f, dtype=np.uint8, mode="r+", shape=shape)  # the mapping outlives the descriptor
        start = 0
        for part, _store in _rebuilt_tiles(reader, rec, progress):
            images[row[start : start + len(part)]] = part
            start += len(part)
    if start != n:  # the tiles' counts were checked against the header's
        raise ValueError(f"{path}: {start} images rebuilt, the header says {n}")
    return images, {k: (v[perm] if k in ("indices", "labels") else v) for k, v in info.items()}


def _reconstruction_spec(out_dir, reconstructor: str | None) -> tuple[str, Path]:
    """The reconstructor to use (the manifest's unless given; a relative checkpoint resolved
    against ``out_dir``) and the run's kept-patch file."""
    from ..artifact import read_output

    out = read_output(out_dir)
    info = out.manifest.get("pixels")
    if not info:
        raise ValueError(f"{out_dir}: this run kept whole images (no patches.dsqp); compress with --drop-ratio")
    spec = reconstructor or info.get("reconstructor", "inpaint")
    if ":" in spec:
        kind, ckpt = spec.split(":", 1)
        if not Path(ckpt).is_absolute() and (Path(out_dir) / ckpt).exists():
            spec = f"{kind}:{Path(out_dir) / ckpt}"
    return spec, Path(out_dir) / "patches.dsqp"


class ReconstructedDataset:
    """A PyTorch ``Dataset`` over a kept-patch file: item i is ``(image, label)`` of the i-th
    stored image (dataset index ``indices[i]``), its dropped patches rebuilt at load time (all at
    once, in batches, when the dataset is created).

    Images are float32 tensors (C, H, W) in [0, 1], or what ``transform`` returns for a uint8
    (H, W, C) array.

    Args:
        in_memory: True (default): the rebuilt images and the kept patches are held in memory
            (``store`` is the :class:`PatchStore`). False: rebuilt a tile at a time into a
            memory-mapped unnamed temporary file in ``tmp_dir`` (:func:`rebuild_to_file`;
            N x H x W x C bytes of disk, memory bounded by one tile; at 224 px about 150 KB per
            image, 19 GB for 10 % of ImageNet), ``store`` None.
    """

    def __init__(self, out_dir, reconstructor: str | None = None, transform=None, device=None, progress: bool = False, in_memory: bool = True, tmp_dir=None) -> None:
        if in_memory:
            self.images, self.store = load_reconstructed(out_dir, reconstructor, device, progress)
            self.indices, self.labels = self.store.indices, self.store.labels
        else:
            self.images, info = rebuild_to_file(out_dir, reconstructor, device, progress, tmp_dir=tmp_dir)
            self.store, self.indices, self.labels = None, info["indices"], info["labels"]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        import torch

        img = self.images[i]
        if self.transform is not None:
            return self.transform(img), int(self.labels[i])
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0), int(self.labels[i])
