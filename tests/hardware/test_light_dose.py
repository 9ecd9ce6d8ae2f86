"""The light-dose ledger and the light limits the lights hold themselves to, over gpiozero's mock pins: the
sums per eye, the continuous-light limit on the ring's level, and the per-visit cap that turns the lights off
by itself (read off the pins)."""
from __future__ import annotations

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from hardware.boards import PROFILES
from hardware.illumination import Illumination
from hardware.light_dose import DoseLedger, EyeDose, LedResponse, LightLimitReached, LightLimits
from tests.waiting import wait_until

PI5 = PROFILES["pi5"]
# a measured response: 0.05 mW/cm2 at 20%, 0.2 at 60%, 0.4 at 100% (not linear, as LEDs are not)
RESPONSE = LedResponse((0.2, 0.6, 1.0), (0.05, 0.2, 0.4), source="test")


class Clock:
    """Seconds that pass only when the test says so: the ledger's sums are then exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def factory():
    return MockFactory(pin_class=MockPWMPin)


def lights_with(factory, clock=None, **limits) -> Illumination:
    """Lights with RESPONSE; limits as given, the continuous one above the ring's full light unless given."""
    kwargs = {"clock": clock} if clock is not None else {}
    return Illumination(PI5, pin_factory=factory, max_level=1.0, max_flash_s=0.5,
                        limits=LightLimits(**{"photochemical_mw_cm2": 1.0, **limits}), response=RESPONSE, **kwargs)


def ring(factory):
    return factory.pin(PI5.pins.white_ring)


def test_the_response_is_read_between_and_beyond_its_points():
    assert RESPONSE.irradiance(0.0) == 0.0
    assert RESPONSE.irradiance(0.1) == pytest.approx(0.025)   # from 0 at level 0 to the first point
    assert RESPONSE.irradiance(0.4) == pytest.approx(0.125)   # between two points
    assert RESPONSE.irradiance(1.0) == pytest.approx(0.4)
    assert RESPONSE.level_for(0.125) == pytest.approx(0.4)
    assert LedResponse.nominal(0.2).irradiance(0.5) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="rise"):
        LedResponse((0.2, 0.6), (0.2, 0.1))


def test_the_ledger_sums_preview_and_flash_per_eye(factory):
    clock = Clock()
    with lights_with(factory, clock) as lights:
        lights.expose("visit-1/right")
        lights.set_white(0.6)            # 0.2 mW/cm2
        clock.advance(10.0)              # 2 mJ/cm2 of preview
        lights.set_white(0.2)            # 0.05 mW/cm2
        clock.advance(4.0)               # 0.2 mJ/cm2
        lights.flash(1.0, 0.25)          # 0.4 mW/cm2
        clock.advance(0.25)              # 0.1 mJ/cm2 of flash
        lights.set_white(0.2)            # the flash ended (superseded), back to the preview's level
        clock.advance(2.0)               # 0.1 mJ/cm2
        lights.expose("visit-1/left")    # the right eye's light is all booked now
        clock.advance(3.0)               # 0.15 mJ/cm2 to the left eye
        lights.off()
        clock.advance(60.0)              # nothing: the ring is dark
        right, left = lights.ledger.dose_of("visit-1/right"), lights.dose()
    assert right.preview_s == pytest.approx(16.0) and right.preview_mj_cm2 == pytest.approx(2.3)
    assert right.flashes == 1 and right.flash_s == pytest.approx(0.25) and right.flash_mj_cm2 == pytest.approx(0.1)
    assert right.total_mj_cm2 == pytest.approx(2.4) and right.peak_irradiance_mw_cm2 == pytest.approx(0.4)
    assert left.preview_mj_cm2 == pytest.approx(0.15) and left.flashes == 0
    figures = right.to_dict()
    assert figures["radiant_exposure_mj_cm2"] == pytest.approx(2.4)
    assert figures["preview"]["mean_irradiance_mw_cm2"] == pytest.approx(2.3 / 16.0)
    assert EyeDose.from_dict(figures).total_mj_cm2 == pytest.approx(2.4)


def test_light_to_nobodys_eye_is_kept_apart_and_an_earlier_dose_carries_on(factory):
    clock = Clock()
    ledger = DoseLedger(clock)
    ledger.change(0.2)
    clock.advance(5.0)                   # between visits: nobody's eye
    ledger.switch("visit-2/right", prior=EyeDose(preview_s=30.0, preview_mj_cm2=3.0))  # a restart mid-visit
    clock.advance(5.0)
    assert ledger.dose_of(None).preview_mj_cm2 == pytest.approx(1.0)
    assert ledger.dose().preview_mj_cm2 == pytest.approx(4.0) and ledger.dose().preview_s == pytest.approx(35.0)


def test_no_level_passes_the_continuous_light_limit(factory):
    with lights_with(factory, photochemical_mw_cm2=0.2) as lights:  # 0.2 mW/cm2 is reached at 60%
        assert lights.set_white(0.9) == pytest.approx(0.6)
        assert ring(factory).state == pytest.approx(0.6)
        flash = lights.flash(1.0, 0.1)
        assert flash.report.level == pytest.approx(0.6) and flash.report.cut
        assert lights.state()["limits"]["max_irradiance_mw_cm2"] == 0.2


def test_the_visit_cap_turns_the_lights_off_by_itself(factory):
    # 0.2 mW/cm2 against a cap of 0.04 mJ/cm2: the ring may stay lit 0.2 s for this eye
    with lights_with(factory, visit_exposure_mj_cm2=0.04) as lights:
        lights.expose("visit-3/right")
        lights.infrared.on()
        lights.set_white(0.6)
        assert ring(factory).state == pytest.approx(0.6)
        assert wait_until(lambda: lights.stopped is not None, 5)
        assert ring(factory).state == 0 and not lights.state()["infrared"]  # every light off, read off the pins
        assert "0.04 mJ/cm2" in lights.stopped and "this eye" in lights.stopped
        with pytest.raises(LightLimitReached, match="the most one eye may have in a visit"):
            lights.set_white(0.3)
        assert ring(factory).state == 0
        with pytest.raises(LightLimitReached):
            lights.flash(0.6, 0.1)
        assert ring(factory).state == 0
        assert lights.dose().total_mj_cm2 == pytest.approx(0.04, rel=0.25)
        lights.expose("visit-3/left")  # another eye: its own allowance
        assert lights.set_white(0.6) == pytest.approx(0.6) and lights.stopped is None


def test_a_flash_that_would_pass_the_cap_is_never_fired(factory):
    clock = Clock()
    with lights_with(factory, clock, visit_exposure_mj_cm2=1.0) as lights:
        lights.expose("visit-4/left")
        lights.set_white(0.6)
        clock.advance(4.5)               # 0.9 mJ/cm2 of the 1.0 allowed
        with pytest.raises(LightLimitReached, match="a flash would bring this eye to 1.1 mJ/cm2"):
            lights.flash(1.0, 0.5)       # 0.4 mW/cm2 x 0.5 s = 0.2 mJ/cm2 more
        assert ring(factory).state == 0 and lights.dose().flashes == 0


def test_an_eye_that_had_its_visits_light_already_is_stopped_at_once(factory):
    with lights_with(factory, visit_exposure_mj_cm2=5.0) as lights:
        lights.expose("visit-5/right", prior=EyeDose(preview_s=60.0, preview_mj_cm2=5.0))
        assert lights.stopped is not None
        with pytest.raises(LightLimitReached):
            lights.set_white(0.2)
        assert ring(factory).state == 0
