"""Waiting for something a thread or another process does, without sleeping a fixed time."""
import time


def wait_until(condition, timeout: float = 2.0, poll: float = 0.005) -> bool:
    """True as soon as `condition()` holds; after `timeout` seconds, its last answer."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(poll)
    return bool(condition())
