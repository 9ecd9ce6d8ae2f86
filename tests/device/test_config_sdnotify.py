import os
import socket
from pathlib import Path

import pytest

from device import sdnotify
from device.config import Config
from device.screening.quality import QualitySettings

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
    from device.screening.quality import QualityGate

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
    limits = cfg.rig_options()["light_limits"]
    assert limits.max_irradiance_mw_cm2 == 0.22 and limits.visit_exposure_mj_cm2 == 50.0
    assert cfg.calibration.max_age_days == 90


def test_light_limits_and_the_calibration_interval_are_checked_in_words(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[light_safety]\nvisit_exposure_mj_cm2 = 0\n")
    with pytest.raises(ValueError, match=r"\[light_safety\] light limit visit_exposure_mj_cm2 must be a positive number"):
        Config.load(f)
    f.write_text("[light_safety]\nphotochemical_mw_cm2 = 0.1\n[calibration]\nmax_age_days = 30\n")
    cfg = Config.load(f)
    assert cfg.rig_options()["light_limits"].max_irradiance_mw_cm2 == 0.1 and cfg.calibration.max_age_days == 30
    f.write_text("[calibration]\nmax_age_days = -1\n")
    with pytest.raises(ValueError, match="max_age_days must be a positive number of days"):
        Config.load(f)


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


def test_settings_page_overrides_load_on_top_of_the_file_within_its_light_cap(tmp_path, monkeypatch):
    from device.config import SettingsError, check_overrides, overrides_path, write_overrides

    monkeypatch.delenv("GLAUCOSCREEN_DATA_DIR", raising=False)
    f = tmp_path / "g.toml"
    f.write_text("[capture]\nmax_led_level = 0.7\ntarget_brightness = 0.4\n[quality]\nmin_focus = 0.3\n")
    data = tmp_path / "data"
    cfg = Config.load(f, data_dir=data)
    assert cfg.led_safety_cap == 0.7 and not overrides_path(data).exists()
    clean = check_overrides(cfg, {"capture": {"max_led_level": "0.5", "consecutive_gradable": "6"},
                                  "quality": {"min_focus": 0.35}})
    assert clean == {"capture": {"max_led_level": 0.5, "consecutive_gradable": 6}, "quality": {"min_focus": 0.35}}
    write_overrides(data, clean, changed_by="amina")
    assert [p.name for p in data.iterdir()] == [overrides_path(data).name]  # no temporary file left behind
    cfg = Config.load(f, data_dir=data)
    assert (cfg.capture.max_led_level, cfg.capture.consecutive_gradable, cfg.quality.min_focus) == (0.5, 6, 0.35)
    assert cfg.capture.target_brightness == 0.4, "what was not overridden keeps the file's value"
    assert cfg.led_safety_cap == 0.7 and cfg.file_values()["capture"]["max_led_level"] == 0.7

    with pytest.raises(SettingsError) as refused:
        check_overrides(cfg, {"capture": {"max_led_level": 0.75, "burst": 9}, "sync": {"url": "x"}})
    assert set(refused.value.problems) == {"capture.max_led_level", "capture.burst", "sync"}
    assert "0.7" in refused.value.problems["capture.max_led_level"]

    # the IT person lowers the cap below what was set on the kiosk: the cap wins
    f.write_text("[capture]\nmax_led_level = 0.4\n")
    cfg = Config.load(f, data_dir=data)
    assert cfg.capture.max_led_level == 0.4 and cfg.capture.consecutive_gradable == 6

    # a hand-edited file with nonsense stops the start with the file's name, as the configuration file does
    overrides_path(data).write_text("[quality]\nmin_focus = 7\n")
    with pytest.raises(ValueError, match="settings-overrides.toml.*min_focus"):
        Config.load(f, data_dir=data)
    write_overrides(data, {"capture": {}, "quality": {}})
    assert not overrides_path(data).exists()
    assert Config.load(f, data_dir=data).quality.min_focus == QualitySettings().min_focus  # back to the default


def test_internal_state_is_not_a_setting(tmp_path):
    f = tmp_path / "g.toml"
    f.write_text("_file_values = {}\n")
    with pytest.raises(ValueError, match="_file_values"):
        Config.load(f)


def test_extending_the_start_timeout_pings_while_the_block_runs_and_stops_after(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        with sdnotify.extending_timeout("Building", every_s=0.05):
            first = server.recv(256).decode()
            second = server.recv(256).decode()
        got = []
        server.settimeout(0.3)
        try:
            while True:
                got.append(server.recv(256).decode())
        except TimeoutError:
            pass
    assert first == second == "EXTEND_TIMEOUT_USEC=150000\nSTATUS=Building"
    assert got and got[-1] == "STATUS="
    monkeypatch.delenv("NOTIFY_SOCKET")
    with sdnotify.extending_timeout("Building"):  # outside systemd: nothing to say, nothing started
        assert not any(t.name == "sd-extend-timeout" for t in __import__("threading").enumerate())


def test_extending_stops_asking_after_its_limit(tmp_path, monkeypatch):
    """A build that hangs must still be killed by systemd in the end."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        with sdnotify.extending_timeout("Building", every_s=0.02, limit_s=0.1):
            __import__("time").sleep(0.4)
        server.settimeout(0.2)
        got = []
        try:
            while True:
                got.append(server.recv(256).decode())
        except TimeoutError:
            pass
    pings = [m for m in got if m.startswith("EXTEND")]
    assert 2 <= len(pings) <= 8, pings
