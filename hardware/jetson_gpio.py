"""A gpiozero pin factory over NVIDIA's Jetson.GPIO, so the optic module's lights run on a Jetson.

gpiozero's own factories identify a Raspberry Pi (its board revision, its BCM numbers), so on a
Jetson none of them start. Jetson.GPIO speaks RPi.GPIO's language instead (setmode, setup, output,
input, PWM, add_event_detect, cleanup) over the Jetson's header; this factory puts gpiozero's
devices (LED, PWMLED, Button, Buzzer) on top of it, so `hardware.illumination.Illumination` is the
same code on every board.

Pins are the 40-pin header's physical positions (Jetson.GPIO's BOARD mode), as the Jetson board
profile numbers them. Only the developer kit's header is described (`ORIN_NANO_HEADER`): the
positions Jetson.GPIO drives, and the three with a hardware PWM controller behind them (which
must also be switched to PWM with /opt/nvidia/jetson-io/jetson-io.py). Jetson.GPIO is imported
when a factory is made, never at import time: it refuses to load anywhere but on a Jetson.

The factory owns the GPIO chips' file descriptors (`_ChipFds`). Jetson.GPIO 2.1, the character-device
version JetPack 6 ships, opens a chip once and shares that fd among all of the chip's channels (on the
Orin Nano every header GPIO is on one chip), yet its clean-up of any single channel closes the shared
fd and forgets it while the other channels still hold it: the next channel's clean-up closes the same
number again (by then perhaps another file of the process: the optic module's serial port, a
database), and their edge events are requested from a closed fd. So before any library call that may
clean a channel up, the channel is made to hold no chip fd; the chips stay open while pins are in use
and are closed once each, when the factory closes. Closing pins and the factory is idempotent.
"""
from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType
from typing import Any
from weakref import WeakMethod, ref

from gpiozero.exc import (
    PinFixedPull,
    PinInvalidFunction,
    PinInvalidPin,
    PinInvalidPull,
    PinInvalidState,
    PinPWMUnsupported,
    PinSetInput,
)
from gpiozero.pins import BoardInfo, Factory, HeaderInfo, Pin, PinInfo

HEADER = "J12"  # the developer kit's 40-pin expansion header

# BOARD position -> (the pin's name in NVIDIA's pinout, the PWM controller behind it or None),
# for every position Jetson.GPIO drives on the Orin Nano / Orin NX developer kit.
ORIN_NANO_HEADER: dict[int, tuple[str, str | None]] = {
    7: ("GPIO09", None), 11: ("UART1_RTS", None), 12: ("I2S0_SCLK", None), 13: ("SPI1_SCK", None),
    15: ("GPIO12", "3280000.pwm"), 16: ("SPI1_CS1", None), 18: ("SPI1_CS0", None), 19: ("SPI0_MOSI", None),
    21: ("SPI0_MISO", None), 22: ("SPI1_MISO", None), 23: ("SPI0_SCK", None), 24: ("SPI0_CS0", None),
    26: ("SPI0_CS1", None), 29: ("GPIO01", None), 31: ("GPIO11", None), 32: ("GPIO07", "32e0000.pwm"),
    33: ("GPIO13", "32c0000.pwm"), 35: ("I2S0_FS", None), 36: ("UART1_CTS", None), 37: ("SPI1_MOSI", None),
    38: ("I2S0_SDIN", None), 40: ("I2S0_SDOUT", None),
}
# The rest of the header: power, ground and the pins Jetson.GPIO leaves to their buses.
_OTHER_PINS = {1: "3V3", 17: "3V3", 2: "5V", 4: "5V", 3: "I2C1_SDA", 5: "I2C1_SCL", 27: "I2C0_SDA",
               28: "I2C0_SCL", 8: "UART1_TXD", 10: "UART1_RXD",
               **{n: "GND" for n in (6, 9, 14, 20, 25, 30, 34, 39)}}

_PULLS = {"floating": "PUD_OFF", "up": "PUD_UP", "down": "PUD_DOWN"}
_EDGES = {"both": "BOTH", "rising": "RISING", "falling": "FALLING"}


class JetsonGPIOUnavailable(RuntimeError):
    """Jetson.GPIO cannot be used here; the message says why and what to do."""


def orin_nano_board_info() -> BoardInfo:
    """The developer kit's header as gpiozero describes boards (for pin lookup, reservations, pinout)."""
    pins = {}
    for number in range(1, 41):
        row, col = (number + 1) // 2, 2 - number % 2
        names = {number, str(number), f"BOARD{number}", f"{HEADER}:{number}"}
        if number in ORIN_NANO_HEADER:
            name, pwm = ORIN_NANO_HEADER[number]
            interfaces = {"gpio": name, **({"pwm": pwm} if pwm else {})}
        else:
            name = _OTHER_PINS[number]
            interfaces = {"": name}
        names.add(name)
        pins[number] = PinInfo(number=number, name=name, names=frozenset(names), pull="", row=row, col=col,
                               interfaces=frozenset(interfaces))
    header = HeaderInfo(name=HEADER, rows=20, columns=2, pins=pins)
    return BoardInfo(revision="p3768-0000+p3767", model="Jetson Orin Nano developer kit", pcb_revision="",
                     released="2023Q1", soc="Tegra234", manufacturer="NVIDIA", memory=8192, storage="microSD/NVMe",
                     usb=4, usb3=4, ethernet=1, eth_speed=1000, wifi=True, bluetooth=True, csi=2, dsi=0,
                     headers={HEADER: header}, board="")


def import_jetson_gpio():
    """NVIDIA's Jetson.GPIO module, or JetsonGPIOUnavailable saying why it is not there."""
    try:
        return importlib.import_module("Jetson.GPIO")
    except ImportError as exc:
        raise JetsonGPIOUnavailable(
            "Jetson.GPIO is not installed (JetPack's python3-jetson-gpio package, or `pip install Jetson.GPIO` "
            f"in the unit's venv): {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - it raises at import on a non-Jetson or without GPIO access
        raise JetsonGPIOUnavailable(
            f"Jetson.GPIO did not start ({type(exc).__name__}: {exc}); this must be a Jetson, and the unit's "
            "user must be in the gpio group") from exc


class _ChipFds:
    """The GPIO chip fds Jetson.GPIO opened for this factory's channels, closed here once each.

    Reads and edits the library's own bookkeeping (`Jetson.GPIO.gpio._channel_data[channel].chip_fd`,
    `_chip_fd`, `gpio_cdev.close_chip`), which only the character-device versions (2.1 and later) have.
    Older versions open no chip (they used sysfs) and share nothing: there this does nothing.
    """

    def __init__(self, gpio: Any) -> None:
        impl = getattr(gpio, "gpio", None)  # the module behind the Jetson.GPIO package
        needed = ("_channel_data", "_chip_fd", "gpio_cdev")
        self._impl = impl if impl is not None and all(hasattr(impl, n) for n in needed) else None
        self._owned: dict[int, str] = {}  # chip fd -> chip name
        self._lock = threading.RLock()

    def _info(self, channel: int):
        if self._impl is None:
            return None
        return self._impl._channel_data.get(channel)

    def adopt(self, channel: int) -> None:
        """Note the chip fd a freshly set-up channel holds: closing it is ours."""
        info = self._info(channel)
        fd = getattr(info, "chip_fd", None)
        if fd:
            self._owned.setdefault(fd, info.gpio_chip)

    @contextmanager
    def releasing(self, channel: int) -> Iterator[None]:
        """Around a library call that may clean `channel` up: the channel holds no chip fd for the call to
        close (the chip stays open, and in the library's table, for its other channels and the next set-up)."""
        with self._lock:
            info = self._info(channel)
            fd = getattr(info, "chip_fd", None)
            if fd:
                self._owned.setdefault(fd, info.gpio_chip)
                info.chip_fd = None
            try:
                yield
            except BaseException:
                if fd and info.chip_fd is None and self._impl is not None and self._impl._chip_fd.get(info.gpio_chip) == fd:
                    info.chip_fd = fd  # the call failed: the channel keeps the (still open) chip it had
                raise
            finally:
                self.adopt(channel)

    def detach_all(self) -> None:
        """No channel holds an fd of ours any more (before the library's clean-up of every channel)."""
        with self._lock:
            if self._impl is None:
                return
            for info in self._impl._channel_data.values():
                if getattr(info, "chip_fd", None) in self._owned:
                    info.chip_fd = None

    def close(self) -> None:
        """Close each chip once, and take it out of the library's table so a later set-up opens it afresh."""
        with self._lock:
            if self._impl is None:
                return
            self.detach_all()
            owned, self._owned = self._owned, {}
            for fd, chip in owned.items():
                if self._impl._chip_fd.get(chip) == fd:
                    del self._impl._chip_fd[chip]
                self._impl.gpio_cdev.close_chip(fd)


class JetsonGPIOFactory(Factory):
    """gpiozero pins on a Jetson's 40-pin header, by physical position, driven through Jetson.GPIO.

    `gpio` is the Jetson.GPIO module to drive (by default imported now); it is put in BOARD mode.
    """

    def __init__(self, gpio: Any = None) -> None:
        super().__init__()
        self.gpio = gpio if gpio is not None else import_jetson_gpio()
        self.gpio.setwarnings(False)
        self.gpio.setmode(self.gpio.BOARD)
        self.pins: dict[PinInfo, JetsonGPIOPin] = {}
        self._info = orin_nano_board_info()
        self._lock = threading.Lock()
        self._chips = _ChipFds(self.gpio)
        self._closed = False

    def pin(self, name):
        for _header, info in self.board_info.find_pin(name):
            with self._lock:
                pin = self.pins.get(info)
                if pin is None:
                    pin = self.pins[info] = JetsonGPIOPin(self, info)
            return pin
        raise PinInvalidPin(f"{name!r} is not a pin of the Jetson's {HEADER} header (use its position, 1..40)")

    def close(self) -> None:
        """Release every pin, then close each GPIO chip once. A second call does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pins = list(self.pins.values())
            self.pins.clear()
        for pin in pins:
            pin.close()
        self._chips.detach_all()
        if self.gpio.getmode() is not None:
            self.gpio.cleanup()  # anything still set up; no channel holds a chip fd for it to close
        self._chips.close()

    # -- the library's calls that may clean a channel up (and with it, close the chip's fd) --------
    def _setup(self, channel: int, direction, **kwargs) -> None:
        with self._chips.releasing(channel):  # setup() of a set-up channel cleans it up first
            self.gpio.setup(channel, direction, **kwargs)

    def _cleanup(self, channel: int) -> None:
        with self._chips.releasing(channel):
            self.gpio.cleanup(channel)

    def _pwm(self, channel: int, frequency_hz: float):
        with self._chips.releasing(channel):  # PWM() cleans up a channel set up as a GPIO
            return self.gpio.PWM(channel, frequency_hz)

    def _get_board_info(self) -> BoardInfo:
        return self._info

    @staticmethod
    def ticks() -> float:
        return time.monotonic()

    @staticmethod
    def ticks_diff(later: float, earlier: float) -> float:
        return later - earlier


class JetsonGPIOPin(Pin):
    """One header position: input with edge events, output, or hardware PWM (positions 15, 32, 33)."""

    def __init__(self, factory: JetsonGPIOFactory, info: PinInfo):
        super().__init__()
        if "gpio" not in info.interfaces:
            raise PinInvalidPin(f"{HEADER}:{info.number} is {info.name}, not a GPIO Jetson.GPIO can drive")
        self._factory = factory
        self._info = info
        self._gpio = factory.gpio
        self._channel = info.number
        self._function: str | None = None  # nothing set up on the channel yet
        self._pull = "floating"
        self._pwm = None
        self._frequency: float | None = None
        self._duty = 0.0
        self._bounce: float | None = None
        self._edges = "both"
        self._when_changed: WeakMethod[MethodType] | ref[Any] | None = None
        self._when_changed_lock = threading.RLock()

    def __repr__(self) -> str:
        return f"{HEADER}:{self._channel}"

    def _get_info(self) -> PinInfo:
        return self._info

    def close(self) -> None:
        """Stop PWM and edge events and give the channel back; closing again does nothing."""
        self.frequency = None
        self.when_changed = None
        if self._function is not None:
            self._function = None
            self._factory._cleanup(self._channel)

    # -- direction ------------------------------------------------------------------------------
    def output_with_state(self, state) -> None:
        self._stop_pwm()
        g = self._gpio
        self._factory._setup(self._channel, g.OUT, initial=g.HIGH if state else g.LOW)
        self._function = "output"

    def input_with_pull(self, pull) -> None:
        self._stop_pwm()
        self._setup_input(pull)

    def _get_function(self) -> str:
        return self._function or "input"  # a Jetson's header pads come up as inputs

    def _set_function(self, value) -> None:
        if value == "input":
            self._stop_pwm()
            self._setup_input(self._pull)
        elif value == "output":
            if self._function == "output" and self._pwm is None:
                return  # already one: a second setup() would only clean the channel up and set it up again
            self._stop_pwm()
            self._factory._setup(self._channel, self._gpio.OUT)
            self._function = "output"
        else:
            raise PinInvalidFunction(f"invalid function {value!r} for pin {self!r}: input or output")

    def _setup_input(self, pull: str) -> None:
        """Make the channel an input; `pull` is only noted. Jetson.GPIO never applies a pull (the pinmux and
        the module's own resistors decide it) and warns when given one, so it is not passed on, and a pin
        that is already an input is not set up again just for its pull."""
        if pull not in _PULLS:
            raise PinInvalidPull(f"invalid pull {pull!r} for pin {self!r}")
        if self._function != "input":
            self._factory._setup(self._channel, self._gpio.IN)
        self._function, self._pull = "input", pull

    # -- level ----------------------------------------------------------------------------------
    def _get_state(self):
        if self._pwm is not None:
            return self._duty
        return self._gpio.input(self._channel)

    def _set_state(self, value) -> None:
        if self._pwm is not None:
            try:
                self._pwm.ChangeDutyCycle(float(value) * 100.0)
            except ValueError as exc:
                raise PinInvalidState(f"invalid duty cycle {value!r} for pin {self!r}") from exc
            self._duty = float(value)
            return
        if self._function != "output":
            raise PinSetInput(f"cannot set the state of input pin {self!r}")
        g = self._gpio
        try:
            g.output(self._channel, g.HIGH if value else g.LOW)
        except RuntimeError as exc:
            raise PinSetInput(f"cannot set the state of pin {self!r}: {exc}") from exc

    def _get_pull(self) -> str:
        return self._pull

    def _set_pull(self, value) -> None:
        if self._get_function() != "input":
            raise PinFixedPull(f"cannot set the pull of non-input pin {self!r}")
        self._setup_input(value)

    # -- PWM ------------------------------------------------------------------------------------
    def _get_frequency(self) -> float | None:
        return self._frequency

    def _set_frequency(self, value) -> None:
        if value is None:
            self._stop_pwm()
            return
        if self._pwm is not None:
            self._pwm.ChangeFrequency(value)
            self._frequency = value
            return
        if "pwm" not in self._info.interfaces:
            pwm_pins = ", ".join(str(n) for n, (_, pwm) in ORIN_NANO_HEADER.items() if pwm)
            raise PinPWMUnsupported(f"pin {self!r} has no PWM controller on this Jetson; use one of {pwm_pins}")
        try:
            pwm = self._factory._pwm(self._channel, value)  # Jetson.GPIO frees the pin's GPIO set-up for the PWM
        except (ValueError, RuntimeError) as exc:
            raise PinPWMUnsupported(f"PWM did not start on pin {self!r} ({exc}); is it set to PWM in "
                                    "jetson-io.py?") from exc
        pwm.start(0.0)
        self._pwm, self._frequency, self._duty, self._function = pwm, value, 0.0, "output"

    def _stop_pwm(self) -> None:
        if self._pwm is None:
            return
        pwm, self._pwm = self._pwm, None
        self._frequency, self._duty, self._function = None, 0.0, None
        pwm.stop()
        self._factory._cleanup(self._channel)  # hand the pin back from the PWM controller

    # -- edges ----------------------------------------------------------------------------------
    def _get_bounce(self) -> float | None:
        return self._bounce

    def _set_bounce(self, value) -> None:
        if value is not None and value < 0:
            raise ValueError("bounce must be 0 or more seconds")
        with self._when_changed_lock:
            self._bounce = value
            self._rearm()

    def _get_edges(self) -> str:
        return self._edges

    def _set_edges(self, value) -> None:
        if value not in (*_EDGES, "none"):
            raise ValueError(f"edges must be one of both, rising, falling or none, not {value!r}")
        with self._when_changed_lock:
            self._edges = value
            self._rearm()

    def _get_when_changed(self):
        return None if self._when_changed is None else self._when_changed()

    def _set_when_changed(self, value) -> None:
        with self._when_changed_lock:
            was = self._when_changed is not None
            if value is None:
                self._when_changed = None
            else:  # weakly, as gpiozero's own pins do: a closed device must not be kept alive by its pin
                self._when_changed = WeakMethod(value) if isinstance(value, MethodType) else ref(value)
            if was and self._when_changed is None:
                self._detect(False)
            elif not was and self._when_changed is not None:
                self._detect(True)

    def _rearm(self) -> None:
        if self._when_changed is not None:
            self._detect(False)
            self._detect(True)

    def _detect(self, on: bool) -> None:
        g = self._gpio
        if not on:
            g.remove_event_detect(self._channel)
            return
        if self._edges == "none":
            return
        bounce_ms = None if not self._bounce else max(1, int(round(self._bounce * 1000)))
        g.add_event_detect(self._channel, getattr(g, _EDGES[self._edges]), callback=self._edge,
                           bouncetime=bounce_ms)

    def _edge(self, channel) -> None:
        """Jetson.GPIO's callback (from its event thread): tell gpiozero, as its own pins do."""
        method = self._get_when_changed()
        if method is None:
            self.when_changed = None
        else:
            method(self._factory.ticks(), self._gpio.input(self._channel))
