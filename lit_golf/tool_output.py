"""Where the tools write (`prepare-data`, `download`, `demo`, `sweep`): the output flag is checked before any
work starts, a failed write (full disk, read-only folder) is one line naming the path and the flag, and a
finished folder replaces an earlier one in one swap, so a failure leaves the earlier one as it was. Single
files are written atomically by `lit_golf.files`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from lit_golf.files import FOLDER_ERRNOS, check_writable


def is_disk_error(err: OSError) -> bool:
    """Whether `err` is the disk refusing a write (full, read-only, no permission), not a failure of the program."""
    return err.errno in FOLDER_ERRNOS


def write_failure(err: OSError, flag: str, folder: str | Path) -> str:
    """One line for a disk error met while writing under `folder` (given as `flag`)."""
    path = err.filename or folder
    reason = err.strerror or type(err).__name__
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full: writing {path} failed ({reason}): free space or pass {flag} on another disk"
    return f"cannot write {path} ({reason}): pass a writable {flag}"


@contextlib.contextmanager
def disk_errors_as_one_line(flag: str, folder: str | Path, unchanged: str = "",
                            error: type[Exception] = ValueError) -> Iterator[None]:
    """Turn a disk error inside the block into `error` with `write_failure`'s line (plus "; `unchanged`", what the
    failure left as it was); any other OSError passes through."""
    try:
        yield
    except OSError as err:
        if not is_disk_error(err):
            raise
        line = write_failure(err, flag, folder)
        raise error(f"{line}; {unchanged}" if unchanged else line) from None


def output_folder(path: str | Path, flag: str) -> Path:
    """`path` as a writable folder, created with its parents; a one-line ValueError naming `flag` when it cannot be."""
    path = Path(path)
    check_writable(path, flag)
    path.mkdir(parents=True, exist_ok=True)
    return path


def replace_folder(new: Path, target: Path, keep: Callable[[Path], bool] = lambda entry: False) -> None:
    """Make the finished folder `new` (on the same filesystem) be `target`, in two renames; an existing `target`
    is moved aside first (and back if the second rename fails). Its entries that `keep` selects and `new` lacks
    move into the new folder; the rest is removed at the end."""
    if not target.exists():
        os.replace(new, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    old = aside / target.name
    os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        os.replace(old, target)
        raise
    for entry in old.iterdir():
        if keep(entry) and not (target / entry.name).exists():
            os.replace(entry, target / entry.name)
    shutil.rmtree(aside)
