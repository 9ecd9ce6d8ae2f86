"""Autofocus through the optic module's focus motor, on the quality gate's own focus measure."""
from __future__ import annotations

import logging

import numpy as np

from device.screening.quality import QualitySettings
from hardware.optic_module import OpticModuleError

log = logging.getLogger(__name__)


class FocusController:
    """Coarse-to-fine autofocus on the gate's focus measure, through the optic module's focus motor.

    Far from focus the measure is flat (a retina blurred that much has no edges left to sharpen),
    so a hill-climb started there wanders on noise. Instead the motor sweeps the travel in coarse
    steps until the measure has risen and fallen again (the hill is bracketed), a parabola through
    the best sample and its neighbours puts the motor near the top, and a finer pair either side of
    that confirms it. Then it holds, and searches again, near where it is, only when the measure
    falls well below what it locked on for a while (the patient moved back or refocused).

    It is fed only frames worth measuring (a lit fundus, no blink); each sample is taken on the
    first such frame after the motor has stopped.
    """

    MARGIN = 0.05        # a sample this far below the best is a real drop, not noise
    LOST = 0.15          # locked, the measure this far below the lock value (or below the gate's
    LOST_FRAMES = 15     # bar) for this many usable frames in a row: search again

    def __init__(self, optic_module, coarse_step: int = 100, fine_step: int = 40, limits: tuple[int, int] = (0, 1000),
                 fine_frames: int = 2, quality: QualitySettings | None = None):
        self.module = optic_module
        self.quality = quality or QualitySettings()  # the gate's own settings, read live
        self.coarse_step = int(coarse_step)
        self.fine_step = int(fine_step)
        self.limits = (int(limits[0]), int(limits[1]))
        self.fine_frames = int(fine_frames)
        self.position: int | None = None
        self.restart()

    @property
    def min_peak(self) -> float:
        """A hill lower than what the gate calls sharp is noise, not focus; an administrator may change
        the gate's bar while the loop runs."""
        return float(self.quality.min_focus)

    def restart(self) -> None:
        """A new eye (or a lost one): search again from wherever the motor stands."""
        self.state = "sweep" if self.module is not None else "locked"
        self._coarse: dict[int, float] = {}
        self._fine: dict[int, list[float]] = {}
        self._plan: list[int] = []
        self._measuring = 0
        self._direction = 0
        self._lock_value = 0.0
        self._low = 0

    @property
    def done(self) -> bool:
        """Nothing left to search: locked on the sharpest position, or no motor to search with."""
        return self.state in ("locked", "failed")

    def update(self, focus: float) -> int | None:
        """One usable frame's focus measure (0..1), taken at the motor's present position."""
        if self.module is None or self.state == "failed":
            return self.position
        try:
            if self.position is None:
                self.position = int(self.module.focus_position())
            if self.state == "sweep":
                self._sweep(focus)
            elif self.state == "refine":
                self._refine(focus)
            else:
                self._hold(focus)
        except OpticModuleError as exc:  # a stalled or silent motor: stop focusing, keep capturing
            log.warning("autofocus stopped: %s", exc)
            self.state = "failed"
        return self.position

    # -- the search -----------------------------------------------------------------------------
    def _sweep(self, focus: float) -> None:
        position = self.position
        assert position is not None  # update() reads it from the motor before any search step
        self._coarse[position] = focus
        best = max(self._coarse, key=self._coarse.__getitem__)
        top = self._coarse[best]
        if self._bracketed(best, top):
            self._start_refine(best)
            return
        lo, hi = self.limits
        if not self._direction:  # first sample: sweep toward the longer side of the travel first
            self._direction = 1 if hi - position >= position - lo else -1
        ahead = max(self._coarse) if self._direction > 0 else min(self._coarse)
        if ahead != best and self._coarse[ahead] < top - self.MARGIN:
            self._direction = -self._direction  # the hill is behind: look on the best's other side
        target = self._next_coarse()
        if target is None:  # the whole travel is seen: the best there is will have to do
            self._start_refine(best)
            return
        self._move(target)

    def _bracketed(self, best: int, top: float) -> bool:
        """The best sample has a lower neighbour on each side (or the end of the travel), one clearly lower."""
        lo, hi = self.limits
        left = [p for p in self._coarse if p < best]
        right = [p for p in self._coarse if p > best]
        near_left: list[float | None] = [self._coarse[p] for p in left if best - p <= self.coarse_step] or ([] if best > lo else [None])
        near_right: list[float | None] = [self._coarse[p] for p in right if p - best <= self.coarse_step] or ([] if best < hi else [None])
        if not near_left or not near_right:
            return False
        seen = [v for v in near_left + near_right if v is not None]
        return bool(seen) and top >= self.min_peak and max(seen) <= top and min(seen) < top - self.MARGIN

    def _next_coarse(self) -> int | None:
        """Next position of the sweep: onward in its direction, else back past where it began."""
        lo, hi = self.limits
        for _ in range(2):
            edge = max(self._coarse) if self._direction > 0 else min(self._coarse)
            if (self._direction > 0 and edge < hi) or (self._direction < 0 and edge > lo):
                return int(np.clip(edge + self._direction * self.coarse_step, lo, hi))
            self._direction = -self._direction
        return None

    def _start_refine(self, best: int) -> None:
        s = self.coarse_step
        below, above = self._coarse.get(best - s), self._coarse.get(best + s)
        centre = float(best)
        if below is not None and above is not None:
            centre = best + _vertex([below, self._coarse[best], above], s)
        lo, hi = self.limits
        centre = int(round(np.clip(centre, lo, hi)))
        self._plan = [int(np.clip(p, lo, hi)) for p in (centre, centre - self.fine_step, centre + self.fine_step)]
        self._plan = list(dict.fromkeys(self._plan))
        self._fine = {}
        self.state = "refine"
        self._measuring = self._plan[0]
        self._move(self._plan[0])

    def _refine(self, focus: float) -> None:
        self._fine.setdefault(self._measuring, []).append(focus)
        if len(self._fine[self._measuring]) < self.fine_frames:
            return  # another frame here: the top of the hill is flat, so noise matters
        waiting = [p for p in self._plan if p not in self._fine]
        if waiting:
            self._measuring = waiting[0]
            self._move(waiting[0])
            return
        means = {p: float(np.mean(v)) for p, v in self._fine.items()}
        c = self._plan[0]
        best = max(means, key=means.__getitem__)
        if len(self._plan) == 3 and best == c:
            target = c + _vertex([means[self._plan[1]], means[c], means[self._plan[2]]], self.fine_step)
        else:
            target = best
        target = int(round(np.clip(target, *self.limits)))
        self._lock_value = max(means.values())
        self.state = "locked"
        self._low = 0
        self._move(target)

    def _hold(self, focus: float) -> None:
        self._lock_value = max(self._lock_value, 0.9 * self._lock_value + 0.1 * focus)
        # Below the gate's bar counts only if it was once above: an eye the optics cannot make sharp
        # (a cataract) is searched once, not swept for ever.
        lost = focus < self._lock_value - self.LOST or (self._lock_value >= self.min_peak and focus < self.min_peak)
        self._low = self._low + 1 if lost else 0
        if self._low >= self.LOST_FRAMES:
            log.info("focus lost (%.2f, locked at %.2f): searching again", focus, self._lock_value)
            self.restart()

    def _move(self, target: int) -> None:
        if target != self.position:
            self.position = int(self.module.focus(int(target)))


def _vertex(ys: list[float], spacing: float) -> float:
    """Offset of the top of the parabola through three equally spaced samples, within one spacing."""
    a, b, c = ys
    curvature = a - 2 * b + c
    if curvature >= 0:  # not a peak: stay on the best sample
        return float(spacing * (-1 if a > c else 1 if c > a else 0)) if max(a, c) > b else 0.0
    return float(np.clip(0.5 * spacing * (a - c) / curvature, -spacing, spacing))
