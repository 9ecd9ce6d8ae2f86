"""The content-addressed image store: every photo and overlay is a file named by the sha256 of its
bytes, fanned out into 2-character folders (``ab/abcd...``) so no folder grows huge on an SD card.

Why content addressing: a name that is the hash makes writes idempotent (a retry or a resend stores
nothing twice), lets a reader prove the bytes are the ones the visit log recorded, and makes an
orphan easy to spot (a file no row names). Why the write dance (temp file in the same folder, fsync,
rename, fsync the folder): after a power cut a name either points at the whole image or does not
exist; the visit log commits the row that names an image only after `put` returns.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import sqlite3
import tempfile
from pathlib import Path

from models.runtime.durable import fsync_dir

_SHA256 = re.compile(r"[0-9a-f]{64}")
_TEMP_SUFFIX = ".tmp"


class DiskFullError(RuntimeError):
    """Too little free disk space to store a visit safely; the message says how much is free and needed."""

    def __init__(self, free: int, needed: int, where: Path, what: str = "a new visit"):
        self.free, self.needed, self.where = free, needed, where
        super().__init__(
            f"Not enough free disk space for {what}: {_mib(free)} free on {where}, {_mib(needed)} needed. "
            "Let the unit sync its visits, then free space (or raise the storage) before screening more patients.")


# Less free than this and a "disk I/O error" from SQLite is the disk being full (it says no more than that)
FULL_BELOW_BYTES = 2**20


def is_disk_full(exc: BaseException, where: Path) -> bool:
    """Whether `exc` is SQLite stopped for want of space on the file system holding `where`: "database or
    disk is full" (SQLITE_FULL; also what `PRAGMA max_page_count` gives), or a "disk I/O error" while that
    file system has (almost) nothing free, which is how a full disk stops a connection from making the
    write-ahead log's index or from writing the log itself."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+; on 3.10 only the message tells
    full = (code & 0xFF) == sqlite3.SQLITE_FULL if code is not None else "database or disk is full" in str(exc)
    io_error = (code & 0xFF) == sqlite3.SQLITE_IOERR if code is not None else "disk I/O error" in str(exc)
    if full:
        return True
    if not io_error:
        return False
    try:
        return shutil.disk_usage(where).free < FULL_BELOW_BYTES
    except OSError:
        return False


class CorruptImageError(RuntimeError):
    """A stored image's bytes no longer match its name: the file was damaged on disk."""


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class ImageStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise ValueError(f"not an image name (64 lowercase hex digits of a sha256): {sha256!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, data: bytes) -> str:
        """Store `data` durably and return its sha256; a file already there with the right bytes is kept."""
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
            raise ValueError("an image must be non-empty bytes")
        data = bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        final = self.path(sha)
        if final.is_file() and hashlib.sha256(final.read_bytes()).hexdigest() == sha:
            return sha
        folder = final.parent
        if not folder.is_dir():
            folder.mkdir(exist_ok=True)
            fsync_dir(self.root)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{sha[:12]}.", suffix=_TEMP_SUFFIX)
        try:
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DiskFullError(self.free_bytes(), len(data), self.root, "this image") from exc
                raise
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(folder)
        return sha

    def get(self, sha256: str) -> bytes:
        """The image's bytes, checked against its name so damage on disk is never passed on as a photo."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"image {sha256} is not in the store ({path})") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise CorruptImageError(
                f"image {sha256} is damaged on disk ({path}): its bytes now hash to {actual}. "
                "The storage may be failing; check it and restore the image from the reading centre's copy if it was sent.")
        return data

    def sweep_orphans(self, referenced: set[str]) -> list[str]:
        """Remove temp files left by an interrupted `put` and images no row names; return their names.

        Only names this store writes are touched, so a stray file someone put here is left alone.
        The caller must make sure no `put` is in flight (the visit log holds its lock while sweeping).
        """
        removed = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and len(p.name) == 2):
            for f in sorted(folder.iterdir()):
                if not f.is_file():
                    continue
                temp = f.name.startswith(".") and f.name.endswith(_TEMP_SUFFIX)
                orphan = _SHA256.fullmatch(f.name) is not None and f.name not in referenced
                if temp or orphan:
                    f.unlink()
                    removed.append(f.name)
        return removed

    def free_bytes(self) -> int:
        """Bytes an unprivileged process may still write on the store's file system."""
        return shutil.disk_usage(self.root).free
