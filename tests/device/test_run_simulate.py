"""`glaucoscreen run --simulate` as a person starts it: a real process, a real port, a real stop."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from device.visits.visitlog import VisitLog
from tests.loopback import listening


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_simulate_serves_the_kiosk_and_stops_cleanly_on_sigterm(tmp_path):
    port = free_port()
    env = dict(os.environ, GLAUCOSCREEN_CONFIG=str(tmp_path / "none.toml"))
    proc = subprocess.Popen([sys.executable, "-m", "device.cli", "run", "--simulate", "--port", str(port),
                             "--data-dir", str(tmp_path / "data")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    health = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.3)
        assert health == {"ok": True, "capture_running": True, "error": None}
        assert listening(proc.pid) == [("127.0.0.1", port)]  # the kiosk, on loopback only (issue 17, item 13)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert "Sign in" in r.read().decode()   # anyone reaching the unit meets the sign-in page first
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"127.0.0.1:{port}" in out and "sign in as 'demo'" in out
    assert (tmp_path / "data" / "visits.db").exists()
    with VisitLog(tmp_path / "data") as log:
        assert log.schema_version >= 2
