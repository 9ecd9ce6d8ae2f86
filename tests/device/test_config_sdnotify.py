import os
import socket
from pathlib import Path

import pytest

from device import sdnotify
from device.config import Config

REPO = Path(__file__).resolve().parents[2]


def test_config_file_then_environment_then_flags(tmp_path, monkeypatch):
    f = tmp_path / "g.toml"
    f.write_text('device_id = "unit-7"\n[capture]\nmax_led_level = 0.5\n[kiosk]\nport = 9001\n')
    monkeypatch.delenv("GLAUCOSCREEN_DATA_DIR", raising=False)
    cfg = Config.load(f)
    assert cfg.device_id == "unit-7" and cfg.capture.max_led_level == 0.5 and cfg.kiosk.port == 9001
    monkeypatch.setenv("GLAUCOSCREEN_DATA_DIR", str(tmp_path / "env"))
    assert Config.load(f).data_dir == tmp_path / "env"
    assert Config.load(f, data_dir=tmp_path / "flag").data_dir == tmp_path / "flag"


def test_quality_thresholds_come_from_the_config_and_nonsense_is_refused(tmp_path):
    from device.quality import QualityGate

    f = tmp_path / "g.toml"
    f.write_text("[quality]\nmax_glare_fraction = 0.03\n")
    cfg = Config.load(f)
    assert cfg.quality.max_glare_fraction == 0.03
    assert QualityGate(cfg.quality).settings.max_glare_fraction == 0.03
    cfg.quality.min_focus = float("nan")
    with pytest.raises(ValueError, match="min_focus"):
        QualityGate(cfg.quality)


def test_unknown_setting_is_named(tmp_path):
    f = tmp_path / "g.toml"
    f.write_text("[capture]\nmax_led = 2\n")
    with pytest.raises(ValueError, match="max_led"):
        Config.load(f)


def test_shipped_example_config_loads():
    cfg = Config.load(REPO / "systemd" / "glaucoscreen.toml.example")
    assert cfg.data_dir == Path("/var/lib/glaucoscreen") and cfg.kiosk.host == "127.0.0.1"


def test_notify_reaches_a_real_unix_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.notify("READY=1")
        assert server.recv(64) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.notify("READY=1")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15.0
