"""Hardware PWM through the kernel's sysfs interface (/sys/class/pwm), as gpiozero pins.

Why the white ring needs it on a Raspberry Pi: gpiozero's lgpio pin sends the duty cycle as a whole
percent (`int(value * 100)`) to lgpio's software PWM, which times the pulses from a thread. Every level
is cut down to the percent below it: 1.5 % becomes 1 % (a third less light), 0.29 becomes 0.28, and the
ring's low levels, where the capture loop aims for a dim fundus, are 20 % apart at 5 %. A PWM
controller times the pulses in hardware and takes its period and duty cycle in nanoseconds: at the
ring's 1 kHz that is a millionth of the period per step.

On the Pi 5 the controller is RP1's PWM0 (the platform device `1f00098000.pwm`); its channels 0..3 reach
GPIO12, 13, 18 and 19 when config.txt routes them there (`dtoverlay=pwm-2chan` routes channels 2 and 3
to GPIO18 and GPIO19). The kernel does not keep PWM chip numbers stable (RP1's PWM0 was pwmchip2 on
Raspberry Pi OS's 6.6 kernels and is pwmchip0 on 6.12), so the chip is found by the device behind it.

`SysfsPWM` is one channel: exported, its period and duty cycle written in the order the kernel accepts
(it refuses a duty cycle longer than the period, and enabling a channel without a period), enabled, and
on close set dark, disabled and given back. `HardwarePWMFactory` wraps a board's gpiozero pin factory so
that the pins it is given run on such channels and every other pin stays with the board's factory;
the PWM pins are never claimed as GPIO lines, since claiming one would switch it away from the PWM.
"""
from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

from gpiozero.exc import (
    PinFixedPull,
    PinInvalidFunction,
    PinInvalidPin,
    PinInvalidState,
)
from gpiozero.pins import BoardInfo, Factory, Pin, PinInfo

from hardware.boards import PWMOutput

PWM_SYSFS = Path("/sys/class/pwm")
READY_TIMEOUT_S = 2.0     # after an export, udev gives the new files to the gpio group a moment later
ON_OFF_HZ = 1000          # the rate used when a PWM pin is driven as a plain on/off output


class PWMUnavailable(RuntimeError):
    """The kernel's PWM cannot drive this output; the message says what to set up."""


def find_pwm_chip(device: str, root: str | Path = PWM_SYSFS) -> Path:
    """The `pwmchipN` directory under `root` whose `device` link points to the platform device `device`."""
    root = Path(root)
    seen = []
    for chip in sorted(root.glob("pwmchip*")):
        try:
            name = (chip / "device").resolve(strict=True).name
        except OSError:
            continue
        if name == device:
            return chip
        seen.append(f"{chip.name} ({name})")
    found = ", ".join(seen) if seen else "none"
    raise PWMUnavailable(f"no PWM chip in {root} belongs to {device} (found: {found}); is the PWM controller "
                         "enabled and routed to the pin in config.txt?")


def _write_attr(path: Path, value: int | str) -> None:
    """One write of one value to a sysfs attribute, as `echo value > path` does (errors come from the write)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, str(value).encode("ascii"))
    finally:
        os.close(fd)


def _read_attr(path: Path) -> str:
    return path.read_text().strip()


class SysfsPWM:
    """One channel of a kernel PWM chip (`chip` is its /sys/class/pwm/pwmchipN directory)."""

    def __init__(self, chip: str | Path, channel: int, frequency_hz: float, *,
                 ready_timeout_s: float = READY_TIMEOUT_S):
        self.chip = Path(chip)
        self.channel = int(channel)
        self.path = self.chip / f"pwm{self.channel}"
        self._lock = threading.RLock()
        self._closed = False
        self._exported_here = False
        npwm = self.chip / "npwm"
        if npwm.exists() and not 0 <= self.channel < int(_read_attr(npwm)):
            raise PWMUnavailable(f"{self.chip} has {_read_attr(npwm)} channels; there is no channel {self.channel}")
        try:
            if not self.path.exists():
                _write_attr(self.chip / "export", self.channel)
                self._exported_here = True
            self._wait_ready(ready_timeout_s)
            self._period_ns = int(_read_attr(self.path / "period"))
            self._duty_ns = int(_read_attr(self.path / "duty_cycle"))
            if self._period_ns and self._duty_ns:
                self._set_duty_ns(0)  # left lit by an earlier run: dark first (the kernel refuses any write while
            self.frequency = frequency_hz  # the period is 0, as it is after an export, so the period comes next)
            self._attr("enable", 1)
        except OSError as exc:
            self._give_back()
            raise PWMUnavailable(f"PWM channel {self.channel} of {self.chip} did not start: {exc}") from exc
        except BaseException:
            self._give_back()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        files = [self.path / name for name in ("period", "duty_cycle", "enable")]
        deadline = time.monotonic() + timeout_s
        while not all(os.access(f, os.R_OK | os.W_OK) for f in files):
            if time.monotonic() > deadline:
                raise PWMUnavailable(f"{self.path} did not appear (or is not writable by this user) within "
                                     f"{timeout_s:g} s of its export; is the user in the gpio group?")
            time.sleep(0.01)

    def _attr(self, name: str, value: int) -> None:
        _write_attr(self.path / name, value)

    def _set_duty_ns(self, ns: int) -> None:
        self._attr("duty_cycle", ns)
        self._duty_ns = ns

    # -- what it does -------------------------------------------------------------------------------
    @property
    def period_ns(self) -> int:
        return self._period_ns

    @property
    def frequency(self) -> float:
        return 1e9 / self._period_ns

    @frequency.setter
    def frequency(self, hz: float) -> None:
        if not hz > 0:
            raise ValueError(f"PWM frequency must be positive, got {hz!r}")
        period = max(1, round(1e9 / hz))
        with self._lock:
            fraction = self._duty_ns / self._period_ns if self._period_ns else 0.0
            duty = min(period, round(fraction * period))
            if period >= self._duty_ns:  # the kernel refuses a period shorter than the duty cycle it has
                self._attr("period", period)
                self._period_ns = period
                self._set_duty_ns(duty)
            else:
                self._set_duty_ns(duty)
                self._attr("period", period)
                self._period_ns = period

    @property
    def duty(self) -> float:
        """The duty cycle as a fraction of the period, as the controller has it."""
        return self._duty_ns / self._period_ns

    @duty.setter
    def duty(self, fraction: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"duty cycle must be between 0 and 1, got {fraction!r}")
        with self._lock:
            self._set_duty_ns(min(self._period_ns, round(fraction * self._period_ns)))

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Dark, disabled, and unexported if this object exported it. A second call does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._set_duty_ns(0)
                self._attr("enable", 0)
            except OSError:
                pass  # already gone (unexported by someone else); nothing to turn off
            self._give_back()

    def _give_back(self) -> None:
        self._closed = True
        if self._exported_here:
            self._exported_here = False
            try:
                _write_attr(self.chip / "unexport", self.channel)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOENT):
                    raise


class HardwarePWMPin(Pin):
    """A gpiozero output pin whose level is a kernel PWM channel's duty cycle (0..1)."""

    def __init__(self, factory: HardwarePWMFactory, info: PinInfo, output: PWMOutput):
        super().__init__()
        self._factory = factory
        self._info = info
        self.output = output
        self._pwm: SysfsPWM | None = None
        self._frequency: float | None = None

    def __repr__(self) -> str:
        return f"{self._info.name} (PWM channel {self.output.channel} of {self.output.device})"

    def _get_info(self) -> PinInfo:
        return self._info

    @property
    def sysfs(self) -> SysfsPWM | None:
        """The channel while it runs (None before a frequency or level is set, and after close)."""
        return self._pwm

    def close(self) -> None:
        self._stop()

    def _start(self, hz: float) -> SysfsPWM:
        if self._pwm is None:
            self._pwm = SysfsPWM(self._factory.chip_for(self.output), self.output.channel, hz)
        else:
            self._pwm.frequency = hz
        return self._pwm

    def _stop(self) -> None:
        pwm, self._pwm, self._frequency = self._pwm, None, None
        if pwm is not None:
            pwm.close()

    def _get_function(self) -> str:
        return "output"

    def _set_function(self, value) -> None:
        if value != "output":
            raise PinInvalidFunction(f"{self!r} is a PWM output; it cannot be an {value}")

    def _get_state(self) -> float:
        return self._pwm.duty if self._pwm is not None else 0.0

    def _set_state(self, value) -> None:
        try:
            level = float(value)
        except (TypeError, ValueError) as exc:
            raise PinInvalidState(f"invalid state {value!r} for pin {self!r}") from exc
        if not 0.0 <= level <= 1.0:
            raise PinInvalidState(f"invalid state {value!r} for pin {self!r}: a duty cycle is between 0 and 1")
        if self._frequency is None:  # no PWM asked for: a plain on/off output, the channel full on or off
            level = 1.0 if level else 0.0
        pwm = self._pwm if self._pwm is not None else self._start(self._frequency or ON_OFF_HZ)
        pwm.duty = level

    def _get_frequency(self) -> float | None:
        return self._frequency

    def _set_frequency(self, value) -> None:
        if value is None:
            self._stop()
            return
        self._start(value)
        self._frequency = value

    def _get_pull(self) -> str:
        return "floating"

    def _set_pull(self, value) -> None:
        raise PinFixedPull(f"{self!r} is a PWM output; it has no pull")


class HardwarePWMFactory(Factory):
    """A board's gpiozero pin factory, with the pins in `outputs` (keyed as the board names its pins,
    e.g. BCM numbers on a Pi) on kernel PWM channels under `root` instead.

    The chips are looked up now and, with `probe`, each channel is exported, started dark and given back
    once, so a PWM controller that is not there, or that this user may not drive, is refused here
    (PWMUnavailable) rather than when a light is first set.
    """

    def __init__(self, base: Factory, outputs: dict[int, PWMOutput], root: str | Path | None = None, *,
                 probe: bool = True):
        super().__init__()
        self.base = base
        self.root = Path(root) if root is not None else PWM_SYSFS
        self._lock = threading.Lock()
        self._outputs: dict[PinInfo, PWMOutput] = {}
        self._chips: dict[str, Path] = {}
        for name, output in outputs.items():
            found = [info for _header, info in base.board_info.find_pin(name)]
            if not found:
                raise PinInvalidPin(f"{name!r} is not a pin of this board")
            self._outputs[found[0]] = output
            if output.device not in self._chips:
                self._chips[output.device] = find_pwm_chip(output.device, self.root)
            if probe:
                SysfsPWM(self._chips[output.device], output.channel, ON_OFF_HZ).close()
        self._pins: dict[PinInfo, HardwarePWMPin] = {}
        self._closed = False

    def chip_for(self, output: PWMOutput) -> Path:
        return self._chips[output.device]

    def pin(self, name):
        for _header, info in self.board_info.find_pin(name):
            output = self._outputs.get(info)
            if output is None:
                break
            with self._lock:
                pin = self._pins.get(info)
                if pin is None:
                    pin = self._pins[info] = HardwarePWMPin(self, info, output)
            return pin
        return self.base.pin(name)

    def close(self) -> None:
        """Every PWM channel dark, disabled and given back, then the board's factory closed. Once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pins = list(self._pins.values())
        for pin in pins:
            pin.close()
        self.base.close()

    def spi(self, **spi_args):
        return self.base.spi(**spi_args)

    def ticks(self):
        return self.base.ticks()

    def ticks_diff(self, later, earlier):
        return self.base.ticks_diff(later, earlier)

    def _get_board_info(self) -> BoardInfo:
        return self.base.board_info
