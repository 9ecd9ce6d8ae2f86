"""A stand-in for NVIDIA's Jetson.GPIO that behaves like it on an Orin Nano developer kit.

Jetson.GPIO only loads on a Jetson, so the Jetson pin factory is exercised against this instead:
an object with the library's names (put where `import Jetson.GPIO` finds it, or handed to the
factory) that keeps what the real one keeps — the numbering mode, each channel's set-up (input,
output or hardware PWM), output levels, PWM frequency and duty cycle, edge callbacks — and refuses
what the real one refuses: any call before `setmode`, a channel that is not a GPIO on this header,
`output` on a channel not set up as an output, `input` on one not set up at all, PWM on a position
with no PWM controller behind it, a second PWM object on a channel, a duty cycle outside 0..100,
edge detection on a channel that is not an input.

It also keeps the GPIO chip's file descriptor as Jetson.GPIO 2.1 (the character-device versions that
JetPack 6 ships) does, in the same places (`Jetson.GPIO.gpio._chip_fd`, each channel's
`ChannelInfo.chip_fd`, closed with `gpio_cdev.close_chip`): the chip is opened once, on the first
`setup` of any of its channels, and that one fd is shared by all of them; but the library's clean-up of
a single channel (`cleanup(channel)`, a second `setup` of a set-up channel, `PWM` on a channel set up
as a GPIO) closes the shared fd and forgets it while the chip's other channels still hold it. Their
clean-ups then close the same number again, and their edge events are requested on a closed fd
(`add_event_detect` fails with EBADF, as the library's ioctl does). Every chip opened and every close is
counted (`chip_fds_opened`, `chip_fd_closes`, `stray_chip_closes`), so a test can see that each chip
is closed exactly once. All of the Orin Nano's header GPIOs are on one chip, "tegra234-gpio".

The outside world is what tests change: `drive(channel, level)` is a button or a wire pulling an
input; inputs nothing drives sit at the level the carrier's own resistors give them
(`pulled_up`), because Jetson.GPIO leaves pulls to the pinmux rather than to `setup`.
"""
from __future__ import annotations

import errno
import threading
import time
import warnings

from hardware.jetson_gpio import ORIN_NANO_HEADER

ORIN_NANO_CHIP = "tegra234-gpio"  # the GPIO controller behind every header GPIO of the Orin Nano developer kit


class SimulatedChannelInfo:
    """The library's record of one channel (Jetson.GPIO.gpio_pin_data.ChannelInfo): its chip and the chip fd it holds."""

    def __init__(self, channel: int, gpio_chip: str):
        self.channel = channel
        self.gpio_chip = gpio_chip
        self.chip_fd: int | None = None


class SimulatedGPIOCdev:
    """Stands for Jetson.GPIO.gpio_cdev: opens GPIO chips and closes them, and counts both.

    Chip fds are numbers that are never handed out twice, so a close can be told apart from a second
    close of the same chip. `close_chip` swallows a close of an fd that is not open, as the library's does
    (it ignores EBADF); such closes are counted in `stray_closes`, because on a real board the number may
    by then belong to another file of the process.
    """

    def __init__(self) -> None:
        self._next_fd = 100
        self.opened: list[int] = []
        self.closes: list[int] = []
        self.stray_closes: list[int] = []
        self.open_fds: set[int] = set()

    def chip_open_by_label(self, label: str) -> int:
        fd, self._next_fd = self._next_fd, self._next_fd + 1
        self.opened.append(fd)
        self.open_fds.add(fd)
        return fd

    def close_chip(self, chip_fd: int | None) -> None:
        if chip_fd is None:
            return
        self.closes.append(chip_fd)
        if chip_fd in self.open_fds:
            self.open_fds.discard(chip_fd)
        else:
            self.stray_closes.append(chip_fd)


class SimulatedGPIOModule:
    """Stands for Jetson.GPIO.gpio, the module behind the package: the chip bookkeeping it keeps."""

    def __init__(self) -> None:
        self._channel_data: dict[int, SimulatedChannelInfo] = {}  # bound by setmode, as the library does
        self._chip_fd: dict[str, int] = {}                        # chip name -> the fd its channels share
        self.gpio_cdev = SimulatedGPIOCdev()


class SimulatedJetsonGPIO:
    """One board's GPIO state behind the Jetson.GPIO API (one instance stands for the module)."""

    BOARD, BCM, TEGRA_SOC, CVM = "BOARD", "BCM", "TEGRA_SOC", "CVM"
    PUD_OFF, PUD_DOWN, PUD_UP = 20, 21, 22
    HIGH, LOW = 1, 0
    RISING, FALLING, BOTH = 31, 32, 33
    UNKNOWN, OUT, IN, HARD_PWM = -1, 0, 1, 43
    _FUNCTIONS = {IN: "in", OUT: "out", HARD_PWM: "pwm"}  # what `function` reports for each set-up

    def __init__(self, pulled_up: tuple[int, ...] = ()):
        self._lock = threading.RLock()
        self._pulled_up = set(pulled_up)
        self._mode: str | None = None
        self._warnings = True
        self._config: dict[int, int] = {}       # channel -> IN / OUT / HARD_PWM
        self._out: dict[int, int] = {}          # output levels
        self._driven: dict[int, int] = {}       # levels the outside world puts on inputs
        self._pwm: dict[int, SimulatedPWM] = {}
        self.pwms_made: list[SimulatedPWM] = []  # every PWM object, in order, also after cleanup
        self._events: dict[int, dict] = {}
        self.PWM = _pwm_class(self)
        self.gpio = SimulatedGPIOModule()  # what `Jetson.GPIO.gpio` is on a board
        self._board_channels = {ch: SimulatedChannelInfo(ch, ORIN_NANO_CHIP) for ch in ORIN_NANO_HEADER}

    # -- the library's API ----------------------------------------------------------------------
    def setwarnings(self, state: bool) -> None:
        self._warnings = bool(state)

    def setmode(self, mode: str) -> None:
        with self._lock:
            if self._mode is not None and mode != self._mode:
                raise ValueError("A different mode has already been set!")
            if mode not in (self.BOARD, self.BCM, self.TEGRA_SOC, self.CVM):
                raise ValueError("An invalid mode was passed to setmode()!")
            if mode != self.BOARD:
                raise NotImplementedError("this stand-in numbers channels by header position (BOARD) only")
            self._mode = mode
            self.gpio._channel_data = self._board_channels

    def getmode(self) -> str | None:
        return self._mode

    def setup(self, channels, direction, pull_up_down=PUD_OFF, initial=None) -> None:
        if direction not in (self.IN, self.OUT):
            raise ValueError("An invalid direction was passed to setup()")
        if direction == self.OUT and pull_up_down != self.PUD_OFF:
            raise ValueError("pull_up_down parameter is not valid for outputs")
        if direction == self.IN and initial is not None:
            raise ValueError("initial parameter is not valid for inputs")
        if pull_up_down not in (self.PUD_OFF, self.PUD_UP, self.PUD_DOWN):
            raise ValueError("Invalid value for pull_up_down - should be either PUD_OFF, PUD_UP or PUD_DOWN")
        if pull_up_down != self.PUD_OFF and self._warnings:
            warnings.warn("Jetson.GPIO ignores setup()'s pull_up_down parameter", RuntimeWarning, stacklevel=2)
        with self._lock:
            for ch in _iterable(channels):
                self._check(ch)
                if self._config.get(ch) == self.HARD_PWM:
                    raise ValueError(f"Channel {ch} is in use as a PWM; stop it and cleanup() it first")
                if ch in self._config:  # set up before: the library cleans the channel up first
                    self._cleanup_one(ch)
                self._open_chip(ch)
                self._config[ch] = direction
                if direction == self.OUT:
                    self._out[ch] = self.HIGH if initial else self.LOW

    def output(self, channels, values) -> None:
        chans = list(_iterable(channels))
        vals = list(_iterable(values))
        if len(vals) == 1:
            vals = vals * len(chans)
        if len(vals) != len(chans):
            raise RuntimeError("Number of channels != number of values")
        with self._lock:
            for ch in chans:
                self._check(ch)
                if self._config.get(ch) != self.OUT:
                    raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")
            for ch, v in zip(chans, vals):
                if int(v) not in (self.HIGH, self.LOW):
                    raise ValueError("An invalid value was passed to output()")
                self._out[ch] = int(v)

    def input(self, channel: int) -> int:
        with self._lock:
            self._check(channel)
            function = self._config.get(channel)
            if function not in (self.IN, self.OUT):
                raise RuntimeError("You must setup() the GPIO channel first")
            return self._level(channel)

    def cleanup(self, channel=None) -> None:
        with self._lock:
            if self._mode is None:
                return
            chans = list(self._config) if channel is None else list(_iterable(channel))
            for ch in chans:
                self._check(ch)
                if ch in self._config:
                    self._cleanup_one(ch)
            if channel is None:
                self._mode = None

    def add_event_detect(self, channel: int, edge: int, callback=None, bouncetime=None, polltime=0.2) -> None:
        if callback is not None and not callable(callback):
            raise TypeError("Callback Parameter must be callable")
        with self._lock:
            self._check(channel)
            if self._config.get(channel) != self.IN:
                raise RuntimeError("You must setup() the GPIO channel as an input first")
            if edge not in (self.RISING, self.FALLING, self.BOTH):
                raise ValueError("The edge must be set to RISING, FALLING, or BOTH")
            if bouncetime is not None and (type(bouncetime) is not int or bouncetime < 0):
                raise TypeError("bouncetime must be an integer of milliseconds, 0 or more")
            if channel in self._events:
                raise RuntimeError("Conflicting edge already enabled for this GPIO channel")
            chip_fd = self.gpio._channel_data[channel].chip_fd  # the event line is requested from the chip
            if chip_fd is None:
                raise TypeError("argument must be an int, or have a fileno() method.")
            if chip_fd not in self.gpio.gpio_cdev.open_fds:
                raise OSError(errno.EBADF, "Opening input line event handle: Bad file descriptor")
            self._events[channel] = {"edge": edge, "callbacks": [callback] if callback else [],
                                     "bounce_s": (bouncetime or 0) / 1000.0, "last": None}

    def remove_event_detect(self, channel: int) -> None:
        with self._lock:
            self._check(channel)
            self._events.pop(channel, None)

    # -- the outside world, for tests -----------------------------------------------------------
    def drive(self, channel: int, level: int) -> None:
        """Something outside the board pulls `channel` to `level` (a button to ground is 0)."""
        with self._lock:
            before = self._level(channel) if self._config.get(channel) == self.IN else None
            self._driven[channel] = 1 if level else 0
            event = self._events.get(channel)
            after = self._level(channel)
            fire = []
            if event is not None and before is not None and after != before:
                wanted = {self.RISING: after == 1, self.FALLING: after == 0, self.BOTH: True}[event["edge"]]
                now = time.monotonic()
                if wanted and (event["last"] is None or now - event["last"] >= event["bounce_s"]):
                    event["last"] = now
                    fire = list(event["callbacks"])
        for callback in fire:  # outside the lock, as the library's event thread calls them
            callback(channel)

    def function(self, channel: int) -> str | None:
        """'in', 'out', 'pwm' or None (not set up): what a test checks a device did to the pin."""
        mode = self._config.get(channel)
        return None if mode is None else self._FUNCTIONS.get(mode)

    def level(self, channel: int) -> int:
        with self._lock:
            return self._level(channel)

    def duty(self, channel: int) -> float | None:
        """The running PWM's duty cycle in percent (None: no PWM running on the channel)."""
        pwm = self._pwm.get(channel)
        return pwm.duty_cycle if pwm is not None and pwm.running else None

    def frequency(self, channel: int) -> float | None:
        pwm = self._pwm.get(channel)
        return pwm.frequency_hz if pwm is not None and pwm.running else None

    def configured(self) -> dict[int, str]:
        return {ch: self._FUNCTIONS[self._config[ch]] for ch in sorted(self._config)}

    @property
    def chip_fds_opened(self) -> list[int]:
        """Every GPIO chip fd the library opened, in order."""
        return list(self.gpio.gpio_cdev.opened)

    @property
    def chip_fd_closes(self) -> list[int]:
        """Every chip fd close, in order (a chip closed twice appears twice)."""
        return list(self.gpio.gpio_cdev.closes)

    @property
    def stray_chip_closes(self) -> list[int]:
        """Closes of a chip fd that was no longer open: on a board, of whatever file had the number by then."""
        return list(self.gpio.gpio_cdev.stray_closes)

    def open_chip_fds(self) -> set[int]:
        return set(self.gpio.gpio_cdev.open_fds)

    # -- inside ---------------------------------------------------------------------------------
    def _open_chip(self, channel: int) -> None:
        """As the library's `_do_one_channel`: the chip's shared fd, opened if the chip has none yet."""
        info = self.gpio._channel_data[channel]
        info.chip_fd = self.gpio._chip_fd.get(info.gpio_chip)
        if not info.chip_fd:
            info.chip_fd = self.gpio.gpio_cdev.chip_open_by_label(info.gpio_chip)
            self.gpio._chip_fd[info.gpio_chip] = info.chip_fd

    def _cleanup_one(self, channel: int) -> None:
        """As the library's `_cleanup_one`: the channel's PWM or events, its set-up, and the chip fd it holds."""
        pwm = self._pwm.pop(channel, None)
        if pwm is not None:
            pwm.stop()
        self._events.pop(channel, None)
        self._config.pop(channel, None)
        self._out.pop(channel, None)
        info = self.gpio._channel_data[channel]
        if info.chip_fd:  # the chip's fd, shared with its other channels: closed here all the same
            self.gpio.gpio_cdev.close_chip(info.chip_fd)
            info.chip_fd = None
            self.gpio._chip_fd.pop(info.gpio_chip, None)

    def _check(self, channel) -> None:
        if self._mode is None:
            raise RuntimeError("Please set pin numbering mode using GPIO.setmode(GPIO.BOARD), GPIO.setmode(GPIO.BCM), "
                               "GPIO.setmode(GPIO.TEGRA_SOC) or GPIO.setmode(GPIO.CVM)")
        if isinstance(channel, bool) or not isinstance(channel, int):
            raise ValueError("Channel must be an integer or list/tuple of integers")
        if channel not in ORIN_NANO_HEADER:
            raise ValueError(f"Channel {channel} is invalid")

    def _level(self, channel: int) -> int:
        if self._config.get(channel) == self.OUT:
            return self._out.get(channel, self.LOW)
        if channel in self._driven:
            return self._driven[channel]
        return self.HIGH if channel in self._pulled_up else self.LOW


class SimulatedPWM:
    """Jetson.GPIO's PWM object: a hardware PWM controller behind one header position."""

    def __init__(self, gpio: SimulatedJetsonGPIO, channel: int, frequency_hz: float):
        with gpio._lock:
            gpio._check(channel)
            if ORIN_NANO_HEADER[channel][1] is None:
                raise ValueError(f"Channel {channel} is not a PWM")
            if gpio._config.get(channel) == gpio.HARD_PWM:
                raise ValueError("Can't create duplicate PWM objects")
            if gpio._config.get(channel) in (gpio.IN, gpio.OUT):
                gpio.cleanup(channel)  # as the library does: the pin leaves GPIO for the PWM controller
            if not frequency_hz > 0:
                raise ValueError("frequency must be greater than 0")
            self._gpio, self.channel = gpio, channel
            self.frequency_hz = float(frequency_hz)
            self.duty_cycle = 0.0
            self.running = False
            gpio._config[channel] = gpio.HARD_PWM
            gpio._pwm[channel] = self
            gpio.pwms_made.append(self)

    def start(self, duty_cycle_percent: float) -> None:
        self.ChangeDutyCycle(duty_cycle_percent)
        self.running = True

    def ChangeDutyCycle(self, duty_cycle_percent: float) -> None:  # noqa: N802 - the library's name
        if not 0.0 <= duty_cycle_percent <= 100.0:
            raise ValueError("invalid duty_cycle_percent")
        self.duty_cycle = float(duty_cycle_percent)

    def ChangeFrequency(self, frequency_hz: float) -> None:  # noqa: N802 - the library's name
        if not frequency_hz > 0:
            raise ValueError("frequency must be greater than 0")
        self.frequency_hz = float(frequency_hz)

    def stop(self) -> None:
        self.running = False


def _pwm_class(gpio: SimulatedJetsonGPIO):
    class PWM(SimulatedPWM):
        def __init__(self, channel: int, frequency_hz: float):
            super().__init__(gpio, channel, frequency_hz)

    return PWM


def _iterable(value):
    return value if isinstance(value, (list, tuple)) else (value,)
