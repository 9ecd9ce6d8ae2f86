"""The patient's slip names the clinic, tells a referred patient where to go and by when, and carries the
visit's identifier as a QR code; a patient who is not referred gets no destination or date."""
from __future__ import annotations

import datetime as dt
import io
import random
import re
import uuid

import cv2
import numpy as np
import pytest
import segno
from babel.dates import format_date

from device.config import ClinicConfig, Config
from device.kiosk import create_app
from device.unit import Unit
from tests.device.kiosk.test_kiosk import PIN, add_workers, sign_in


def read_qr(image: np.ndarray) -> str:
    """What a QR code in `image` (BGR) says, "" where none is read. OpenCV's ArUco-based detector: the
    classic `QRCodeDetector` returns nothing for about one perfect code in a hundred (a visit's random
    identifier made the slip's browser test fail now and then)."""
    return cv2.QRCodeDetectorAruco().detectAndDecode(image)[0]


def test_the_qr_reader_reads_every_visit_code_the_slip_can_carry():
    """400 seeded visit identifiers, each drawn as the slip draws it (segno, error level M, 3 px a module)
    and enlarged as the browser test enlarges its screenshot: every one reads back."""
    rnd = random.Random(0)
    unread = []
    for _ in range(400):
        visit = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        png = io.BytesIO()
        segno.make(visit, error="m").save(png, kind="png", scale=3)
        image = cv2.imdecode(np.frombuffer(png.getvalue(), np.uint8), cv2.IMREAD_COLOR)
        image = cv2.copyMakeBorder(cv2.resize(image, None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST),
                                   40, 40, 40, 40, cv2.BORDER_CONSTANT, value=(255, 255, 255))
        if read_qr(image) != visit:
            unread.append(visit)
    assert unread == []


@pytest.fixture
def unit(tmp_path):
    u = Unit.from_config(Config(data_dir=tmp_path / "unit", device_id="test-unit", simulate=True, clinic=ClinicConfig(
        name="Kisumu East Health Centre", referral_to="County Hospital eye clinic, Monday to Friday", refer_within_days=21)))
    add_workers(u)
    yield u
    u.close()


def _finished_visit(unit, identifier: str, referral: str) -> str:
    visits = unit.visits
    visits.add_patient(identifier, name="Achieng Otieno", year_of_birth=1950, sex="F", consent=True)
    visit = visits.start_visit(identifier, operator="amina", device_id="test-unit")
    for eye in ("right", "left"):
        capture = visits.add_capture(visit, eye, _jpeg(), quality={"gradable": True})
        visits.add_result(capture, {"gradable": True, "vcdr": 0.82 if referral == "refer" else 0.4,
                                    "glaucoma_probability": 0.9 if referral == "refer" else 0.05, "referral": referral})
    visits.finalize_visit(visit)
    return visit


def _jpeg() -> bytes:
    import cv2
    import numpy as np

    return cv2.imencode(".jpg", np.full((64, 64, 3), 90, np.uint8))[1].tobytes()


def _slip(unit, visit: str) -> str:
    client = create_app(unit, secret_key=b"k" * 32, testing=True).test_client()
    assert sign_in(client, "amina", PIN).status_code == 302
    reply = client.get(f"/visits/{visit}/slip")
    assert reply.status_code == 200
    return reply.text


def test_a_referred_patients_slip_says_where_to_go_by_when_and_carries_the_visit(unit):
    visit = _finished_visit(unit, "SL-1", "refer")
    page = _slip(unit, visit)
    assert "Kisumu East Health Centre" in page
    started = dt.datetime.fromisoformat(unit.visits.get_visit(visit)["started_at"]).astimezone().date()
    go_by = format_date(started + dt.timedelta(days=21), "long", locale="en_GB")  # the kiosk's English: 4 March 2025
    go = re.search(r'id="slip-go">(.*?)</p>', page, re.S).group(1)
    assert "County Hospital eye clinic, Monday to Friday" in go and go_by in go
    svg = re.search(r'<figure class="slip-qr" id="slip-qr">(<svg.*?</svg>)', page, re.S).group(1)
    assert svg == segno.make(visit, error="m").svg_inline(scale=3, dark="#000", omitsize=False)
    assert f"Visit {visit}" in page


def test_a_patient_who_is_not_referred_gets_no_destination(unit):
    page = _slip(unit, _finished_visit(unit, "SL-2", "normal"))
    assert 'id="slip-go"' not in page and "Kisumu East Health Centre" in page and 'id="slip-qr"' in page


def test_a_refer_within_days_out_of_range_is_named(tmp_path):
    config = tmp_path / "glaucoscreen.toml"
    config.write_text("[clinic]\nrefer_within_days = 0\n")
    with pytest.raises(ValueError, match=r"\[clinic\] refer_within_days must be 1 to 365 days"):
        Config.load(config)
