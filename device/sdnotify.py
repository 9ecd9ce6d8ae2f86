"""systemd's notify protocol (READY, WATCHDOG), spoken directly over $NOTIFY_SOCKET.

The kiosk service runs with WatchdogSec: if the capture loop or the web server hangs, the pings
stop and systemd restarts the unit's software. No dependency is needed for one datagram.
"""
from __future__ import annotations

import os
import socket
import threading


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
