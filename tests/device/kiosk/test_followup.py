"""Referred patients followed up: registration takes a phone and a village, the Referred list shows each
referred visit with its day to go by, the worker records who was seen, the overdue are counted on the
home page, and the USB export carries the same list."""
from __future__ import annotations

import csv
import datetime as dt
import time

import cv2
import numpy as np
import pytest

from device.kiosk import create_app
from device.outbox.usb import REFERRED_FIELDS, REFERRED_NAME, export
from device.visits.followup import follow_up
from device.visits.visitlog import VisitLog
from tests.device.kiosk.test_kiosk import PIN, csrf_of, sign_in, unit  # noqa: F401 (a fixture)


def _client(unit):
    client = create_app(unit, secret_key=b"k" * 32, testing=True).test_client()
    assert sign_in(client, "amina", PIN).status_code == 302
    return client


def _photo() -> bytes:
    return cv2.imencode(".jpg", np.full((48, 48, 3), 100, np.uint8))[1].tobytes()


def _visit(unit, identifier: str, referrals: tuple[str, str], **patient) -> str:
    visits = unit.visits
    if visits.get_patient(identifier) is None:
        visits.add_patient(identifier, name=f"Patient {identifier}", year_of_birth=1950, sex="F", consent=True, **patient)
    visit = visits.start_visit(identifier, operator="amina", device_id="test-unit")
    for eye, referral in zip(("right", "left"), referrals):
        capture = visits.add_capture(visit, eye, _photo(), quality={"gradable": True})
        visits.add_result(capture, {"gradable": True, "vcdr": 0.5, "glaucoma_probability": 0.5, "referral": referral})
    visits.finalize_visit(visit)
    return visit


def test_registration_keeps_an_optional_phone_and_village(unit):
    client = _client(unit)
    token = csrf_of(client.get("/patients/new").text)
    form = {"identifier": "FU-REG", "name": "Wanjiru", "year_of_birth": "1949", "sex": "F", "consent": "yes",
            "csrf_token": token}
    bad = client.post("/patients/new", data=form | {"phone": "call me"})
    assert bad.status_code == 422 and "phone number with digits only" in bad.text
    ok = client.post("/patients/new", data=form | {"phone": "+254 712 345 678", "address": "Kanyawegi village"})
    assert ok.status_code == 302
    person = unit.visits.get_patient("FU-REG")
    assert (person["phone"], person["address"]) == ("+254 712 345 678", "Kanyawegi village")
    assert "+254 712 345 678" in client.get("/patients/FU-REG").text


def test_the_referred_list_shows_who_is_due_who_is_overdue_and_records_who_was_seen(unit):
    referred = _visit(unit, "FU-1", ("normal", "refer"), phone="0712000001")
    _visit(unit, "FU-2", ("normal", "normal"))  # not referred: not on the list
    rows = [r for r in unit.visits.referred_visits() if r["identifier"].startswith("FU-")]
    assert [r["visit_uuid"] for r in rows] == [referred]
    client = _client(unit)
    page = client.get("/referred").text
    assert f'id="referred-{referred}"' in page and "0712000001" in page and "Go by" in page
    home = client.get("/").text
    assert "Referred patients:" in home
    token = csrf_of(page)
    reply = client.post(f"/referred/{referred}/attended", data={"csrf_token": token}, follow_redirects=True)
    assert "Recorded: seen at the eye clinic on" in reply.text
    assert f'id="referred-{referred}"' not in reply.text  # only those not yet seen, by default
    assert f'id="referred-{referred}"' in client.get("/referred?show=all").text
    [row] = [r for r in unit.visits.referred_visits() if r["visit_uuid"] == referred]
    assert row["attended_on"] == dt.date.today().isoformat() and row["recorded_by"] == "amina"
    # a visit that referred nobody cannot be marked, and the day seen cannot be in the future
    with pytest.raises(ValueError, match="did not refer"):
        unit.visits.mark_attended(_visit(unit, "FU-3", ("normal", "normal")), on=dt.date.today(), by="amina")
    with pytest.raises(ValueError, match="between the visit and today"):
        unit.visits.mark_attended(referred, on=dt.date.today() + dt.timedelta(days=1), by="amina")


@pytest.mark.parametrize(("zone", "now_utc", "seen_on"), [
    # evening west of UTC: the visit's UTC day is already tomorrow, the clinic's day is still today
    ("America/Lima", dt.datetime(2026, 12, 6, 2, 0, tzinfo=dt.timezone.utc), dt.date(2026, 12, 5)),
    # just after midnight east of UTC: the clinic's day is tomorrow, the UTC day is still today
    ("Asia/Kolkata", dt.datetime(2026, 12, 5, 19, 0, tzinfo=dt.timezone.utc), dt.date(2026, 12, 6)),
])
def test_the_day_seen_is_checked_against_the_clinics_calendar_not_utcs(tmp_path, monkeypatch, zone, now_utc,
                                                                        seen_on):
    """The worker writes the clinic's day; the visit was stored in UTC. A patient seen today at the clinic
    of a visit made this morning is recorded whatever the offset."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        clock = {"now": now_utc - dt.timedelta(hours=1)}
        visits = VisitLog(tmp_path / "data", clock=lambda: clock["now"])
        visits.add_patient("TZ-1", name="Patient TZ", year_of_birth=1950, sex="F", consent=True)
        visit = visits.start_visit("TZ-1", operator="amina", device_id="test-unit")
        for eye in ("right", "left"):
            capture = visits.add_capture(visit, eye, _photo(), quality={"gradable": True})
            visits.add_result(capture, {"gradable": True, "vcdr": 0.7, "glaucoma_probability": 0.9,
                                        "referral": "refer"})
        visits.finalize_visit(visit)
        clock["now"] = now_utc
        assert now_utc.astimezone().date() == seen_on  # the clinic's today
        visits.mark_attended(visit, on=seen_on, by="amina")
        [row] = visits.referred_visits()
        assert row["attended_on"] == seen_on.isoformat()
        with pytest.raises(ValueError, match="between the visit and today"):
            visits.mark_attended(visit, on=seen_on + dt.timedelta(days=1), by="amina")
        with pytest.raises(ValueError, match="between the visit and today"):
            visits.mark_attended(visit, on=(now_utc - dt.timedelta(hours=1)).astimezone().date() - dt.timedelta(days=1),
                                 by="amina")
        visits.close()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_overdue_is_counted_from_the_visit_day_and_the_clinics_days():
    started = dt.datetime(2026, 1, 10, 9, 0).astimezone().isoformat()
    rows = [{"visit_uuid": "a", "started_at": started, "attended_on": None},
            {"visit_uuid": "b", "started_at": started, "attended_on": "2026-01-20"}]
    on_time = follow_up(rows, 30, dt.date(2026, 2, 9))
    assert [r["state"] for r in on_time] == ["due", "attended"] and on_time[0]["go_by"] == dt.date(2026, 2, 9)
    late = follow_up(rows, 30, dt.date(2026, 2, 12))
    assert (late[0]["state"], late[0]["days_overdue"]) == ("overdue", 3)


def test_the_usb_export_carries_the_referred_list(unit, tmp_path):
    referred = _visit(unit, "FU-X", ("refer", "normal"), address="Dunga beach")
    stick = tmp_path / "stick"
    stick.mkdir()
    out = export(unit.visits, stick, visit_uuid=referred, device_id="test-unit", refer_within_days=14,
                 today=dt.date.today() + dt.timedelta(days=20))
    with open(out["referred_csv"], newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == REFERRED_FIELDS
        rows = {r["visit"]: r for r in reader}
    assert (stick / REFERRED_NAME).exists()
    row = rows[referred]
    assert (row["patient"], row["address"], row["state"], row["days_overdue"]) == ("FU-X", "Dunga beach", "overdue", "6")
