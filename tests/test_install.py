"""The unit installer can't run on a Pi here; its dry run shows every step it would take."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent


def dry_run(board: str, *options: str, sysroot: Path | str = "/nonexistent", stderr: list | None = None) -> str:
    """The installer's dry run for a board (--board: detection would read this machine's device tree).
    `sysroot` stands for the board's / where the installer reads its display manager's config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLAUCOSCREEN_") and k != "CUDA_HOME"}
    env["GLAUCOSCREEN_SYSROOT"] = str(sysroot)
    out = subprocess.run(["bash", str(REPO / "install.sh"), "--dry-run", "--board", board, *options], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    if stderr is not None:
        stderr.append(out.stderr)
    return out.stdout


def test_pi_install_sees_system_camera_and_installs_units():
    out = dry_run("pi")
    assert "venv --system-site-packages /opt/glaucoscreen/venv" in out
    assert "[pi]" in out
    for group in ("gpio", "dialout", "video"):
        assert f"usermod -aG {group} glaucoscreen" in out
    assert "/etc/systemd/system/glaucoscreen-kiosk.service" in out
    assert "systemctl enable --now glaucoscreen-kiosk.service" in out
    assert "systemctl enable --now glaucoscreen-sync.timer" in out
    assert "/etc/NetworkManager/dispatcher.d/90-glaucoscreen-sync" in out
    assert "/etc/udev/rules.d/90-glaucoscreen-usb.rules" in out  # sticks writable by the service user
    assert "build-engines" not in out


def test_jetson_install_builds_tensorrt_engines():
    out = dry_run("jetson")
    assert "[jetson]" in out
    assert "build-engines" in out


def test_jetson_install_builds_the_engines_before_it_starts_the_kiosk():
    """A kiosk started first would build the same engines itself before READY (and be killed by the start
    limit); built first, its start only loads them. The kiosk's unit is Type=notify: its code asks for more
    start time while it builds (tests/device/test_unit_tensorrt.py), nothing in the unit may cut that off."""
    lines = dry_run("jetson").splitlines()
    build = [i for i, line in enumerate(lines) if line.endswith("glaucoscreen build-engines")]
    start = [i for i, line in enumerate(lines) if re.search(r"systemctl (enable --now|start|restart) .*glaucoscreen-kiosk", line)]
    assert len(build) == 1 and len(start) == 1 and build[0] < start[0]
    assert "runuser -u glaucoscreen --" in lines[build[0]]  # the service user owns the cache it and the kiosk share
    kiosk = (REPO / "systemd" / "glaucoscreen-kiosk.service").read_text()
    settings = dict(line.split("=", 1) for line in kiosk.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["Type"] == "notify" and settings["NotifyAccess"] in ("main", "all")
    assert "TimeoutStartSec" not in settings or settings["TimeoutStartSec"] != "0"
    assert "ExecStartPre" not in settings, "nothing may build engines outside the start's timeout extension"


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
    local = text.replace("/opt/glaucoscreen/venv/bin/glaucoscreen", shutil.which("true"))
    local = local.replace("User=glaucoscreen", "User=root").replace("Group=glaucoscreen", "Group=root")
    (tmp_path / unit).write_text(local)
    if not (tmp_path / "glaucoscreen-kiosk.service").exists():
        (tmp_path / "glaucoscreen-kiosk.service").write_text("[Service]\nExecStart=/bin/true\n")
    res = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)], capture_output=True, text=True)
    assert res.returncode == 0 and "Unknown" not in res.stderr, res.stderr


def test_usb_sticks_mount_where_the_export_page_looks_and_for_the_service_user():
    from device.kiosk.usb_export import DEFAULT_ROOTS

    rule = (REPO / "systemd" / "90-glaucoscreen-usb.rules").read_text()
    mounts = re.findall(r"systemd-mount [^\n]*?(/\S+)-%k\"", rule)
    assert mounts and all(any(m.startswith(f"{root}/") for root in DEFAULT_ROOTS) for m in mounts)
    assert "--owner=glaucoscreen" in rule and 'ACTION=="remove"' in rule


# -- the boards' own packages, steps in order, GPIO, the kiosk screen (issue 24, items 4-7) ------------------

# Every package a unit install names, and the archive of the board's OS that has it. Debian bookworm's names
# were looked up with apt-cache on a Debian bookworm machine; Raspberry Pi's archive (archive.raspberrypi.com,
# bookworm), Ubuntu 22.04 (jammy) and NVIDIA's JetPack 6 archive (repo.download.nvidia.com/jetson, r36) from
# their package lists. A name added to the installer must be added here with where it comes from.
RASPBERRY_PI_OS_BOOKWORM = {
    "python3-venv": "Debian bookworm", "python3-dev": "Debian bookworm", "sqlite3": "Debian bookworm",
    "curl": "Debian bookworm", "libgl1": "Debian bookworm", "python3-numpy": "Debian bookworm (1.24.2)",
    "fonts-noto-core": "Debian bookworm (20201225-1: Noto Sans, Noto Sans Devanagari)",
    "python3-picamera2": "Raspberry Pi bookworm", "python3-lgpio": "Raspberry Pi bookworm",
    "chromium-browser": "Raspberry Pi bookworm (Raspberry Pi's Chromium build)",
}
JETPACK_6 = {
    "python3-venv": "Ubuntu jammy", "python3-dev": "Ubuntu jammy", "sqlite3": "Ubuntu jammy", "curl": "Ubuntu jammy",
    "libgl1": "Ubuntu jammy", "build-essential": "Ubuntu jammy", "python3-gi": "Ubuntu jammy",
    "fonts-noto-core": "Ubuntu jammy (20201225-1build1: Noto Sans, Noto Sans Devanagari)",
    "gir1.2-gstreamer-1.0": "Ubuntu jammy (GStreamer's Python binding: the Argus camera's live controls)",
    "gir1.2-gtk-3.0": "Ubuntu jammy", "gir1.2-webkit2-4.1": "Ubuntu jammy (WebKitGTK, security-updated)",
    "nvidia-l4t-gstreamer": "JetPack 6 (L4T r36, t234)", "python3-libnvinfer": "JetPack 6 (TensorRT)",
    "nvidia-jetpack": "JetPack 6 (the meta-package; brings CUDA's nvcc)",
}
# Ubuntu 22.04 has no Chromium (or Firefox) deb: these names install a snap, or nothing.
SNAP_ONLY_ON_JAMMY = {"chromium", "chromium-browser", "firefox"}


def packages(out: str) -> list[str]:
    names: list[str] = []
    for line in out.splitlines():
        if "apt-get install" in line:
            names += line.split("--no-install-recommends", 1)[1].split()
    return names


def steps(out: str) -> list[str]:
    return [line.split(". ", 1)[1] for line in out.splitlines() if line.startswith("== ")]


def index_of(lines: list[str], text: str) -> int:
    found = [i for i, line in enumerate(lines) if text in line]
    assert len(found) == 1, f"{text!r} appears {len(found)} times"
    return found[0]


def test_each_board_installs_only_packages_its_os_has():
    pi, jetson = packages(dry_run("pi")), packages(dry_run("jetson"))
    assert pi and set(pi) <= set(RASPBERRY_PI_OS_BOOKWORM), set(pi) - set(RASPBERRY_PI_OS_BOOKWORM)
    assert jetson and set(jetson) <= set(JETPACK_6), set(jetson) - set(JETPACK_6)
    assert not SNAP_ONLY_ON_JAMMY & set(jetson)
    assert {"python3-picamera2", "python3-lgpio", "python3-numpy"} <= set(pi)
    assert {"python3-libnvinfer", "nvidia-l4t-gstreamer", "gir1.2-webkit2-4.1"} <= set(jetson)


def test_the_installer_prints_its_steps_in_order_and_starts_the_units_last():
    pi, jetson = dry_run("pi"), dry_run("jetson")
    common = ["system packages", "service user", "Python environment", "device rules", "configuration"]
    for out, middle in ((pi, []), (jetson, ["TensorRT engines"])):
        titles = steps(out)
        expected = common + middle + ["kiosk screen", "systemd units, then start"]
        assert [next(t for t in titles if t.startswith(e)) for e in expected] == titles, titles
        lines = out.splitlines()
        start = index_of(lines, "systemctl enable --now glaucoscreen-kiosk.service")
        assert lines.index("== %d. %s" % (len(titles), titles[-1])) < start   # the start is in the last step
    lines = jetson.splitlines()
    assert index_of(lines, "glaucoscreen build-engines") < index_of(lines, "systemctl enable --now glaucoscreen-kiosk")


def test_pycuda_builds_with_cudas_nvcc_on_path():
    lines = dry_run("jetson").splitlines()
    pip = lines[index_of(lines, "pip install")]
    assert "PATH=/usr/local/cuda/bin:" in pip and "CUDA_ROOT=/usr/local/cuda" in pip and pip.endswith("[jetson]")
    # no nvcc (JetPack flashed without its SDK components): JetPack's own packages bring it, before pip
    assert index_of(lines, "test -x /usr/local/cuda/bin/nvcc || apt-get install") < index_of(lines, "pip install")


def test_jetson_gets_the_gpio_group_and_jetson_gpios_udev_rules_before_the_kiosk_starts():
    lines = dry_run("jetson").splitlines()
    start = index_of(lines, "systemctl enable --now glaucoscreen-kiosk.service")
    assert index_of(lines, "groupadd -f -r gpio") < index_of(lines, "usermod -aG gpio glaucoscreen") < start
    rules = lines[index_of(lines, "/etc/udev/rules.d/99-gpio.rules")]
    assert "Jetson/GPIO/99-gpio.rules" in rules                   # the file Jetson.GPIO ships, as NVIDIA says
    ours = index_of(lines, "/etc/udev/rules.d/90-glaucoscreen-gpio.rules")
    assert ours < index_of(lines, "udevadm trigger") < start
    assert 'KERNEL=="gpiochip*", GROUP="gpio"' in (REPO / "systemd" / "90-glaucoscreen-gpio.rules").read_text()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(Requirement(r).name == "Jetson.GPIO" for r in extras["jetson"])
    # every group the kiosk's unit asks for is made or joined first (systemd refuses to start it otherwise)
    for board in ("pi", "jetson"):
        out = dry_run(board)
        for group in unit_settings("glaucoscreen-kiosk.service")["SupplementaryGroups"][0].split():
            assert f"usermod -aG {group} glaucoscreen" in out


def test_the_venv_keeps_the_numpy_that_the_systems_compiled_modules_need():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = [Requirement(r) for r in project["dependencies"]]
    for extra, system_numpy in (("pi", "1.24.2"), ("jetson", "1.26.4")):
        wanted = base + [Requirement(r) for r in project["optional-dependencies"][extra]]
        numpy = SpecifierSet(",".join(str(r.specifier) for r in wanted if r.name == "numpy"))
        assert "2.0.0" not in numpy and system_numpy in numpy, (extra, numpy)
    assert "[pi]" in dry_run("pi")


def unit_settings(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (REPO / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_kiosk_unit_gives_lgpio_a_writable_directory_of_its_own():
    kiosk = unit_settings("glaucoscreen-kiosk.service")
    env = dict(e.split("=", 1) for e in kiosk["Environment"])
    (workdir,) = kiosk["WorkingDirectory"]
    assert env["LG_WD"] == workdir != "/"
    # a directory systemd makes for this service and hands to its user, every start
    made = [f"/run/{d}" for d in kiosk.get("RuntimeDirectory", [])] + [f"/var/lib/{d}" for d in kiosk.get("StateDirectory", [])]
    assert workdir in made
    assert kiosk["StateDirectory"] == ["glaucoscreen"]             # the data directory too
    for unit in sorted(p.name for p in (REPO / "systemd").glob("*.service")):
        assert unit_settings(unit).get("WorkingDirectory", ["/"])[0] != "/", unit


def test_no_system_service_runs_the_browser():
    units = sorted((REPO / "systemd").glob("*.service"))
    assert units and not (REPO / "systemd" / "glaucoscreen-browser.service").exists()
    for unit in units:
        execs = " ".join(unit_settings(unit.name).get("ExecStart", []) + unit_settings(unit.name).get("ExecStartPre", []))
        assert not re.search(r"chromium|webkit|glaucoscreen-browser", execs), unit.name
    for board in ("pi", "jetson"):
        assert not re.search(r"systemctl .*glaucoscreen-browser", dry_run(board, "--kiosk-user", "kiosk").replace(
            "disable --now glaucoscreen-browser", ""))


def test_the_browser_starts_in_the_pi_auto_login_users_desktop_session(tmp_path):
    (tmp_path / "etc" / "lightdm").mkdir(parents=True)
    (tmp_path / "etc" / "lightdm" / "lightdm.conf").write_text(
        "[Seat:*]\n#autologin-user=\nautologin-user=clinic\nuser-session=LXDE-pi-labwc\n")
    out = dry_run("pi", sysroot=tmp_path)
    launch = "/opt/glaucoscreen/bin/glaucoscreen-browser chromium"
    assert "kiosk screen in the desktop session of clinic" in out
    assert f"+ as clinic: append to /home/clinic/.config/labwc/autostart: {launch} &" in out        # labwc
    assert f"+ as clinic: in /home/clinic/.config/wayfire.ini [autostart]: glaucoscreen = {launch}" in out  # wayfire
    assert "+ as clinic: write /home/clinic/.config/autostart/glaucoscreen-browser.desktop" in out  # X11 (LXDE)
    assert f"|   Exec={launch}" in out
    assert "install -m 0755 " in out and "/opt/glaucoscreen/bin/glaucoscreen-browser\n" in out


def test_the_browser_starts_in_the_jetson_auto_login_users_gnome_session(tmp_path):
    (tmp_path / "etc" / "gdm3").mkdir(parents=True)
    (tmp_path / "etc" / "gdm3" / "custom.conf").write_text(
        "[daemon]\nAutomaticLoginEnable=True\nAutomaticLogin=nvidia\n\n[security]\n")
    out = dry_run("jetson", sysroot=tmp_path)
    assert "+ as nvidia: write /home/nvidia/.config/autostart/glaucoscreen-browser.desktop" in out
    assert "|   Exec=/opt/glaucoscreen/bin/glaucoscreen-browser webkit" in out
    assert "/opt/glaucoscreen/bin/glaucoscreen-webkit-kiosk" in out and "labwc" not in out


def test_without_an_auto_login_user_the_installer_says_how_to_get_one(tmp_path):
    (tmp_path / "etc" / "gdm3").mkdir(parents=True)
    (tmp_path / "etc" / "gdm3" / "custom.conf").write_text("[daemon]\n#AutomaticLoginEnable=True\nAutomaticLogin=nvidia\n")
    errors: list[str] = []
    out = dry_run("jetson", sysroot=tmp_path, stderr=errors)
    assert "+ as " not in out and "no auto-login user found" in errors[0] and "--kiosk-user" in errors[0]
    out = dry_run("pi", "--kiosk-user", "screen", sysroot=tmp_path)   # or the installer is told
    assert "/home/screen/.config/labwc/autostart" in out


def test_the_installer_refuses_an_unknown_board():
    out = subprocess.run(["bash", str(REPO / "install.sh"), "--dry-run", "--board", "pi4"], capture_output=True, text=True)
    assert out.returncode == 2 and "--board" in out.stderr


@pytest.fixture
def fake_desktop(tmp_path):
    """A session's environment for the launcher, with a stand-in Chromium that notes how it was started."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text("#!/bin/sh\nexit 0\n")      # the kiosk answers /healthz
    (bin_dir / "chromium-browser").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/args.$$\nexec sleep 60\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path)}
    started: list[subprocess.Popen] = []

    def launch(**session: str) -> subprocess.Popen:
        proc = subprocess.Popen([str(REPO / "systemd" / "glaucoscreen-browser"), "chromium", "http://127.0.0.1:8080/"],
                                env={**env, **session}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        started.append(proc)
        return proc

    yield launch, tmp_path
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def browser_args(folder: Path) -> list[str]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = list(folder.glob("args.*"))
        if found and found[0].read_text():
            return found[0].read_text().split()
        time.sleep(0.1)
    raise AssertionError("the browser was not started")


def test_the_launcher_shows_the_kiosk_full_screen_on_the_sessions_display(fake_desktop):
    launch, folder = fake_desktop
    launch(WAYLAND_DISPLAY="wayland-0")
    args = browser_args(folder)
    assert "--kiosk" in args and args[-1] == "http://127.0.0.1:8080/" and "--ozone-platform=wayland" in args
    # a second autostart of the same session (labwc's and XDG's both) starts no second browser
    again = launch(WAYLAND_DISPLAY="wayland-0")
    assert again.wait(timeout=10) == 0 and len(list(folder.glob("args.*"))) == 1


def test_the_launcher_uses_x11_under_an_x_session_and_refuses_without_a_display(fake_desktop):
    launch, folder = fake_desktop
    launch(DISPLAY=":0")
    assert "--ozone-platform=x11" in browser_args(folder)
    outside = launch()                                             # as a system service would run it
    assert outside.wait(timeout=10) == 1 and "no WAYLAND_DISPLAY or DISPLAY" in outside.stderr.read()


def test_the_jetson_kiosk_window_is_python_the_system_can_run():
    source = (REPO / "systemd" / "glaucoscreen-webkit-kiosk").read_text()
    compile(source, "glaucoscreen-webkit-kiosk", "exec")
    assert source.startswith("#!/usr/bin/python3\n")             # the system's Python, which has python3-gi
    assert 'require_version("WebKit2", "4.1")' in source          # gir1.2-webkit2-4.1, which the installer installs
