"""dsquant: Dataset Quantization (DQ, ICCV 2023) and Adaptive Dataset Quantization (ADQ, AAAI 2025).

Compress a training set into a small subset that trains unseen architectures almost as well as
the full set. The algorithmic core is pure numpy (:mod:`dsquant.core`); readers, encoders, the
pipeline and the CLI sit around it.
"""

from .core import (
    GradientEmbedding,
    bin_sizes,
    generate_bins,
    largest_remainder,
    sample_uniform,
    sample_with_counts,
)

__version__ = "0.1.0"

__all__ = [
    "GradientEmbedding",
    "__version__",
    "bin_sizes",
    "generate_bins",
    "largest_remainder",
    "sample_uniform",
    "sample_with_counts",
]
