"""Which commit a bench result comes from, also on the GPU box, where the code is a snapshot without .git."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def commit() -> str | None:
    """$LIT_GOLF_COMMIT, else this checkout's short HEAD, else the hash a snapshot's COMMIT file names
    (`lease/gpu_queue.sh` snapshots carry one), else None."""
    if os.environ.get("LIT_GOLF_COMMIT"):
        return os.environ["LIT_GOLF_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=REPO).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        stamp = REPO / "COMMIT"
        return stamp.read_text().split()[1][:7] if stamp.is_file() else None
