"""Crash-safe file writes: temp file, fsync, rename, fsync the directory."""

from __future__ import annotations

import ctypes
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of dirty pages, do not wait
LOG_CAP_BYTES = 16 << 20  # a process's output log beyond this is moved to LOG.1


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a just-written range of a file to disk, without waiting for it.

    Linux keeps written pages in memory until a threshold (10% of memory) or an fsync;
    for a multi-gigabyte blob that puts the whole disk write after the last read, in the
    closing fsync. Started as it goes, the write overlaps the reading of the medium and
    the fsync finds little left. Best effort: a no-op where sync_file_range is missing.
    """
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644,
                 owner: tuple[int, int] | None = None) -> None:
    """Write `data` to `path` so that readers see the old or the new file, never a part
    (owned by `owner`, uid and gid, from the moment it appears, when given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def cap_log(path: Path, cap: int = LOG_CAP_BYTES) -> bool:
    """Keep a process's output log (opened O_APPEND by the process writing it) under
    `cap`: past it, copy it to `<path>.1` (replacing the one before) and truncate it, as
    logrotate's copytruncate does; the writer goes on at the new end. Lines written
    between the copy and the truncation are lost. Returns whether it rotated.
    """
    try:
        if path.is_symlink() or path.stat().st_size <= cap:
            return False
        with open(path, "rb") as src:
            data = src.read()
        mode = path.stat().st_mode & 0o777
        atomic_write(path.with_name(path.name + ".1"), data, mode)
        os.truncate(path, 0)
    except OSError:
        return False  # gone, or not ours to rotate: the next look tries again
    return True
