"""The lights over gpiozero's own mock pins: levels, light-safety limits and the button, read off the pins."""
from __future__ import annotations

import math
import sys
import time

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from hardware.boards import PROFILES
from hardware.illumination import RING_PWM_HZ, Illumination, IlluminationError, make_pin_factory
from tests.waiting import wait_until

PI5 = PROFILES["pi5"]
FLASH_LIMIT_S = 0.15


@pytest.fixture
def factory():
    return MockFactory(pin_class=MockPWMPin)


@pytest.fixture
def lights(factory):
    with Illumination(PI5, pin_factory=factory, max_level=0.8, max_flash_s=FLASH_LIMIT_S) as lights:
        yield lights


def pin(factory, name):
    return factory.pin(getattr(PI5.pins, name))


def test_white_level_reaches_the_pwm_pin_and_is_clamped(lights, factory):
    ring = pin(factory, "white_ring")
    assert ring.frequency == RING_PWM_HZ
    assert lights.set_white(0.3) == pytest.approx(0.3)
    assert ring.state == pytest.approx(0.3)
    assert lights.set_white(0.95) == pytest.approx(0.8)
    assert ring.state == pytest.approx(0.8)
    assert lights.set_white(-0.5) == 0.0
    assert ring.state == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, "bright", None])
def test_a_level_that_is_not_a_number_is_refused(lights, factory, bad):
    lights.set_white(0.4)
    with pytest.raises(ValueError, match="light level"):
        lights.set_white(bad)
    assert pin(factory, "white_ring").state == pytest.approx(0.4)


def test_a_long_flash_is_cut_to_the_limit_and_the_ring_returns_to_its_level(lights, factory):
    ring = pin(factory, "white_ring")
    lights.set_white(0.2)
    started = time.monotonic()
    flash = lights.flash(0.7, 2.0)
    assert ring.state == pytest.approx(0.7)
    assert flash.report.cut and flash.report.duration_s == FLASH_LIMIT_S and flash.report.requested_s == 2.0
    assert wait_until(lambda: ring.state == pytest.approx(0.2))
    assert time.monotonic() - started < 1.0  # nowhere near the 2 s asked for


def test_a_flash_brighter_than_allowed_is_dimmed(lights, factory):
    flash = lights.flash(1.0, 0.05)
    assert pin(factory, "white_ring").state == pytest.approx(0.8)
    assert flash.report.cut and flash.report.level == pytest.approx(0.8)


def test_a_flash_within_limits_is_not_reported_as_cut(lights):
    assert not lights.flash(0.5, 0.05).report.cut


def test_a_flash_used_as_a_block_ends_with_the_block(lights, factory):
    ring = pin(factory, "white_ring")
    lights.set_white(0.1)
    with lights.flash(0.6, 0.1):
        assert ring.state == pytest.approx(0.6)
        assert lights.state()["flash"]
    assert ring.state == pytest.approx(0.1)
    assert not lights.state()["flash"]


def test_alignment_mode_is_infrared_without_white(lights, factory):
    lights.set_white(0.5)
    lights.alignment_mode()
    assert pin(factory, "infrared").state == 1
    assert pin(factory, "white_ring").state == 0


def test_leaving_the_block_turns_everything_off_even_on_an_error(factory):
    with pytest.raises(RuntimeError, match="capture crashed"):
        with Illumination(PI5, pin_factory=factory) as lights:
            lights.set_white(0.5)
            lights.infrared.on()
            lights.status.on()
            lights.buzzer.on()
            assert all(pin(factory, n).state for n in ("white_ring", "infrared", "status", "buzzer"))
            raise RuntimeError("capture crashed")
    assert [pin(factory, n).state for n in ("white_ring", "infrared", "status", "buzzer")] == [0, 0, 0, 0]


def test_off_also_ends_a_running_flash(lights, factory):
    lights.flash(0.6, 0.1)
    lights.off()
    time.sleep(0.15)  # the flash's own end must not bring the ring back on
    assert pin(factory, "white_ring").state == 0


def test_the_capture_button_calls_its_hook(lights, factory):
    presses = []
    lights.button.when_pressed = lambda: presses.append(time.monotonic())
    button = pin(factory, "capture_button")
    assert not lights.state()["button_pressed"]
    button.drive_low()
    assert wait_until(lambda: len(presses) == 1)
    assert lights.state()["button_pressed"]
    button.drive_high()
    assert not lights.state()["button_pressed"]


def test_state_reports_what_the_pins_show(lights):
    lights.set_white(0.25)
    lights.status.on()
    state = lights.state()
    assert state["white"] == pytest.approx(0.25) and state["status"] and not state["infrared"]
    assert state["max_level"] == 0.8 and state["max_flash_s"] == FLASH_LIMIT_S


def test_pin_factories_follow_the_board(monkeypatch):
    assert isinstance(make_pin_factory(PROFILES["workstation"]), MockFactory)
    # Jetson.GPIO loads only on a Jetson: elsewhere the lights say what is missing, in words
    monkeypatch.setitem(sys.modules, "Jetson.GPIO", None)  # as on this machine: the module is not there
    with pytest.raises(IlluminationError, match="Jetson.GPIO is not installed"):
        make_pin_factory(PROFILES["jetson-orin-nano"])


def test_unsafe_limits_are_refused(factory):
    with pytest.raises(ValueError, match="max_level"):
        Illumination(PI5, pin_factory=factory, max_level=1.5)
