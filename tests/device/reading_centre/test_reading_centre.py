"""The reading centre's loop against a real Orthanc: a unit's visit goes out with `sync --once`, a grader signs in
to the review app (Flask's test client), finds the referred eye first on the worklist, sees the photo with the
unit's outlines, and records a verdict, stored in the study as an SR; the unit's next sync fetches it exactly
once and the kiosk shows it: on the patient page, in the Referred list, and on the home page while the patient
has to come back."""
from __future__ import annotations

import datetime as dt
import io
import re

import cv2
import numpy as np
import pytest
from pydicom import dcmread

from device.accounts import Accounts
from device.config import Config
from device.kiosk import create_app as create_kiosk
from device.outbox.dicom import EyeStudy, study_uids
from device.outbox.dicomweb import DicomWebClient
from device.outbox.study import encode_study
from device.outbox.sync import run_sync
from device.outbox.verdicts import build_verdict_sr, read_verdict
from device.reading_centre import create_app
from device.reading_centre.pacs import ReadingRoom
from device.visits.visitlog import VisitLog
from models.runtime.images import decode_rgb
from tests.device.kiosk.test_kiosk import add_workers, make_unit
from tests.device.kiosk.test_kiosk import sign_in as kiosk_sign_in

pytest_plugins = ["tests.orthanc"]

GRADER, GRADER_PIN = "dr-wanjiru", "739154"
NOTE = "Large cup, thin inferior rim: please see her this week."


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def grader_signs_in(client, name: str = GRADER, pin: str = GRADER_PIN):
    return client.post("/signin", data={"user": name, "pin": pin, "csrf_token": csrf_of(client.get("/signin").text)})


def screened_visit(visits: VisitLog, eyes) -> str:
    """A finished visit: the right eye referred by the unit, the left eye not."""
    visits.add_patient("KSI-0117", name="Wambui Njeri", year_of_birth=1956, sex="F", consent=True)
    visit = visits.start_visit("KSI-0117", operator="amina", device_id="test-unit")
    for eye, sample, referral in (("right", eyes[0], "refer"), ("left", eyes[1], "normal")):
        capture = visits.add_capture(visit, eye, sample.photo_jpeg, quality={"gradable": True})
        visits.add_result(capture, {**sample.result, "referral": referral}, masks_png=sample.masks_png)
    visits.finalize_visit(visit)
    return visit


@pytest.fixture
def reading_centre(tmp_path, orthanc):
    accounts = Accounts(tmp_path / "reading-centre" / "accounts.db")
    accounts.add(GRADER, GRADER_PIN)
    room = ReadingRoom(DicomWebClient(orthanc.url, username=orthanc.username, password=orthanc.password, timeout=10))
    app = create_app(room, accounts, secret_key=b"r" * 32, testing=True)
    yield app
    room.close()
    accounts.close()


@pytest.mark.orthanc
def test_a_graders_verdict_reaches_the_unit_once_and_the_kiosk_shows_it(tmp_path, orthanc, eyes, pacs_config,
                                                                         reading_centre):
    unit = make_unit(tmp_path / "unit")
    try:
        add_workers(unit)
        visit = screened_visit(unit.visits, eyes)
        cfg = Config(data_dir=unit.config.data_dir, device_id="test-unit", sync=pacs_config)
        first = run_sync(cfg, once=True)
        assert (first["sent"], first["verdicts_received"]) == (2, 0)

        grader = reading_centre.test_client()
        assert grader.get("/").status_code == 302  # signed out: to the sign-in page
        assert grader_signs_in(grader, pin="000000").status_code == 401
        assert grader_signs_in(grader).status_code == 302
        worklist = grader.get("/").text
        right, left = study_uids(visit, "right")["study"], study_uids(visit, "left")["study"]
        assert worklist.index(right) < worklist.index(left)  # the referred eye first
        assert worklist.count("To grade") == 2

        page = grader.get(f"/studies/{right}")
        assert page.status_code == 200 and "Wambui Njeri" in page.text and "Refer" in page.text
        shown = grader.get(f"/images/{right}.jpg")
        assert shown.status_code == 200 and shown.mimetype == "image/jpeg"
        photo = decode_rgb(shown.data)
        plain = decode_rgb(eyes[0].photo_jpeg)
        assert photo.shape == plain.shape
        green = (photo[..., 1] > 180) & (photo[..., 0] < 90) & (photo[..., 2] < 90)
        assert green.sum() > 100 > ((plain[..., 1] > 180) & (plain[..., 0] < 90) & (plain[..., 2] < 90)).sum()

        token = csrf_of(page.text)
        assert grader.post(f"/studies/{right}/verdict", data={"note": NOTE}).status_code == 400  # no CSRF token
        kept = grader.post(f"/studies/{right}/verdict", data={"csrf_token": token, "note": NOTE})
        assert kept.status_code == 422 and NOTE in kept.text and "Choose a verdict" in kept.text  # nothing lost
        stored = grader.post(f"/studies/{right}/verdict",
                             data={"csrf_token": token, "verdict": "urgent", "note": NOTE})
        assert stored.status_code == 302
        assert orthanc.instances_count() == 7  # 3 + 3 of the unit's, and the verdict
        pacs = DicomWebClient(orthanc.url, username=orthanc.username, password=orthanc.password, timeout=10)
        uids = study_uids(visit, "right")
        described = [d for d in pacs.instances(right, modality="SR") if d.SOPInstanceUID != uids["sr"]]
        sr = pacs.retrieve(right, described[0].SeriesInstanceUID, described[0].SOPInstanceUID)
        pacs.close()
        referenced = {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                      for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
        assert referenced == {uids["photo"], uids["seg"], uids["sr"]} and sr.PatientID == "KSI-0117"
        assert "To grade" in grader.get("/").text and grader.get("/").text.count("To grade") == 1

        second = run_sync(cfg, once=True)
        assert second["verdicts_received"] == 1
        assert run_sync(cfg, once=True)["verdicts_received"] == 0  # asked again: nothing new
        with VisitLog(cfg.data_dir) as log:
            kept_verdicts = log.latest_verdicts(visit)
            rows = log.db.execute("SELECT count(*) FROM verdicts").fetchone()[0]
        assert rows == 1 and set(kept_verdicts) == {"right"}
        assert (kept_verdicts["right"]["verdict"], kept_verdicts["right"]["note"], kept_verdicts["right"]["grader"]) == (
            "urgent", NOTE, GRADER)

        kiosk = create_kiosk(unit, secret_key=b"k" * 32, testing=True).test_client()
        kiosk_sign_in(kiosk)
        patient = kiosk.get("/patients/KSI-0117").text
        assert "The eye doctor says: urgent referral. Send the patient to the eye clinic now." in patient
        assert NOTE in patient and f'id="verdict-{visit}-right"' in patient and f'id="verdict-{visit}-left"' not in patient
        referred = kiosk.get("/referred").text
        assert f'id="referred-{visit}"' in referred and "The eye doctor says:" in referred
        home = kiosk.get("/").text
        assert 'id="verdicts-calling-back"' in home and "Wambui Njeri" in home
        unit.visits.mark_attended(visit, on=dt.date.today(), by="amina")  # seen at the eye clinic
        assert 'id="verdicts-calling-back"' not in kiosk.get("/").text
    finally:
        unit.close()


@pytest.mark.orthanc
def test_the_unit_keeps_a_graders_referral_of_an_eye_it_did_not_refer(tmp_path, orthanc, eyes, pacs_config,
                                                                       reading_centre):
    with VisitLog(tmp_path / "unit") as visits:
        visit = screened_visit(visits, eyes)
    cfg = Config(data_dir=tmp_path / "unit", device_id="test-unit", sync=pacs_config)
    run_sync(cfg, once=True)
    grader = reading_centre.test_client()
    grader_signs_in(grader)
    left = study_uids(visit, "left")["study"]
    token = csrf_of(grader.get(f"/studies/{left}").text)
    assert grader.post(f"/studies/{left}/verdict", data={"csrf_token": token, "verdict": "refer"}).status_code == 302
    assert run_sync(cfg, once=True)["verdicts_received"] == 1
    with VisitLog(cfg.data_dir) as visits:
        assert [r["visit_uuid"] for r in visits.referred_visits()] == [visit]
        assert [(v["eye"], v["verdict"]) for v in visits.verdicts_calling_back()] == [("left", "refer")]


@pytest.mark.orthanc
def test_a_corrected_verdict_reaches_the_unit_once_and_the_kiosk_shows_the_newest_with_the_one_before(
        tmp_path, orthanc, eyes, pacs_config, reading_centre):
    unit = make_unit(tmp_path / "unit")
    try:
        add_workers(unit)
        visit = screened_visit(unit.visits, eyes)
        cfg = Config(data_dir=unit.config.data_dir, device_id="test-unit", sync=pacs_config)
        assert run_sync(cfg, once=True)["sent"] == 2
        grader = reading_centre.test_client()
        grader_signs_in(grader)
        right = study_uids(visit, "right")["study"]

        def graded(verdict: str, note: str) -> None:
            token = csrf_of(grader.get(f"/studies/{right}").text)
            assert grader.post(f"/studies/{right}/verdict",
                               data={"csrf_token": token, "verdict": verdict, "note": note}).status_code == 302

        graded("routine", "Cup looks small.")
        assert run_sync(cfg, once=True)["verdicts_received"] == 1
        kiosk = create_kiosk(unit, secret_key=b"k" * 32, testing=True).test_client()
        kiosk_sign_in(kiosk)
        assert "The eye doctor says: no glaucoma signs." in kiosk.get("/patients/KSI-0117").text
        assert 'id="verdicts-calling-back"' not in kiosk.get("/").text  # routine: nobody to call back

        graded("urgent", NOTE)  # the grader looks again and corrects it
        assert "Urgent referral" in grader.get("/").text  # the review app shows the correction too
        assert run_sync(cfg, once=True)["verdicts_received"] == 1  # the correction comes once
        assert run_sync(cfg, once=True)["verdicts_received"] == 0
        with VisitLog(cfg.data_dir) as log:
            kept = log.db.execute("SELECT verdict, note FROM verdicts ORDER BY graded_at").fetchall()
            assert [tuple(row) for row in kept] == [("routine", "Cup looks small."), ("urgent", NOTE)]  # history kept
            assert log.latest_verdicts(visit)["right"]["verdict"] == "urgent"

        patient = kiosk.get("/patients/KSI-0117").text
        now = re.search(rf'id="verdict-{visit}-right">(.*?)</p>', patient, re.S).group(1)
        assert "urgent referral" in now and NOTE in now and "no glaucoma signs" not in now
        before = re.search(rf'id="verdict-before-{visit}-right">(.*?)</p>', patient, re.S).group(1)
        assert "the eye doctor said: no glaucoma signs." in before and "Cup looks small." in before
        home = kiosk.get("/").text
        assert 'id="verdicts-calling-back"' in home and "urgent referral" in home  # the correction calls her back
        assert "urgent referral" in kiosk.get("/referred").text
    finally:
        unit.close()


def test_a_verdict_sr_reads_back_as_it_was_written(eyes):
    photo_mask = cv2.imdecode(np.frombuffer(eyes[0].masks_png, np.uint8), cv2.IMREAD_GRAYSCALE)
    study = EyeStudy(visit_uuid="0c9e7d52-3a61-4f0b-b8d4-7e21c5a9f304", eye="right", device_id="GSE-1",
                     patient_id="P-1", patient_name="Ama", year_of_birth=1950, sex="F",
                     captured_at=dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), photo_jpeg=eyes[0].photo_jpeg,
                     disc_mask=photo_mask < 255, cup_mask=photo_mask == 0, result=eyes[0].result)
    files = encode_study(study)
    evidence = [dcmread(io.BytesIO(f), stop_before_pixels=True) for f in files]
    when = dt.datetime(2025, 1, 9, 10, 11, 12, 345678, tzinfo=dt.timezone.utc)  # two verdicts in one second keep their order
    sr = build_verdict_sr(evidence, verdict="retake", note="Blurred  by a cataract.\nTry dilating.", grader="dr-o", when=when)
    verdict = read_verdict(sr)
    assert verdict is not None and sr.StudyInstanceUID == study_uids(study.visit_uuid, "right")["study"]
    assert (verdict.verdict, verdict.note, verdict.grader, verdict.graded_at) == (
        "retake", "Blurred by a cataract. Try dilating.", "dr-o", when)
    assert read_verdict(evidence[-1]) is None  # the unit's own report is not a verdict
    with pytest.raises(ValueError, match="a verdict is one of"):
        build_verdict_sr(evidence, verdict="maybe", note="", grader="dr-o", when=when)
