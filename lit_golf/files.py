"""Writing a run's records (checkpoints, artifacts, results, logs) so that a failure never leaves half a file.

Every record is written to a temporary file in its own folder and renamed over the target (`os.replace`,
atomic on one filesystem): a full disk, a kill or Ctrl-C mid-write leaves the previous file as it was
and no temporary file behind. A write that fails names the file it was writing, so the one-line error
says where.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Failures of the target folder, not of the program: one line names the file and the fix (`lit_golf.cli`).
FOLDER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block ends without error,
    removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    partial = Path(name)
    try:
        yield partial
        os.chmod(partial, 0o666 & ~_UMASK)  # mkstemp's 0600 would make records unreadable to others
        os.replace(partial, path)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write(2) names no file: name it
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically; returns `path`."""
    path = Path(path)
    with atomic_path(path) as partial, open(partial, "wb") as file:
        file.write(data.encode() if isinstance(data, str) else data)
    return path


def copy_atomic(source: str | Path, target: str | Path) -> Path:
    """Copy `source` to `target` atomically; returns `target`."""
    return write_atomic(target, Path(source).read_bytes())


def append_atomic(path: str | Path, text: str) -> Path:
    """`path` with `text` added at its end, written as a whole new file (the old one stays intact on failure)."""
    path = Path(path)
    old = path.read_bytes() if path.is_file() else b""
    return write_atomic(path, old + text.encode())


def check_writable(folder: str | Path, flag: str) -> None:
    """Raise one line when `folder` could not be written (read-only, full, a file in the way); creates nothing."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file, not a folder")
        with tempfile.TemporaryFile(dir=existing) as probe:  # gone when closed, whatever happens
            probe.write(b"lit_golf")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"{flag} {folder}: cannot write there ({reason}); choose a writable folder with "
                         "free space") from None
