"""The lights on a Jetson: gpiozero devices through our Jetson.GPIO pin factory, read off the pins the
library was told to drive. The library itself only loads on a Jetson, so a stand-in that keeps and
refuses what it does (hardware/jetson_gpio_sim.py) is put where `import Jetson.GPIO` finds it."""
from __future__ import annotations

import sys
import types
from collections import Counter

import pytest
from gpiozero import LED, PWMLED, Button
from gpiozero.exc import PinInvalidPin, PinPWMUnsupported

from hardware.boards import PROFILES
from hardware.illumination import RING_PWM_HZ, Illumination, make_pin_factory
from hardware.jetson_gpio import ORIN_NANO_HEADER, JetsonGPIOFactory
from hardware.jetson_gpio_sim import SimulatedJetsonGPIO
from tests.hardware.test_boards import JETSON_GPIO, JETSON_PWM
from tests.waiting import wait_until

JETSON = PROFILES["jetson-orin-nano"]
PINS = JETSON.pins


@pytest.fixture
def gpio(monkeypatch):
    """The board's GPIO, installed as the Jetson.GPIO module; the capture button has the module's pull-up."""
    board = SimulatedJetsonGPIO(pulled_up=(PINS.capture_button,))
    package = types.ModuleType("Jetson")
    package.GPIO = board
    monkeypatch.setitem(sys.modules, "Jetson", package)
    monkeypatch.setitem(sys.modules, "Jetson.GPIO", board)
    return board


@pytest.fixture
def lights(gpio):
    factory = make_pin_factory(JETSON)  # the board's own path: imports Jetson.GPIO now, and only now
    assert isinstance(factory, JetsonGPIOFactory) and factory.gpio is gpio
    with Illumination(JETSON, pin_factory=factory, max_level=0.8, max_flash_s=0.1) as lights:
        yield lights


def test_the_header_table_is_the_orin_nanos():
    assert set(ORIN_NANO_HEADER) == JETSON_GPIO
    assert {n for n, (_, pwm) in ORIN_NANO_HEADER.items() if pwm} == JETSON_PWM


def test_illumination_sets_up_each_pin_as_its_part_needs(lights, gpio):
    assert gpio.getmode() == gpio.BOARD
    assert gpio.function(PINS.white_ring) == "pwm" and gpio.frequency(PINS.white_ring) == RING_PWM_HZ
    assert gpio.duty(PINS.white_ring) == 0
    for part in ("infrared", "status", "buzzer"):
        assert gpio.function(getattr(PINS, part)) == "out" and gpio.level(getattr(PINS, part)) == 0, part
    assert gpio.function(PINS.capture_button) == "in"
    assert set(gpio.configured()) == {PINS.white_ring, PINS.infrared, PINS.status, PINS.buzzer, PINS.capture_button}


def test_white_level_becomes_the_ring_pins_duty_cycle_within_the_safety_limit(lights, gpio):
    assert lights.set_white(0.4) == pytest.approx(0.4)
    assert gpio.duty(PINS.white_ring) == pytest.approx(40.0)
    assert lights.set_white(0.95) == pytest.approx(0.8)  # clamped to the light-safety maximum
    assert gpio.duty(PINS.white_ring) == pytest.approx(80.0)
    lights.alignment_mode()
    assert gpio.duty(PINS.white_ring) == 0 and gpio.level(PINS.infrared) == 1
    lights.status.on()
    assert gpio.level(PINS.status) == 1
    assert lights.state()["white"] == 0 and lights.state()["infrared"] and lights.state()["status"]


def test_a_flash_lights_the_ring_then_returns_to_its_level(lights, gpio):
    lights.set_white(0.2)
    flash = lights.flash(0.9, 5.0)  # asked for too much of both: cut to 0.8 for 0.1 s
    assert flash.report.cut and gpio.duty(PINS.white_ring) == pytest.approx(80.0)
    assert wait_until(lambda: gpio.duty(PINS.white_ring) == pytest.approx(20.0), 2)


def test_the_capture_button_fires_through_jetson_gpios_edge_events(lights, gpio):
    presses = []
    lights.button.when_pressed = lambda: presses.append(True)
    assert not lights.state()["button_pressed"]  # the module's pull-up holds the line high
    gpio.drive(PINS.capture_button, 0)  # pressed: the button shorts the line to ground
    assert wait_until(lambda: presses == [True], 2)
    assert lights.state()["button_pressed"]
    gpio.drive(PINS.capture_button, 1)
    assert not lights.state()["button_pressed"] and presses == [True]


def test_closing_turns_everything_off_and_gives_the_pins_back(gpio):
    with Illumination(JETSON, pin_factory=make_pin_factory(JETSON)) as lights:
        lights.set_white(0.5)
        lights.infrared.on()
        assert gpio.duty(PINS.white_ring) == pytest.approx(50.0)
    ring = gpio.pwms_made[-1]
    assert ring.channel == PINS.white_ring and ring.duty_cycle == 0 and not ring.running  # dark, then stopped
    assert gpio.configured() == {}  # every channel cleaned up: the PWM stopped, the outputs released
    with pytest.raises(RuntimeError, match="setup"):
        gpio.input(PINS.infrared)


def test_the_factory_refuses_what_the_header_cannot_do(gpio):
    factory = JetsonGPIOFactory(gpio)
    with pytest.raises(PinPWMUnsupported, match="15, 32, 33"):
        PWMLED(PINS.status, pin_factory=factory)  # pin 31 has no PWM controller behind it
    with pytest.raises(PinInvalidPin, match="not a GPIO"):
        LED(8, pin_factory=factory)  # the UART's transmit line
    with pytest.raises(PinInvalidPin):
        LED(41, pin_factory=factory)
    led = LED(PINS.status, pin_factory=factory)  # the refused PWM left the pin usable as a plain output
    led.on()
    assert gpio.level(PINS.status) == 1
    led.close()


def test_the_stand_in_refuses_what_jetson_gpio_refuses():
    gpio = SimulatedJetsonGPIO()
    with pytest.raises(RuntimeError, match="setmode"):
        gpio.setup(33, gpio.OUT)  # any use before the numbering mode is set
    gpio.setmode(gpio.BOARD)
    with pytest.raises(ValueError, match="different mode"):
        gpio.setmode(gpio.BCM)
    with pytest.raises(RuntimeError, match="OUTPUT"):
        gpio.output(29, gpio.HIGH)  # not set up
    with pytest.raises(RuntimeError, match="setup"):
        gpio.input(29)
    with pytest.raises(ValueError, match="invalid"):
        gpio.setup(8, gpio.OUT)  # a UART pin, not a GPIO
    with pytest.raises(ValueError, match="not a PWM"):
        gpio.PWM(31, 1000)
    pwm = gpio.PWM(33, 1000)
    with pytest.raises(ValueError, match="duplicate"):
        gpio.PWM(33, 1000)
    with pytest.raises(ValueError):
        pwm.ChangeDutyCycle(120)
    gpio.setup(29, gpio.OUT)
    with pytest.raises(RuntimeError, match="input first"):
        gpio.add_event_detect(29, gpio.FALLING)
    gpio.cleanup()
    assert gpio.getmode() is None and gpio.configured() == {}


def test_doctor_names_the_jetson_factory_and_checks_its_driver(gpio, monkeypatch):
    from device import doctor
    from device.config import Config

    found = doctor.gpio(Config(board="jetson-orin-nano"))
    assert found["pin_factory"] == "jetson-gpio" and "jetson_gpio" in found["pin_factory_from"]
    assert found["driver"]["module"] == "Jetson.GPIO" and found["ok"]
    monkeypatch.setitem(sys.modules, "Jetson.GPIO", None)  # a Jetson without the library
    missing = doctor.gpio(Config(board="jetson-orin-nano"))
    assert not missing["ok"] and "Jetson.GPIO" in missing["driver"]["error"]


# -- the GPIO chip's shared file descriptor -------------------------------------------------------------
# Jetson.GPIO 2.1 opens the chip once and shares that fd among the chip's channels, yet closes it in the
# clean-up of any one of them (the stand-in keeps and counts it the same way). All five of the module's
# parts are on the Orin Nano's one GPIO chip.

def test_the_lights_close_the_gpio_chip_once_and_only_once(gpio):
    with Illumination(JETSON, max_level=0.8, max_flash_s=0.1) as lights:  # the board's own factory
        lights.button.when_pressed = lambda: None  # an edge event requested from the chip
        lights.set_white(0.3)
        lights.infrared.on()
        assert len(gpio.open_chip_fds()) == 1  # one chip, opened once, shared by its channels
    assert gpio.configured() == {}
    assert gpio.stray_chip_closes == []  # never a close of an fd that was no longer open
    assert Counter(gpio.chip_fd_closes) == Counter(gpio.chip_fds_opened)  # each opened chip closed exactly once
    assert gpio.open_chip_fds() == set()


def test_closing_twice_closes_nothing_more(gpio):
    factory = make_pin_factory(JETSON)
    lights = Illumination(JETSON, pin_factory=factory)
    lights.close()
    factory.close()
    closes = gpio.chip_fd_closes
    lights.close()
    factory.close()
    factory.close()
    assert gpio.chip_fd_closes == closes and gpio.stray_chip_closes == [] and gpio.open_chip_fds() == set()


def test_releasing_one_pin_leaves_the_chip_open_for_the_others(gpio):
    """The button set up first and an LED after it share the chip's fd: closing the LED must not close it
    under the button, whose edge events are requested from that fd."""
    factory = JetsonGPIOFactory(gpio)
    button = Button(PINS.capture_button, pin_factory=factory, pull_up=True)
    led = LED(PINS.status, pin_factory=factory)
    led.on()
    led.close()
    presses = []
    button.when_pressed = lambda: presses.append(True)
    button.pin.bounce = 0.005  # edge detection re-armed: Jetson.GPIO requests the event line from the chip fd again
    gpio.drive(PINS.capture_button, 0)
    assert wait_until(lambda: presses == [True], 2)
    button.close()
    factory.close()
    assert gpio.stray_chip_closes == [] and Counter(gpio.chip_fd_closes) == Counter(gpio.chip_fds_opened)


def test_a_pin_set_up_again_does_not_close_the_chip_under_the_others(gpio):
    factory = JetsonGPIOFactory(gpio)
    status = LED(PINS.status, pin_factory=factory)
    infrared = factory.pin(PINS.infrared)
    infrared.function = "output"
    infrared.function = "input"   # a second setup() of a set-up channel: the library cleans it up first
    infrared.function = "output"
    status.on()
    assert gpio.level(PINS.status) == 1
    assert gpio.chip_fd_closes == [] and len(gpio.open_chip_fds()) == 1
    status.close()
    infrared.close()
    factory.close()
    assert gpio.stray_chip_closes == [] and Counter(gpio.chip_fd_closes) == Counter(gpio.chip_fds_opened)
