"""`RunCSVLogger`: `metrics.csv` beside TensorBoard's events in the run folder, kept across a resumed launch.

Lightning's CSVLogger deletes a `metrics.csv` it finds in its folder. A fit resumed with `--ckpt_path last`
continues in the killed run's folder, so that would lose every row the first launch logged; here the rows
up to the checkpoint's step stay (those after it are dropped, as TensorBoard's `purge_step` hides the
killed launch's later events) and the resumed launch appends to them. Header changes rewrite the file
atomically (`lit_golf.files`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from lit_golf.files import write_atomic


class KeptRowsWriter(ExperimentWriter):
    """A `metrics.csv` writer that continues the file it finds, keeping its rows before step `keep_before`."""

    def __init__(self, log_dir: str, keep_before: int | None = None) -> None:
        self._keep_before = keep_before
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        # Called by the base class where it would delete the file: read it instead.
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            self.metrics_keys = list(reader.fieldnames or [])
        kept = [row for row in rows if self._keep_before is None or _step(row) < self._keep_before]
        if len(kept) != len(rows):
            self._write(self.metrics_keys, kept)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as file:
            rows = list(csv.DictReader(file))
        self._write(fieldnames, rows)

    def _write(self, fieldnames: list[str], rows: list[dict]) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.metrics_file_path, text.getvalue())


def _step(row: dict) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


class RunCSVLogger(CSVLogger):
    """`metrics.csv` in the run folder of the logger it follows (TensorBoard's `version_N`), beside its events.

    Folder and version are the followed logger's at every call, so when `RunCheckpoint` points that logger
    at a resumed run, this one follows; the rows it finds there are kept up to the followed logger's
    `purge_step`.
    """

    def __init__(self, follows: Logger) -> None:
        super().__init__(save_dir=follows.save_dir, name=follows.name)
        self._follows = follows

    @property
    def name(self) -> str:
        return self._follows.name

    @property
    def version(self) -> int | str:
        return self._follows.version

    @property
    def save_dir(self) -> str:
        return self._follows.save_dir

    @property
    def log_dir(self) -> str:
        return self._follows.log_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> KeptRowsWriter:
        if self._experiment is None:
            purge_step = getattr(self._follows, "_kwargs", {}).get("purge_step")
            self._experiment = KeptRowsWriter(self.log_dir, keep_before=purge_step)
        return self._experiment
