"""The house's rules, checked on the code itself: the arrows point one way (hardware, models and
calibration never import the appliance), the appliance never imports its lab, and `device/` keeps
its rooms (a handful of modules at the top, the rest in the rooms that follow the data)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from device.cli import LAB_TRIALS, main

REPO = Path(__file__).resolve().parent.parent
IMPORT = re.compile(r"^\s*(?:from|import)\s+([\w.]+)", re.M)
ROOMS = {"capture", "screening", "visits", "outbox", "kiosk", "reading_centre", "lab"}


def imports_of(path: Path) -> set[str]:
    return set(IMPORT.findall(path.read_text()))


@pytest.mark.parametrize("package", ["hardware", "models", "calibration"])
def test_the_lower_floors_never_import_the_appliance(package):
    offenders = {str(p.relative_to(REPO)): sorted(m for m in imports_of(p) if m == "device" or m.startswith("device."))
                 for p in (REPO / package).rglob("*.py")}
    assert not {p: m for p, m in offenders.items() if m}


def test_the_appliance_never_imports_its_lab():
    """Only the command's lab subcommands open the lab, inside their own functions; nothing else does."""
    cli = REPO / "device" / "cli.py"
    offenders = {str(p.relative_to(REPO)): sorted(m for m in imports_of(p) if m.startswith("device.lab"))
                 for p in (REPO / "device").rglob("*.py")
                 if "lab" not in p.relative_to(REPO / "device").parts and p != cli}
    assert not {p: m for p, m in offenders.items() if m}
    top_level = re.findall(r"^(?:from|import)\s+device\.lab", cli.read_text(), re.M)
    assert not top_level, "device/cli.py imports the lab only inside the subcommands that need it"


def test_device_keeps_its_rooms():
    top = sorted(p.name for p in (REPO / "device").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 6, top
    rooms = {p.name for p in (REPO / "device").iterdir() if (p / "__init__.py").exists()}
    assert rooms == ROOMS
    assert not list((REPO / "device").glob("**/export.py")), "one name per job: USB export is outbox/usb.py"


@pytest.mark.parametrize("name, module", [(n, m) for n, m, _ in LAB_TRIALS])
def test_lab_tools_are_reached_through_the_command(name, module, capsys):
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    assert f"device.lab.{module}" in capsys.readouterr().out


def test_every_silenced_lint_says_why():
    """A `# noqa` without a reason hides a decision from the next reader; each one names its code and why."""
    bare = re.compile(r"#\s*noqa(?::\s*[A-Z]+\d+(?:,\s*[A-Z]+\d+)*)?\s*$")
    offenders = [f"{p.relative_to(REPO)}:{n}" for top in ("device", "hardware", "models", "calibration", "tests")
                 for p in (REPO / top).rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1) if bare.search(line)]
    assert not offenders
