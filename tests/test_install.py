"""The unit installer can't run on a Pi here; its dry run shows every step it would take."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def dry_run(board: str) -> str:
    env = dict(os.environ, GLAUCOSCREEN_BOARD=board)
    out = subprocess.run(["bash", str(REPO / "install.sh"), "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_pi_install_sees_system_camera_and_installs_units():
    out = dry_run("pi")
    assert "venv --system-site-packages /opt/glaucoscreen/venv" in out
    assert "[pi]" in out
    for group in ("gpio", "dialout", "video"):
        assert f"usermod -aG {group} glaucoscreen" in out
    for unit in ("glaucoscreen-kiosk.service", "glaucoscreen-browser.service"):
        assert f"/etc/systemd/system/{unit}" in out
    assert "systemctl enable --now glaucoscreen-kiosk.service" in out
    assert "systemctl enable --now glaucoscreen-sync.timer" in out
    assert "/etc/NetworkManager/dispatcher.d/90-glaucoscreen-sync" in out
    assert "build-engines" not in out


def test_jetson_install_builds_tensorrt_engines():
    out = dry_run("jetson")
    assert "[jetson]" in out
    assert "build-engines" in out


def test_installer_refuses_unknown_options():
    out = subprocess.run(["bash", str(REPO / "install.sh"), "--frobnicate"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown option" in out.stderr


@pytest.mark.parametrize("unit", sorted(p.name for p in (REPO / "systemd").glob("*.service")))
def test_systemd_units_are_valid(unit, tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is needed to check the units (Debian package systemd)")
    text = (REPO / "systemd" / unit).read_text()
    assert "ExecStart=" in text and "Restart=" in text
    # verify against this checkout: point ExecStart at binaries that exist here
    local = text.replace("/opt/glaucoscreen/venv/bin/glaucoscreen", shutil.which("true")).replace("/usr/bin/chromium", shutil.which("true"))
    local = local.replace("User=glaucoscreen", "User=root").replace("Group=glaucoscreen", "Group=root")
    (tmp_path / unit).write_text(local)
    for dep in ("glaucoscreen-kiosk.service", "glaucoscreen-browser.service"):
        if not (tmp_path / dep).exists():
            (tmp_path / dep).write_text("[Service]\nExecStart=/bin/true\n")
    res = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)], capture_output=True, text=True)
    assert res.returncode == 0 and "Unknown" not in res.stderr, res.stderr
