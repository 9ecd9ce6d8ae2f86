"""Every patient the kiosk accepts can leave the unit: a name over DICOM's 64 characters is shortened by a
stated rule with the full name kept beside it, a Devanagari name goes as it is, both reach a real Orthanc
and a USB stick; a record that still cannot be sent says how to fix it, and fixing the patient sends it."""
from __future__ import annotations

import io
import random

import pytest
import requests
from pydicom import dcmread

from device.lab.sync_trials import sample_eyes
from device.outbox.dicom import PN_GROUP_CHARACTERS, person_name, study_uids
from device.outbox.dicomweb import DicomWebClient
from device.outbox.sync import sync_once
from device.outbox.usb import export
from device.visits.visitlog import EYES, VisitLog

pytest_plugins = ["tests.orthanc"]

LONG = "Maria Fernanda Guadalupe Concepcion de los Angeles Rodriguez Villanueva"  # 72 characters
HINDI = "सुनीता देवी शर्मा"


@pytest.fixture(scope="module")
def eyes(shared_data):
    return sample_eyes(shared_data, 2)


@pytest.fixture
def client(orthanc):
    c = DicomWebClient(orthanc.url, username=orthanc.username, password=orthanc.password, timeout=10)
    yield c
    c.close()


@pytest.fixture
def unit(tmp_path):
    with VisitLog(tmp_path / "unit") as log:
        yield log


def _visit(unit: VisitLog, eyes, identifier: str, name: str) -> str:
    unit.add_patient(identifier, name=name, year_of_birth=1960, sex="F", consent=True)
    visit = unit.start_visit(identifier, operator="worker", device_id="GSE-TEST")
    for eye, sample in zip(EYES, eyes):
        capture = unit.add_capture(visit, eye, sample.photo_jpeg, quality={"gradable": True})
        unit.add_result(capture, sample.result, masks_png=sample.masks_png)
    unit.finalize_visit(visit)
    return visit


def test_a_long_name_keeps_its_first_and_last_words_and_initials_the_middle():
    assert len(LONG) > PN_GROUP_CHARACTERS
    pn, shortened = person_name(LONG)
    assert shortened and len(pn) <= PN_GROUP_CHARACTERS and pn.endswith("^")
    assert pn.startswith("Maria ") and pn.rstrip("^").endswith(" Villanueva")
    # initials from the last but one towards the first, only as many as needed
    assert pn == "Maria Fernanda Guadalupe Concepcion de los A. R. Villanueva^"
    assert person_name(HINDI) == (HINDI + "^", False)
    assert person_name("Ana  Silva") == ("Ana Silva^", False)
    unbroken = "A" * 100
    pn, shortened = person_name(unbroken)
    assert shortened and pn == "A" * (PN_GROUP_CHARACTERS - 1) + "^"
    pn, shortened = person_name("Smith^John=\\x")  # DICOM's separators are not the patient's
    assert "^" not in pn[:-1] and "=" not in pn and "\\" not in pn and shortened


def test_an_identifier_dicom_cannot_carry_is_refused_at_registration(unit):
    for bad in ("A\\B", "X" * 65, "tab\there"):
        with pytest.raises(ValueError, match="at most 64 characters, without a backslash"):
            unit.add_patient(bad, name="Someone")
    unit.add_patient("X" * 64, name="Someone")  # the longest a Long String holds


@pytest.mark.orthanc
def test_a_70_character_and_a_devanagari_name_reach_the_pacs_and_the_stick(orthanc, client, unit, eyes, tmp_path):
    long_visit, hindi_visit = _visit(unit, eyes, "LONG-1", LONG), _visit(unit, eyes, "HI-1", HINDI)
    report = sync_once(unit, client, device_id="GSE-TEST")
    assert (report.sent, report.quarantined) == (4, 0)
    for visit, name in ((long_visit, LONG), (hindi_visit, HINDI)):
        for eye in EYES:
            found = requests.post(f"{orthanc.rest}/tools/lookup", data=study_uids(visit, eye)["photo"],
                                  auth=orthanc.auth, timeout=10).json()
            ds = dcmread(io.BytesIO(requests.get(f"{orthanc.rest}/instances/{found[0]['ID']}/file",
                                                 auth=orthanc.auth, timeout=10).content))
            assert str(ds.PatientName) == person_name(name)[0]
            if name == LONG:
                assert ds.PatientComments == f"Full name as registered: {LONG}"
            else:
                assert "PatientComments" not in ds
    stick = tmp_path / "stick"
    stick.mkdir()
    out = export(unit, stick, device_id="GSE-TEST")
    assert (out["visits"], out["eyes"], out["skipped"]) == (2, 4, [])
    assert str(dcmread(stick / hindi_visit / "right" / "photo.dcm").PatientName) == HINDI + "^"


@pytest.mark.orthanc
def test_a_quarantined_eye_says_how_to_fix_it_and_is_sent_once_the_patient_is_corrected(orthanc, client, unit, eyes):
    # A registration from older software, before the door checked identifiers, with a backslash in it.
    _visit(unit, eyes, "OLD-1", "Old Record")
    with unit._write() as db:
        db.execute("UPDATE patients SET identifier = 'OLD\\1' WHERE identifier = 'OLD-1'")
    first = sync_once(unit, client, device_id="GSE-TEST")
    assert (first.sent, first.quarantined) == (0, 2)
    for item in unit.outbox_items("quarantined"):
        assert "An admin can correct it: Patients, OLD\\1, Edit details" in item["last_error"]
    done = unit.edit_patient("OLD\\1", by="admin", new_identifier="OLD-1", name="Old Record", year_of_birth=1960, sex="F")
    assert done["requeued"] == 2 and done["changes"] == {"identifier": ["OLD\\1", "OLD-1"]}
    again = sync_once(unit, client, device_id="GSE-TEST", rng=random.Random(0))
    assert (again.sent, again.quarantined) == (2, 0)
    assert unit.outbox_counts() == {"pending": 0, "sent": 2, "quarantined": 0}
