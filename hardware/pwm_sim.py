"""Simulated PWM for the white ring: the software PWM a Pi's lgpio pin gives, and a kernel PWM chip.

`LGPIOSoftwarePWMPin` is gpiozero's mock PWM pin made to quantise as gpiozero's own lgpio pin does
(gpiozero/pins/lgpio.py, `LGPIOPin._set_state`): the level is sent to lgpio's software PWM as
`int(value * 100)` percent and read back as that percent over 100. So 0.015 gives 0.01 (a third less
light than asked) and 0.29 gives 0.28 (0.29 * 100 is 28.999999999999996 in floating point). The light a
simulated camera sees through such a pin is the light a Pi's ring gives on software PWM. (lgpio also
times the pulses from a thread, so they jitter besides; that is not modelled.)

`SysfsPWMTree` lays out a directory as the kernel lays out /sys/class/pwm: `pwmchipN` directories with
`device` (a link to the PWM controller's platform device, by whose name hardware/pwm.py finds the
chip), `npwm`, `export` and `unexport`; an exported channel is `pwmN` with `period`, `duty_cycle`,
`enable` and `polarity`. Written to directly (as files) it is a static tree; `write` instead does what
the kernel does with a write to those files: an export creates the channel's directory, an unexport
removes it, and a period, duty cycle or enable that would leave the channel with no period or with a
duty cycle longer than its period is refused with EINVAL, as the kernel's pwm_apply_state refuses it.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from gpiozero.exc import PinSetInput
from gpiozero.pins.mock import MockPWMPin


class LGPIOSoftwarePWMPin(MockPWMPin):
    """A mock PWM pin whose duty cycle is whole percent steps, truncated, as gpiozero's lgpio pin sends it."""

    def _set_state(self, value) -> None:
        if self._function == "input":
            raise PinSetInput(f"cannot set state of pin {self!r}")
        if self._frequency is None:
            self._change_state(bool(value))  # lgpio.gpio_write(..., bool(value))
            return
        percent = int(value * 100)  # exactly gpiozero's expression
        self._change_state(percent / 100)  # what the pin reads back, and what the LED gets on average

    def _set_frequency(self, value) -> None:
        starting = self._frequency is None and value is not None
        super()._set_frequency(value)
        if starting:
            self._change_state(0.0)  # lgpio starts the PWM at a 0 % duty cycle


class SysfsPWMTree:
    """A directory laid out like the kernel's /sys/class/pwm (it is at `self.pwm`)."""

    ATTRIBUTES = ("period", "duty_cycle", "enable")

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.pwm = self.root / "class" / "pwm"
        self.pwm.mkdir(parents=True, exist_ok=True)
        self.writes: list[tuple[str, str]] = []  # (path under root, value) for every write through `write`

    def add_chip(self, number: int, device: str, npwm: int = 4) -> Path:
        """`pwmchip<number>`, its `device` link pointing to a directory named like the platform device."""
        target = self.root / "devices" / "platform" / device
        target.mkdir(parents=True, exist_ok=True)
        chip = self.pwm / f"pwmchip{number}"
        chip.mkdir()
        (chip / "device").symlink_to(target)
        (chip / "npwm").write_text(f"{npwm}\n")
        (chip / "export").write_text("")
        (chip / "unexport").write_text("")
        return chip

    def chip(self, number: int) -> Path:
        return self.pwm / f"pwmchip{number}"

    def export(self, chip: Path, channel: int, period: int = 0, duty_cycle: int = 0, enable: int = 0) -> Path:
        """What the kernel makes of an export: the channel's directory, period and duty cycle 0, disabled."""
        d = chip / f"pwm{channel}"
        d.mkdir()
        for name, value in (("period", period), ("duty_cycle", duty_cycle), ("enable", enable)):
            (d / name).write_text(f"{value}\n")
        (d / "polarity").write_text("normal\n")
        return d

    def channel_state(self, chip: Path, channel: int) -> dict[str, int] | None:
        d = chip / f"pwm{channel}"
        if not d.is_dir():
            return None
        return {name: int((d / name).read_text().strip() or 0) for name in self.ATTRIBUTES}

    def write(self, path: str | Path, value) -> None:
        """A write to one of the tree's files, with the kernel's answer: done, or OSError as the kernel's."""
        path = Path(path)
        text = str(value).strip()
        self.writes.append((str(path.relative_to(self.root)), text))
        if path.name in ("export", "unexport"):
            chip = path.parent
            channel = _number(text, path)
            if not 0 <= channel < int((chip / "npwm").read_text()):
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), str(path))
            d = chip / f"pwm{channel}"
            if path.name == "export":
                if d.exists():
                    raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
                self.export(chip, channel)
            else:
                if not d.exists():
                    raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(path))
                shutil.rmtree(d)
            return
        if path.name in self.ATTRIBUTES:
            if not path.exists():
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
            state = self.channel_state(path.parent.parent, int(path.parent.name[3:]))
            assert state is not None
            state[path.name] = _number(text, path)
            if path.name == "enable" and state["enable"] not in (0, 1):
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(path))
            if state["period"] <= 0 or state["duty_cycle"] > state["period"]:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(path))
            path.write_text(f"{state[path.name]}\n")
            return
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))


def _number(text: str, path: Path) -> int:
    try:
        return int(text)
    except ValueError:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(path)) from None
