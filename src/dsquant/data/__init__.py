"""Dataset readers. :func:`load_dataset` detects the format from the path.

| DATA | reader |
|---|---|
| ``digits`` | scikit-learn's digits (bundled, no download) |
| a directory of ``<class>/<image>`` (optionally under ``train/``, ``test/``) | :func:`read_image_folder` |
| ``*.tar``, ``*.tar.gz``, ``*.tgz`` of such a tree | :func:`read_image_tar` (read in place) |
| ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` or their directories | :func:`read_cifar_archive` |
| ``*-idx3-ubyte[.gz]`` / ``*-idx1-ubyte[.gz]``, or a directory of them | :func:`read_idx` |
| ``*.npy`` / ``*.npz`` feature matrices | :func:`read_features` |
| ``*.jsonl``, ``*.json`` (plain or ``.gz``) of text records | :func:`read_text_records` |

Readers trust no input: a bad file gives a :class:`DataError` whose one-line message names it
(a path, or ``archive:member``) and says what was expected. The rules (pixel modes, size limits,
truncated archives, empty classes, labels, text field values) are in the docstrings of
:mod:`dsquant.data.images`, :mod:`dsquant.data.features` and :mod:`dsquant.data.text`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .features import FeatureDataset, load_array, read_features
from .text import TEXT_SUFFIXES, TextDataset, read_text_records
from .stream import STREAM_MIN_IMAGES, CompressedTarError, StreamedImageDataset, index_image_folder, index_image_tar, index_webdataset
from .images import (
    DataError,
    ImageDataset,
    check_regular_file,
    from_arrays,
    is_cifar_archive,
    load_digits,
    read_cifar_archive,
    read_idx,
    read_image_folder,
    read_image_tar,
)

__all__ = [
    "DataError",
    "FeatureDataset",
    "ImageDataset",
    "STREAM_MIN_IMAGES",
    "StreamedImageDataset",
    "TextDataset",
    "detect_format",
    "from_arrays",
    "index_image_folder",
    "index_image_tar",
    "index_webdataset",
    "load_array",
    "load_dataset",
    "load_digits",
    "read_cifar_archive",
    "read_features",
    "read_idx",
    "read_image_folder",
    "read_image_tar",
    "read_text_records",
]

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def _is_webdataset(path: Path, look: int = 32) -> bool:
    """Whether one of the first ``look`` members of an uncompressed tar is a ``<key>.cls`` label."""
    import tarfile

    try:
        with tarfile.open(path, "r:") as tar:
            for _, m in zip(range(look), tar):
                if m.name.lower().endswith(".cls"):
                    return True
    except (tarfile.TarError, OSError, EOFError):
        return False
    return False


def detect_format(spec: str | os.PathLike) -> str:
    """The reader for ``spec``: one of ``digits``, ``imagefolder``, ``tar``, ``webdataset``
    (a brace pattern of shards, or a tar whose first members include a ``.cls`` label),
    ``cifar``, ``idx``, ``features``, ``text``, ``store`` (an embedding store directory).

    Raises:
        DataError: if the path does not exist, is neither a directory nor a regular file (a FIFO
            or device could hang or never end), or its format is not recognised.
    """
    if str(spec) == "digits":
        return "digits"
    path = Path(spec)
    name = path.name.lower()
    if not path.exists():
        if "{" in str(spec) and ".tar" in name:
            return "webdataset"  # a brace pattern of shards; index_webdataset names a missing one
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "store.json").is_file():  # dsquant.embed.store's manifest
            return "store"
        if is_cifar_archive(path):
            return "cifar"
        if any("idx3-ubyte" in p.name for p in path.iterdir()):
            return "idx"
        return "imagefolder"
    check_regular_file(path)
    if "idx3-ubyte" in name or "idx1-ubyte" in name:
        return "idx"
    if name.endswith((".npy", ".npz")):
        return "features"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(_TAR_SUFFIXES):
        if is_cifar_archive(path):
            return "cifar"
        return "webdataset" if _is_webdataset(path) else "tar"
    raise DataError(
        f"{path}: unrecognised dataset format (expected 'digits', an image folder, a tar archive, "
        f"a CIFAR python archive, IDX files, .npy/.npz features, or .jsonl/.json text records)"
    )


def load_dataset(
    spec: str | os.PathLike,
    split: str = "train",
    image_size: int | None = None,
    labels: str | os.PathLike | None = None,
    progress: bool = False,
    template: str | None = None,
    group_by: str | None = None,
    stream: bool | None = False,
):
    """Read the dataset named by ``spec`` (a path, or ``"digits"``).

    Args:
        spec: the dataset; its format is detected from the path (:func:`detect_format`).
        split: ``"train"`` or ``"test"`` for sources that have both.
        image_size: resize and centre-crop images to this size (image folders and tars).
        labels: labels file for a ``.npy`` feature matrix.
        progress: show progress bars.
        template, group_by: for text records (:func:`read_text_records`).
        stream: image folders and tars: True gives a :class:`StreamedImageDataset` (an index,
            images decoded on demand, :mod:`dsquant.data.stream`); False decodes into memory;
            None streams from :data:`STREAM_MIN_IMAGES` images. WebDataset shards are always
            streamed; an embedding store directory gives its :class:`~dsquant.embed.store.StoreDataset`.

    Raises:
        DataError: if the path is missing, unreadable or malformed; the message names the file.
    """
    fmt = detect_format(spec)
    if fmt == "digits":
        return load_digits(split)
    if fmt == "store":
        from ..embed.store import open_store

        return open_store(spec)
    index = streamed_index(spec, fmt, split, stream)
    if index is not None:
        return index
    if fmt == "imagefolder":
        return read_image_folder(spec, split=split, image_size=image_size, progress=progress)
    if fmt == "tar":
        return read_image_tar(spec, split=split, image_size=image_size, progress=progress)
    if fmt == "cifar":
        return read_cifar_archive(spec, split=split)
    if fmt == "idx":
        return read_idx(spec, split=split)
    if fmt == "text":
        return read_text_records(spec, template=template, group_by=group_by)
    return read_features(spec, labels=labels)


STREAM_MIN_TAR_BYTES = 2 << 30
"""With ``stream=None``, a tar smaller than this (2 GiB) is read in memory without being indexed
first (CIFAR-10's JPEG tar is 0.15 GB; ImageNet's training tar 147 GB)."""


def streamed_index(spec, fmt: str, split: str, stream: bool | None) -> StreamedImageDataset | None:
    """The streamed index of an image source of format ``fmt``, or None when it is to be read
    in memory: ``stream`` False, or None (automatic) with fewer than :data:`STREAM_MIN_IMAGES`
    images, a tar below :data:`STREAM_MIN_TAR_BYTES` or a compressed tar. WebDataset shards are
    always streamed.

    Raises:
        DataError: as the index functions do (with ``stream`` True, a compressed tar).
    """
    if fmt == "webdataset":
        return index_webdataset(spec, split=split)
    if fmt not in ("imagefolder", "tar") or stream is False:
        return None
    if fmt == "imagefolder":
        index = index_image_folder(spec, split=split)
    elif stream:
        index = index_image_tar(spec, split=split)
    else:  # automatic: a tar below STREAM_MIN_TAR_BYTES is read in memory without listing it twice
        if os.path.getsize(spec) < STREAM_MIN_TAR_BYTES:
            return None
        try:
            index = index_image_tar(spec, split=split)
        except CompressedTarError:
            return None
    return index if stream or len(index) >= STREAM_MIN_IMAGES else None


from .cached import read_dataset  # noqa: E402  (uses detect_format and load_dataset above)

__all__.append("read_dataset")
