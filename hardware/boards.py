"""Board profiles: where the optic module's parts are wired on each board the unit runs on.

One profile per board keeps the wiring in a single table that the installer, `glaucoscreen doctor`
and the hardware classes all read, so a wiring change is one edit and the board is told apart at
start-up from the kernel's own description of the hardware, not from a setting someone can forget.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEVICE_TREE_MODEL = Path("/proc/device-tree/model")


@dataclass(frozen=True)
class PinMap:
    """Header pins of the optic module's lights, buzzer and capture button.

    `numbering` says how to read the numbers: "BCM" (Broadcom GPIO numbers, what gpiozero expects
    on a Raspberry Pi) or "BOARD" (physical 40-pin header positions, what Jetson.GPIO uses).
    """

    numbering: str
    white_ring: int       # white LED ring, dimmed by PWM: must be a PWM-capable pin
    infrared: int         # infrared LED used while aligning (the pupil does not constrict)
    status: int           # status LED on the module's front
    buzzer: int           # active buzzer: short beep when a photo is taken
    capture_button: int   # push button to ground (internal pull-up)


@dataclass(frozen=True)
class PWMOutput:
    """A hardware PWM channel that reaches a header pin: the kernel's PWM controller (its platform device,
    as /sys/class/pwm/pwmchipN/device names it) and the channel's number on that controller."""

    device: str
    channel: int
    enable: str = ""  # what routes the channel to the pin (a config.txt line)


@dataclass(frozen=True)
class BoardProfile:
    name: str
    description: str
    pins: PinMap
    camera_backend: str           # "picamera2" | "gstreamer" | "opencv"
    serial_port: str | None       # the optic module controller's UART; None where there is none
    pin_factory: str | None       # gpiozero pin factory name ("jetson-gpio": ours); None where there is none
    note: str = ""                # what a person setting the board up must know
    # the kernel PWM channel that dims the white ring, where the pin factory's own PWM is too coarse
    # (hardware/pwm.py); None: the pin factory's PWM drives it
    ring_pwm: PWMOutput | None = None

    def __post_init__(self) -> None:
        if self.camera_backend not in CAMERA_BACKENDS:
            raise ValueError(f"board {self.name!r}: unknown camera backend {self.camera_backend!r}")


CAMERA_BACKENDS = ("picamera2", "gstreamer", "opencv")

# Raspberry Pi 5: BCM numbers. GPIO14/15 stay free for the UART (/dev/ttyAMA0 on the header);
# GPIO18 is a hardware-PWM-capable pin for the LED ring.
_PI_PINS = PinMap(numbering="BCM", white_ring=18, infrared=23, status=24, buzzer=25, capture_button=17)

# The Pi 5's hardware PWM on the header: RP1's PWM0 controller (platform device 1f00098000.pwm) has four
# channels, which reach GPIO12, GPIO13, GPIO18 and GPIO19 (RP1 datasheet: PWM0_CHAN0..3, alternate
# functions a0 on GPIO12/13, a3 on GPIO18/19). Its pwmchip number changes between kernels (pwmchip2 on
# 6.6, pwmchip0 on 6.12), so hardware/pwm.py finds the chip by this device name, not by number.
RP1_PWM0 = "1f00098000.pwm"
_PI5_PWM_OVERLAY = "dtoverlay=pwm-2chan in /boot/firmware/config.txt (GPIO18 and GPIO19), then reboot"
PI5_HARDWARE_PWM: dict[int, PWMOutput] = {
    12: PWMOutput(RP1_PWM0, 0),  # (not wired on this unit; routed by a pwm overlay's pin/func parameters)
    13: PWMOutput(RP1_PWM0, 1),
    18: PWMOutput(RP1_PWM0, 2, _PI5_PWM_OVERLAY),
    19: PWMOutput(RP1_PWM0, 3, _PI5_PWM_OVERLAY),
}

PI5 = BoardProfile(
    name="pi5",
    description="Raspberry Pi 5 with a CSI camera (libcamera)",
    pins=_PI_PINS,
    camera_backend="picamera2",
    serial_port="/dev/ttyAMA0",
    pin_factory="lgpio",
    note=("enable the header UART with dtparam=uart0=on and the ring's hardware PWM with dtoverlay=pwm-2chan in "
          "/boot/firmware/config.txt (without it the ring falls back to lgpio's software PWM, in whole-percent "
          "steps); picamera2 comes from Raspberry Pi OS's apt packages"),
    ring_pwm=PI5_HARDWARE_PWM[_PI_PINS.white_ring],
)

# Jetson Orin Nano developer kit: physical header positions (Jetson.GPIO BOARD mode). Pin 33 is
# GPIO13 / PWM5 (32c0000.pwm), enabled as PWM with jetson-io. Pins 8/10 carry the header's UART1,
# which L4T names /dev/ttyTHS0 on an Orin (JetPack 5 and 6); /dev/ttyTHS1 was the name of pins 8/10
# on the original Jetson Nano, and on an Orin it is not the header's UART.
JETSON_ORIN_NANO = BoardProfile(
    name="jetson-orin-nano",
    description="NVIDIA Jetson Orin Nano developer kit with a CSI camera (Argus)",
    pins=PinMap(numbering="BOARD", white_ring=33, infrared=29, status=31, buzzer=32, capture_button=7),
    camera_backend="gstreamer",
    serial_port="/dev/ttyTHS0",
    pin_factory="jetson-gpio",
    note=("gpiozero ships no Jetson pin factory (its own ones identify a Raspberry Pi), so the lights go "
          "through hardware/jetson_gpio.py over NVIDIA's Jetson.GPIO (JetPack's python3-jetson-gpio; the "
          "unit's user in the gpio group); pin 33 must be set to PWM with /opt/nvidia/jetson-io/jetson-io.py, "
          "and the capture button needs the module's own pull-up resistor (Jetson.GPIO leaves pulls to the pinmux)"),
)

# A developer's workstation: no GPIO, a USB (UVC) camera if any. The pin numbers mirror the Pi's
# so a simulated unit can be reasoned about with the Pi's wiring diagram.
WORKSTATION = BoardProfile(
    name="workstation",
    description="Workstation (no GPIO; USB camera or simulators)",
    pins=_PI_PINS,
    camera_backend="opencv",
    serial_port=None,
    pin_factory="mock",
    note="lights are gpiozero mock pins; use the simulated optic module for the serial controller",
)

PROFILES: dict[str, BoardProfile] = {p.name: p for p in (PI5, JETSON_ORIN_NANO, WORKSTATION)}

# The Python module behind each pin factory, for `glaucoscreen doctor` to check is importable.
GPIO_DRIVERS = {"lgpio": "lgpio", "jetson-gpio": "Jetson.GPIO"}

# Substrings of /proc/device-tree/model, checked in order.
_MODEL_MATCHES = (
    ("Raspberry Pi 5", PI5),
    ("Jetson Orin Nano", JETSON_ORIN_NANO),
)


def profile(name: str) -> BoardProfile:
    """The profile called `name` ("auto": the board we run on), or a message listing the ones that exist."""
    if name == "auto":
        return detect_board()
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; known boards: {', '.join(PROFILES)}") from None


def detect_board(model_path: str | Path = DEVICE_TREE_MODEL) -> BoardProfile:
    """The profile of the board we run on, from the device tree's model string.

    Anything not recognised (a PC has no device tree; other boards are not wired for the module)
    is treated as a workstation, and said so in the log.
    """
    try:
        model = Path(model_path).read_bytes().rstrip(b"\x00").decode("utf-8", "replace").strip()
    except OSError:
        return WORKSTATION
    for fragment, found in _MODEL_MATCHES:
        if fragment in model:
            return found
    log.warning("board %r is not one the optic module is wired for; treating it as a workstation", model)
    return WORKSTATION
