"""The unit installer can't run on a Pi here; its dry run shows every step it would take."""
import os
import re
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
    assert "/etc/udev/rules.d/90-glaucoscreen-usb.rules" in out  # sticks writable by the service user
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


def test_usb_sticks_mount_where_the_export_page_looks_and_for_the_service_user():
    from device.kiosk.usb_export import DEFAULT_ROOTS

    rule = (REPO / "systemd" / "90-glaucoscreen-usb.rules").read_text()
    mounts = re.findall(r"systemd-mount [^\n]*?(/\S+)-%k\"", rule)
    assert mounts and all(any(m.startswith(f"{root}/") for root in DEFAULT_ROOTS) for m in mounts)
    assert "--owner=glaucoscreen" in rule and 'ACTION=="remove"' in rule
