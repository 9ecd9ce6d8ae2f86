"""Writes that survive a power cut: a file is either untouched or whole, and its name is on disk.

A unit is switched off at the wall. A new or renamed entry lives in its folder, so the folder is
synced too; some file systems (FAT on a USB stick, on some kernels) cannot sync a folder, and that is
not an error worth losing an export over.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make a folder's new and renamed entries durable. A folder that cannot be opened is an error (the
    write just made in it may not survive); only a file system that cannot sync folders is forgiven."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def write_whole(path: Path, data: bytes, temp_prefix: str = ".") -> None:
    """Write `data` to `path` through a temporary file beside it (named `temp_prefix` + name + ...),
    fsync, rename, fsync the folder."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f"{temp_prefix}{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
