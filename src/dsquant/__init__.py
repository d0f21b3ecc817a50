"""dsquant: Dataset Quantization (DQ, ICCV 2023) and Adaptive Dataset Quantization (ADQ, AAAI 2025).

Compress a training set into a small subset that trains unseen architectures almost as well as
the full set. The algorithmic core is pure numpy (:mod:`dsquant.core`); readers, encoders, the
selection methods, the pipeline and the CLI sit around it (``docs/architecture.md``).

The public API::

    import dsquant
    run = dsquant.compress("cifar10-jpeg.tar", method=dsquant.DQ(n_bins=10), ratio=0.1, out="runs/c")
    run = dsquant.open_run("runs/c")                  # read an output directory back (checked)
    train_set = dsquant.load_subset("runs/c")        # a torch Dataset over the subset
    bins = dsquant.generate_bins(features, 10, labels)   # the core, on any (N, d) array
    idx = dsquant.sample_uniform(bins, 0.1, labels, seed=0)

``compress``, ``open_run`` and ``load_subset`` are imported on first use (``import dsquant``
stays light: no torch).
"""

from .core import (
    GradientEmbedding,
    bin_sizes,
    generate_bins,
    largest_remainder,
    sample_uniform,
    sample_with_counts,
)
from .core.scores import adaptive_counts, importance_scores, sample_adaptive, texture_level
from .errors import DataError
from .methods import ADQ, DQ, METHODS, Random, Selection, SelectionMethod, make_method, register_method

__version__ = "0.1.0"

_LAZY = {
    "compress": ("pipeline", "compress"),
    "CompressResult": ("artifact", "Run"),
    "Run": ("artifact", "Run"),
    "open_run": ("artifact", "read_output"),
    "CompressedOutput": ("artifact", "Run"),
    "load_subset": ("torch_data", "load_subset"),
    "SubsetDataset": ("torch_data", "SubsetDataset"),
}

__all__ = [
    "ADQ",
    "CompressResult",
    "CompressedOutput",
    "DQ",
    "DataError",
    "GradientEmbedding",
    "METHODS",
    "Random",
    "Run",
    "Selection",
    "SelectionMethod",
    "SubsetDataset",
    "__version__",
    "adaptive_counts",
    "bin_sizes",
    "compress",
    "generate_bins",
    "importance_scores",
    "largest_remainder",
    "load_subset",
    "make_method",
    "open_run",
    "register_method",
    "sample_adaptive",
    "sample_uniform",
    "sample_with_counts",
    "texture_level",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dsquant' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
