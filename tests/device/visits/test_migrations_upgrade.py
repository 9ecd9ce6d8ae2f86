"""Schema version 2 (disc/cup masks on each result): a unit's v1 visit log upgrades in place with every
row kept, a new log starts at v2 with the same columns, and the masks go in and come out as REFUGE PNGs."""
from __future__ import annotations

import datetime as dt
import sqlite3

import cv2
import numpy as np
import pytest
import sqlite_utils

from device.outbox.dicom import build_datasets
from device.outbox.study import eye_study
from device.visits import migrations
from device.visits.imagestore import ImageStore
from device.visits.visitlog import VisitLog, decode_masks, encode_masks

VISIT = "5b0f6a1e-93c4-4e0c-9a55-0d7c3f1e2b47"
TABLES = ("patients", "visits", "captures", "results", "skipped_eyes", "outbox", "outbox_attempts")


def _rows(db_file) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(db_file)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in TABLES}
    finally:
        conn.close()


def _columns(db: sqlite_utils.Database, table: str) -> list[tuple]:
    return [(c[1], c[2], c[3], c[5]) for c in db.execute(f"PRAGMA table_info({table})").fetchall()]


@pytest.fixture
def v1_log(tmp_path, refuge_photo):
    """A visit log as a unit running schema v1 left it: a finished visit with one eye screened and queued."""
    data = tmp_path / "data"
    photo = ImageStore(data / "images").put(refuge_photo.read_bytes())
    db = sqlite_utils.Database(sqlite3.connect(data / "visits.db"))
    db.execute("PRAGMA journal_mode = wal")
    assert migrations.migrate(db, migrations.MIGRATIONS[:1]) == 1
    t = "2025-03-04T09:30:00.000+00:00"
    db.execute("INSERT INTO patients (identifier, name, year_of_birth, sex, consent, created_at) "
               "VALUES ('KSI-0117', 'Ama Mensah', 1961, 'F', 1, ?)", (t,))
    db.execute("INSERT INTO visits (uuid, patient_id, operator, device_id, status, started_at, finished_at) "
               "VALUES (?, 1, 'nurse-a', 'GSE-0001', 'finished', ?, ?)", (VISIT, t, t))
    db.execute("INSERT INTO captures (visit_uuid, eye, photo_sha256, quality, source, captured_at) "
               "VALUES (?, 'right', ?, '{\"gradable\": true}', 'camera', ?)", (VISIT, photo, t))
    db.execute("INSERT INTO results (capture_id, gradable, vcdr, glaucoma_probability, referral, overlay_sha256, "
               "result_json, created_at) VALUES (1, 1, 0.62, 0.71, 'refer', NULL, ?, ?)",
               ('{"gradable": true, "referral": "refer", "vcdr": 0.62, "glaucoma_probability": 0.71}', t))
    db.execute("INSERT INTO outbox (visit_uuid, eye, kind, capture_id, result_id, created_at) "
               "VALUES (?, 'right', 'eye_screening', 1, 1, ?)", (VISIT, t))
    db.conn.commit()
    db.close()
    return data


def test_a_v1_log_upgrades_to_the_current_version_with_every_row_kept(v1_log):
    before = _rows(v1_log / "visits.db")
    with VisitLog(v1_log) as log:
        assert log.schema_version == len(migrations.MIGRATIONS)
        assert log.db.execute("SELECT count(*) FROM patient_edits").fetchone()[0] == 0  # v3: no edits made yet
        after = _rows(v1_log / "visits.db")
        grown = ("results", "patients", "visits", "captures")  # tables that gained columns, last, after v1
        assert {t: rows for t, rows in after.items() if t not in grown} == {t: rows for t, rows in before.items() if t not in grown}
        assert [row[:-3] for row in after["patients"]] == before["patients"]  # v4's phone and address, v7's language...
        assert [row[-3:] for row in after["patients"]] == [(None, None, None)]  # ...empty: v1 never asked for them
        assert [row[:-1] for row in after["visits"]] == before["visits"]  # v5's closed_reason...
        assert [row[-1] for row in after["visits"]] == [None]  # ...empty: the v1 visit was finished by its worker
        assert [row[:-1] for row in after["results"]] == before["results"]  # the new column is last...
        assert [row[-1] for row in after["results"]] == [None]  # ...and empty: v1 never stored masks
        assert [row[:-2] for row in after["captures"]] == before["captures"]  # v8's raw still and calibration...
        assert [row[-2:] for row in after["captures"]] == [(None, None)]  # ...empty: v1 corrected no photo
        assert log.light_doses(VISIT) == {}  # v8: no light was booked then
        visit = log.get_visit(VISIT)
        assert visit["patient"]["name"] == "Ama Mensah" and visit["status"] == "finished"
        assert visit["eyes"]["right"]["result"]["vcdr"] == 0.62
        assert log.outbox_pending()[0]["visit_uuid"] == VISIT
        # A v1 eye still becomes DICOM: photo and report, without a Segmentation it never had.
        datasets = build_datasets(eye_study(log, log.outbox_pending()[0]["id"], device_id="GSE-0001"))
        assert [ds.Modality for ds in datasets] == ["OP", "SR"]


def test_a_new_log_and_an_upgraded_one_have_the_same_columns(v1_log, tmp_path):
    with VisitLog(v1_log) as upgraded, VisitLog(tmp_path / "new") as new:
        assert new.schema_version == upgraded.schema_version == len(migrations.MIGRATIONS)
        for table in TABLES + ("patient_edits", "attended_referrals", "light_doses"):
            assert _columns(new.db, table) == _columns(upgraded.db, table), table
        assert ("masks_sha256", "TEXT", 0, 0) in _columns(new.db, "results")


def test_software_that_knows_only_v1_refuses_a_newer_log(v1_log):
    VisitLog(v1_log).close()
    db = sqlite_utils.Database(sqlite3.connect(v1_log / "visits.db"))
    with pytest.raises(RuntimeError, match="newer than this software knows"):
        migrations.migrate(db, migrations.MIGRATIONS[:1])
    assert migrations.schema_version(db) == len(migrations.MIGRATIONS)


# -- masks in the log ---------------------------------------------------------------------------
def _disc_and_cup(shape=(120, 160)) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    disc = (yy - 60) ** 2 / 30 ** 2 + (xx - 90) ** 2 / 26 ** 2 <= 1
    cup = (yy - 62) ** 2 / 14 ** 2 + (xx - 88) ** 2 / 12 ** 2 <= 1
    return disc, cup


@pytest.fixture
def open_visit(tmp_path, refuge_photo):
    log = VisitLog(tmp_path / "unit", clock=lambda: dt.datetime(2025, 3, 4, 9, 30, tzinfo=dt.timezone.utc))
    log.add_patient("KSI-0200")
    visit = log.start_visit("KSI-0200", device_id="GSE-0002")
    capture = log.add_capture(visit, "left", refuge_photo.read_bytes(), quality={"gradable": True})
    yield log, visit, capture
    log.close()


def test_masks_are_stored_in_refuge_coding_and_read_back_exactly(open_visit):
    log, visit, capture = open_visit
    disc, cup = _disc_and_cup()
    png = encode_masks(disc, cup)
    coded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert coded.dtype == np.uint8 and coded.ndim == 2
    assert (coded[cup] == 0).all() and (coded[disc & ~cup] == 128).all() and (coded[~disc] == 255).all()
    log.add_result(capture, {"gradable": True, "referral": "normal", "vcdr": 0.47}, overlay=b"\xff\xd8jpeg", masks_png=png)
    result = log.get_visit(visit)["eyes"]["left"]["result"]
    assert log.images.get(result["overlay_sha256"]) == b"\xff\xd8jpeg"
    back_disc, back_cup = decode_masks(log.images.get(result["masks_sha256"]))
    assert np.array_equal(back_disc, disc) and np.array_equal(back_cup, cup)


def test_recovery_keeps_the_mask_images(open_visit):
    log, visit, capture = open_visit
    png = encode_masks(*_disc_and_cup())
    log.add_result(capture, {"gradable": True, "referral": "normal"}, masks_png=png)
    sha = log.get_visit(visit)["eyes"]["left"]["result"]["masks_sha256"]
    assert log.recover()["orphans_removed"] == 0
    assert log.images.get(sha) == png


@pytest.mark.parametrize("masks, message", [
    (cv2.imencode(".png", np.full((8, 8, 3), 255, np.uint8))[1].tobytes(), "one 8-bit grey channel"),
    (cv2.imencode(".png", np.full((8, 8), 77, np.uint8))[1].tobytes(), r"values \[77\]"),
    (cv2.imencode(".jpg", np.full((8, 8), 128, np.uint8))[1].tobytes(), "bytes of a PNG"),
])
def test_masks_that_are_not_refuge_pngs_are_refused_and_nothing_is_stored(open_visit, masks, message):
    log, visit, capture = open_visit
    with pytest.raises(ValueError, match=message):
        log.add_result(capture, {"gradable": True, "referral": "normal"}, masks_png=masks)
    assert log.get_visit(visit)["eyes"]["left"]["result"] is None


def test_record_eye_stores_the_segmentation_masks_on_the_photo_grid(open_visit, refuge_photo):
    """The kiosk's and the CLI's path: a screening result's disc/cup (here the REFUGE experts' masks, put through
    the same crop grid the network works on) become the masks PNG, beside the overlay JPEG."""
    from device.screening.pipeline import DiscSegmentation, ScreeningResult
    from device.screening.quality import QualityGate
    from device.visits.recording import record_eye
    from models.runtime import preprocess
    from models.runtime.images import decode_rgb

    log, visit, _ = open_visit
    rgb = decode_rgb(refuge_photo.read_bytes())
    labels = cv2.imread(str(refuge_photo.parent.parent / "masks" / f"{refuge_photo.stem}.png"), cv2.IMREAD_GRAYSCALE)
    ys, xs = np.nonzero(labels < 255)
    box = preprocess.disc_crop_box(xs.mean(), ys.mean(), float(np.ptp(ys) + 1), rgb.shape)
    segmentation = DiscSegmentation(box, preprocess.warp((labels < 255).astype(np.float32), box),
                                    preprocess.warp((labels == 0).astype(np.float32), box), glaucoma_logit=-1.0)
    screened = ScreeningResult(gradable=True, quality=QualityGate().assess(rgb), referral="normal",
                               reasons=["test"], model_versions={"segmentation": "test"}, segmentation=segmentation)
    ids = record_eye(log, visit, "right", rgb, screened, original=refuge_photo.read_bytes())
    result = log.get_visit(visit)["eyes"]["right"]["result"]
    assert result["id"] == ids["result_id"]
    assert log.images.get(result["overlay_sha256"])[:2] == b"\xff\xd8"  # the overlay is a JPEG
    disc, cup = decode_masks(log.images.get(result["masks_sha256"]))
    expected_disc, expected_cup = segmentation.masks_on_photo(rgb.shape)
    assert disc.shape == rgb.shape[:2]
    assert np.array_equal(disc, expected_disc) and np.array_equal(cup, expected_cup)
    overlap = (disc & (labels < 255)).sum() / (disc | (labels < 255)).sum()
    assert overlap > 0.9  # the experts' disc, back on the photo after the round trip through the crop
    unsegmented = ScreeningResult(gradable=False, quality=screened.quality, referral="rescreen", reasons=["blurred"],
                                  model_versions={})
    record_eye(log, visit, "left", rgb, unsegmented)
    assert log.get_visit(visit)["eyes"]["left"]["result"]["masks_sha256"] is None
