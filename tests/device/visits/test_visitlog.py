"""The visit log on real SQLite files: pragmas, migrations, the visit flow, the outbox, recovery after
crashes and the disk-full guard. Writers killed with SIGKILL at seeded points are the power-cut trials'
(device/lab/visit_trials.py, tests/device/lab/test_visit_trials.py)."""
from __future__ import annotations

import datetime as dt
import random
import sqlite3
import threading

import cv2
import numpy as np
import pytest

from device.visits import migrations
from device.visits.visitlog import OUTBOX_KIND, DatabaseCorruptError, DiskFullError, VisitLog

T0 = dt.datetime(2025, 3, 4, 9, 30, tzinfo=dt.timezone.utc)


class Clock:
    """A settable clock, so visits can be placed on chosen days."""

    def __init__(self, t: dt.datetime = T0):
        self.t = t

    def __call__(self) -> dt.datetime:
        return self.t


def _jpeg(seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", rgb)[1].tobytes()


def _png(seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    return cv2.imencode(".png", rgb)[1].tobytes()


def _result(vcdr: float | None = 0.45, probability: float | None = 0.12, referral: str = "normal", gradable: bool = True) -> dict:
    return {"gradable": gradable, "vcdr": vcdr, "glaucoma_probability": probability, "referral": referral,
            "disc": {"cx": 120.0, "cy": 130.0, "diameter": 80.0}, "cup": {"diameter": 36.0},
            "model_versions": {"segmentation": "mtl-1.0", "referral": "op-90spec"}, "quality": {"focus": 0.9}}


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def log(tmp_path, clock):
    with VisitLog(tmp_path / "data", clock=clock) as v:
        yield v


def _screen_eye(log: VisitLog, visit: str, eye: str, seed: int, **result) -> tuple[int, int]:
    capture = log.add_capture(visit, eye, _jpeg(seed), quality={"gradable": True, "focus": 0.9})
    return capture, log.add_result(capture, _result(**result), overlay=_png(seed))


# -- storage settings and schema ----------------------------------------------------------------
def test_pragmas_in_effect(log):
    assert log.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert log.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert log.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced, not just declared
        log.db.execute("INSERT INTO captures (visit_uuid, eye, photo_sha256, quality, source, captured_at) "
                       "VALUES ('no-such-visit', 'right', 'x', '{}', 'camera', 'now')")


def test_migrates_an_empty_file_and_reopening_is_a_no_op(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "visits.db").write_bytes(b"")
    with VisitLog(data) as v:
        assert v.schema_version == len(migrations.MIGRATIONS) >= 2
        assert {"patients", "visits", "captures", "results", "skipped_eyes", "outbox", "outbox_attempts"} <= set(v.db.table_names())
        v.add_patient("P-1")
        schema = v.db.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    with VisitLog(data) as v:
        assert v.schema_version == len(migrations.MIGRATIONS)
        assert v.db.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema
        assert v.get_patient("P-1") is not None


def test_migrate_runs_each_migration_once_and_a_failed_one_changes_nothing(tmp_path):
    import sqlite_utils

    calls = []

    def m1(db):
        calls.append(1)
        db.execute("CREATE TABLE a (x)")

    def m2_broken(db):
        db.execute("CREATE TABLE b (x)")
        raise RuntimeError("migration bug")

    db = sqlite_utils.Database(sqlite3.connect(tmp_path / "m.db"))
    assert migrations.migrate(db, [m1]) == 1
    assert migrations.migrate(db, [m1]) == 1
    assert calls == [1]
    with pytest.raises(RuntimeError, match="migration bug"):
        migrations.migrate(db, [m1, m2_broken])
    assert migrations.schema_version(db) == 1 and "b" not in db.table_names()
    db.execute("PRAGMA user_version = 5")
    with pytest.raises(RuntimeError, match="newer than this software knows"):
        migrations.migrate(db, [m1])


# -- patients -----------------------------------------------------------------------------------
def test_patients_register_find_and_reject_duplicates(log):
    asha = log.add_patient(" KX-0042 ", name="Asha Devi", year_of_birth=1958, sex="female", consent=True)
    assert asha["identifier"] == "KX-0042" and asha["sex"] == "F" and asha["consent"] is True
    log.add_patient("KX-0107", name="Ravi Kumar", sex="M")
    log.add_patient("ZA-9", name="Kumari Devi")
    with pytest.raises(ValueError, match="already registered"):
        log.add_patient("kx-0042")
    with pytest.raises(ValueError, match="needs an identifier"):
        log.add_patient("   ")
    with pytest.raises(ValueError, match="year of birth"):
        log.add_patient("KX-1", year_of_birth=1850)
    with pytest.raises(ValueError, match="female, male or other"):
        log.add_patient("KX-2", sex="x")
    assert [p["identifier"] for p in log.find_patients("kx-01")] == ["KX-0107"]
    assert [p["identifier"] for p in log.find_patients("DEVI")] == ["KX-0042", "ZA-9"]
    assert [p["identifier"] for p in log.find_patients("kumar")] == ["KX-0107", "ZA-9"]
    assert log.find_patients("%") == []  # a wildcard typed by a worker is a character, not "everything"
    assert log.get_patient("kx-0042")["name"] == "Asha Devi"
    assert log.get_patient("nobody") is None


def test_search_finds_a_name_without_its_accents_or_case(log):
    log.add_patient("VN-1", name="Nguyễn Thị Ánh")
    log.add_patient("DE-2", name="Jürgen Müßig")
    log.add_patient("IN-3", name="अनिता देवी")
    for typed in ("Nguyen", "anh", "NGUYỄN THỊ", "thi anh"):
        assert [p["identifier"] for p in log.find_patients(typed)] == ["VN-1"], typed
    assert [p["identifier"] for p in log.find_patients("jurgen mussig")] == ["DE-2"]  # ß folds to ss
    assert [p["identifier"] for p in log.find_patients("देवी")] == ["IN-3"]  # a script without case still matches
    assert log.find_patients("Nguyen Anh") == []  # words are found as typed, not in any order
    assert log.find_patients("_guyen") == []  # a typed wildcard is still a character


# -- visits -------------------------------------------------------------------------------------
def test_full_visit_flow(log, clock):
    log.add_patient("KX-0042")
    visit = log.start_visit("KX-0042", operator="worker-3", device_id="unit-7")
    assert dt.datetime.fromisoformat(log.get_visit(visit)["started_at"]) == T0
    right = _screen_eye(log, visit, "right", 1, vcdr=0.62, probability=0.71, referral="refer")
    left = _screen_eye(log, visit, "left", 2, vcdr=0.35, probability=0.08)
    clock.t = T0 + dt.timedelta(minutes=3)
    v = log.get_visit(visit)
    assert v["status"] == "open" and v["finished_at"] is None
    assert v["patient"]["identifier"] == "KX-0042" and v["operator"] == "worker-3" and v["device_id"] == "unit-7"
    r = v["eyes"]["right"]
    assert (r["capture"]["id"], r["result"]["id"]) == right
    assert (r["result"]["vcdr"], r["result"]["glaucoma_probability"], r["result"]["referral"], r["result"]["gradable"]) == (0.62, 0.71, "refer", True)
    assert r["result"]["screening"] == _result(vcdr=0.62, probability=0.71, referral="refer")
    assert log.images.get(r["capture"]["photo_sha256"]) == _jpeg(1)
    assert log.images.get(r["result"]["overlay_sha256"]) == _png(1)
    assert v["eyes"]["left"]["result"]["vcdr"] == 0.35

    ids = log.finalize_visit(visit)
    v = log.get_visit(visit)
    assert v["status"] == "finished" and dt.datetime.fromisoformat(v["finished_at"]) == clock.t
    items = log.outbox_pending()
    assert [i["id"] for i in items] == ids and len(ids) == 2
    assert [(i["eye"], i["kind"], i["capture_id"], i["result_id"]) for i in items] == [
        ("right", OUTBOX_KIND, *right), ("left", OUTBOX_KIND, *left)]
    with pytest.raises(ValueError, match="already finished"):
        log.add_capture(visit, "right", _jpeg(3), quality={})


def test_bad_input_gets_a_clear_message(log):
    log.add_patient("P")
    visit = log.start_visit("P")
    with pytest.raises(ValueError, match="'right' or 'left'"):
        log.add_capture(visit, "OD", _jpeg(1), quality={})
    with pytest.raises(ValueError, match="JPEG"):
        log.add_capture(visit, "right", _png(1), quality={})
    with pytest.raises(LookupError, match="no visit"):
        log.add_capture("0000", "right", _jpeg(1), quality={})
    with pytest.raises(LookupError, match="register the patient first"):
        log.start_visit("nobody")
    capture = log.add_capture(visit, "right", _jpeg(1), quality={"focus": np.float32(0.5)})
    with pytest.raises(ValueError, match="lacks referral"):
        log.add_result(capture, {"gradable": True})
    with pytest.raises(ValueError, match="out of range"):
        log.add_result(capture, _result(vcdr=float("nan")))
    log.add_result(capture, _result(vcdr=np.float32(0.5)))
    with pytest.raises(ValueError, match="already has a result"):
        log.add_result(capture, _result())
    with pytest.raises(ValueError, match="needs a reason"):
        log.skip_eye(visit, "left", " ")
    assert log.get_visit(visit)["eyes"]["right"]["result"]["vcdr"] == 0.5


def test_finalize_is_one_transaction_and_idempotent(log):
    log.add_patient("P")
    visit = log.start_visit("P")
    _screen_eye(log, visit, "right", 1)
    _screen_eye(log, visit, "left", 2)
    # A real failure in the middle of finalizing: the second outbox row is refused by the database.
    log.db.execute("""CREATE TRIGGER refuse_left BEFORE INSERT ON outbox WHEN NEW.eye = 'left'
                      BEGIN SELECT RAISE(ABORT, 'disk gone'); END""")
    with pytest.raises(sqlite3.IntegrityError, match="disk gone"):
        log.finalize_visit(visit)
    assert log.get_visit(visit)["status"] == "open"
    assert log.outbox_counts() == {"pending": 0, "sent": 0, "quarantined": 0}
    log.db.execute("DROP TRIGGER refuse_left")

    ids = log.finalize_visit(visit)
    assert len(ids) == 2
    assert log.finalize_visit(visit) == ids
    assert log.outbox_counts()["pending"] == 2
    assert log.db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 2


def test_retakes_and_skips_the_latest_action_counts(log):
    log.add_patient("P")
    visit = log.start_visit("P")
    first, _ = _screen_eye(log, visit, "right", 1, vcdr=0.8)
    retake, _ = _screen_eye(log, visit, "right", 2, vcdr=0.5)
    unscreened_retake = log.add_capture(visit, "left", _jpeg(3), quality={})
    log.add_result(unscreened_retake, _result(gradable=False, vcdr=None, probability=None, referral="rescreen"))
    newest_left = log.add_capture(visit, "left", _jpeg(4), quality={})  # no result yet
    right = log.get_visit(visit)["eyes"]["right"]
    assert right["captures"] == 2 and right["capture"]["id"] == retake != first and right["result"]["vcdr"] == 0.5
    left = log.get_visit(visit)["eyes"]["left"]
    assert left["captures"] == 2 and left["capture"]["id"] == newest_left and left["result"] is None

    log.skip_eye(visit, "right", "patient declined")
    assert log.get_visit(visit)["eyes"]["right"]["skipped"] == "patient declined"
    log.skip_eye(visit, "left", "eye prosthesis")
    log.add_capture(visit, "left", _jpeg(5), quality={})  # trying the eye again clears its skip
    assert log.get_visit(visit)["eyes"]["left"]["skipped"] is None
    log.skip_eye(visit, "right", "patient declined the flash")
    assert log.finalize_visit(visit) == []  # right skipped, left's latest photo has no result


def test_eye_history_is_oldest_first_and_only_finished_screened_visits(log, clock):
    log.add_patient("P")
    log.add_patient("Q")
    expected = []
    for day, vcdr in ((30, 0.52), (2, 0.41), (15, 0.47)):  # entered out of order
        clock.t = T0 + dt.timedelta(days=day)
        visit = log.start_visit("P")
        capture, _ = _screen_eye(log, visit, "right", day, vcdr=vcdr)
        _screen_eye(log, visit, "left", 100 + day, vcdr=0.3)
        log.finalize_visit(visit)
        expected.append((clock.t, vcdr, capture))
    clock.t = T0 + dt.timedelta(days=40)
    skipped = log.start_visit("P")
    log.skip_eye(skipped, "right", "prosthesis")
    _screen_eye(log, skipped, "left", 7, vcdr=0.3)
    log.finalize_visit(skipped)
    _screen_eye(log, log.start_visit("P"), "right", 8, vcdr=0.9)  # still open
    other = log.start_visit("Q")
    _screen_eye(log, other, "right", 9, vcdr=0.7)
    log.finalize_visit(other)

    history = log.eye_history("P", "right")
    assert [(dt.datetime.fromisoformat(h["time"]), h["vcdr"], h["capture_id"]) for h in history] == sorted(expected)
    assert all(log.images.has(h["photo_sha256"]) and h["referral"] == "normal" for h in history)
    assert [h["vcdr"] for h in log.eye_history("P", "left")] == [0.3] * 4


def test_visits_for_patient_and_visits_on_a_day(log, clock):
    log.add_patient("P")
    log.add_patient("Q")
    started = {}
    for name, offset in (("a", dt.timedelta(0)), ("b", dt.timedelta(hours=5)), ("c", dt.timedelta(days=1))):
        clock.t = T0 + offset
        started[name] = log.start_visit("P")
    log.start_visit("Q")
    assert [v["uuid"] for v in log.visits_for_patient("P")] == [started["c"], started["b"], started["a"]]
    day = [v["uuid"] for v in log.visits_on(T0.date(), tz=dt.timezone.utc)]
    assert day == [started["a"], started["b"]]
    ahead = dt.timezone(dt.timedelta(hours=14))  # 09:30 UTC is 23:30 there, 14:30 is the next day
    assert [v["uuid"] for v in log.visits_on(T0.date(), tz=ahead)] == [started["a"]]
    with pytest.raises(LookupError):
        log.visits_for_patient("nobody")


# -- outbox -------------------------------------------------------------------------------------
def test_outbox_retry_quarantine_and_send(log, clock):
    log.add_patient("P")
    ids = []
    for seed in (1, 2):
        visit = log.start_visit("P")
        _screen_eye(log, visit, "right", seed)
        ids += log.finalize_visit(visit)
    first, second = ids
    later = T0 + dt.timedelta(minutes=5)
    log.outbox_mark_failed(first, "connection refused", next_attempt_at=later)
    item = log.outbox_pending()[0]
    assert (item["id"], item["attempts"], item["last_error"], item["status"]) == (first, 1, "connection refused", "pending")
    assert [i["id"] for i in log.outbox_pending(now=T0)] == [second]  # not due yet; never blocks the queue
    assert [i["id"] for i in log.outbox_pending(now=later)] == [first, second]

    log.outbox_mark_failed(first, "400 Bad Request: invalid dataset", quarantine=True)
    assert [i["id"] for i in log.outbox_pending()] == [second]
    log.outbox_mark_sent(second, response="200 OK")
    assert log.outbox_counts() == {"pending": 0, "sent": 1, "quarantined": 1}
    with pytest.raises(ValueError, match="already sent"):
        log.outbox_mark_failed(second, "late")
    assert [(a["outcome"], a["error"]) for a in log.outbox_attempts(first)] == [
        ("failed", "connection refused"), ("quarantined", "400 Bad Request: invalid dataset")]
    log.outbox_mark_failed(first, "still 400")  # a manual retry that fails again stays quarantined
    assert log.outbox_counts()["quarantined"] == 1
    log.outbox_requeue(first)
    assert [i["id"] for i in log.outbox_pending()] == [first]
    with pytest.raises(LookupError):
        log.outbox_mark_sent(999)


# -- disk and recovery --------------------------------------------------------------------------
def test_start_visit_refuses_when_the_disk_is_nearly_full(tmp_path):
    with VisitLog(tmp_path, min_free_bytes=2**62) as v:
        v.add_patient("P")
        with pytest.raises(DiskFullError) as err:
            v.start_visit("P")
        message = str(err.value)
        assert "MiB free" in message and "MiB needed" in message and str(tmp_path) in message
        assert err.value.needed == 2**62 and 0 < err.value.free < 2**62
        assert v.visits_for_patient("P") == []


def test_an_image_put_whose_row_never_committed_is_swept_by_recover(log):
    log.add_patient("P")
    visit = log.start_visit("P")
    kept, _ = _screen_eye(log, visit, "right", 1)
    orphan = log.images.put(_jpeg(2))  # the crash came before the capture row was committed
    leftover = log.images.root / orphan[:2] / f".{orphan[:12]}.abc.tmp"
    leftover.write_bytes(b"\xff\xd8 half a photo")
    report = log.recover()
    assert report == {"integrity": "ok", "interrupted": 0, "orphans_removed": 2, "missing_images": 0}
    assert not log.images.has(orphan) and not leftover.exists()
    eye = log.get_visit(visit)["eyes"]["right"]
    assert log.images.has(eye["capture"]["photo_sha256"]) and log.images.has(eye["result"]["overlay_sha256"])
    assert eye["capture"]["id"] == kept


def test_recover_interrupts_stale_open_visits(log, clock):
    log.add_patient("P")
    old = log.start_visit("P")
    done = log.start_visit("P")
    log.finalize_visit(done)
    clock.t = T0 + dt.timedelta(hours=10)
    recent = log.start_visit("P")
    assert log.recover(stale_after=6)["interrupted"] == 1
    assert [log.get_visit(u)["status"] for u in (old, done, recent)] == ["interrupted", "finished", "open"]
    assert log.recover(stale_after=0)["interrupted"] == 1
    assert log.get_visit(recent)["status"] == "interrupted"


def test_recover_refuses_a_damaged_database(tmp_path):
    with VisitLog(tmp_path) as v:
        with v.db.atomic():
            v.db["patients"].insert_all({"identifier": f"P{i:04d}", "name": "x" * 300, "consent": 0,
                                         "created_at": "2025-01-01T00:00:00.000+00:00"} for i in range(200))
        root = v.db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'patients'").fetchone()[0]
        page = v.db.execute("PRAGMA page_size").fetchone()[0]
    with open(tmp_path / "visits.db", "r+b") as f:  # a power cut on a bad SD card: a page of garbage
        f.seek((root - 1) * page)
        f.write(bytes(random.Random(1).randrange(256) for _ in range(page)))
    with VisitLog(tmp_path) as v:
        with pytest.raises(DatabaseCorruptError, match="damaged.*restore"):
            v.recover()
    with open(tmp_path / "visits.db", "r+b") as f:  # the first page too: the file is no database any more
        f.write(bytes(page))
    with pytest.raises(DatabaseCorruptError, match="damaged.*restore"):
        VisitLog(tmp_path)


def test_threads_share_one_log(log):
    """The kiosk's request threads and the capture loop write at the same time."""
    errors = []

    def worker(n: int):
        try:
            for k in range(3):
                ident = f"T{n}-{k}"
                log.add_patient(ident)
                visit = log.start_visit(ident)
                _screen_eye(log, visit, "right", 10 * n + k)
                _screen_eye(log, visit, "left", 1000 + 10 * n + k)
                log.finalize_visit(visit)
                log.outbox_counts()
                log.find_patients("T")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert log.outbox_counts()["pending"] == 24
    assert _assert_every_visit_is_whole(log) == (12, 0)


def _assert_every_visit_is_whole(log: VisitLog) -> tuple[int, int]:
    assert log.db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert log.db.execute("PRAGMA foreign_key_check").fetchall() == []
    for (sha,) in log.db.execute("SELECT photo_sha256 FROM captures UNION SELECT overlay_sha256 FROM results"):
        assert log.images.get(sha)  # exists and is whole
    finished = opened = 0
    for (uuid, status) in log.db.execute("SELECT uuid, status FROM visits").fetchall():
        visit = log.get_visit(uuid)
        if status == "finished":
            finished += 1
            for eye in ("right", "left"):
                state = visit["eyes"][eye]
                assert state["capture"] is not None and state["result"] is not None
            assert [(o["eye"], o["status"]) for o in visit["outbox"]] == [("right", "pending"), ("left", "pending")]
        else:
            opened += status == "open"
    return finished, opened




# -- the optic module's calibration and the light each eye got ------------------------------------------
def _dose(preview_mj: float, flashes: int = 0, stopped: str | None = None) -> dict:
    from hardware.light_dose import EyeDose, LightLimits

    dose = EyeDose(preview_s=preview_mj / 0.1, preview_mj_cm2=preview_mj, flashes=flashes, flash_s=0.2 * flashes,
                   flash_mj_cm2=0.02 * flashes, peak_irradiance_mw_cm2=0.1)
    return {**dose.to_dict(), "limits": LightLimits().to_dict(), "led_response": "calibration 3", "stopped": stopped}


def test_a_corrected_photo_keeps_its_raw_still_and_its_calibration(log):
    log.add_patient("KSI-0201")
    visit = log.start_visit("KSI-0201")
    calibration = {"version": 3, "date": "2025-03-01T08:00:00+00:00", "module_serial": "GSO-0042"}
    capture = log.add_capture(visit, "right", _jpeg(1), quality={"gradable": True}, raw_jpeg=_jpeg(2), calibration=calibration)
    row = log.get_visit(visit)["eyes"]["right"]["capture"]
    assert row["id"] == capture and row["calibration"] == calibration
    assert log.images.get(row["raw_sha256"]) == _jpeg(2) and log.images.get(row["photo_sha256"]) == _jpeg(1)
    log.add_capture(visit, "left", _jpeg(3), quality={"gradable": True})  # a photo no calibration corrected
    left = log.get_visit(visit)["eyes"]["left"]["capture"]
    assert left["calibration"] is None and left["raw_sha256"] is None
    with pytest.raises(ValueError, match="raw still must be the bytes of a JPEG"):
        log.add_capture(visit, "left", _jpeg(4), quality={}, raw_jpeg=b"not a photo")
    with pytest.raises(ValueError, match="must say its version"):
        log.add_capture(visit, "left", _jpeg(4), quality={}, calibration={"date": "2025-03-01"})


def test_the_light_each_eye_got_is_kept_per_visit_and_only_grows(log, clock):
    log.add_patient("KSI-0202")
    visit = log.start_visit("KSI-0202")
    assert log.light_dose(visit, "right") is None
    log.record_light_dose(visit, "right", _dose(1.5))
    log.record_light_dose(visit, "right", _dose(2.5, flashes=3))  # later: more preview and the burst's flashes
    log.record_light_dose(visit, "right", _dose(1.0))             # a stale report: says less, changes nothing
    log.record_light_dose(visit, "left", _dose(0.5, stopped="the light was stopped: ..."))
    right = log.light_dose(visit, "right")
    assert right["preview"]["radiant_exposure_mj_cm2"] == pytest.approx(2.5) and right["flash"]["count"] == 3
    assert right["radiant_exposure_mj_cm2"] == pytest.approx(2.56) and right["preview"]["seconds"] == pytest.approx(25.0)
    assert right["limits"]["visit_exposure_mj_cm2"] == 50.0 and right["led_response"] == "calibration 3"
    assert right["stopped"] is None and log.light_doses(visit)["left"]["stopped"].startswith("the light was stopped")
    log.record_light_dose(visit, "left", _dose(0.7))  # more light booked later keeps why it was stopped
    assert log.light_dose(visit, "left")["stopped"] and set(log.light_doses(visit)) == {"right", "left"}
    totals = log.light_dose_totals()
    assert totals["eyes"] == 2 and totals["stopped_at_a_limit"] == 1
    assert totals["radiant_exposure_mj_cm2"] == pytest.approx(right["radiant_exposure_mj_cm2"]
                                                              + log.light_dose(visit, "left")["radiant_exposure_mj_cm2"])
    assert totals["highest_per_eye_mj_cm2"] == pytest.approx(right["radiant_exposure_mj_cm2"])
    with pytest.raises(ValueError, match="a light dose needs"):
        log.record_light_dose(visit, "right", {"preview": {}})
    with pytest.raises(LookupError):
        log.record_light_dose("no-such-visit", "right", _dose(1.0))
