"""A visit that cannot be finished is cancelled with a reason, and one left unfinished is closed as
abandoned: either way what was photographed is kept, queued and sent to a real PACS, and the eyes
not photographed say why."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from device.config import Config, SyncConfig
from device.kiosk import create_app
from device.lab.sync_trials import sample_eyes
from device.outbox.sync import run_sync
from device.visits.visitlog import VisitLog
from tests.device.kiosk.test_kiosk import PIN, csrf_of, sign_in, unit  # noqa: F401 (a fixture)

pytest_plugins = ["tests.orthanc"]


class Clock:
    def __init__(self, t: dt.datetime):
        self.t = t

    def __call__(self) -> dt.datetime:
        return self.t


def _one_eye_photographed(visits: VisitLog, eyes, identifier: str) -> str:
    visits.add_patient(identifier, name=f"Patient {identifier}", year_of_birth=1955, sex="M", consent=True)
    visit = visits.start_visit(identifier, operator="amina", device_id="test-unit")
    capture = visits.add_capture(visit, "right", eyes[0].photo_jpeg, quality={"gradable": True})
    visits.add_result(capture, eyes[0].result, masks_png=eyes[0].masks_png)
    return visit


def test_a_worker_cancels_a_visit_with_a_reason_and_its_photo_is_kept_and_queued(unit, shared_data):
    visit = _one_eye_photographed(unit.visits, sample_eyes(shared_data, 1), "CX-1")
    client = create_app(unit, secret_key=b"k" * 32, testing=True).test_client()
    assert sign_in(client, "amina", PIN).status_code == 302
    page = client.get(f"/visits/{visit}").text
    assert 'id="cancel-visit-link"' in page
    form = client.get(f"/visits/{visit}/cancel").text
    refused = client.post(f"/visits/{visit}/cancel", data={"csrf_token": csrf_of(form)})
    assert refused.status_code == 422 and "Choose why" in refused.text
    assert unit.visits.get_visit(visit)["status"] == "open"
    done = client.post(f"/visits/{visit}/cancel", data={"reason": "left", "csrf_token": csrf_of(form)},
                       follow_redirects=True)
    assert "visit was cancelled. Photos already taken are kept and sent." in done.text
    record = unit.visits.get_visit(visit)
    assert record["status"] == "finished"
    assert record["closed_reason"] == "Visit cancelled: The patient left before the photos were taken"
    assert record["eyes"]["left"]["skipped"] == record["closed_reason"]
    assert [item["eye"] for item in record["outbox"]] == ["right"]  # the photo taken goes to the PACS


def test_a_finished_visit_cannot_be_cancelled(unit, shared_data):
    visit = _one_eye_photographed(unit.visits, sample_eyes(shared_data, 1), "CX-2")
    unit.visits.skip_eye(visit, "left", "patient declined")
    unit.visits.finalize_visit(visit)
    with pytest.raises(ValueError, match="already finished"):
        unit.visits.close_visit(visit, "too late")


@pytest.mark.orthanc
def test_a_visit_left_unfinished_is_closed_as_abandoned_and_sent_by_the_sync(orthanc, tmp_path, shared_data):
    eyes = sample_eyes(shared_data, 1)
    clock = Clock(dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=13))
    data = tmp_path / "unit"
    with VisitLog(data, clock=clock) as visits:
        old = _one_eye_photographed(visits, eyes, "AB-1")
        clock.t = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
        recent = _one_eye_photographed(visits, eyes, "AB-2")
    password = tmp_path / "pw"
    password.write_text(orthanc.password)
    cfg = Config(data_dir=Path(data), device_id="GSE-TEST", abandon_visit_after_h=12.0,
                 sync=SyncConfig(url=orthanc.url, username=orthanc.username, password_file=str(password)))
    out = run_sync(cfg, once=True)
    assert out["sent"] == 1 and out["outbox"] == {"pending": 0, "sent": 1, "quarantined": 0}
    with VisitLog(data) as visits:
        closed, still_open = visits.get_visit(old), visits.get_visit(recent)
    assert closed["status"] == "finished" and closed["closed_reason"] == "Abandoned: not finished within 12 hours"
    assert closed["eyes"]["left"]["skipped"] == closed["closed_reason"]
    assert still_open["status"] == "open" and still_open["closed_reason"] is None
