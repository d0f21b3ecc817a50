"""The algorithmic core: pure functions over numpy arrays (no I/O, no torch).

* :mod:`.similarity` - cosine kernels over features or factorised gradient embeddings;
* :mod:`.bins` - DQ bin generation by greedy GraphCut;
* :mod:`.sampling` - uniform (DQ) and count-driven (ADQ) bin sampling.
"""

from .bins import bin_sizes, generate_bins
from .sampling import largest_remainder, sample_uniform, sample_with_counts
from .similarity import GradientEmbedding

__all__ = [
    "GradientEmbedding",
    "bin_sizes",
    "generate_bins",
    "largest_remainder",
    "sample_uniform",
    "sample_with_counts",
]
