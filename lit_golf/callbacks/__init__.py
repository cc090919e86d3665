"""Training callbacks: checkpoints of the run, wall-clock budget, EMA, throughput logging, progress bar,
GPTQ export and the results file.

Every launch gets all of them, as named config sections (`NAMED_CALLBACKS`): YAML sets
`wallclock: {budget_seconds: 600}`, the command line `--ema.decay 0.95`, and a later config or flag
changes one field without re-listing the others. They live inside the package so the names resolve
from any installed environment. `trainer.callbacks` stays free for extra, user-supplied callbacks.
"""

from lit_golf.callbacks.checkpoint import RunCheckpoint
from lit_golf.callbacks.ema import EMA
from lit_golf.callbacks.export import GPTQExport
from lit_golf.callbacks.progress import GolfProgressBar
from lit_golf.callbacks.results import RecordResults
from lit_golf.callbacks.throughput import Throughput
from lit_golf.callbacks.wallclock import WallClockBudget

# Config section -> callback class, in the order they run (the export reads the EMA average whatever the order).
NAMED_CALLBACKS = {
    "wallclock": WallClockBudget,
    "ema": EMA,
    "throughput": Throughput,
    "progress_bar": GolfProgressBar,
    "checkpoint": RunCheckpoint,
    "gptq": GPTQExport,
    "results": RecordResults,
}

__all__ = ["EMA", "NAMED_CALLBACKS", "GPTQExport", "GolfProgressBar", "RecordResults", "RunCheckpoint", "Throughput",
           "WallClockBudget"]
