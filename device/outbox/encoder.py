"""The sync's DICOM encoding in worker processes: the CPU-heavy encoding of the next items runs while the
sync waits on the PACS, and no worker outlives the sync, even after a SIGKILL."""
from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable, Iterator

from device.outbox.study import UNENCODABLE, Unencodable, encode_study, eye_study
from device.visits.visitlog import VisitLog


def _die_with(sync_pid: int) -> None:
    """In an encoding worker: exit as soon as the sync process is gone, even after a SIGKILL, so no
    worker outlives it. A worker's parent is the fork server, and its own copy of the task queue's
    write end means it never sees end-of-file, so it watches the sync process itself: a pidfd where
    Linux has one (no PID-reuse race), else a poll of the PID."""
    def watch() -> None:
        try:
            fd = os.pidfd_open(sync_pid)
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            import select

            select.select([fd], [], [])  # readable once the process has exited
            os._exit(1)
        while True:
            try:
                os.kill(sync_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass
            time.sleep(0.5)

    threading.Thread(target=watch, name="die-with-sync", daemon=True).start()


@contextlib.contextmanager
def encoder(visits: VisitLog, device_id: str) -> Iterator[Callable[[int], Future]]:
    """submit(item_id) -> Future of the item's files. The visit log is read here (it is not shared
    across processes); the CPU-heavy DICOM encoding (~0.1 s an eye in highdicom and pydicom) runs in
    worker processes, one per core, while this process waits on the PACS. Workers only compute: they
    never touch the visit log, so killing them (or the sync) at any point loses nothing."""
    import multiprocessing

    workers = min(4, os.cpu_count() or 1)
    # Workers come from a fork server, never by forking this process: the kiosk and the tests hold
    # threads (ONNX Runtime's pools, Flask's, logging's locks), and a child forked while one of them
    # holds a lock waits on it forever.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["device.outbox.study"])
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_die_with, initargs=(os.getpid(),))

    def submit(item_id: int) -> Future:
        try:
            study = eye_study(visits, item_id, device_id=device_id)
        except UNENCODABLE as exc:
            done: Future = Future()
            done.set_result(Unencodable(str(exc)))
            return done
        return pool.submit(encode_study, study)

    try:
        yield submit
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def ahead(items: Iterator[dict], submit: Callable[[int], Future], window: int) -> Iterator[tuple[dict, Future]]:
    """The items in order, each with its encoding started up to `window` items before it is needed."""
    queue: collections.deque[tuple[dict, Future]] = collections.deque()
    for item in items:
        queue.append((item, submit(item["id"])))
        if len(queue) >= window:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
