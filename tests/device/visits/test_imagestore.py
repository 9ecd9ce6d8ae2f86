"""The content-addressed image store on a real directory: names, idempotence, hash checks, orphan
sweeps, and what a process killed in the middle of writing leaves behind."""
from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from device.visits.imagestore import CorruptImageError, ImageStore


def _jpeg(seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", rgb)
    assert ok
    return buf.tobytes()


def test_put_names_the_file_by_its_sha256_in_a_fanout_folder(tmp_path, refuge_photo):
    store = ImageStore(tmp_path / "images")
    data = refuge_photo.read_bytes()
    sha = store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.path(sha) == tmp_path / "images" / sha[:2] / sha
    assert store.path(sha).read_bytes() == data
    assert store.has(sha) and store.get(sha) == data
    assert [p.name for p in store.path(sha).parent.iterdir()] == [sha]  # no temp file left behind


def test_put_is_idempotent_and_keeps_the_existing_file(tmp_path):
    store = ImageStore(tmp_path)
    data = _jpeg(1)
    sha = store.put(data)
    before = store.path(sha).stat()
    assert store.put(data) == sha
    after = store.path(sha).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sum(1 for p in tmp_path.rglob("*") if p.is_file()) == 1


def test_get_refuses_a_file_damaged_on_disk_and_put_repairs_it(tmp_path):
    store = ImageStore(tmp_path)
    data = _jpeg(2)
    sha = store.put(data)
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0x01  # one flipped bit, same size
    store.path(sha).write_bytes(bytes(damaged))
    with pytest.raises(CorruptImageError, match=f"image {sha} is damaged"):
        store.get(sha)
    assert store.put(data) == sha
    assert store.get(sha) == data


def test_missing_and_malformed_names_give_clear_errors(tmp_path):
    store = ImageStore(tmp_path)
    absent = hashlib.sha256(b"never stored").hexdigest()
    assert not store.has(absent)
    with pytest.raises(FileNotFoundError, match="not in the store"):
        store.get(absent)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        store.path("../../etc/passwd")
    with pytest.raises(ValueError, match="non-empty bytes"):
        store.put(b"")


def test_sweep_removes_temp_leftovers_and_unreferenced_images_only(tmp_path):
    store = ImageStore(tmp_path)
    kept = store.put(_jpeg(3))
    orphan = store.put(_jpeg(4))
    leftover = store.path(kept).parent / f".{kept[:12]}.x1y2z3.tmp"  # what a put killed before its rename leaves
    leftover.write_bytes(_jpeg(5)[:100])
    stray = tmp_path / kept[:2] / "notes.txt"                            # not a name this store writes
    stray.write_text("left by someone")
    removed = store.sweep_orphans({kept})
    assert sorted(removed) == sorted([orphan, leftover.name])
    assert store.has(kept) and not store.has(orphan)
    assert not leftover.exists() and stray.exists()
    assert store.sweep_orphans({kept}) == []


def test_free_bytes_is_what_the_file_system_reports(tmp_path):
    store = ImageStore(tmp_path)
    st = os.statvfs(tmp_path)
    assert abs(store.free_bytes() - st.f_bavail * st.f_frsize) < 64 * 2**20


_WRITER = """
import os, sys
from pathlib import Path
from device.visits.imagestore import ImageStore
store = ImageStore(Path(sys.argv[1]))
print("ready", flush=True)
while True:
    store.put(os.urandom(4 * 2**20))
"""


def test_a_writer_killed_mid_put_never_leaves_a_partial_image_under_its_name(tmp_path):
    rng = random.Random(7)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.1, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    store = ImageStore(tmp_path)
    names = [p.name for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".tmp")]
    assert names, "the writer stored nothing before it was killed"
    for name in names:
        assert store.get(name)  # raises if a file under its final name is not whole
    store.sweep_orphans(set(names))
    assert not [p for p in tmp_path.rglob("*.tmp")]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(names)
