"""Training callbacks: checkpoints of the run, wall-clock budget, EMA, throughput logging, progress bar and GPTQ export.

They live inside the package (not a top-level `callbacks/`) so YAML configs can name them by import
path, `class_path: lit_golf.callbacks.EMA`, from any installed environment.
"""

from lit_golf.callbacks.checkpoint import RunCheckpoint
from lit_golf.callbacks.ema import EMA
from lit_golf.callbacks.export import GPTQExport
from lit_golf.callbacks.progress import GolfProgressBar
from lit_golf.callbacks.throughput import Throughput
from lit_golf.callbacks.wallclock import WallClockBudget

__all__ = ["EMA", "GPTQExport", "GolfProgressBar", "RunCheckpoint", "Throughput", "WallClockBudget"]
