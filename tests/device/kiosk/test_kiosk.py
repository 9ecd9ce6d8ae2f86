"""The kiosk through Flask's test client, on the real unit in simulation: nothing of a patient without
a session, CSRF, the idle timeout, form data kept on a validation error, security headers, the
preview stream, and clear pages when the camera or the disk fails."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from device.accounts import MAX_FAILURES, Accounts, accounts_path
from device.config import Config
from device.kiosk import create_app
from device.kiosk.charts import vcdr_chart
from device.unit import Unit

PIN = "482913"


def make_unit(data_dir: Path) -> Unit:
    """The whole unit in simulation (optic module on a pseudo-terminal, mock GPIO pins, a synthetic
    eye), with its capture loop running, as `glaucoscreen run --simulate` builds it."""
    unit = Unit.from_config(Config(data_dir=data_dir, device_id="test-unit", simulate=True))
    unit.start()
    return unit


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client, username: str = "amina", pin: str = PIN):
    token = csrf_of(client.get("/signin").text)
    return client.post("/signin", data={"user": username, "pin": pin, "csrf_token": token})


def add_workers(unit: Unit) -> None:
    accounts = Accounts(accounts_path(unit.config.data_dir))
    accounts.add("amina", PIN, admin=True)
    accounts.add("joseph", "1357")
    accounts.add("kofi", "2468")


def photograph_right_eye(unit: Unit, identifier: str, **patient):
    """A new patient, a visit, and the right eye photographed on the unit's simulated camera (the button pressed,
    as a worker would): (visit uuid, photo)."""
    unit.visits.add_patient(identifier, consent=True, **{"name": "Esther Wanjiru", **patient})
    uuid = unit.visits.start_visit(identifier, operator="amina", device_id="test-unit")
    token = unit.begin_capture(uuid, "right")
    assert unit.capture.press_button(token)
    end, photo = time.monotonic() + 30, None
    while photo is None and time.monotonic() < end:
        photo = unit.take_capture(uuid, "right", token)
        time.sleep(0.05)
    assert photo is not None, unit.capture.state()
    return uuid, photo


@pytest.fixture(scope="module")
def unit(tmp_path_factory):
    """One unit for the tests that leave it working (each uses its own patients and workers)."""
    u = make_unit(tmp_path_factory.mktemp("kiosk") / "unit")
    add_workers(u)
    yield u
    u.close()


@pytest.fixture
def fresh_unit(tmp_path):
    """A unit of its own, for a test that breaks it or needs it empty."""
    u = make_unit(tmp_path / "unit")
    yield u
    u.close()


@pytest.fixture
def client(unit):
    return create_app(unit, secret_key=b"k" * 32, testing=True).test_client()


def open_visit(unit: Unit, identifier: str) -> dict:
    """A registered patient with an open visit and one stored photo (a real preview frame of the simulated eye)."""
    unit.visits.add_patient(identifier, name="Grace Achieng", year_of_birth=1958, sex="F", consent=True)
    uuid = unit.visits.start_visit(identifier, operator="amina", device_id="test-unit")
    end = time.monotonic() + 10
    while unit.capture.latest_jpeg() is None and time.monotonic() < end:
        time.sleep(0.05)
    unit.visits.add_capture(uuid, "right", unit.capture.latest_jpeg(), quality={"gradable": False}, source="simulator")
    sha = unit.visits.get_visit(uuid)["eyes"]["right"]["capture"]["photo_sha256"]
    return {"uuid": uuid, "photo": sha, "patient": identifier}


@pytest.fixture(scope="module")
def visit(unit):
    return open_visit(unit, "CL-7")


def test_signin_page_says_how_to_create_the_first_admin(fresh_unit):
    client = create_app(fresh_unit, testing=True).test_client()
    page = client.get("/signin").text
    assert "glaucoscreen user add NAME --admin" in page
    assert client.get("/").headers["Location"].startswith("/signin")


def test_nothing_of_a_patient_without_signing_in(client, visit):
    pages = ["/", "/patients/CL-7", "/patients?q=CL", f"/visits/{visit['uuid']}", f"/visits/{visit['uuid']}/eye/right",
             f"/visits/{visit['uuid']}/eye/right/disc.jpg", "/admin/"]
    for url in pages:
        r = client.get(url)
        assert r.status_code == 302 and r.headers["Location"].startswith("/signin?next="), url
        assert b"Grace" not in r.data
    for url in [f"/images/{visit['photo']}", "/capture/preview.mjpg", "/capture/state"]:
        r = client.get(url)
        assert r.status_code == 401, url
        assert not r.data.startswith(b"\xff\xd8") and b"--frame" not in r.data
    assert sign_in(client).status_code == 302
    assert "Grace Achieng" in client.get("/patients/CL-7").text
    photo = client.get(f"/images/{visit['photo']}")
    assert photo.status_code == 200 and photo.mimetype == "image/jpeg" and photo.data.startswith(b"\xff\xd8")


def test_signin_returns_to_the_page_asked_for_and_never_elsewhere(client):
    token = csrf_of(client.get("/signin?next=/patients/CL-7").text)
    r = client.post("/signin", data={"user": "amina", "pin": PIN, "next": "/patients?q=CL", "csrf_token": token})
    assert r.headers["Location"] == "/patients?q=CL"
    client.post("/signout", data={"csrf_token": csrf_of(client.get("/").text)})
    token = csrf_of(client.get("/signin").text)
    r = client.post("/signin", data={"user": "amina", "pin": PIN, "next": "//evil.example/x", "csrf_token": token})
    assert r.headers["Location"] == "/"


def test_wrong_pins_lock_the_account(client):
    for n in range(1, MAX_FAILURES):
        r = sign_in(client, "kofi", "0000")
        assert r.status_code == 401 and f"{MAX_FAILURES - n} more" in r.text
    r = sign_in(client, "kofi", "0000")
    assert r.status_code == 429 and "Too many wrong PINs" in r.text and "30 seconds" in r.text
    r = sign_in(client, "kofi", "2468")
    assert r.status_code == 429, "the right PIN must not open a locked account"
    assert client.get("/").status_code == 302


def test_post_without_or_with_a_wrong_csrf_token_is_refused(client, unit):
    sign_in(client)
    form = {"identifier": "CL-9", "name": "Kofi", "year_of_birth": "1970", "sex": "M", "consent": "yes"}
    r = client.post("/patients/new", data=form)
    assert r.status_code == 400 and "open too long" in r.text
    r = client.post("/patients/new", data=form | {"csrf_token": "not-the-token"})
    assert r.status_code == 400
    r = client.post("/capture/press", headers={"X-CSRF-Token": "not-the-token"})
    assert r.status_code == 400
    assert unit.visits.get_patient("CL-9") is None
    r = client.post("/patients/new", data=form | {"csrf_token": csrf_of(client.get("/patients/new").text)})
    assert r.status_code == 302 and unit.visits.get_patient("CL-9") is not None
    assert "Traceback" not in r.text


def test_signin_itself_needs_the_token(client):
    r = client.post("/signin", data={"user": "amina", "pin": PIN})
    assert r.status_code == 400
    assert client.get("/").status_code == 302


def test_session_times_out_after_the_configured_idle_minutes(client, unit, visit):
    timeout_s = 60 * unit.config.kiosk.session_timeout_min
    sign_in(client)
    with client.session_transaction() as s:
        s["seen"] = time.time() - timeout_s + 30
    assert client.get("/").status_code == 200  # still within the timeout: a page counts as use
    with client.session_transaction() as s:
        assert s["seen"] > time.time() - 5
        s["seen"] = time.time() - timeout_s + 30
    assert client.get("/capture/state").status_code == 200
    with client.session_transaction() as s:
        assert s["seen"] < time.time() - timeout_s + 31, "the page's own polling must not keep a session alive"
        s["seen"] = time.time() - timeout_s - 1
    r = client.get(f"/visits/{visit['uuid']}")
    assert r.status_code == 302 and r.headers["Location"].startswith("/signin")
    assert "signed out after" in client.get(r.headers["Location"]).text
    assert client.get("/").status_code == 302


def test_register_keeps_what_was_entered_and_says_what_is_wrong(client, unit):
    sign_in(client)
    token = csrf_of(client.get("/patients/new").text)
    r = client.post("/patients/new", data={"identifier": "CL-21", "name": "Esi Mensah", "year_of_birth": "19x8",
                                           "sex": "F", "csrf_token": token})
    assert r.status_code == 422
    assert 'value="CL-21"' in r.text and 'value="Esi Mensah"' in r.text and 'value="19x8"' in r.text
    assert re.search(r'value="F"\s+checked', r.text)
    assert "year of birth as four digits" in r.text and "must agree" in r.text
    assert unit.visits.get_patient("CL-21") is None

    unit.visits.add_patient("CL-22", name="Ama", year_of_birth=1950, sex="F", consent=True)
    r = client.post("/patients/new", data={"identifier": "CL-22", "name": "Other Person", "year_of_birth": "1990",
                                           "sex": "O", "consent": "yes", "csrf_token": token})
    assert r.status_code == 422 and "already registered" in r.text and 'value="Other Person"' in r.text
    assert 'href="/patients/CL-22"' in r.text
    assert unit.visits.get_patient("CL-22")["name"] == "Ama"


def test_security_headers_and_cookie(client, visit):
    r = sign_in(client)
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    for url in ["/patients/CL-7", f"/visits/{visit['uuid']}", f"/images/{visit['photo']}", "/signin"]:
        h = client.get(url).headers
        csp = h["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, url
        assert h["X-Frame-Options"] == "DENY" and h["Referrer-Policy"] == "no-referrer", url
        assert h["Cache-Control"] == "no-store", url
        assert h["X-Content-Type-Options"] == "nosniff"


def test_preview_streams_the_camera_as_mjpeg_and_state_as_json(client):
    sign_in(client)
    r = client.get("/capture/preview.mjpg", buffered=False)
    assert r.status_code == 200 and r.mimetype == "multipart/x-mixed-replace"
    first = next(iter(r.response))
    r.close()
    head, _, body = first.partition(b"\r\n\r\n")
    assert head.startswith(b"--frame\r\nContent-Type: image/jpeg")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    assert body[:2] == b"\xff\xd8" and body[length - 2:length] == b"\xff\xd9"
    state = client.get("/capture/state").json
    assert set(state) >= {"instruction", "gradable", "streak", "needed", "captured", "error"}
    assert isinstance(state["instruction"], str) and state["instruction"]


def test_skipping_both_eyes_finishes_a_visit_with_a_slip(client, unit):
    sign_in(client)
    unit.visits.add_patient("CL-30", name="Yaw", year_of_birth=1944, sex="M", consent=True)
    token = csrf_of(client.get("/patients/CL-30").text)
    capture_page = client.post("/visits", data={"patient": "CL-30", "csrf_token": token}).headers["Location"]
    assert capture_page.endswith("/eye/right")
    assert "Right eye" in client.get(capture_page).text
    assert unit.capture.state()["armed_eye"] == "right"
    r = client.post(capture_page + "/skip", data={"reason": "other", "other": "", "csrf_token": token})
    assert r.status_code == 422 and "Write why" in r.text
    r = client.post(capture_page + "/skip", data={"reason": "declined", "csrf_token": token})
    assert r.headers["Location"].endswith("/eye/left")
    r = client.post(r.headers["Location"] + "/skip", data={"reason": "other", "other": "artificial eye", "csrf_token": token})
    result_page = r.headers["Location"]
    page = client.get(result_page).text
    assert "artificial eye" in page and "did not want" in page and 'id="finish"' in page
    assert unit.capture.state()["armed_eye"] is None
    slip = client.post(result_page + "/finish", data={"csrf_token": token}).headers["Location"]
    assert "Not photographed: artificial eye" in client.get(slip).text
    visit_uuid = result_page.rsplit("/", 1)[1]
    assert unit.visits.get_visit(visit_uuid)["status"] == "finished"
    assert "Yaw" in client.get("/").text


def test_a_camera_that_vanished_gives_a_page_that_says_what_to_do(fresh_unit):
    unit = fresh_unit
    add_workers(unit)
    client = create_app(unit, testing=True).test_client()
    visit = open_visit(unit, "CL-8")
    sign_in(client)
    unit.camera.simulate_disconnect()
    end = time.monotonic() + 10
    while not unit.capture.state()["error"] and time.monotonic() < end:
        time.sleep(0.05)
    r = client.get(f"/visits/{visit['uuid']}/eye/right")
    assert r.status_code == 503
    assert "The camera is not working" in r.text and "cable" in r.text and "Traceback" not in r.text
    assert client.get("/capture/state").json["error"]
    assert "Camera:" in client.get("/").text


def test_a_full_disk_gives_a_page_that_says_what_to_do(client, unit, monkeypatch):
    sign_in(client)
    monkeypatch.setattr(unit.visits, "min_free_bytes", 2**62)  # more than any disk has: start_visit finds it full
    token = csrf_of(client.get("/patients/new").text)
    r = client.post("/patients/new", data={"identifier": "CL-40", "name": "Abena", "year_of_birth": "1966", "sex": "F",
                                           "consent": "yes", "csrf_token": token})
    assert r.status_code == 507
    assert "storage is full" in r.text and "Let the unit send its visits" in r.text and "Traceback" not in r.text


def test_admin_page_is_for_admins_only(client):
    sign_in(client, "joseph", "1357")
    assert client.get("/admin/").status_code == 403
    client.post("/signout", data={"csrf_token": csrf_of(client.get("/").text)})
    sign_in(client)
    token = csrf_of(client.get("/admin/").text)
    r = client.post("/admin/users", data={"username": "esi", "pin": "2468", "pin_again": "2486", "csrf_token": token})
    assert r.status_code == 422 and "differ" in r.text and 'value="esi"' in r.text
    assert ">esi<" not in client.get("/admin/").text
    r = client.post("/admin/users", data={"username": "esi", "pin": "2468", "pin_again": "2468", "csrf_token": token})
    assert r.status_code == 302 and ">esi<" in client.get("/admin/").text


def test_vcdr_chart_puts_visits_on_a_time_axis():
    history = [{"time": "2024-01-10T09:00:00.000+00:00", "vcdr": 0.40, "referral": "normal"},
               {"time": "2024-07-10T09:00:00.000+00:00", "vcdr": None, "referral": "rescreen"},
               {"time": "2025-01-10T09:00:00.000+00:00", "vcdr": 0.50, "referral": "normal"},
               {"time": "2026-01-10T09:00:00.000+00:00", "vcdr": 0.80, "referral": "refer"}]
    chart = vcdr_chart(history)
    xs = [p["x"] for p in chart["points"]]
    ys = [p["y"] for p in chart["points"]]
    assert len(xs) == 3, "a visit without a measurement is not a point"
    assert chart["left"] < xs[0] < xs[-1] < chart["right"]
    assert xs[1] - xs[0] == pytest.approx((xs[2] - xs[1]) * 366 / 365, rel=0.01), "x follows the dates, not the visit count"
    assert ys[0] > ys[1] > ys[2], "a larger cup is drawn higher"
    assert chart["change"] == pytest.approx(0.40)
    assert [p["referral"] for p in chart["points"]] == ["normal", "normal", "refer"]
    assert vcdr_chart([]) is None and vcdr_chart(history[1:2]) is None


def test_a_damaged_model_gives_a_clear_page_not_a_dead_kiosk(tmp_path, monkeypatch):
    """The unit starts without its screening model (a damaged file is refused by its hash) and the
    kiosk says so on the home page; visits can still be looked up."""
    from device.screening.pipeline import ScreeningPipeline
    from models.runtime.engine import EngineError

    def damaged(*a, **k):
        raise EngineError("model file segmentation.onnx is damaged (sha256 0123..., expected 4567...); reinstall the unit's models")

    monkeypatch.setattr(ScreeningPipeline, "from_artifacts", classmethod(lambda cls, *a, **k: damaged()))
    u = make_unit(tmp_path / "unit")
    try:
        assert u.pipeline is None and u.status()["models"]["ok"] is False
        add_workers(u)
        c = create_app(u, secret_key=b"k" * 32, testing=True).test_client()
        sign_in(c)
        home = c.get("/")
        assert home.status_code == 200
        assert "damaged" in home.text and "Traceback" not in home.text
        with pytest.raises(EngineError, match="damaged"):
            u.screen_and_record("no-visit", "right", None)
    finally:
        u.close()


def test_a_refused_result_is_shown_with_the_servers_reason_and_can_be_sent_again(fresh_unit):
    """Sync quarantines what the PACS refuses for good; the admin sees why and queues it again."""
    u = fresh_unit
    add_workers(u)
    u.visits.add_patient("CL-77", name="Kwame", consent=True)
    uuid = u.visits.start_visit("CL-77", operator="amina", device_id="test-unit")
    u.visits.skip_eye(uuid, "left", "eye closed")
    capture = u.visits.add_capture(uuid, "right", b"\xff\xd8photo\xff\xd9", quality={"gradable": True}, source="simulator")
    u.visits.add_result(capture, {"gradable": True, "referral": "normal", "vcdr": 0.4, "glaucoma_probability": 0.1})
    (item,) = u.visits.finalize_visit(uuid)
    u.visits.outbox_mark_failed(item, "HTTP 400: patient ID conflicts with an existing study", quarantine=True)
    c = create_app(u, secret_key=b"k" * 32, testing=True).test_client()
    sign_in(c, "joseph", "1357")
    assert c.get("/admin/sync").status_code == 403
    c.post("/signout", data={"csrf_token": csrf_of(c.get("/").text)})
    sign_in(c)
    page = c.get("/admin/sync").text
    assert "patient ID conflicts" in page and "right eye" in page
    assert c.post(f"/admin/sync/{item}/retry").status_code == 400          # no CSRF token
    r = c.post(f"/admin/sync/{item}/retry", data={"csrf_token": csrf_of(page)})
    assert r.status_code == 302
    assert u.visits.outbox_counts() == {"pending": 1, "sent": 0, "quarantined": 0}
    assert "Nothing: every result" in c.get("/admin/sync").text


def test_a_kiosk_still_passes_the_quality_gate_once(unit, monkeypatch):
    """The capture loop judged the still before handing it over; the screening keeps that report rather
    than running the gate on the same full-resolution photo again while the worker waits."""
    import numpy as np

    from device.screening.quality import QualityGate

    uuid, photo = photograph_right_eye(unit, "QG-1")

    real, judged = QualityGate.assess, []

    def counting(gate, rgb):
        if rgb is photo.rgb or np.array_equal(rgb, photo.rgb):  # the preview keeps being judged meanwhile
            judged.append(gate)
        return real(gate, rgb)

    monkeypatch.setattr(QualityGate, "assess", counting)
    out = unit.screen_and_record(uuid, "right", photo)
    assert judged == [], "the screening ran the quality gate again on a still the capture loop had judged"
    assert out["quality"] == photo.quality.to_dict()
    assert unit.visits.get_visit(uuid)["eyes"]["right"]["result"]["screening"]["quality"] == photo.quality.to_dict()


def test_the_result_says_whether_the_disc_changed_since_the_first_visit(client, unit):
    """Two visits three years apart (the first moved back in the real log file), the cup grown by 0.24."""
    import datetime as dt
    import sqlite3

    from device.visits.recording import eye_history, record_eye
    from models.synthetic import progress, random_eye, render

    eye = random_eye(5, glaucoma=False)
    unit.visits.add_patient("PR-1", name="Moses Otieno", consent=True)
    visits = []
    for years, seed in ((0.0, 1), (3.0, 2)):
        rgb = render(progress(eye, years, rate=0.08), (768, 768), seed=seed).image
        uuid = unit.visits.start_visit("PR-1", operator="amina", device_id="test-unit")
        result = unit.pipeline.screen(rgb, history=eye_history(unit.visits, "PR-1", "right"), progression=unit.progression)
        record_eye(unit.visits, uuid, "right", rgb, result)
        visits.append(uuid)
        if years == 0.0:
            unit.visits.finalize_visit(uuid)
            then = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3 * 365)).isoformat()
            with sqlite3.connect(unit.config.data_dir / "visits.db") as db:
                db.execute("UPDATE visits SET started_at = ? WHERE uuid = ?", (then, uuid))
    sign_in(client)
    page = client.get(f"/visits/{visits[1]}").text
    assert "Changed" in page and "has changed since the first visit" in page
    first = client.get(f"/visits/{visits[0]}").text
    assert "No earlier photo of this eye to compare with." in first


def _open_capture_page(client, unit, identifier: str, name: str) -> tuple[str, str, str]:
    """A registered patient, a visit started from their page: (capture page path, its capture token, CSRF token)."""
    unit.visits.add_patient(identifier, name=name, year_of_birth=1950, sex="F", consent=True)
    csrf = csrf_of(client.get(f"/patients/{identifier}").text)
    page = client.post("/visits", data={"patient": identifier, "csrf_token": csrf}).headers["Location"]
    html = client.get(page).text
    return page, re.search(r'name="token" value="([^"]+)"', html).group(1), csrf


def _wait_for_photo(unit, timeout_s: float = 30) -> None:
    end = time.monotonic() + timeout_s
    while not unit.capture.state()["captured"]:
        assert time.monotonic() < end, "the capture loop took no photo"
        time.sleep(0.05)


def test_a_capture_page_whose_camera_was_taken_over_records_nothing(client, unit):
    """Two pages of one worker: Alpha's right eye, then Beta's. Beta's photo can never be recorded from
    Alpha's page, and Alpha's page cannot press the button for Beta's eye."""
    sign_in(client)
    alpha_page, alpha_token, csrf = _open_capture_page(client, unit, "CL-ALPHA", "Alpha")
    beta_page, beta_token, _ = _open_capture_page(client, unit, "CL-BETA", "Beta")
    assert alpha_token != beta_token
    state = client.get("/capture/state", query_string={"token": alpha_token}).json
    assert state["stale"] is True and state["captured"] is False
    assert client.get("/capture/state", query_string={"token": beta_token}).json["stale"] is False

    r = client.post("/capture/press", data={"token": alpha_token}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 409 and "another patient" in r.json["message"]
    assert client.post("/capture/press", data={"token": beta_token}, headers={"X-CSRF-Token": csrf}).status_code == 204
    _wait_for_photo(unit)

    r = client.post(alpha_page + "/accept", data={"token": alpha_token, "csrf_token": csrf})
    assert r.status_code == 409 and "in use for another patient" in r.text
    alpha_visit, beta_visit = alpha_page.split("/")[-3], beta_page.split("/")[-3]
    assert unit.visits.get_visit(alpha_visit)["eyes"]["right"]["captures"] == 0
    r = client.post(beta_page + "/accept", data={"token": "", "csrf_token": csrf})
    assert r.status_code == 409, "a photo is never handed out without the token that armed the camera"
    r = client.post(beta_page + "/accept", data={"token": beta_token, "csrf_token": csrf})
    assert r.status_code == 302 and r.headers["Location"].endswith("/eye/left")
    assert unit.visits.get_visit(beta_visit)["eyes"]["right"]["captures"] == 1
    assert unit.visits.get_visit(alpha_visit)["eyes"]["right"]["captures"] == 0

    # leaving Alpha's visit (skip) does not disarm the camera that Beta's left eye now holds
    client.get(r.headers["Location"])
    assert unit.capture.state()["armed_eye"] == "left"
    client.post(alpha_page + "/skip", data={"reason": "declined", "csrf_token": csrf})
    assert unit.capture.state()["armed_eye"] == "left"


def test_a_done_eye_is_armed_again_only_by_retake(client, unit):
    """Back (or a reload) onto the capture page of an eye already photographed never re-arms it."""
    sign_in(client)
    page, token, csrf = _open_capture_page(client, unit, "CL-BACK", "Back")
    client.post(page + "/skip", data={"reason": "declined", "csrf_token": csrf})
    unit.capture.cancel()
    r = client.get(page)
    assert r.status_code == 302 and r.headers["Location"].endswith("/eye/left")
    assert unit.capture.state()["armed_eye"] is None
    assert "is done" in client.get(r.headers["Location"]).text
    r = client.post(page + "/retake", data={"csrf_token": csrf})
    assert r.headers["Location"].endswith("/eye/right")
    assert "Right eye" in client.get(page).text and unit.capture.state()["armed_eye"] == "right"


# -- sessions the server ends (issue 17, item 9) ---------------------------------------------------
COOKIE = "glaucoscreen_session"


def copy_of_session(app, client):
    """Another browser holding a copy of `client`'s session cookie, as someone who copied it would."""
    thief = app.test_client()
    thief.set_cookie(COOKIE, client.get_cookie(COOKIE).value)
    assert thief.get("/").status_code == 200, "the copy works while the session does"
    return thief


def refused(client) -> bool:
    r = client.get("/patients/CL-7")
    return r.status_code == 302 and r.headers["Location"].startswith("/signin") and "Grace" not in r.text


def test_a_copied_cookie_stops_working_at_sign_out(unit, visit):
    app = create_app(unit, secret_key=b"k" * 32, testing=True)
    worker = app.test_client()
    sign_in(worker, "joseph", "1357")
    thief = copy_of_session(app, worker)
    worker.post("/signout", data={"csrf_token": csrf_of(worker.get("/").text)})
    assert refused(thief)
    assert "signed out" in thief.get("/signin").text
    sign_in(worker, "joseph", "1357")
    assert worker.get("/patients/CL-7").status_code == 200, "signing in again makes a new session that works"
    assert refused(thief)


def test_a_new_pin_ends_every_session_of_the_account_but_the_admins_own(unit, visit):
    app = create_app(unit, secret_key=b"k" * 32, testing=True)
    Accounts(accounts_path(unit.config.data_dir)).add("pin-change", "1111")
    worker, admin = app.test_client(), app.test_client()
    sign_in(worker, "pin-change", "1111")
    thief = copy_of_session(app, worker)
    sign_in(admin)
    admin_thief = copy_of_session(app, admin)
    token = csrf_of(admin.get("/admin/").text)
    r = admin.post("/admin/pin", data={"username": "pin-change", "pin": "2222", "pin_again": "2222", "csrf_token": token})
    assert r.status_code == 302
    assert refused(worker) and refused(thief)
    r = admin.post("/admin/pin", data={"username": "amina", "pin": PIN, "pin_again": PIN, "csrf_token": token})
    assert r.status_code == 302
    assert admin.get("/admin/").status_code == 200, "the admin who changed their own PIN stays signed in on this screen"
    assert refused(admin_thief), "but a copy of their cookie does not"


def test_a_lock_ends_every_session_of_the_account(unit, visit):
    app = create_app(unit, secret_key=b"k" * 32, testing=True)
    Accounts(accounts_path(unit.config.data_dir)).add("to-lock", "1111")
    worker = app.test_client()
    sign_in(worker, "to-lock", "1111")
    thief = copy_of_session(app, worker)
    guesser = app.test_client()
    for _ in range(MAX_FAILURES):
        r = sign_in(guesser, "to-lock", "0000")
    assert r.status_code == 429
    assert refused(worker) and refused(thief)


def test_removing_an_account_ends_its_sessions_even_if_the_name_comes_back(unit, visit):
    app = create_app(unit, secret_key=b"k" * 32, testing=True)
    accounts = Accounts(accounts_path(unit.config.data_dir))
    accounts.add("to-remove", "1111")
    worker, admin = app.test_client(), app.test_client()
    sign_in(worker, "to-remove", "1111")
    thief = copy_of_session(app, worker)
    sign_in(admin)
    r = admin.post("/admin/users/to-remove/remove", data={"csrf_token": csrf_of(admin.get("/admin/").text)})
    assert r.status_code == 302
    assert refused(thief)
    accounts.add("to-remove", "1111")  # someone else given the same name: the old cookie is still not theirs
    assert refused(worker)


# -- where sign-in may send the worker (issue 17, item 10) --------------------------------------------
@pytest.mark.parametrize("target", [
    "//evil.example/x", "/\t/evil.example", "/\n/evil.example", "/\r\n/evil.example", "\t//evil.example", " //evil.example",
    "/\\evil.example", "\\\\evil.example", "https://evil.example/", "http:/evil.example", "javascript:alert(1)",
    "/.//evil.example", "/a/..//evil.example", "/%2e//evil.example", "/\x00/evil.example", "/\x7f/evil.example",
    "evil.example", "", "/\u0085/evil.example",
])
def test_signin_never_sends_the_worker_off_the_kiosk(client, target):
    token = csrf_of(client.get("/signin").text)
    r = client.post("/signin", data={"user": "amina", "pin": PIN, "next": target, "csrf_token": token})
    assert r.status_code == 302, r.text
    assert r.headers["Location"] == "/"


@pytest.mark.parametrize("query", ["next=/%09/evil", "next=/%0a/evil", "next=/%0d%0a/evil", "next=%2F%2Fevil"])
def test_signin_from_a_crafted_link_stays_on_the_kiosk(client, query):
    token = csrf_of(client.get("/signin?" + query).text)
    r = client.post("/signin?" + query, data={"user": "amina", "pin": PIN, "csrf_token": token})
    assert r.status_code == 302 and r.headers["Location"] == "/"


def test_signin_still_returns_to_any_kiosk_page(client):
    for target in ["/patients/CL-7", "/patients?q=Grace%20A", "/visits/abc/eye/right", "/patients/Nguy%E1%BB%85n"]:
        token = csrf_of(client.get("/signin").text)
        r = client.post("/signin", data={"user": "amina", "pin": PIN, "next": target, "csrf_token": token})
        assert r.headers["Location"] == target


# -- only the kiosk's own host names (issue 17, item 11) ----------------------------------------------
def test_a_page_that_rebinds_its_name_to_the_kiosk_reaches_nothing(unit):
    """DNS rebinding: a page at evil.example makes its name resolve to 127.0.0.1; its requests then carry
    Host: evil.example. None reaches the sign-in form, and none counts as a wrong PIN."""
    app = create_app(unit, secret_key=b"k" * 32, testing=True)
    attacker = app.test_client()
    for host in ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "localhost.evil.example", "", "[::2]:8080"]:
        page = attacker.get("/signin", headers={"Host": host})
        assert page.status_code == 400 and "Who are you?" not in page.text and "csrf_token" not in page.text, host
        assert "Not the kiosk" in page.text
    for _ in range(MAX_FAILURES + 1):
        r = attacker.post("/signin", data={"user": "joseph", "pin": "0000"}, headers={"Host": "evil.example:8080"})
        assert r.status_code == 400
    assert Accounts(accounts_path(unit.config.data_dir)).get("joseph")["locked_for_s"] == 0
    assert attacker.get("/healthz", headers={"Host": "evil.example"}).status_code == 400
    for host in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST", "localhost", "127.0.0.1", "[::1]:8080"]:
        assert attacker.get("/signin", headers={"Host": host}).status_code == 200, host


def test_the_allowed_host_names_are_a_setting(unit, tmp_path):
    from device.kiosk.security import WILDCARD_ADDRESSES, allowed_hosts

    toml = tmp_path / "glaucoscreen.toml"
    toml.write_text('[kiosk]\nhost = "10.0.7.21"\nallowed_hosts = ["glaucoscreen-7.clinic.example", "10.0.7.21"]\n')
    assert Config.load(toml).kiosk.allowed_hosts == ["glaucoscreen-7.clinic.example", "10.0.7.21"]
    toml.write_text('[kiosk]\nallowed_hosts = "glaucoscreen-7.clinic.example"\n')
    with pytest.raises(ValueError, match="allowed_hosts must be a list of names"):
        Config.load(toml)

    assert allowed_hosts("127.0.0.1") == {"127.0.0.1", "localhost", "::1"}
    assert allowed_hosts("10.0.7.21") == {"127.0.0.1", "localhost", "::1", "10.0.7.21"}
    assert WILDCARD_ADDRESSES >= {"", "::"} and len(WILDCARD_ADDRESSES) == 3  # and IPv4's any-address
    for wildcard in WILDCARD_ADDRESSES:  # a kiosk configured for every interface: its own names, never the wildcard
        everywhere = allowed_hosts(wildcard)
        assert wildcard not in everywhere and {"127.0.0.1", "localhost"} <= everywhere and len(everywhere) == 5
    assert allowed_hosts("127.0.0.1", ["Kiosk.Clinic.Example", " "]) == {"kiosk.clinic.example"}

    config = unit.config
    before = (config.kiosk.host, list(config.kiosk.allowed_hosts))
    try:
        config.kiosk.allowed_hosts = ["kiosk.clinic.example"]
        client = create_app(unit, secret_key=b"k" * 32, testing=True).test_client()
        assert client.get("/signin", headers={"Host": "kiosk.clinic.example:8080"}).status_code == 200
        assert client.get("/signin", headers={"Host": "localhost"}).status_code == 400
        config.kiosk.allowed_hosts, config.kiosk.host = [], "192.0.2.7"
        client = create_app(unit, secret_key=b"k" * 32, testing=True).test_client()
        assert client.get("/signin", headers={"Host": "192.0.2.7:8080"}).status_code == 200
        assert client.get("/signin", headers={"Host": "192.0.2.8:8080"}).status_code == 400
    finally:
        config.kiosk.host, config.kiosk.allowed_hosts = before
