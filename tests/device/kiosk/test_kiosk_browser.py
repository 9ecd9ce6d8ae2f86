"""The kiosk in a real Chromium (Debian's, driven by Playwright) against the app served by waitress, on
the real unit in simulation: a health worker's whole visit, the PIN lock, an administrator's rounds of
the operations pages (models, devices, settings, storage, export to a USB folder), and the layout at
the unit's two screen sizes (no sideways scrolling at 800x480, touch targets at least 44 px tall).

Screenshots of every page at both sizes land in test-artifacts/screenshots/ for a person to look at.
"""
from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
import waitress

from device.accounts import MAX_FAILURES
from device.config import overrides_path
from device.kiosk import create_app
from device.lab.bench_kiosk import CHROMIUM, CHROMIUM_ARGS, TARGETS_SELECTOR
from device.lab.sync_trials import add_visits, sample_eyes
from device.unit import Unit
from tests.device.kiosk.test_kiosk import PIN, add_workers, make_unit
from tests.device.kiosk.test_slip import read_qr

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[3]
SHOTS = REPO / "test-artifacts" / "screenshots"
SMALL, LARGE = (800, 480), (1280, 800)
MIN_TARGET_PX = 44
SCREENING_TIMEOUT_MS = 90_000   # auto-capture plus a screening on a busy 2-core machine
NEVER = 10**9                   # gradable frames in a row that auto-capture waits for: it does not fire

# every visible thing a finger has to hit (the benchmark's selector); radio buttons and checkboxes sit
# inside tiles that are checked instead
TARGETS_JS = """(selector) => [...document.querySelectorAll(selector)]
  .filter(e => e.offsetParent !== null)
  .map(e => [(e.textContent || e.name || e.tagName).trim().slice(0, 40), e.getBoundingClientRect().height])"""


@contextlib.contextmanager
def served_kiosk(root: Path) -> Iterator[tuple[str, Unit]]:
    """A unit with its workers and its kiosk served by waitress on 127.0.0.1, a folder standing in for a
    mounted USB stick: (base URL, unit)."""
    unit = make_unit(root / "unit")
    add_workers(unit)
    app = create_app(unit)
    (root / "media" / "CLINIC-USB").mkdir(parents=True)
    app.config.update(EXPORT_ROOTS=[str(root / "media")], EXPORT_MOUNTED_ONLY=False)
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=6)
    thread = threading.Thread(target=server.run, name="kiosk-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}", unit
    finally:
        server.close()
        thread.join(timeout=5)
        unit.close()


@pytest.fixture
def kiosk(tmp_path):
    with served_kiosk(tmp_path) as served:
        yield served


@pytest.fixture
def page(tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `./install.sh --dev`, which installs Debian's chromium "
                    "(the kiosk's browser tests never download a browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": SMALL[0], "height": SMALL[1]})
        context.set_default_timeout(20_000)
        pg = context.pages[0] if context.pages else context.new_page()
        yield pg
        context.close()


def look(page, name: str) -> None:
    """Check the layout at 800x480 and screenshot the page at both sizes."""
    page.wait_for_load_state("load")
    page.set_viewport_size({"width": SMALL[0], "height": SMALL[1]})
    scroll_width, inner_width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll_width <= inner_width, f"{name}: the page scrolls sideways at 800x480 ({scroll_width} > {inner_width} px)"
    small = [(text, round(h)) for text, h in page.evaluate(TARGETS_JS, TARGETS_SELECTOR) if h < MIN_TARGET_PX]
    assert not small, f"{name}: touch targets under {MIN_TARGET_PX} px tall at 800x480: {small}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width, height in (SMALL, LARGE):
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=str(SHOTS / f"{name}-{width}x{height}.png"), full_page=True)
    page.set_viewport_size({"width": SMALL[0], "height": SMALL[1]})


def images_loaded(page, selector: str) -> list[int]:
    page.wait_for_function(f"[...document.querySelectorAll({selector!r})].every(i => i.complete)")
    return page.eval_on_selector_all(selector, "imgs => imgs.map(i => i.naturalWidth)")


def wait_until(condition, timeout_ms: int, message: str):
    end = time.monotonic() + timeout_ms / 1000
    while not (value := condition()):
        assert time.monotonic() < end, message
        time.sleep(0.05)
    return value


def taken(unit, eye: str) -> dict | None:
    """The capture loop's account of how it took this eye's photo, once it has."""
    trace = unit.capture.trace()
    return trace if trace.get("eye") == eye and "manual" in trace else None


def type_pin_on_keypad(page, pin: str) -> None:
    for digit in pin:
        page.click(f".keypad [data-key='{digit}']")


def test_a_health_workers_visit_in_chromium(kiosk, page):
    base, unit = kiosk

    # -- sign-in, and the lock after wrong PINs ------------------------------------------------
    page.goto(base + "/")
    assert "/signin" in page.url
    look(page, "01-signin")
    for _ in range(MAX_FAILURES):
        page.check("input[name=user][value=joseph]")
        page.fill("#pin", "0000")
        page.click("main button[type=submit]")
    assert "Too many wrong PINs for joseph" in page.inner_text("#signin-error")
    look(page, "02-signin-locked")
    page.check("input[name=user][value=amina]")
    page.fill("#pin", "")
    type_pin_on_keypad(page, PIN)
    assert page.input_value("#pin") == PIN
    page.click("main button[type=submit]")
    page.wait_for_url(base + "/")
    look(page, "03-home")

    # -- register: a form that fails keeps what was typed --------------------------------------
    page.click("text=New screening")
    page.fill("input[name=identifier]", "CL-0042")
    page.fill("input[name=name]", "Grace Achieng")
    page.fill("input[name=year_of_birth]", "1958")
    page.click("main button[type=submit]")
    assert page.input_value("input[name=name]") == "Grace Achieng"
    assert "must agree" in page.inner_text("main")
    look(page, "04-register-errors")
    page.check("input[name=sex][value=F]")
    page.check("input[name=consent]")
    settings = unit.config.capture
    auto_after = settings.consecutive_gradable
    settings.consecutive_gradable = NEVER  # hold auto-capture while the page is looked at
    page.click("main button[type=submit]")

    # -- right eye: auto-capture ---------------------------------------------------------------
    page.wait_for_url(re.compile(r".*/eye/right$"))
    assert page.inner_text("h1") == "Right eye"
    page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
    page.wait_for_function("document.getElementById('instruction').textContent !== 'Starting the camera'")
    look(page, "05-capture-right")
    settings.consecutive_gradable = auto_after
    right = wait_until(lambda: taken(unit, "right"), SCREENING_TIMEOUT_MS, "the right eye was never auto-captured")
    settings.consecutive_gradable = NEVER  # the left eye is taken with the button
    assert right["manual"] is False and right["frames"] >= auto_after
    page.wait_for_url(re.compile(r".*/eye/left$"), timeout=SCREENING_TIMEOUT_MS)
    # the page flashed (and clicked) when the photo was taken, before it moved on
    assert page.evaluate("window.sessionStorage.getItem('glaucoscreen.shutter')") is not None

    # -- left eye: the skip page, back, then the button ----------------------------------------
    assert page.inner_text("h1") == "Left eye"
    look(page, "06-capture-left")
    page.click("text=Skip this eye")
    look(page, "07-skip")
    page.click("text=Back to the camera")
    page.wait_for_url(re.compile(r".*/eye/left$"))
    page.click("#press")
    page.wait_for_url(re.compile(r".*/visits/[0-9a-f-]{36}$"), timeout=SCREENING_TIMEOUT_MS)
    settings.consecutive_gradable = auto_after
    assert taken(unit, "left")["manual"] is True

    # -- result: both eyes screened, the photo with disc and cup drawn -------------------------
    headline = page.inner_text("#headline")
    assert headline in ("Refer to an eye doctor", "Take the photo again", "No glaucoma signs seen")
    for eye in ("right", "left"):
        widths = images_loaded(page, f"#eye-{eye} img.photo")
        assert widths and all(w > 0 for w in widths), f"the {eye} eye's photo did not load"
        assert page.is_visible(f"#eye-{eye} >> text=Retake")
    look(page, "08-result")
    page.click("#finish")
    page.wait_for_url(re.compile(r".*/slip$"))
    assert page.inner_text(".slip-headline") == headline
    look(page, "09-slip")
    visit_uuid = page.url.rsplit("/", 2)[1]
    # the slip's QR code, as a phone's camera would see it on the screen, reads back as the visit
    qr = cv2.imdecode(np.frombuffer(page.locator("#slip-qr svg").screenshot(), np.uint8), cv2.IMREAD_COLOR)
    qr = cv2.copyMakeBorder(cv2.resize(qr, None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST), 40, 40, 40, 40,
                            cv2.BORDER_CONSTANT, value=(255, 255, 255))
    assert read_qr(qr) == visit_uuid
    assert unit.visits.get_visit(visit_uuid)["status"] == "finished"

    # -- the visit on the home page and the patient's page -------------------------------------
    page.click("text=Done")
    page.wait_for_url(base + "/")
    assert "Grace Achieng" in page.inner_text(".today")
    look(page, "10-home-after")
    page.fill("#q", "grace")
    page.click("main button:has-text('Find')")
    look(page, "11-find")
    page.click(".row:has-text('Grace Achieng')")
    page.wait_for_url(re.compile(r".*/patients/CL-0042$"))
    assert page.locator(".visit").count() == 1
    assert all(w > 0 for w in images_loaded(page, ".visit img.thumb"))
    measured = [e for e in ("right", "left") if unit.visits.eye_history("CL-0042", e) and
                unit.visits.eye_history("CL-0042", e)[-1]["vcdr"] is not None]
    for eye in measured:
        assert page.locator(f"#trend-{eye} circle").count() == 1
    look(page, "12-patient")

    page.goto(base + "/patients/NOBODY")
    assert page.inner_text("h1") == "Patient not found"
    look(page, "13-not-found")
    page.goto(base + "/admin/")
    look(page, "14-admin")


def test_an_administrators_rounds_in_chromium(kiosk, page, shared_data, tmp_path):
    base, unit = kiosk
    add_visits(unit.visits, sample_eyes(shared_data, 2), 2, random.Random(11))
    page.goto(base + "/signin")
    page.check("input[name=user][value=amina]")
    page.fill("#pin", PIN)
    page.click("main button[type=submit]")
    page.wait_for_url(base + "/")
    page.click("text=Admin")
    page.wait_for_url(base + "/admin/")

    page.click("nav.subnav >> text=Models")
    page.wait_for_url(base + "/admin/models")
    assert page.inner_text("#segmentation-backend") == "ONNX Runtime (CPU)"
    assert page.locator("#model-segmentation .check-ok").count() == 2
    look(page, "15-admin-models")

    page.click("nav.subnav >> text=Camera and lights")
    page.wait_for_url(base + "/admin/devices")
    assert page.inner_text("#camera-frames").startswith("Yes, ")
    assert page.inner_text("#module-serial") == "GSO-SIM-0001"
    look(page, "16-admin-devices")

    page.click("nav.subnav >> text=Settings")
    page.wait_for_url(base + "/admin/settings/")
    look(page, "17-admin-settings")
    page.fill("#capture-max_led_level", "0.95")
    page.click("main button:has-text('Save the settings')")
    assert "safety cap" in page.inner_text("#setting-capture-max_led_level")
    look(page, "18-admin-settings-refused")
    page.fill("#capture-max_led_level", "0.6")
    page.click("main button:has-text('Save the settings')")
    page.wait_for_url(base + "/admin/settings/")
    assert "Saved" in page.inner_text(".notice")
    assert unit.illumination.max_level == 0.6 and "max_led_level = 0.6" in overrides_path(unit.config.data_dir).read_text()

    page.click("nav.subnav >> text=Storage")
    page.wait_for_url(base + "/admin/storage")
    assert page.inner_text("#refuse-below") == "200.0 MB free"
    look(page, "19-admin-storage")

    page.click("nav.subnav >> text=Export to USB")
    page.wait_for_url(base + "/admin/export/")
    look(page, "20-admin-export")
    page.click(".tile:has-text('CLINIC-USB')")
    page.click("main button:has-text('Export')")
    page.wait_for_selector("#export-result", timeout=60_000)  # the page follows the export, then shows its result
    assert "2 visits (4 eyes, 16 files" in page.inner_text("#export-result")
    assert (tmp_path / "media" / "CLINIC-USB" / "GlaucoScreen-test-unit" / "visits.csv").exists()
    look(page, "21-admin-export-done")


def sign_in_as_amina(page, base: str) -> None:
    page.goto(base + "/signin")
    page.check("input[name=user][value=amina]")
    page.fill("#pin", PIN)
    page.click("main button[type=submit]")
    page.wait_for_url(base + "/")


def register_and_start(page, base: str, identifier: str, name: str) -> str:
    """Register a patient from the home page and land on the right eye's capture page; the visit's UUID."""
    page.goto(base + "/")
    page.click("text=New screening")
    page.fill("input[name=identifier]", identifier)
    page.fill("input[name=name]", name)
    page.fill("input[name=year_of_birth]", "1960")
    page.check("input[name=sex][value=F]")
    page.check("input[name=consent]")
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r".*/eye/right$"))
    page.wait_for_function("document.getElementById('instruction').textContent !== 'Starting the camera'")
    return page.url.rsplit("/", 3)[1]


def photos(unit, visit_uuid: str, eye: str) -> int:
    return unit.visits.get_visit(visit_uuid)["eyes"][eye]["captures"]


def test_a_second_tab_never_gets_its_photo_recorded_under_the_first_tabs_patient(kiosk, page):
    """The user test's defect: tab A on Alpha's right eye; tab B registers Beta, starts capturing and is
    closed; the camera then takes Beta's eye. Tab A must say the camera is another's and record nothing."""
    base, unit = kiosk
    settings = unit.config.capture
    auto_after = settings.consecutive_gradable
    settings.consecutive_gradable = NEVER
    sign_in_as_amina(page, base)
    alpha = register_and_start(page, base, "CL-ALPHA", "Alpha Wanjiru")

    tab_b = page.context.new_page()
    beta = register_and_start(tab_b, base, "CL-BETA", "Beta Njeri")
    tab_b.close()
    settings.consecutive_gradable = auto_after  # the loop now auto-captures the eye in front of it: Beta's
    wait_until(lambda: taken(unit, "right"), SCREENING_TIMEOUT_MS, "the camera never took Beta's eye")
    page.wait_for_function("(document.getElementById('camera-taken') && !document.getElementById('camera-taken').hidden)"
                           " || !location.pathname.endsWith('/eye/right')", timeout=SCREENING_TIMEOUT_MS)
    time.sleep(2)  # tab A keeps its chance to do harm
    assert page.url.endswith(f"/visits/{alpha}/eye/right"), f"tab A moved on to {page.url}"
    assert photos(unit, alpha, "right") == 0, "Beta's photo was recorded as Alpha's right eye"
    assert photos(unit, beta, "right") == 0
    assert "in use for another patient" in page.inner_text("#camera-taken")
    assert not page.is_visible("#press")
    look(page, "22-capture-camera-taken")

    # the worker takes the camera back for Alpha: the photo recorded is then Alpha's own
    page.click("#camera-taken button")
    page.wait_for_url(re.compile(r".*/eye/left$"), timeout=SCREENING_TIMEOUT_MS)
    assert photos(unit, alpha, "right") == 1 and photos(unit, beta, "right") == 0


def test_back_from_the_result_page_never_takes_a_second_photo(kiosk, page):
    base, unit = kiosk
    settings = unit.config.capture
    auto_after = settings.consecutive_gradable
    settings.consecutive_gradable = NEVER  # both eyes with the button, so nothing fires behind the test's back
    sign_in_as_amina(page, base)
    visit = register_and_start(page, base, "CL-BACK", "Back Button")
    page.click("#press")
    page.wait_for_url(re.compile(r".*/eye/left$"), timeout=SCREENING_TIMEOUT_MS)
    page.wait_for_function("document.getElementById('instruction').textContent !== 'Starting the camera'")
    page.click("#press")
    page.wait_for_url(re.compile(rf".*/visits/{visit}$"), timeout=SCREENING_TIMEOUT_MS)
    assert photos(unit, visit, "left") == 1

    settings.consecutive_gradable = auto_after  # an armed camera would now take a photo by itself
    page.go_back()
    page.wait_for_url(re.compile(rf".*/visits/{visit}$"), timeout=SCREENING_TIMEOUT_MS)
    time.sleep(3)  # long enough for an armed camera to auto-capture (a few gradable frames)
    assert photos(unit, visit, "left") == 1, "Back added a second photo of the left eye"
    assert unit.capture.state()["armed_eye"] is None, "Back re-armed the camera"
    assert "is done" in page.inner_text("main")

    # Retake is the one way to photograph a done eye again
    page.click("#eye-left >> text=Retake")
    page.wait_for_url(re.compile(r".*/eye/left$"))
    page.wait_for_url(re.compile(rf".*/visits/{visit}$"), timeout=SCREENING_TIMEOUT_MS)
    assert photos(unit, visit, "left") == 2
