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
    "TextDataset",
    "detect_format",
    "from_arrays",
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


def detect_format(spec: str | os.PathLike) -> str:
    """The reader for ``spec``: one of ``digits``, ``imagefolder``, ``tar``, ``cifar``, ``idx``,
    ``features``, ``text``.

    Raises:
        DataError: if the path does not exist, is neither a directory nor a regular file (a FIFO
            or device could hang or never end), or its format is not recognised.
    """
    if str(spec) == "digits":
        return "digits"
    path = Path(spec)
    name = path.name.lower()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
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
        return "cifar" if is_cifar_archive(path) else "tar"
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
) -> ImageDataset | FeatureDataset | TextDataset:
    """Read the dataset named by ``spec`` (a path, or ``"digits"``).

    Args:
        spec: the dataset; its format is detected from the path (:func:`detect_format`).
        split: ``"train"`` or ``"test"`` for sources that have both.
        image_size: resize and centre-crop images to this size (image folders and tars).
        labels: labels file for a ``.npy`` feature matrix.
        progress: show progress bars.
        template, group_by: for text records (:func:`read_text_records`).

    Raises:
        DataError: if the path is missing, unreadable or malformed; the message names the file.
    """
    fmt = detect_format(spec)
    if fmt == "digits":
        return load_digits(split)
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


from .cached import read_dataset  # noqa: E402  (uses detect_format and load_dataset above)

__all__.append("read_dataset")
