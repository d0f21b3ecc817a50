"""The evaluation harness: train unseen architectures on a compressed set, test on the held-out
split; run grids of datasets x methods x keep ratios x architectures x seeds."""

from .archs import ARCHITECTURES, Architecture, get_architecture
from .grid import Grid, run_grid, write_reports
from .harness import PRESETS, Preset, evaluate_output, summarise, train_and_test
from .stats import mean_interval, paired_difference

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "Grid",
    "PRESETS",
    "Preset",
    "evaluate_output",
    "get_architecture",
    "mean_interval",
    "paired_difference",
    "run_grid",
    "summarise",
    "train_and_test",
    "write_reports",
]
