"""The power-cut trials of the visit log (device/lab/visit_trials.py): writers SIGKILLed at seeded
points lose, tear and duplicate nothing and leave nothing behind; and the checker that says so does
see each of those when it is there. The full count runs as `glaucoscreen trials visits --trials 200`."""
from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from device.lab.trials import COUNTS
from device.lab.visit_trials import TrialRecord, Trials, Unit, carry_out, plan
from device.visits.visitlog import VisitLog

REPO = Path(__file__).resolve().parents[3]
ZERO = dict.fromkeys(COUNTS, 0)


def test_writers_killed_at_seeded_points_lose_tear_and_duplicate_nothing(tmp_path):
    trials = Trials(tmp_path, random.Random(20250602))
    out = trials.run(14)
    assert {k: out[k] for k in COUNTS} == ZERO, out["problems"]
    assert out["trials"] == 14 and out["problems"] == []
    # the kills did land in the middle of things: inside calls of several kinds, and in visits
    assert len(set(out["kills"]) - {"idle"}) >= 3, out["kills"]
    assert out["visits_finished"] > 0 and out["visits_unfinished"] > 0, out
    assert out["seconds_per_trial"]["p50"] < 2.0, out["seconds_per_trial"]


# -- the checker sees what it counts ---------------------------------------------------------------
@pytest.fixture
def finished_unit(tmp_path):
    """A unit whose log holds a whole trial's plan (three finished visits), carried out without a kill."""
    trials = Trials(tmp_path, random.Random(1))
    seed = next(s for s in range(1000) if _fits(plan(0, s, trials.samples)))
    ops = plan(0, seed, trials.samples)
    unit = Unit(tmp_path / "unit")
    with VisitLog(unit.data_dir) as log:
        carry_out(log, ops, trials.samples)
    unit.trials.append(TrialRecord(0, seed, ops, committed=len(ops)))
    trials.units.append(unit)
    trials.check(unit, hash_all=True)
    assert trials.counts() == ZERO, trials.notes
    yield trials, unit
    trials.close()


def _fits(ops) -> bool:
    """Three visits, all finished, each eye with a photo and a result with its masks."""
    kinds = [op.kind for op in ops]
    return (kinds.count("finish") == 3 and "skip" not in kinds
            and all(op.masks >= 0 for op in ops if op.kind == "result"))


def _db(unit: Unit):
    return sqlite3.connect(unit.data_dir / "visits.db", isolation_level=None)


def _last_visit(unit: Unit) -> str:
    with _db(unit) as db:
        return db.execute("SELECT uuid FROM visits ORDER BY rowid DESC LIMIT 1").fetchone()[0]


def _image(unit: Unit, sql: str) -> Path:
    with _db(unit) as db:
        sha = db.execute(sql).fetchone()[0]
    return unit.data_dir / "images" / sha[:2] / sha


def _unfinish_last_visit(unit: Unit) -> None:  # the finish the writer reported is gone
    uuid = _last_visit(unit)
    with _db(unit) as db:
        db.execute("DELETE FROM outbox WHERE visit_uuid = ?", (uuid,))
        db.execute("UPDATE visits SET status = 'open', finished_at = NULL WHERE uuid = ?", (uuid,))


def _drop_outbox_of_last_visit(unit: Unit) -> None:  # finished, but nothing to send
    with _db(unit) as db:
        db.execute("DELETE FROM outbox WHERE visit_uuid = ?", (_last_visit(unit),))


def _damage_a_photo(unit: Unit) -> None:
    path = _image(unit, "SELECT photo_sha256 FROM captures ORDER BY id LIMIT 1")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _remove_an_overlay(unit: Unit) -> None:
    _image(unit, "SELECT overlay_sha256 FROM results ORDER BY id LIMIT 1").unlink()


def _capture_twice(unit: Unit) -> None:
    with _db(unit) as db:
        db.execute("""INSERT INTO captures (visit_uuid, eye, photo_sha256, quality, source, captured_at)
                      SELECT visit_uuid, eye, photo_sha256, quality, source, captured_at FROM captures ORDER BY id LIMIT 1""")


def _a_photo_no_plan_has(unit: Unit) -> None:
    with _db(unit) as db:
        db.execute("""INSERT INTO captures (visit_uuid, eye, photo_sha256, quality, source, captured_at)
                      SELECT visit_uuid, eye, ?, quality, source, captured_at FROM captures ORDER BY id LIMIT 1""", ("ab" * 32,))


def _a_patient_no_plan_has(unit: Unit) -> None:
    with _db(unit) as db:
        db.execute("INSERT INTO patients (identifier, consent, created_at) VALUES ('STRAY-1', 0, '2025-01-01T00:00:00.000+00:00')")


def _a_stray_file_in_the_store(unit: Unit) -> None:
    (unit.data_dir / "images" / "zz").mkdir()
    (unit.data_dir / "images" / "zz" / "notes.txt").write_text("left by someone")


def _an_interrupted_write(unit: Unit) -> None:  # a temp file of a killed put: recovery sweeps it
    folder = next(p for p in (unit.data_dir / "images").iterdir() if p.is_dir())
    (folder / f".{folder.name}0123456789.x1y2.tmp").write_bytes(b"half a photo")


@pytest.mark.parametrize("damage, expected", [
    (_unfinish_last_visit, {"lost": 1}),
    (_drop_outbox_of_last_visit, {"torn": 1}),
    (_damage_a_photo, {"torn": 1}),
    (_remove_an_overlay, {"torn": 1}),
    (_capture_twice, {"duplicated": 1, "torn": 1}),  # the copy is now the eye's latest photo, without a result
    (_a_photo_no_plan_has, {"duplicated": 1, "torn": 1}),  # counted once, with its visit
    (_a_patient_no_plan_has, {"duplicated": 1}),
    (_a_stray_file_in_the_store, {"leftovers": 1}),
    (_an_interrupted_write, {}),
])
def test_the_checker_counts_each_kind_of_damage(finished_unit, damage, expected):
    trials, unit = finished_unit
    damage(unit)
    trials.check(unit, hash_all=True)
    assert trials.counts() == {**ZERO, **expected}, trials.notes
    assert bool(trials.notes) == bool(expected)


def test_a_partial_plan_is_whole_up_to_where_it_stopped(finished_unit):
    """A trial killed after call N: N or N + 1 calls in the log is whole; fewer than N is lost."""
    trials, unit = finished_unit
    record = unit.trials[0]
    unit.trials = []
    cut = next(i for i, op in enumerate(record.ops) if op.kind == "finish")  # the first visit, short of its finish
    (unit.data_dir / "visits.db").unlink()
    for extra in ("-wal", "-shm"):
        (unit.data_dir / f"visits.db{extra}").unlink(missing_ok=True)
    with VisitLog(unit.data_dir) as log:
        carry_out(log, record.ops[:cut], trials.samples)
    current = TrialRecord(1, record.seed, record.ops, committed=cut - 1)  # the last call stored but not reported
    assert trials.check(unit, current=current).committed == cut
    assert trials.counts() == ZERO, trials.notes
    current = TrialRecord(2, record.seed, record.ops, committed=cut + 1)  # a reported finish that is not there
    trials.check(unit, current=current)
    assert trials.counts() == {**ZERO, "lost": 1}


# -- the command -------------------------------------------------------------------------------
def test_glaucoscreen_trials_visits_prints_one_line_and_writes_the_counts(tmp_path):
    out = tmp_path / "visits.json"
    done = subprocess.run([sys.executable, "-m", "device.cli", "trials", "visits", "--trials", "5", "--seed", "7",
                           "--json-out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("visit trials: 5 trials, 0 lost, 0 torn, 0 duplicated, 0 leftovers")
    report = json.loads(out.read_text())
    assert {k: report[k] for k in ("trials", *COUNTS)} == {"trials": 5, **ZERO}
    assert report["seed"] == 7


@pytest.mark.orthanc
@pytest.mark.slow
def test_glaucoscreen_trials_sync_prints_one_line_and_writes_the_counts(tmp_path, shared_data):
    """The sync trials start their own Orthanc (on 127.0.0.1, DICOM off) and proxy. Run as the README says,
    through the installed `glaucoscreen` script, whose import path does not hold the checkout's root."""
    out = tmp_path / "sync.json"
    glaucoscreen = str(Path(sys.executable).with_name("glaucoscreen"))
    done = subprocess.run([glaucoscreen, "trials", "sync", "--trials", "3", "--seed", "7",
                           "--throughput-visits", "0", "--data", str(shared_data), "--json-out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sync trials: 3 trials, 0 lost, 0 torn, 0 duplicated, 0 leftovers")
    report = json.loads(out.read_text())
    assert {k: report[k] for k in ("trials", *COUNTS)} == {"trials": 3, **ZERO}
    assert report["eyes_sent"] == report["eyes_created"] > 0


def test_trials_without_a_kind_names_the_kinds(capsys):
    from device.cli import main

    with pytest.raises(SystemExit) as done:
        main(["trials"])
    assert done.value.code == 2
    assert "visits" in capsys.readouterr().err
