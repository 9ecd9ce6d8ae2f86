"""systemd's notify protocol (READY, WATCHDOG, EXTEND_TIMEOUT_USEC), spoken directly over $NOTIFY_SOCKET.

The kiosk service runs with WatchdogSec: if the capture loop or the web server hangs, the pings
stop and systemd restarts the unit's software. Before READY, a start that is building TensorRT
engines (minutes on a Jetson, longer than TimeoutStartSec) asks for more time while it works.
No dependency is needed for one datagram.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send one notification; False when not running under systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(message.encode())
    return True


@contextmanager
def extending_timeout(status: str, every_s: float = 10.0, limit_s: float = 3600.0) -> Iterator[None]:
    """While the block runs, ask systemd every `every_s` for three times that much more time (and say
    `status` in `systemctl status`): a start that is building engines is not killed by TimeoutStartSec.
    The asking stops after `limit_s`, so a build that hangs is still killed in the end. Nothing is sent
    outside systemd."""
    if not os.environ.get("NOTIFY_SOCKET"):
        yield
        return
    stop = threading.Event()
    message = f"EXTEND_TIMEOUT_USEC={int(every_s * 3 * 1e6)}\nSTATUS={status}"

    def ask() -> None:
        try:
            notify(message)
        except OSError as exc:  # systemd went away or the socket is full: the start goes on regardless
            log.warning("could not ask systemd for more start time: %s", exc)

    def loop() -> None:
        end = time.monotonic() + limit_s
        while not stop.wait(every_s) and time.monotonic() < end:
            ask()

    ask()
    t = threading.Thread(target=loop, name="sd-extend-timeout", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        try:
            notify("STATUS=")
        except OSError:
            pass


def watchdog_interval() -> float | None:
    """Half of WatchdogSec, as systemd recommends; None when no watchdog is set for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


def start_watchdog(healthy, stop: threading.Event) -> threading.Thread | None:
    """Ping the watchdog while `healthy()` is true; a sick unit stops pinging and gets restarted."""
    interval = watchdog_interval()
    if interval is None:
        return None

    def loop():
        while not stop.wait(interval):
            if healthy():
                notify("WATCHDOG=1")

    t = threading.Thread(target=loop, name="sd-watchdog", daemon=True)
    t.start()
    return t
