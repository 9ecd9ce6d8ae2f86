"""The kiosk at the unit's small screen (800x480) in a real Chromium: what a worker must press stays on the
screen without scrolling, and nothing a patient's name or a word does pushes the page sideways. Each
check is one of the user test's layout defects."""
from __future__ import annotations

import re

import pytest

from tests.device.kiosk.test_kiosk import PIN
from tests.device.kiosk.test_kiosk_browser import NEVER, SMALL, kiosk, page, register_and_start, sign_in_as_amina  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

ON_SCREEN_JS = """(selector) => { const r = document.querySelector(selector).getBoundingClientRect();
  return [r.top >= 0 && r.bottom <= window.innerHeight && r.left >= 0 && r.right <= window.innerWidth, r.bottom, r.right]; }"""


def on_screen(page, selector: str) -> None:
    inside, bottom, right = page.evaluate(ON_SCREEN_JS, selector)
    assert inside, f"{selector} is off the 800x480 screen (bottom {bottom:.0f}, right {right:.0f}) without scrolling"


def no_sideways_scroll(page, what: str) -> None:
    scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll <= inner, f"{what}: the page scrolls sideways ({scroll} > {inner} px)"


def test_after_a_wrong_pin_the_sign_in_button_stays_on_screen(kiosk, page):
    base, _ = kiosk
    page.set_viewport_size({"width": SMALL[0], "height": SMALL[1]})
    page.goto(base + "/signin")
    page.check("input[name=user][value=amina]")
    page.fill("#pin", "0000")
    page.click("main button[type=submit]")
    assert page.is_visible("#signin-error")
    on_screen(page, "main button[type=submit]")
    page.fill("#pin", PIN)
    page.click("main button[type=submit]")
    page.wait_for_url(base + "/")


def test_the_sex_tiles_hold_their_words(kiosk, page):
    base, _ = kiosk
    page.set_viewport_size({"width": SMALL[0], "height": SMALL[1]})
    sign_in_as_amina(page, base)
    page.goto(base + "/patients/new")
    overflowing = page.evaluate("""() => [...document.querySelectorAll('.tile')]
        .filter(t => t.scrollWidth > t.clientWidth + 1 || [...t.children].some(c => c.getBoundingClientRect().right > t.getBoundingClientRect().right + 1))
        .map(t => t.textContent.trim())""")
    assert overflowing == [], f"words overflow their tiles at 800x480: {overflowing}"


def test_a_long_unbroken_name_neither_widens_the_capture_page_nor_hides_its_buttons(kiosk, page):
    base, unit = kiosk
    page.set_viewport_size({"width": SMALL[0], "height": SMALL[1]})
    unit.config.capture.consecutive_gradable = NEVER  # the photos are taken by hand here
    sign_in_as_amina(page, base)
    visit = register_and_start(page, base, "LAYOUT-1", "W" * 100)
    no_sideways_scroll(page, "the right eye's capture page")
    on_screen(page, "#press")
    # the right eye taken: on the left eye's page, the right eye's Retake is on screen too
    page.click("#press")
    page.wait_for_url(re.compile(r".*/eye/left$"), timeout=90_000)
    page.wait_for_function("document.getElementById('instruction').textContent !== 'Starting the camera'")
    no_sideways_scroll(page, "the left eye's capture page")
    on_screen(page, "#press")
    on_screen(page, ".capture-eyes button")
    assert unit.visits.get_visit(visit)["eyes"]["right"]["captures"] == 1
