"""The optic module's lights, buzzer and capture button over GPIO (gpiozero).

Light safety lives here, next to the pins, rather than in the capture loop: the white ring is never
driven above `max_level`, nor above the level whose irradiance at the pupil reaches the continuous-light
limit (`hardware.light_dose`: ISO 15004-2:2007 clause 5.4.1, Table 2, Group 1 continuous-wave limits,
whose values there must be checked against the standard's text), a flash never lasts longer than
`max_flash_s`, and leaving the `with` block (normally or through an exception) turns every light off.
Every change of the ring's level is booked in a dose ledger per eye; when an eye's radiant exposure in
its visit would pass the configured cap, the ring goes off by itself (a timer set for the moment it
would) and stays off for that eye, and a flash that would pass it is never fired. Whatever code above
gets wrong, the patient's retina does not get more light than the unit's configuration allows.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gpiozero import LED, PWMLED, Button, Buzzer, Device
from gpiozero.pins import Factory

from hardware import pwm
from hardware.boards import BoardProfile
from hardware.light_dose import DoseLedger, EyeDose, LedResponse, LightLimitReached, LightLimits
from hardware.pwm import HardwarePWMFactory, HardwarePWMPin, PWMUnavailable

log = logging.getLogger(__name__)

# PWM rate of the white ring. At 1 kHz a 20 ms exposure integrates 20 PWM periods, so a rolling
# shutter shows no banding, and lgpio's software PWM still keeps up on a Pi.
RING_PWM_HZ = 1000


class IlluminationError(RuntimeError):
    """The lights cannot be set up; the message says what to fix."""


def make_pin_factory(profile: BoardProfile, *, gpio: Factory | None = None,
                     pwm_root: str | Path | None = None) -> Factory:
    """The pin factory for the board's lights: the gpiozero factory its profile names (`gpio`, when given,
    stands for it), with the white ring on the kernel's hardware PWM where the profile says the ring's
    pin has one (`profile.ring_pwm`, looked up under `pwm_root`, by default /sys/class/pwm).

    Where that PWM is not set up the ring stays on the board factory's own PWM (on a Pi, lgpio's
    software PWM in whole-percent steps), and the log says what to change."""
    base = gpio if gpio is not None else _gpio_factory(profile)
    if profile.ring_pwm is None:
        return base
    try:
        root = pwm_root if pwm_root is not None else pwm.PWM_SYSFS
        return HardwarePWMFactory(base, {profile.pins.white_ring: profile.ring_pwm}, root=root)
    except PWMUnavailable as exc:
        log.warning("the white ring has no hardware PWM (%s): it runs on the %s factory's own PWM, on a Pi in "
                    "whole-percent steps (a 1.5%% level gives 1%%); to fix it: %s", exc, profile.pin_factory,
                    profile.ring_pwm.enable or "route the PWM channel to the pin")
        return base


def _gpio_factory(profile: BoardProfile) -> Factory:
    """The gpiozero pin factory the board's profile names (mock pins with PWM for simulation).

    Driver modules are imported only here, when the lights start: each refuses to load on the
    other boards."""
    name = profile.pin_factory
    if name is None:
        raise IlluminationError(f"gpiozero has no pin factory for the {profile.description}; {profile.note}")
    if name == "mock":
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        return MockFactory(pin_class=MockPWMPin)
    if name == "jetson-gpio":  # gpiozero has none for a Jetson: ours, over NVIDIA's Jetson.GPIO
        from hardware.jetson_gpio import JetsonGPIOFactory, JetsonGPIOUnavailable

        try:
            return JetsonGPIOFactory()
        except JetsonGPIOUnavailable as exc:
            raise IlluminationError(f"the lights of the {profile.description} cannot start: {exc}") from exc
    from importlib.metadata import entry_points

    for ep in entry_points(group="gpiozero_pin_factories"):
        if ep.name == name:
            try:
                return ep.load()()
            except Exception as exc:  # noqa: BLE001 - a missing driver, its files, or no GPIO access
                raise IlluminationError(_driver_failure(name, exc)) from exc
    raise IlluminationError(f"gpiozero does not know the pin factory {name!r} named by board {profile.name!r}")


def _driver_failure(name: str, exc: Exception) -> str:
    """Why a gpiozero pin factory's driver did not start, as the driver itself said it."""
    cause = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ImportError) and exc.name is not None:
        return (f"the {name} GPIO driver did not start: the Python module {exc.name!r} is not installed (on Raspberry "
                f"Pi OS: sudo apt install python3-{exc.name}, in a venv made with --system-site-packages) ({cause})")
    if ".lgd-nfy" in f"{getattr(exc, 'filename', '')} {exc}":
        # `import lgpio` makes notification FIFOs in $LG_WD, else in the working directory (/ under systemd)
        where = os.environ.get("LG_WD") or os.getcwd()
        return (f"the {name} GPIO driver did not start: lgpio could not make its notification FIFO (.lgd-nfy*) in "
                f"{where}; give it a writable directory in LG_WD or as the working directory (the kiosk unit sets "
                f"WorkingDirectory= and Environment=LG_WD=) ({cause})")
    if "gpiochip" in str(exc) or isinstance(exc, PermissionError):
        return f"the {name} GPIO driver could not open the GPIO chip ({cause}); is this user in the gpio group?"
    return f"the {name} GPIO driver did not start ({cause})"


@dataclass(frozen=True)
class FlashReport:
    """What a flash actually did, so a caller that asked for too much light can see it was cut."""

    level: float
    duration_s: float
    requested_level: float
    requested_s: float

    @property
    def cut(self) -> bool:
        return self.duration_s < self.requested_s or self.level < self.requested_level


class Flash:
    """A running flash: ends by itself after its duration, or earlier when its `with` block ends."""

    def __init__(self, illumination: "Illumination", report: FlashReport):
        self._illumination = illumination
        self.report = report

    def end(self) -> None:
        self._illumination._end_flash(self)

    def __enter__(self) -> "Flash":
        return self

    def __exit__(self, *exc) -> None:
        self.end()


class Illumination:
    """White LED ring (PWM), infrared alignment LED, status LED, buzzer and capture button."""

    def __init__(self, profile: BoardProfile, pin_factory: Factory | None = None,
                 max_level: float = 0.8, max_flash_s: float = 0.5, *, limits: LightLimits | None = None,
                 response: LedResponse | None = None, clock: Callable[[], float] = time.monotonic):
        if not 0.0 < max_level <= 1.0:
            raise ValueError(f"max_level must be in (0, 1], got {max_level}")
        if not max_flash_s > 0.0:
            raise ValueError(f"max_flash_s must be positive, got {max_flash_s}")
        self.profile = profile
        self.max_level = float(max_level)
        self.max_flash_s = float(max_flash_s)
        self.limits = limits if limits is not None else LightLimits()
        self.response = response if response is not None else LedResponse.nominal()
        self.ledger = DoseLedger(clock)
        self._stopped: str | None = None  # why the white light is stopped for the eye exposed now
        self._cap_deadline: float | None = None  # when (time.monotonic) the eye's exposure reaches its cap
        self._cap_watch: threading.Thread | None = None  # waits for that moment; one thread for the unit's life
        factory = pin_factory if pin_factory is not None else make_pin_factory(profile)
        self._own_factory = factory if pin_factory is None else None  # made here: closed here
        self._closed = False
        pins = profile.pins
        self._lock = threading.RLock()
        self._flash: Flash | None = None
        self._flash_timer: threading.Timer | None = None
        self._cap_wake = threading.Condition(self._lock)
        self._level_before_flash = 0.0
        opened: list[Device] = []
        try:
            self.white = _open(opened, PWMLED, pins.white_ring, factory, frequency=RING_PWM_HZ)
            self.infrared = _open(opened, LED, pins.infrared, factory)
            self.status = _open(opened, LED, pins.status, factory)
            self.buzzer = _open(opened, Buzzer, pins.buzzer, factory)
            self.button = _open(opened, Button, pins.capture_button, factory, pull_up=True)
        except BaseException:
            for device in opened:
                device.close()
            if self._own_factory is not None:
                self._own_factory.close()
            raise
        self._devices = opened

    # -- white light ----------------------------------------------------------------------------
    def set_white(self, level: float) -> float:
        """Set the ring's brightness (0..1), clamped to the safe maximum; returns what the ring's pin applied
        (less than asked where its PWM is coarser than the request)."""
        applied = self._clamp(level)
        with self._lock:
            if self._stopped is not None and applied > 0:
                raise LightLimitReached(self._stopped)
            self._cancel_flash_timer()
            self._flash = None
            self.white.value = applied
            self._light_changed()
            return float(self.white.value)

    def flash(self, level: float, duration_s: float) -> Flash:
        """Light the ring at `level` for at most `max_flash_s`, then return to the previous level.

        Returns at once (the camera takes its still while the ring is lit); the flash ends by
        itself, or when used as a context manager, at the end of the block. A longer or brighter
        request is cut to the limits and logged; the returned flash's `report` says so.
        """
        if not (isinstance(duration_s, numbers.Real) and math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"flash duration must be a positive number of seconds, got {duration_s!r}")
        applied = self._clamp(level)
        seconds = min(float(duration_s), self.max_flash_s)
        report = FlashReport(applied, seconds, float(level), float(duration_s))
        if report.cut:
            log.warning("flash cut to the light-safety limits: asked %.2f for %.3f s, gave %.2f for %.3f s",
                        level, duration_s, applied, seconds)
        with self._lock:
            if self._stopped is not None:
                raise LightLimitReached(self._stopped)
            self._refuse_a_flash_past_the_cap(applied, seconds)
            if self._flash is None:
                self._level_before_flash = self.white.value
            self._cancel_flash_timer()
            flash = Flash(self, report)
            self._flash = flash
            self.white.value = applied
            self._light_changed(kind="flash")
            self._flash_timer = threading.Timer(seconds, self._end_flash, args=(flash,))
            self._flash_timer.daemon = True
            self._flash_timer.start()
        return flash

    def _end_flash(self, flash: Flash) -> None:
        with self._lock:
            if self._flash is not flash:  # already ended, or superseded by set_white/off/another flash
                return
            self._cancel_flash_timer()
            self._flash = None
            if not self.white.closed:
                self.white.value = 0.0 if self._stopped is not None else self._level_before_flash
                self._light_changed()

    def _cancel_flash_timer(self) -> None:
        if self._flash_timer is not None:
            self._flash_timer.cancel()
            self._flash_timer = None

    def _clamp(self, level: float) -> float:
        if not (isinstance(level, numbers.Real) and math.isfinite(level)):
            raise ValueError(f"light level must be a number between 0 and 1, got {level!r}")
        return min(max(float(level), 0.0), self.max_level, self.safe_level())

    def safe_level(self) -> float:
        """The highest level whose irradiance at the pupil stays within the continuous-light limit."""
        return self.response.level_for(self.limits.max_irradiance_mw_cm2)

    # -- the dose ledger ------------------------------------------------------------------------
    def expose(self, key: str | None, prior: EyeDose | None = None) -> None:
        """The ring's light goes to this eye from now on (None: to nobody's, between captures). `prior`: what
        the eye already had in its visit. A new eye starts with the light allowed again; an eye that has had
        its visit's cap already is stopped at once."""
        with self._lock:
            self.ledger.switch(key, prior)
            self._stopped = None
            self._set_cap_deadline()

    def dose(self) -> EyeDose:
        """What the eye lit now has had in its visit so far."""
        return self.ledger.dose()

    def use_response(self, response: LedResponse) -> None:
        """The module's measured LED response (from its calibration) from now on: the dose is booked with it
        and the continuous-light limit holds by it. The ring's present level is re-clamped."""
        with self._lock:
            self.response = response
            if not self.white.closed and self.white.value > self.safe_level():
                self.white.value = self.safe_level()
            self._light_changed(kind="flash" if self._flash is not None else "preview")

    @property
    def stopped(self) -> str | None:
        """Why the white light is stopped for the eye exposed now (None: it is not)."""
        with self._lock:
            return self._stopped

    def _light_changed(self, kind: str = "preview") -> None:
        """Book the time at the old level, then watch the new one against the cap (under the lock)."""
        level = 0.0 if self.white.closed else float(self.white.value)
        self.ledger.change(self.response.irradiance(level), kind)
        self._set_cap_deadline()

    def _set_cap_deadline(self) -> None:
        """Set the ring to go off when the eye's exposure would reach its cap at the present irradiance (under
        the lock): the moment is handed to the watching thread, which needs no new thread per change of level."""
        self._cap_deadline = None
        if self.ledger.key is not None and self._stopped is None:
            left = self.limits.visit_exposure_mj_cm2 - self.ledger.dose().total_mj_cm2
            irradiance = self.ledger.irradiance_now
            if left <= 0:
                self._stop(self._over_cap_reason())
            elif irradiance > 0:
                self._cap_deadline = time.monotonic() + left / irradiance
                if self._cap_watch is None:
                    self._cap_watch = threading.Thread(target=self._watch_cap, name="light-cap", daemon=True)
                    self._cap_watch.start()
        self._cap_wake.notify_all()

    def _watch_cap(self) -> None:
        with self._lock:
            while not self._closed:
                deadline = self._cap_deadline
                if deadline is None:
                    self._cap_wake.wait()
                    continue
                now = time.monotonic()
                if now < deadline:
                    self._cap_wake.wait(deadline - now)
                    continue
                self._cap_deadline = None
                self._stop(self._over_cap_reason())

    def _over_cap_reason(self) -> str:
        had = self.ledger.dose().total_mj_cm2
        return (f"the light was stopped: this eye has had {had:.3g} mJ/cm2 of light in this visit, the most one eye "
                f"may have in a visit ({self.limits.visit_exposure_mj_cm2:g} mJ/cm2)")

    def _refuse_a_flash_past_the_cap(self, level: float, seconds: float) -> None:
        if self.ledger.key is None:
            return
        had = self.ledger.dose().total_mj_cm2
        would = had + self.response.irradiance(level) * seconds
        if would > self.limits.visit_exposure_mj_cm2:
            reason = (f"the light was stopped: a flash would bring this eye to {would:.3g} mJ/cm2 of light in this "
                      f"visit, over the most one eye may have in a visit ({self.limits.visit_exposure_mj_cm2:g} mJ/cm2)")
            self._stop(reason)
            raise LightLimitReached(reason)

    def _stop(self, reason: str) -> None:
        """Every light off and kept off for this eye (under the lock)."""
        log.warning("%s; the lights are off", reason)
        self._stopped = reason
        self._cancel_flash_timer()
        self._flash = None
        for device in (self.white, self.infrared):
            if not device.closed:
                device.off()
        self.ledger.change(0.0)
        self._cap_deadline = None

    # -- modes ----------------------------------------------------------------------------------
    def alignment_mode(self) -> None:
        """Infrared on, white off: the worker aligns on the IR image while the pupil stays wide."""
        with self._lock:
            self._cancel_flash_timer()
            self._flash = None
            self.white.off()
            self._light_changed()
            self.infrared.on()

    def off(self) -> None:
        with self._lock:
            self._cancel_flash_timer()
            self._flash = None
            for device in (self.white, self.infrared, self.status, self.buzzer):
                if not device.closed:
                    device.off()
            self._light_changed()

    def state(self) -> dict:
        with self._lock:
            if self._closed:
                return {"ok": False, "board": self.profile.name, "closed": True}
            return {
                "ok": True,
                "board": self.profile.name,
                "white": round(float(self.white.value), 6),
                "white_pwm": "hardware" if isinstance(self.white.pin, HardwarePWMPin) else "pin factory",
                "flash": self._flash is not None,
                "infrared": bool(self.infrared.value),
                "status": bool(self.status.value),
                "buzzer": bool(self.buzzer.value),
                "button_pressed": bool(self.button.is_pressed),
                "max_level": self.max_level,
                "max_flash_s": self.max_flash_s,
                "safe_level": round(self.safe_level(), 6),
                "irradiance_mw_cm2": round(self.ledger.irradiance_now, 6),
                "response": self.response.source,
                "limits": self.limits.to_dict(),
                "stopped": self._stopped,
            }

    def close(self) -> None:
        """Lights off, then release the pins (and close the pin factory, if it was made here). Once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cap_deadline = None
            self._cap_wake.notify_all()  # the watching thread ends
        self.off()
        for device in reversed(self._devices):
            device.close()
        if self._own_factory is not None:
            self._own_factory.close()

    def __enter__(self) -> "Illumination":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open(opened: list, cls, pin: int, factory: Factory, **kwargs):
    device = cls(pin, pin_factory=factory, **kwargs)
    opened.append(device)
    return device
