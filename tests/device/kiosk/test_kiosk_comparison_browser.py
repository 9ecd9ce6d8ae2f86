"""The comparison of two visits in a real Chromium: both close-ups load, the page fits 800x480 with touch
targets a finger can hit, and the Flicker switch stacks today's photo over the earlier one and makes it blink."""
from __future__ import annotations

import pytest

from tests.device.kiosk.test_kiosk_browser import (  # noqa: F401 - kiosk and page are fixtures used by name
    images_loaded,
    kiosk,
    look,
    page,
    sign_in_as_amina,
)
from tests.device.kiosk.test_kiosk_comparison import record_two_visits

pytestmark = pytest.mark.browser


def test_the_two_visits_side_by_side_then_flickering(kiosk, page):
    base, unit = kiosk
    uuids = record_two_visits(unit, "CMP-B")
    sign_in_as_amina(page, base)
    page.goto(f"{base}/visits/{uuids[1]}")
    assert images_loaded(page, "#compare-right img") == [360, 360]
    earlier, current = page.locator("#compare-right .compare-earlier"), page.locator("#compare-right .compare-current")
    side = earlier.bounding_box(), current.bounding_box()
    assert side[1]["x"] > side[0]["x"] + side[0]["width"] - 1  # side by side
    assert page.evaluate("getComputedStyle(document.querySelector('#compare-right .compare-current')).animationName") == "none"
    look(page, "30-result-compared")
    page.click("#compare-right .compare-flicker")
    assert page.is_checked("#flicker-right")
    stacked = earlier.bounding_box(), current.bounding_box()
    assert abs(stacked[0]["x"] - stacked[1]["x"]) < 1 and abs(stacked[0]["y"] - stacked[1]["y"]) < 1  # one over the other
    assert page.evaluate("getComputedStyle(document.querySelector('#compare-right .compare-current')).animationName") == "compare-flicker"
    look(page, "31-result-flicker")
    page.click("#compare-right .compare-flicker")
    assert not page.is_checked("#flicker-right")
    page.goto(f"{base}/patients/CMP-B")
    assert images_loaded(page, "#compare-right img") == [360, 360]
    look(page, "32-patient-compared")
