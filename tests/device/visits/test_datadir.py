"""The data directory's layout is named once, in DataDir: the kiosk, the sync service and the command
are separate processes that meet only in these files, so a name spelled out anywhere else could drift
apart from it unnoticed."""
from __future__ import annotations

import ast
from pathlib import Path

from device.accounts import accounts_path
from device.config import overrides_path, read_overrides, write_overrides
from device.visits.datadir import DataDir
from device.visits.visitlog import VisitLog

REPO = Path(__file__).resolve().parents[3]
FILE_NAMES = ("visits.db", "accounts.db", "settings-overrides.toml", "sync.lock", "calibration.json")


def test_the_layout(tmp_path):
    d = DataDir(tmp_path)
    assert d.root == tmp_path and DataDir(str(tmp_path)) == d
    assert d.visits_db == tmp_path / "visits.db"
    assert d.images == tmp_path / "images"
    assert d.accounts_db == tmp_path / "accounts.db"
    assert d.settings_overrides == tmp_path / "settings-overrides.toml"
    assert d.engines == tmp_path / "engines"
    assert d.sync_lock == tmp_path / "sync.lock"
    assert d.models == tmp_path / "installed-models"
    assert d.calibration == tmp_path / "calibration.json"
    assert DataDir.names() == {"visits_db": "visits.db", "images": "images", "accounts_db": "accounts.db",
                               "settings_overrides": "settings-overrides.toml", "engines": "engines",
                               "sync_lock": "sync.lock", "models": "installed-models", "calibration": "calibration.json"}
    assert {name: getattr(d, prop) for prop, name in DataDir.names().items()} == \
        {name: tmp_path / name for name in DataDir.names().values()}


def test_the_owners_use_it(tmp_path):
    d = DataDir(tmp_path)
    assert overrides_path(tmp_path) == d.settings_overrides
    assert accounts_path(tmp_path) == d.accounts_db
    with VisitLog(tmp_path) as visits:
        assert visits.files == d and Path(visits.images.root) == d.images
        assert d.visits_db.is_file()
        assert d.visits_db in d.visits_db_files()
        assert all(p.name.startswith("visits.db") for p in d.visits_db_files())
    assert write_overrides(tmp_path, {"quality": {"min_focus": 7.0}}) == d.settings_overrides
    assert read_overrides(tmp_path) == {"quality": {"min_focus": 7.0}}


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def spelled_out(path: Path) -> list[str]:
    """Each string in the code (docstrings aside: they may describe the layout) that names one of the data
    directory's files, and each `something / "name"` of any entry of the layout."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = _docstrings(tree)
    entries = set(DataDir.names().values())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found += [f"{path.name}:{node.lineno}: {name!r}" for name in FILE_NAMES if name in node.value]
        if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant)
                and node.right.value in entries):
            found.append(f"{path.name}:{node.lineno}: / {node.right.value!r}")
    return found


def test_no_other_place_spells_out_the_layout():
    device = REPO / "device"
    sources = [p for p in device.rglob("*.py")
               if p.name != "datadir.py" and "lab" not in p.relative_to(device).parts]
    assert len(sources) > 20
    offenders = [hit for p in sources for hit in spelled_out(p)]
    assert not offenders, "name these through device.visits.datadir.DataDir:\n" + "\n".join(offenders)


def test_the_scan_would_find_one(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""Docstrings may name visits.db."""\nfrom pathlib import Path\n\n'
                      'def f(d):\n    return Path(d) / "engines", f"{d}/sync.lock"\n')
    assert [h.split(": ", 1)[1] for h in spelled_out(sample)] == ["/ 'engines'", "'sync.lock'"]
