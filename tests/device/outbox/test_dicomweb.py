"""STOW-RS and QIDO-RS against a real Orthanc, and the outcomes the sync outbox acts on."""
from __future__ import annotations

import json
import logging
import socket
import time
from datetime import datetime, timezone

import cv2
import pytest
import requests

from device.outbox.dicom import EyeStudy, build_datasets, study_uids
from device.outbox.dicomweb import REJECT, RETRY, STORED, DicomWebClient, _classify

pytest_plugins = ["tests.orthanc"]

VISIT = "0c9e7d52-3a61-4f0b-b8d4-7e21c5a9f304"


@pytest.fixture(scope="module")
def eyes(refuge_photo):
    """Both eyes of one visit, built from a real REFUGE photo and its experts' masks."""
    labels = cv2.imread(str(refuge_photo.parent.parent / "masks" / f"{refuge_photo.stem}.png"), cv2.IMREAD_GRAYSCALE)
    result = {"gradable": True, "vcdr": 0.41, "glaucoma_probability": 0.12, "referral": "normal",
              "referral_reasons": ["Glaucoma risk 12% is below the referral level of 50%; cup-to-disc ratio 0.41."],
              "model_versions": {"mtl_unet": "2024.06-int8"}}
    return {eye: build_datasets(EyeStudy(
        visit_uuid=VISIT, eye=eye, device_id="GSE-0042", patient_id="KSI-2024-0117", patient_name="Kofi Boateng",
        year_of_birth=1958, sex="male", captured_at=datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc),
        photo_jpeg=refuge_photo.read_bytes(), disc_mask=labels < 255, cup_mask=labels == 0, result=result))
        for eye in ("right", "left")}


@pytest.fixture
def client(orthanc):
    c = DicomWebClient(orthanc.url, username=orthanc.username, password=orthanc.password, timeout=10)
    yield c
    c.close()


@pytest.mark.orthanc
def test_one_eye_is_one_study_of_three_instances(orthanc, client, eyes, refuge_photo):
    right = eyes["right"]
    result = client.store(right)
    assert (result.outcome, result.status) == (STORED, 200), result.reason
    assert sorted(result.stored) == sorted(ds.SOPInstanceUID for ds in right)
    assert orthanc.studies() == [study_uids(VISIT, "right")["study"]]
    assert orthanc.instances_count() == 3
    assert client.study_exists(right[0].StudyInstanceUID)
    held = client.instances(right[0].StudyInstanceUID)
    assert sorted(ds.SOPInstanceUID for ds in held) == sorted(ds.SOPInstanceUID for ds in right)
    assert {ds.Modality for ds in held} == {"OP", "SEG", "SR"}
    # The PACS keeps the camera's JPEG as it was taken.
    orthanc_id = requests.post(f"{orthanc.rest}/tools/lookup", data=right[0].SOPInstanceUID, auth=orthanc.auth,
                               timeout=10).json()[0]["ID"]
    frame = requests.get(f"{orthanc.rest}/instances/{orthanc_id}/frames/0/raw", auth=orthanc.auth, timeout=10)
    assert frame.content.rstrip(b"\x00") == refuge_photo.read_bytes().rstrip(b"\x00")


@pytest.mark.orthanc
def test_sending_again_stores_nothing_twice(orthanc, client, eyes):
    assert client.store(eyes["right"]).ok
    assert client.store(eyes["right"]).outcome == STORED
    assert orthanc.instances_count() == 3 and len(orthanc.studies()) == 1
    assert client.store(eyes["left"]).ok
    assert orthanc.instances_count() == 6 and len(orthanc.studies()) == 2


@pytest.mark.orthanc
def test_unknown_study_does_not_exist(client):
    assert not client.study_exists(study_uids("9d1e8f2a-0b3c-4d5e-8f60-718293a4b5c6", "left")["study"])


@pytest.mark.orthanc
def test_wrong_password_is_rejected_and_never_logged(orthanc, eyes, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = DicomWebClient(orthanc.url, username=orthanc.username, password="Wr0ng-Pa55word", timeout=10)
    result = wrong.store(eyes["right"])
    assert (result.outcome, result.status) == (REJECT, 401)
    assert "credentials" in result.reason
    assert "Wr0ng-Pa55word" not in caplog.text + repr(wrong) + repr(result)
    assert orthanc.instances_count() == 0


@pytest.mark.orthanc
@pytest.mark.parametrize("status, outcome", [("500", RETRY), ("503", RETRY), ("429", RETRY), ("408", RETRY),
                                             ("403", REJECT), ("413", REJECT)])
def test_server_answers_are_classified(fault_proxy, orthanc, eyes, status, outcome):
    client = DicomWebClient(fault_proxy.url_for(orthanc.url), username=orthanc.username,
                            password=orthanc.password, timeout=10)
    fault_proxy.fail_next(1, status)
    result = client.store(eyes["right"])
    assert (result.outcome, result.status) == (outcome, int(status))
    assert orthanc.instances_count() == 0
    after = client.store(eyes["right"])  # the fault is over: the same request now goes through
    assert after.outcome == STORED and orthanc.instances_count() == 3


@pytest.mark.orthanc
def test_a_hanging_server_is_retry_within_the_timeout(fault_proxy, orthanc, eyes):
    client = DicomWebClient(fault_proxy.url_for(orthanc.url), username=orthanc.username,
                            password=orthanc.password, timeout=1)
    fault_proxy.fail_next(1, "hang")
    started = time.monotonic()
    result = client.store(eyes["right"])
    assert time.monotonic() - started < 3.0 < fault_proxy.hang_seconds
    assert (result.outcome, result.status) == (RETRY, None)
    assert "did not answer within 1 s" in result.reason


@pytest.mark.orthanc
def test_a_dropped_connection_is_retry(fault_proxy, orthanc, eyes):
    client = DicomWebClient(fault_proxy.url_for(orthanc.url), username=orthanc.username,
                            password=orthanc.password, timeout=10)
    fault_proxy.fail_next(1, "drop")
    result = client.store(eyes["right"])
    assert result.outcome == RETRY and result.status is None
    assert client.store(eyes["right"]).ok


def test_no_server_at_all_is_retry(eyes):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket closes
    result = DicomWebClient(f"http://127.0.0.1:{port}/dicom-web", timeout=5).store(eyes["right"])
    assert result.outcome == RETRY and "cannot reach" in result.reason


@pytest.mark.orthanc
def test_studies_survive_a_pacs_restart(orthanc, client, eyes):
    assert client.store(eyes["left"]).ok
    orthanc.restart()
    assert client.study_exists(eyes["left"][0].StudyInstanceUID)
    assert orthanc.instances_count() == 3


def _response(status: int, failures: dict[str, int], stored: list[str]) -> requests.Response:
    """A STOW-RS answer in DICOM JSON, as PS3.18 10.5.3 lays it out."""
    body = {"00081198": {"vr": "SQ", "Value": [
        {"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [code]}}
        for uid, code in failures.items()]},
        "00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [uid]}} for uid in stored]}}
    response = requests.Response()
    response.status_code = status
    response.headers["Content-Type"] = "application/dicom+json"
    response._content = json.dumps(body).encode()
    return response


@pytest.mark.parametrize("status, failures, outcome", [
    (202, {"1.3": 0x0111}, STORED),  # a duplicate is the same instance stored before
    (202, {"1.3": 0xA700}, RETRY),  # out of resources
    (202, {"1.3": 0xC000}, REJECT),  # cannot understand the data
    (202, {"1.3": 0xA700, "1.2": 0xA900}, REJECT),  # one failure that a retry cannot mend
    (409, {"1.3": 0x0110}, REJECT),  # conflict
])
def test_partial_and_failed_stores_are_judged_by_their_reasons(status, failures, outcome):
    stored = [uid for uid in ("1.1", "1.2", "1.3") if uid not in failures]
    result = _classify(_response(status, failures, stored), expected=["1.1", "1.2", "1.3"])
    assert result.outcome == outcome
    assert set(result.failed) == set(failures)


def test_urls_with_credentials_are_refused():
    with pytest.raises(ValueError, match="not in the URL"):
        DicomWebClient("https://sync:secret@pacs.example.org/dicom-web")
    with pytest.raises(ValueError, match="http:// or https://"):
        DicomWebClient("pacs.example.org/dicom-web")
    with pytest.raises(ValueError, match="token or a user name"):
        DicomWebClient("https://pacs.example.org/dicom-web", token="t", username="u", password="p")
