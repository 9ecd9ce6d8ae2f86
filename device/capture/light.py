"""How much light the eye gets: LED level, exposure and gain steered together toward a target
brightness, within the light-safety limit. The LEDs themselves (`hardware.illumination.Illumination`)
only do what this asks."""
from __future__ import annotations

import numpy as np


class LightController:
    """Puts the fundus at a target brightness with as little light on the eye as will do it.

    One command, the product of LED level, exposure time and sensor gain, is steered; it is shared
    out in a fixed order, so the three never fight: exposure first (up to what the frame period
    allows; it costs the eye nothing), then the LED ring (never above the light-safety maximum),
    then gain (it adds noise). Going down undoes it in reverse.

    Each step is a multiplicative one, sized by how strongly brightness has been seen to answer the
    command: a camera's output is gamma-encoded, so brightness grows roughly as the square root of
    light, but that is learnt from the frames rather than assumed. It starts as if brightness
    followed light one for one (the smallest step, which cannot overshoot a gamma-encoded camera)
    and corrects itself after the first move, so it settles in a few frames without oscillating.

    A blink or a lid darkens a frame for a few frames without anything being wrong with the light:
    a frame whose brightness jumps away from what the command predicts is held on, not steered on,
    until it lasts longer than a blink (then the eye really did change, and the light follows).
    """

    MIN_RESPONSE, MAX_RESPONSE = 0.25, 1.5  # plausible exponents of brightness against light
    DISTURBANCE = 1.5          # brightness off its prediction by this factor: a blink, not the light
    BLINK_FRAMES = 12          # longest a disturbance is held through (a blink is ~0.3 s)
    SETTLED = 1.15             # within this factor of the target counts as settled
    DEADBAND = 1.03            # within this factor of the target the command is left alone

    def __init__(self, target: float, max_level: float, exposure_us: int = 20000,
                 exposure_range: tuple[int, int] = (100, 30000), max_gain: float = 8.0, min_level: float = 0.02,
                 damping: float = 0.85, level: float = 0.3):
        if not 0 < target < 1:
            raise ValueError(f"target brightness must lie between 0 and 1, not {target}")
        self.target = float(target)
        self.max_level = float(max_level)
        self.min_level = min(float(min_level), self.max_level)
        self.exposure_range = (int(exposure_range[0]), int(exposure_range[1]))
        self.max_gain = max(1.0, float(max_gain))
        self.damping = float(damping)
        self.level = min(float(level), self.max_level)
        self.exposure_us = int(np.clip(exposure_us, *self.exposure_range))
        self.gain = 1.0
        self.response = 1.0        # d log(brightness) / d log(command), learnt
        self.settled = False
        self.disturbed = False
        self._held = 0
        self._last: tuple[float, float] | None = None  # (log command, log brightness) of the last usable frame
        self._k: float | None = None  # log brightness - response x log command, on undisturbed frames
        self._seen_fundus = False

    @property
    def state(self) -> str:
        """'hold' (through a blink), 'settled' or 'moving', as of the last frame."""
        return "hold" if self.disturbed else "settled" if self.settled else "moving"

    @property
    def command(self) -> float:
        return self.level * self.exposure_us * self.gain

    def limits(self) -> tuple[float, float]:
        """Smallest and largest command the LED, exposure and gain can give together."""
        return self.min_level * self.exposure_range[0], self.max_level * self.exposure_range[1] * self.max_gain

    def update(self, brightness: float, field_found: bool = True) -> tuple[float, int]:
        """Take one frame's fundus brightness (0..1); returns the LED level and exposure for the next frame.

        `field_found` False: the gate saw no fundus, so `brightness` is the whole frame's. Once a
        fundus has been seen, that is a blink or a lid until it lasts longer than one; before, the
        light is too low to show one, and the whole frame is all there is to go on.
        """
        c = self.command
        if not np.isfinite(brightness) or brightness <= 0.004:
            brightness = 0.004  # black: nothing to measure, so the largest step up
        log_c, log_b = float(np.log(c)), float(np.log(brightness))
        k = log_b - self.response * log_c
        self._seen_fundus = self._seen_fundus or field_found
        jump = self._k is not None and ((self._seen_fundus and not field_found)
                                        or abs(k - self._k) > np.log(self.DISTURBANCE))
        self.disturbed = False
        if jump and self._held < self.BLINK_FRAMES:
            self._held += 1
            self.disturbed = True
            return self.level, self.exposure_us
        if jump:  # longer than a blink: the eye's light really changed; learn it afresh
            self._last = None
        self._held = 0
        if self._last is not None:
            d_c, d_b = log_c - self._last[0], log_b - self._last[1]
            if abs(d_c) > 0.1:  # only a real move tells how strongly brightness answers
                seen = float(np.clip(d_b / d_c, self.MIN_RESPONSE, self.MAX_RESPONSE))
                self.response = 0.3 * self.response + 0.7 * seen
        self._last = (log_c, log_b)
        self._k = log_b - self.response * log_c
        error = float(np.log(self.target) - log_b)
        if abs(error) < np.log(self.DEADBAND):  # close enough: chasing noise only flickers the ring
            error = 0.0
        step = float(np.clip(self.damping * error / self.response, -np.log(4.0), np.log(4.0)))
        lo, hi = self.limits()
        want = float(np.clip(c * np.exp(step), lo, hi))
        self._allocate(want)
        pinned = (error > 0 and want >= hi * 0.999) or (error < 0 and want <= lo * 1.001)
        self.settled = abs(float(np.log(self.target) - log_b)) < np.log(self.SETTLED) or pinned
        return self.level, self.exposure_us

    def _allocate(self, command: float) -> None:
        e_lo, e_hi = self.exposure_range
        if command <= self.min_level * e_hi:
            self.level, self.exposure_us, self.gain = self.min_level, int(max(e_lo, command / self.min_level)), 1.0
        elif command <= self.max_level * e_hi:
            self.level, self.exposure_us, self.gain = command / e_hi, e_hi, 1.0
        else:
            self.level, self.exposure_us = self.max_level, e_hi
            self.gain = float(min(self.max_gain, command / (self.max_level * e_hi)))
