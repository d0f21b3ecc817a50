"""Reading a dataset once: decoded image archives and folders are cached by their content.

:func:`read_dataset` is what every stage reads data through (``compress``, ``evaluate``,
``export``, the benchmark); :func:`dsquant.data.load_dataset` is the uncached reader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cache import Cache, hash_key
from ..errors import DataError
from . import detect_format, load_dataset, streamed_index
from .features import FeatureDataset
from .images import ImageDataset
from .text import TextDataset

__all__ = ["read_dataset"]

_READ_VERSION = 2  # 2: 16-bit and float images scaled, empty classes refused (issue 11)


def _source_signature(path: Path) -> dict:
    """What identifies a dataset file or directory on disk: a hash of its content (for a
    directory, of every file's relative path and bytes), so an edited file is seen whatever its
    size and modification time. About 0.1 s per 100 MB, well under the decoding.

    Raises:
        OSError: if a file cannot be read.
    """
    from ..cache import file_digest, tree_digest

    if path.is_dir():
        return {"dir_sha256": tree_digest(path)}
    return {"file_sha256": file_digest(path)}


def read_dataset(
    data,
    split: str = "train",
    image_size: int | None = None,
    labels: str | None = None,
    cache: Cache | None = None,
    progress: bool = False,
    template: str | None = None,
    group_by: str | None = None,
    stream: bool | None = None,
):
    """Read ``data`` (a path, ``"digits"``, or a dataset object). Decoded image archives and
    folders are cached (keyed by a hash of the files' content), so a second run skips the
    decoding; a cache entry that does not hold a valid dataset is decoded again and overwritten.

    ``stream``: for image folders and tars, True returns a streamed index
    (:class:`~dsquant.data.StreamedImageDataset`, nothing decoded or cached), False decodes into
    memory, None (default) streams from :data:`~dsquant.data.STREAM_MIN_IMAGES` images.
    WebDataset shards are always streamed.

    Raises:
        DataError: if the dataset is missing, unreadable or malformed.
    """
    if isinstance(data, (ImageDataset, FeatureDataset, TextDataset)) or hasattr(data, "fingerprint"):
        return data
    fmt = detect_format(data)
    index = streamed_index(data, fmt, split, stream)
    if index is not None:
        return index
    if cache is None or fmt not in ("tar", "imagefolder", "cifar"):
        return load_dataset(data, split=split, image_size=image_size, labels=labels, progress=progress, template=template, group_by=group_by)
    try:
        src = _source_signature(Path(data))
    except OSError:  # unreadable: the reader says which file and why
        return load_dataset(data, split=split, image_size=image_size, labels=labels, progress=progress)
    key = hash_key({"v": _READ_VERSION, "src": src, "format": fmt, "split": split, "size": image_size})
    expect = {"images": ("u", 4), "labels": ("iu", 1), "classes": ("U", 1), "split": ("U", 0)}
    sized = lambda a: image_size is None or a["images"].shape[1:3] == (image_size, image_size)  # noqa: E731
    hit = cache.load("datasets", key, expect, sized)
    if hit is not None:
        try:
            return ImageDataset(hit["images"], hit["labels"], [str(c) for c in hit["classes"]], str(data), str(hit["split"]))
        except DataError:
            pass  # not a valid dataset (labels out of range, ...): decode again, overwrite it
    ds = load_dataset(data, split=split, image_size=image_size, labels=labels, progress=progress)
    cache.save("datasets", key, {"images": ds.images, "labels": ds.labels, "classes": np.array(ds.classes), "split": np.array(ds.split)})
    return ds


