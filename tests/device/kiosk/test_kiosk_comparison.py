"""The result and patient pages put an eye's two visits side by side, lined up, with a flicker switch, and say
how each measure changed and whether that is beyond the noise; on the real unit in simulation."""
from __future__ import annotations

import datetime as dt
import re
import sqlite3

import cv2
import numpy as np
import pytest

from device.kiosk import create_app
from device.visits.recording import eye_history, record_eye
from models.synthetic import progress, random_eye, render
from tests.device.kiosk.test_kiosk import add_workers, make_unit, sign_in


@pytest.fixture(scope="module")
def unit(tmp_path_factory):
    u = make_unit(tmp_path_factory.mktemp("comparison") / "unit")
    add_workers(u)
    yield u
    u.close()


def record_two_visits(unit, patient: str) -> list[str]:
    """The right eye three years apart (the first visit moved back in the real log file), its cup grown by 0.24."""
    eye = random_eye(5, glaucoma=False)
    unit.visits.add_patient(patient, name="Moses Otieno", consent=True)
    uuids = []
    for years, seed in ((0.0, 1), (3.0, 2)):
        rgb = render(progress(eye, years, rate=0.08), (768, 768), seed=seed).image
        uuid = unit.visits.start_visit(patient, operator="amina", device_id="test-unit")
        result = unit.pipeline.screen(rgb, history=eye_history(unit.visits, patient, "right"), progression=unit.progression)
        record_eye(unit.visits, uuid, "right", rgb, result)
        unit.visits.skip_eye(uuid, "left", "Eye patch")
        unit.visits.finalize_visit(uuid)
        uuids.append(uuid)
        if years == 0.0:
            then = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3 * 365)).isoformat()
            with sqlite3.connect(unit.config.data_dir / "visits.db") as db:
                db.execute("UPDATE visits SET started_at = ? WHERE uuid = ?", (then, uuid))
    return uuids


@pytest.fixture(scope="module")
def two_visits(unit):
    return record_two_visits(unit, "CMP-1")


@pytest.fixture
def client(unit):
    c = create_app(unit, secret_key=b"k" * 32, testing=True).test_client()
    sign_in(c)
    return c


def _jpeg(response) -> np.ndarray:
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    return cv2.imdecode(np.frombuffer(response.data, np.uint8), cv2.IMREAD_COLOR)


def test_the_result_shows_both_visits_lined_up_with_the_change_and_the_noise(client, two_visits):
    page = client.get(f"/visits/{two_visits[1]}").text
    section = page[page.index('id="compare-right"'):]
    assert 'type="checkbox" class="compare-switch" id="flicker-right"' in section and ">Flicker</label>" in section
    earlier = f"/visits/{two_visits[1]}/eye/right/compare/earlier.jpg"
    current = f"/visits/{two_visits[1]}/eye/right/compare/current.jpg"
    assert earlier in section and current in section
    row = re.search(r'<tr class="change-(\w+)" id="change-right-vcdr">(.*?)</tr>', section, re.S)
    assert row.group(1) == "beyond" and "Yes" in row.group(2) and "Cup-to-disc ratio" in row.group(2)
    assert "larger than two photos of an unchanged eye differ by, at 95% confidence" in section
    assert "Lined up on the vessels" in section
    then, now = _jpeg(client.get(earlier)), _jpeg(client.get(current))
    assert then.shape == now.shape == (360, 360, 3)
    # lined up: the retina around the disc (outside the outlines) matches pixel for pixel
    ring = np.zeros(then.shape[:2], bool)
    ring[:60], ring[-60:] = True, True
    assert np.corrcoef(then[..., 1][ring].ravel(), now[..., 1][ring].ravel())[0, 1] > 0.9
    # each visit's own outlines are drawn: the disc in green, the cup (larger today) in yellow
    yellow = [int(((img[..., 2] > 200) & (img[..., 1] > 180) & (img[..., 0] < 90)).sum()) for img in (then, now)]
    assert yellow[1] > yellow[0] > 0


def test_the_patient_page_shows_the_latest_comparison_of_each_eye(client, two_visits):
    page = client.get("/patients/CMP-1").text
    trend = page[page.index('id="trend-right"'):page.index('id="trend-left"')]
    assert 'id="compare-right"' in trend and f"/visits/{two_visits[1]}/eye/right/compare/earlier.jpg" in trend
    assert 'id="compare-left"' not in page  # the left eye was never compared


def test_no_comparison_image_where_nothing_was_lined_up(client, two_visits):
    assert client.get(f"/visits/{two_visits[0]}/eye/right/compare/earlier.jpg").status_code == 404  # the first visit
    assert client.get(f"/visits/{two_visits[1]}/eye/left/compare/current.jpg").status_code == 404  # skipped
    assert client.get(f"/visits/{two_visits[1]}/eye/right/compare/other.jpg").status_code == 404
    assert 'id="compare-right"' not in client.get(f"/visits/{two_visits[0]}").text
