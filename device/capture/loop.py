"""The capture loop: preview -> quality gate -> illumination and focus control -> auto-capture.

A health worker cannot judge focus or exposure on a small screen, so the unit does it frame by
frame. The loop runs in its own thread at the camera's rate and never blocks the kiosk: the kiosk
only reads `latest_jpeg()` and `state()` and asks for `take_photo()`.

Each `begin` hands out a capture token, and the photo it leads to carries it: a page that armed the
camera for one eye can take only its own photo, so a second tab (or a page left open) that armed it
for another patient since can never have its photo recorded under this one.

Auto-capture fires when the gate passes for `consecutive_gradable` frames in a row, the light has
settled and the autofocus has locked (or the capture button is pressed); a short burst of
full-resolution stills is taken under a time-limited flash and the sharpest one is kept. Waiting
for the autofocus matters: the gate's focus bar is what a grader can still read, while the cup's
edge, measured on the still, wants the sharpest the optics can give.

`python -m device.lab.capture_trials` measures how fast this gets a gradable photo from a hard start.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np

from device.config import CaptureConfig
from device.screening.quality import QualityGate, QualityReport, QualitySettings
from hardware.optic_module import OpticModuleError
from models.runtime.images import encode_jpeg

log = logging.getLogger(__name__)

PREVIEW_JPEG_INTERVAL_S = 0.08  # ~12 preview frames/s to the kiosk is plenty and saves CPU
# Frames whose focus measure means nothing: no usable light, or the field cut or shaded.
_NOT_MEASURABLE = {"no_fundus", "field_too_small", "too_dark", "too_bright", "uneven_light"}


@dataclass
class CapturedPhoto:
    eye: str
    rgb: np.ndarray
    quality: QualityReport
    trace: dict = field(default_factory=dict)
    token: str = ""  # the capture token of the `begin` that armed it


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian on a fixed-size greyscale copy: larger is sharper."""
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = 512.0 / max(g.shape)
    if scale < 1:
        g = cv2.resize(g, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(g, cv2.CV_32F).var())


class IlluminationController:
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
        self._coarse[self.position] = focus
        best = max(self._coarse, key=self._coarse.get)
        top = self._coarse[best]
        if self._bracketed(best, top):
            self._start_refine(best)
            return
        lo, hi = self.limits
        if not self._direction:  # first sample: sweep toward the longer side of the travel first
            self._direction = 1 if hi - self.position >= self.position - lo else -1
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
        near_left = [self._coarse[p] for p in left if best - p <= self.coarse_step] or ([] if best > lo else [None])
        near_right = [self._coarse[p] for p in right if p - best <= self.coarse_step] or ([] if best < hi else [None])
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
        best = max(means, key=means.get)
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


class CaptureLoop:
    """Preview -> gate -> light and focus -> auto-capture, in its own thread.

    Times the worker sees (seconds to capture, the preview's rate) are on the camera's own clock where
    it keeps one (a simulated sensor runs on simulated time), else the wall clock. The watchdog's stall check is always wall time: it is about this process, not the eye.
    """

    def __init__(self, camera, gate: QualityGate, settings: CaptureConfig, *, illumination=None, optic_module=None):
        self.camera = camera
        self._clock = getattr(camera, "clock", None) or time.monotonic
        self.gate = gate
        self.settings = settings
        self.illumination = illumination
        self.optic_module = optic_module
        fps = getattr(camera, "fps", None)
        longest = int(0.9e6 / fps) if fps else 30000  # an exposure cannot outlast the frame period
        self.light = IlluminationController(settings.target_brightness, settings.max_led_level,
                                            exposure_range=(100, longest))
        self.focus = FocusController(optic_module, quality=gate.settings)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._button = threading.Event()
        self._jpeg: bytes | None = None
        self._jpeg_at = 0.0
        self._state: dict = {"running": False, "armed_eye": None, "gradable": False, "instruction": "Starting the camera",
                             "reasons": [], "streak": 0, "light": 0.0,
                             "exposure_us": self.light.exposure_us, "gain": 1.0, "focus": None,
                             "focus_search": self.focus.state, "captured": False, "error": None}
        self._armed: str | None = None
        self._token: str | None = None
        self._armed_at = 0.0
        self._captured: CapturedPhoto | None = None
        self._trace: dict = {}
        self._last_frame = time.monotonic()
        self._light_sent: tuple | None = None  # what _set_light last sent
        if illumination is not None and getattr(illumination, "button", None) is not None:
            illumination.button.when_pressed = self.press_button

    # -- kiosk side -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="capture-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._lights_off()

    def begin(self, eye: str) -> str:
        """Arm the capture for one eye; returns the token that alone can take the photo it leads to.
        A new `begin` supersedes the last one, whose token then takes nothing."""
        if eye not in ("right", "left"):
            raise ValueError("eye must be 'right' or 'left'")
        if self.optic_module is not None:
            try:
                self.optic_module.fixation("disc", eye)
            except Exception as exc:  # noqa: BLE001 - fixation is a help, not a must
                log.warning("fixation target not set: %s", exc)
        token = secrets.token_urlsafe(16)
        with self._lock:
            self._armed = eye
            self._token = token
            self._armed_at = self._clock()
            self.focus.restart()  # a new eye brings its own refraction
            self._captured = None
            self._button.clear()
            self._trace = {"eye": eye, "frames": 0, "rejected": Counter(), "seconds": [], "gate": [],
                           "brightness": [], "light_state": [], "sharpness": [], "light": [], "exposure_us": [],
                           "gain": [], "focus": [], "focus_search": []}
            self._state.update(armed_eye=eye, captured=False, streak=0)
        return token

    def owner(self) -> str | None:
        """The token of the latest `begin` not cancelled since: whose the camera is now."""
        with self._lock:
            return self._token

    def cancel(self, token: str | None = None) -> None:
        """Disarm, and drop a photo nobody took. With `token`, only if the camera is still that page's:
        a page being left must not disarm the camera for the page that took it over."""
        with self._lock:
            if token is not None and token != self._token:
                return
            self._armed = None
            self._token = None
            self._captured = None
            self._button.clear()
            self._state.update(armed_eye=None, captured=False, streak=0)

    def press_button(self, token: str | None = None) -> bool:
        """The capture button (on the module, or on screen). With `token`, only if the camera is armed for
        that page; the physical button takes whatever eye is armed."""
        with self._lock:
            if token is not None and (token != self._token or self._armed is None):
                return False
        self._button.set()
        return True

    def set_light_aim(self, target: float | None = None, max_level: float | None = None) -> None:
        """An administrator's new brightness target or light limit, from the next frame on. The limit
        goes into the lights themselves as well as the controller, so nothing else driving the LEDs
        can exceed it either; the caller has checked it against the safety cap."""
        if max_level is not None:
            if self.illumination is not None and hasattr(self.illumination, "max_level"):
                self.illumination.max_level = float(max_level)
            self.light.max_level = float(max_level)
            self.light.level = min(self.light.level, float(max_level))
        if target is not None:
            self.light.target = float(target)

    def latest_jpeg(self) -> bytes | None:
        with self._lock:
            return self._jpeg

    def state(self) -> dict:
        with self._lock:
            s = dict(self._state)
            s["reasons"] = list(s["reasons"])
            s["needed"] = self.settings.consecutive_gradable  # an administrator may change it while running
            return s

    def responsive(self, stall_s: float = 10.0) -> bool:
        """False only when the loop is stuck (a camera read that never returns): the watchdog then
        lets systemd restart the unit. A loop that stopped with an error is responsive: the kiosk
        shows the worker what to do, and a restart would lose what they had entered."""
        with self._lock:
            if self._state["error"] or not self._state["running"]:
                return True
            return time.monotonic() - self._last_frame < stall_s

    def trace(self) -> dict:
        """What the loop has done since `begin`: frames, rejections by reason, light and focus traces."""
        with self._lock:
            t = dict(self._trace)
            if "rejected" in t:
                t["rejected"] = dict(t["rejected"])
            return t

    def take_photo(self, token: str | None = None) -> CapturedPhoto | None:
        """The photo the loop took, once. With `token`, only the photo that token's `begin` led to."""
        with self._lock:
            photo = self._captured
            if photo is None or (token is not None and photo.token != token):
                return None
            self._captured = None
            self._state["captured"] = False
            return photo

    def wait_photo(self, timeout: float) -> CapturedPhoto | None:
        """Block until a photo is captured (for the command line; the kiosk polls instead)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            photo = self.take_photo()
            if photo is not None:
                return photo
            if self.state()["error"]:
                return None
            time.sleep(0.02)
        return None

    # -- loop side ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.camera.start()
            self._set_light(force=True)
            with self._lock:
                self._state.update(running=True, error=None)
            while not self._stop.is_set():
                self._step()
        except Exception as exc:  # noqa: BLE001 - any failure is shown to the worker, not swallowed
            log.exception("capture loop stopped")
            with self._lock:
                self._state.update(running=False, error=_explain(exc))
        finally:
            self._lights_off()
            try:
                self.camera.stop()
            except Exception:  # noqa: BLE001
                pass
            with self._lock:
                self._state["running"] = False

    def _step(self) -> None:
        frame = self.camera.read()
        self._last_frame = time.monotonic()
        report = self.gate.assess(frame)
        m = report.metrics
        codes = {r.code for r in report.reasons}
        # Steer on the retina the reflex leaves visible: the reflex goes with alignment, not with the light.
        brightness = m.get("retina_brightness", float("nan"))
        if report.field is None or not np.isfinite(brightness):
            brightness = m.get("brightness", float("nan"))
        level, exposure = self.light.update(brightness, field_found=report.field is not None)
        self._set_light()
        pos = None
        # Focus is measured only on steady light: a dim or changing frame's noise looks like sharp edges.
        if (report.field is not None and self.light.settled and not self.light.disturbed
                and not codes & _NOT_MEASURABLE):
            pos = self.focus.update(m.get("focus", 0.0))
        ready = self.focus.done and self.light.settled
        now = self._clock()
        jpeg = None
        if now - self._jpeg_at >= PREVIEW_JPEG_INTERVAL_S:
            jpeg = encode_jpeg(frame, quality=75)
            self._jpeg_at = now
        with self._lock:
            if jpeg is not None:
                self._jpeg = jpeg
            streak = self._state["streak"] + 1 if report.gradable else 0
            instruction = report.reasons[0].message if report.reasons else "Hold still - taking the photo"
            self._state.update(gradable=report.gradable, reasons=[r.code for r in report.reasons], streak=streak,
                               instruction=instruction, light=round(level, 3), exposure_us=exposure,
                               gain=round(self.light.gain, 2), focus_search=self.focus.state,
                               focus=pos if pos is not None else self._state["focus"])
            armed, token = self._armed, self._token
            if armed:
                t = self._trace
                t["frames"] += 1
                for r in report.reasons:
                    t["rejected"][r.code] += 1
                t["seconds"].append(round(now - self._armed_at, 3))
                t["gate"].append(report.reasons[0].code if report.reasons else "gradable")
                t["brightness"].append(_rounded(brightness))
                t["light_state"].append(self.light.state)
                t["sharpness"].append(_rounded(m.get("focus")))
                t["light"].append(round(level, 3))
                t["exposure_us"].append(exposure)
                t["gain"].append(round(self.light.gain, 2))
                t["focus"].append(self._state["focus"])
                t["focus_search"].append(self.focus.state)
        if armed and ((ready and streak >= self.settings.consecutive_gradable) or self._button.is_set()):
            self._capture(armed, token, manual=self._button.is_set())

    def _capture(self, eye: str, token: str | None, manual: bool) -> None:
        with self._lock:
            self._state["instruction"] = "Taking the photo - hold still"
        stills = []
        for _ in range(max(1, self.settings.burst)):
            if self.illumination is not None:
                self.illumination.flash(self.light.level, self.settings.max_flash_s)
            still = self.camera.capture_still()
            stills.append((sharpness(still), still))
        self._set_light(force=True)
        best = max(stills, key=lambda s: s[0])[1]
        quality = self.gate.assess(best)
        with self._lock:
            if token != self._token:
                return  # re-armed or cancelled during the burst: this still belongs to nobody now
            trace = self._trace
            trace["burst_sharpness"] = [round(s[0], 1) for s in stills]
            if not quality.gradable and not manual:
                # the eye moved or blinked during the burst: keep aligning and try again
                trace["stills_rejected"] = trace.get("stills_rejected", 0) + 1
                self._state.update(streak=0, instruction=quality.reasons[0].message)
                return
            trace["rejected"] = dict(trace["rejected"])
            trace["seconds_to_capture"] = round(self._clock() - self._armed_at, 2)
            trace["manual"] = manual
            self._captured = CapturedPhoto(eye, best, quality, trace, token=token or "")
            self._armed = None
            self._button.clear()
            self._state.update(captured=True, armed_eye=None, streak=0, instruction="Photo taken")

    def _set_light(self, force: bool = False) -> None:
        """Send the light controller's exposure, gain and LED level, only where they changed: on a
        settled eye that is no command at all, so the camera's control queue and the LED driver see
        changes, not a steady stream of repeats. `force` after anything else has touched the light
        (the camera starting, a flash)."""
        wanted = (int(self.light.exposure_us), round(float(self.light.gain), 3), round(float(self.light.level), 4))
        if not force and wanted == self._light_sent:
            return
        sent = wanted
        try:
            self.camera.set_exposure(self.light.exposure_us, self.light.gain)
        except Exception as exc:  # noqa: BLE001
            log.debug("camera exposure not set: %s", exc)
            sent = None  # try again on the next frame
        if self.illumination is not None:
            self.illumination.set_white(self.light.level)
        self._light_sent = sent

    def _lights_off(self) -> None:
        if self.illumination is not None:
            try:
                self.illumination.off()
            except Exception:  # noqa: BLE001 - best effort on the way out
                log.exception("could not turn the LEDs off")


def _rounded(value: float | None, digits: int = 3) -> float | None:
    """A metric for the JSON trace: NaN (not measured) becomes None."""
    return round(float(value), digits) if value is not None and np.isfinite(value) else None


def _explain(exc: Exception) -> str:
    name = type(exc).__name__
    if name == "CameraError":
        return f"The camera stopped working: {exc}. Check the optic module's cable, then restart the unit."
    return f"The capture stopped ({name}: {exc}). Restart the unit; if it happens again, call support."
