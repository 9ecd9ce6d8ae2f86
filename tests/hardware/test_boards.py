"""Board profiles: the wiring table every hardware class reads, and telling the board apart."""
from __future__ import annotations

import dataclasses

import pytest

from hardware import boards
from hardware.boards import PROFILES, BoardProfile, PinMap, detect_board

# GPIO-capable BCM numbers on a Pi's 40-pin header, minus GPIO14/15 which carry the module's UART.
PI_GPIO = set(range(2, 28)) - {14, 15}
PI_PWM = {12, 13, 18, 19}
# Jetson Orin Nano header positions that Jetson.GPIO can drive, minus 8/10 (UART) and 3/5/27/28 (I2C).
JETSON_GPIO = {7, 11, 12, 13, 15, 16, 18, 19, 21, 22, 23, 24, 26, 29, 31, 32, 33, 35, 36, 37, 38, 40}
JETSON_PWM = {15, 32, 33}


def _pins(profile: BoardProfile) -> list[int]:
    return [getattr(profile.pins, f.name) for f in dataclasses.fields(PinMap) if f.name != "numbering"]


def test_the_three_boards_are_known_by_name():
    assert set(PROFILES) == {"pi5", "jetson-orin-nano", "workstation"}
    for name, profile in PROFILES.items():
        assert profile.name == name


def test_pi5_profile():
    pi = PROFILES["pi5"]
    assert pi.pins.numbering == "BCM"
    assert pi.camera_backend == "picamera2"
    assert pi.serial_port == "/dev/ttyAMA0"
    assert pi.pin_factory == "lgpio"
    assert set(_pins(pi)) <= PI_GPIO
    assert pi.pins.white_ring in PI_PWM


def test_jetson_profile_uses_header_positions_through_our_jetson_gpio_factory():
    jetson = PROFILES["jetson-orin-nano"]
    assert jetson.pins.numbering == "BOARD"
    assert jetson.camera_backend == "gstreamer"
    assert jetson.pin_factory == "jetson-gpio" and boards.GPIO_DRIVERS["jetson-gpio"] == "Jetson.GPIO"
    assert "jetson-io" in jetson.note and "pull-up" in jetson.note
    assert set(_pins(jetson)) <= JETSON_GPIO
    assert jetson.pins.white_ring in JETSON_PWM


def test_jetson_serial_port_is_the_header_uart_on_pins_8_and_10():
    """An Orin's header UART (pins 8 TX / 10 RX, UART1) is /dev/ttyTHS0; ttyTHS1 was the original Jetson
    Nano's name for those pins, and opening it on an Orin talks to nothing the optic module is wired to."""
    jetson = PROFILES["jetson-orin-nano"]
    assert jetson.serial_port == "/dev/ttyTHS0"
    assert not {8, 10} & set(_pins(jetson))  # the UART's pins carry no light, buzzer or button


def test_workstation_has_mock_pins_and_no_serial_port():
    ws = PROFILES["workstation"]
    assert ws.pin_factory == "mock" and ws.serial_port is None and ws.camera_backend == "opencv"


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_no_pin_is_wired_twice(name):
    pins = _pins(PROFILES[name])
    assert len(pins) == len(set(pins)) == 5


def test_profiles_cannot_be_changed_at_run_time():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILES["pi5"].serial_port = "/dev/ttyUSB0"


def test_a_profile_with_an_unknown_camera_backend_is_refused():
    with pytest.raises(ValueError, match="camera backend"):
        BoardProfile("x", "x", PROFILES["pi5"].pins, camera_backend="webcam", serial_port=None, pin_factory="mock")


def test_unknown_board_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="pi5, jetson-orin-nano, workstation"):
        boards.profile("pi4")
    assert boards.profile("pi5") is PROFILES["pi5"]


@pytest.mark.parametrize("model, expected", [
    (b"Raspberry Pi 5 Model B Rev 1.0\x00", "pi5"),
    (b"NVIDIA Jetson Orin Nano Developer Kit\x00", "jetson-orin-nano"),
    (b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00", "jetson-orin-nano"),
    (b"Raspberry Pi 4 Model B Rev 1.4\x00", "workstation"),
])
def test_detect_board_reads_the_device_tree_model(tmp_path, model, expected):
    path = tmp_path / "model"
    path.write_bytes(model)
    assert detect_board(path).name == expected


def test_detect_board_without_a_device_tree_is_a_workstation(tmp_path):
    assert detect_board(tmp_path / "no-device-tree" / "model").name == "workstation"
