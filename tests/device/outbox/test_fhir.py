"""Each eye as a FHIR transaction bundle: what it holds and that fhir.resources takes it; and the sync sending it
to an EHR (a FHIR server on 127.0.0.1 that validates and applies conditional creates) beside the PACS (a real
Orthanc), with the outbox's rules: a resend creates nothing twice, a refusal is quarantined with the EHR's words,
an EHR that is down waits without holding up the PACS, and a unit without an EHR queues nothing for one."""
from __future__ import annotations

import datetime as dt
import json
import random
import sqlite3
from urllib.parse import unquote

import pytest

from device.config import Config, SyncConfig
from device.lab.sync_trials import add_visits, sample_eyes
from device.outbox import codes, fhir
from device.outbox.dicom import study_uids
from device.outbox.sync import run_sync
from device.visits.datadir import DataDir
from device.visits.visitlog import FHIR_KIND, OUTBOX_KIND, VisitLog
from tests.fhir_server import FhirServer

pytest_plugins = ["tests.orthanc"]


@pytest.fixture(scope="module")
def eyes(shared_data):
    return sample_eyes(shared_data, 2)


@pytest.fixture
def ehr():
    server = FhirServer().start()
    yield server
    server.stop()


def _visit(log: VisitLog, eyes, identifier: str = "KSI|2024,07$") -> str:
    """One finished visit whose right eye is fully measured (disc and cup) and referred; the clinic number holds
    the characters a FHIR search must escape."""
    log.add_patient(identifier, name="Nguyễn Thị Ánh", year_of_birth=1961, sex="F", consent=True, phone="+254 700 1")
    visit = log.start_visit(identifier, operator="amina", device_id="GSE-0042")
    for eye, sample in zip(("right", "left"), eyes):
        result = dict(sample.result)
        if eye == "right":
            result.update(referral="refer", referral_headline="Refer", disc={
                "cx": 300.0, "cy": 280.0, "vertical_diameter": 180.5, "horizontal_diameter": 170.25, "area": 2.4e4},
                cup={"cx": 301.0, "cy": 281.0, "vertical_diameter": 110.0, "horizontal_diameter": 90.0, "area": 8e3})
        capture = log.add_capture(visit, eye, sample.photo_jpeg, quality={"gradable": True})
        log.add_result(capture, result, masks_png=sample.masks_png)
    log.finalize_visit(visit)
    return visit


def test_an_eye_is_a_transaction_bundle_that_validates_and_names_its_dicom_study(tmp_path, eyes):
    with VisitLog(tmp_path / "unit") as log:
        visit = _visit(log, eyes)
        right = next(i for i in log.outbox_items() if i["eye"] == "right")
        bundle = fhir.build_bundle(log.outbox_eye(right["id"]), device_id="GSE-0042")
        again = fhir.encode_item(log, right["id"], "GSE-0042")
    assert fhir.validate(bundle).type == "transaction"
    assert again == fhir.bundle_bytes(bundle)  # the same bytes every time: a resend is the same bundle
    by_type: dict[str, list[dict]] = {}
    for entry in bundle["entry"]:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry)
        assert entry["request"]["method"] == "POST" and entry["request"]["ifNoneExist"].startswith("identifier=")
    assert sorted((k, len(v)) for k, v in by_type.items()) == [
        ("Device", 1), ("DiagnosticReport", 1), ("ImagingStudy", 1), ("Observation", 5), ("Patient", 1)]
    uids = study_uids(visit, "right")
    study = by_type["ImagingStudy"][0]["resource"]
    assert study["identifier"] == [{"system": "urn:dicom:uid", "value": f"urn:oid:{uids['study']}"}]
    assert [s["uid"] for s in study["series"]] == [uids["photo_series"], uids["seg_series"], uids["sr_series"]]
    assert [s["instance"][0]["uid"] for s in study["series"]] == [uids["photo"], uids["seg"], uids["sr"]]
    observed = {o["resource"]["code"]["coding"][0]["code"]: o["resource"] for o in by_type["Observation"]}
    assert set(observed) == {codes.VCDR.code, codes.DISC_DIAMETERS.code, codes.CUP_DIAMETERS.code,
                             codes.GLAUCOMA_PROBABILITY.code, codes.REFERRAL.code}
    assert observed[codes.VCDR.code]["code"]["coding"][0]["system"] == codes.DCM
    assert observed[codes.DISC_DIAMETERS.code]["component"][0]["valueQuantity"]["value"] == 180.5
    assert observed[codes.REFERRAL.code]["valueCodeableConcept"]["coding"][0]["code"] == "refer"
    assert all(o["bodySite"]["coding"][0]["code"] == "362502000" for o in observed.values())  # the right eye
    report = by_type["DiagnosticReport"][0]
    assert report["resource"]["identifier"] == [{"system": codes.VISIT_EYE, "value": f"{visit}/right"}]
    assert {r["reference"] for r in report["resource"]["result"]} == {o["fullUrl"] for o in by_type["Observation"]}
    device = by_type["Device"][0]["resource"]
    assert {v["type"]["text"]: v["value"] for v in device["version"]} == eyes[0].result["model_versions"]
    patient = by_type["Patient"][0]
    assert patient["resource"]["birthDate"] == "1961" and patient["resource"]["gender"] == "female"
    query = patient["request"]["ifNoneExist"]
    assert "%5C%2C" in query and unquote(query).endswith("|KSI\\|2024\\,07\\$")  # FHIR's escapes, percent-encoded


def test_a_bundle_fhir_resources_refuses_is_said_in_its_words():
    with pytest.raises(fhir.BundleError, match="not a valid FHIR bundle: .*status"):
        fhir.validate({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427",
             "resource": {"resourceType": "Observation", "code": {"text": "x"}, "status": ["final"]},
             "request": {"method": "POST", "url": "Observation"}}]})


def _config(tmp_path, orthanc, ehr_url: str = "") -> Config:
    secret = tmp_path / "pacs-password"
    secret.write_text(orthanc.password)
    secret.chmod(0o600)
    return Config(data_dir=tmp_path / "unit", device_id="GSE-0042", sync=SyncConfig(
        url=orthanc.url, username=orthanc.username, password_file=str(secret), timeout_s=10, fhir_url=ehr_url))


@pytest.mark.orthanc
def test_each_eye_reaches_the_ehr_once_even_when_sent_again(tmp_path, orthanc, ehr, eyes):
    cfg = _config(tmp_path, orthanc, ehr.url)
    with VisitLog(cfg.data_dir) as log:
        _visit(log, eyes)
        add_visits(log, eyes, 1, random.Random(4), device_id="GSE-0042")  # one unit, one set of models: one Device
    out = run_sync(cfg, once=True)
    assert (out["sent"], out["failed"], out["quarantined"]) == (8, 0, 0)  # 4 eyes to the PACS, 4 bundles to the EHR
    assert orthanc.instances_count() == 12
    held = {kind: ehr.count(kind) for kind in ("Patient", "ImagingStudy", "DiagnosticReport", "Device")}
    assert held == {"Patient": 2, "ImagingStudy": 4, "DiagnosticReport": 4, "Device": 1}
    observations = ehr.count("Observation")
    assert observations == 5 + 3 + 3 + 3  # the measured right eye has disc and cup diameters besides
    report = next(iter(ehr.resources["DiagnosticReport"].values()))
    assert report["subject"]["reference"].startswith("Patient/")  # the bundle's references, resolved by the server
    # A sync killed between "the EHR took it" and "marked sent": every bundle goes again.
    with sqlite3.connect(DataDir(cfg.data_dir).visits_db) as db:
        db.execute("UPDATE outbox SET status = 'pending', sent_at = NULL WHERE kind = ?", (FHIR_KIND,))
    again = run_sync(cfg, once=True)
    assert (again["sent"], again["quarantined"]) == (4, 0)
    assert {kind: ehr.count(kind) for kind in held} == held and ehr.count("Observation") == observations
    with VisitLog(cfg.data_dir) as log:
        fhir_items = [i for i in log.outbox_items() if i["kind"] == FHIR_KIND]
        assert [i["status"] for i in fhir_items] == ["sent"] * 4
        assert "0 created, 9 already there" in log.outbox_attempts(fhir_items[0]["id"])[-1]["response"]


@pytest.mark.orthanc
def test_an_ehr_that_is_down_waits_and_one_that_refuses_quarantines_without_holding_up_the_pacs(
        tmp_path, orthanc, ehr, eyes):
    cfg = _config(tmp_path, orthanc, ehr.url)
    with VisitLog(cfg.data_dir) as log:
        add_visits(log, eyes, 1, random.Random(5))
    ehr.fail_next(1, 503)
    out = run_sync(cfg, once=True)
    assert (out["sent"], out["failed"]) == (2, 1) and "the EHR is not taking visits now" in out["last"]["stopped"]
    assert orthanc.instances_count() == 6 and ehr.requests == 1  # the run stopped at the EHR's first refusal
    with VisitLog(cfg.data_dir) as log:
        waiting = log.outbox_pending(kind=FHIR_KIND)
        assert len(waiting) == 2 and "HTTP 503" in waiting[0]["last_error"]
        log.outbox_due_now()
    ehr.fail_next(2, 422)
    out = run_sync(cfg, once=True)
    assert (out["sent"], out["quarantined"]) == (0, 2)
    with VisitLog(cfg.data_dir) as log:
        refused = log.outbox_items("quarantined")
        assert [i["kind"] for i in refused] == [FHIR_KIND, FHIR_KIND]
        assert "the EHR refused the bundle (HTTP 422): the server is not taking requests now" in refused[0]["last_error"]


@pytest.mark.orthanc
def test_a_unit_without_an_ehr_queues_nothing_for_one(tmp_path, orthanc, eyes):
    cfg = _config(tmp_path, orthanc)
    with VisitLog(cfg.data_dir) as log:
        add_visits(log, eyes, 1, random.Random(6))
    assert run_sync(cfg, once=True)["sent"] == 2
    with VisitLog(cfg.data_dir) as log:
        assert {i["kind"] for i in log.outbox_items()} == {OUTBOX_KIND}
        assert log.outbox_counts() == {"pending": 0, "sent": 2, "quarantined": 0}


def test_the_bundle_dates_are_the_capture_time_in_utc(tmp_path, eyes):
    with VisitLog(tmp_path / "unit", clock=lambda: dt.datetime(2025, 5, 6, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=3)))) as log:
        _visit(log, eyes)
        item = log.outbox_items()[0]
        bundle = json.loads(fhir.encode_item(log, item["id"], "GSE-0042"))
    report = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
    assert report["effectiveDateTime"] == "2025-05-06T06:30:00.000+00:00"
