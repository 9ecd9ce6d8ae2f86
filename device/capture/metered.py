"""The camera as the capture loop reads it, with a meter on its frames.

The hardware's own `FramePacer` holds a sensor to its rate; this one measures the rate that actually
reaches the unit, which is what the admin's device page needs to tell a stalled camera
from a slow one.
"""
from __future__ import annotations

import collections
import threading
import time

FRAME_RATE_WINDOW_S = 3.0  # the preview's frame rate is measured over this much recent time


class MeteredCamera:
    """The camera as the capture loop reads it, timing each frame it gives: a camera can say it is
    started and still send nothing, and only the frames that arrive show which."""

    def __init__(self, camera) -> None:
        self._camera = camera
        self._lock = threading.Lock()
        self._times: collections.deque[float] = collections.deque(maxlen=256)
        self._count = 0

    def read(self):
        frame = self._camera.read()
        with self._lock:
            self._times.append(time.monotonic())
            self._count += 1
        return frame

    def __getattr__(self, name):
        return getattr(self._camera, name)

    def rate(self) -> dict:
        """Frames so far, frames per second lately (None before two have come), seconds since the last one."""
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._times if now - t <= FRAME_RATE_WINDOW_S]
            count, last = self._count, (self._times[-1] if self._times else None)
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) >= 2 and recent[-1] > recent[0] else None
        return {"count": count, "fps": None if fps is None else round(fps, 1),
                "last_frame_age_s": None if last is None else round(now - last, 2)}
