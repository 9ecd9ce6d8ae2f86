"""The capture loop: preview -> quality gate -> illumination and focus control -> auto-capture.

A health worker cannot judge focus or exposure on a small screen, so the unit does it frame by
frame. The loop runs in its own thread at the camera's rate and never blocks the kiosk: the kiosk
only reads `latest_jpeg()` and `state()` and asks for `take_photo()`.

Auto-capture fires when the gate passes for `consecutive_gradable` frames in a row (or the capture
button is pressed); a short burst of full-resolution stills is taken under a time-limited flash
and the sharpest one is kept.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np

from device.config import CaptureConfig
from device.quality import QualityGate, QualityReport
from models.images import encode_jpeg

log = logging.getLogger(__name__)

PREVIEW_JPEG_INTERVAL_S = 0.08  # ~12 preview frames/s to the kiosk is plenty and saves CPU


@dataclass
class CapturedPhoto:
    eye: str
    rgb: np.ndarray
    quality: QualityReport
    trace: dict = field(default_factory=dict)


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian on a fixed-size greyscale copy: larger is sharper."""
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = 512.0 / max(g.shape)
    if scale < 1:
        g = cv2.resize(g, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(g, cv2.CV_32F).var())


class IlluminationController:
    """Drives the white LED level, then exposure time, to put the fundus at a target brightness.

    Multiplicative steps on the brightness ratio (damped) settle in a few frames without
    oscillating; the LED is preferred over gain because gain adds noise, and the LED never exceeds
    the configured light-safety maximum.
    """

    def __init__(self, target: float, max_level: float, exposure_us: int = 20000,
                 exposure_range: tuple[int, int] = (2000, 66000), damping: float = 0.6):
        self.target = target
        self.max_level = max_level
        self.level = min(0.3, max_level)
        self.exposure_us = exposure_us
        self.exposure_range = exposure_range
        self.damping = damping

    def update(self, brightness: float) -> tuple[float, int]:
        if not np.isfinite(brightness) or brightness <= 0.01:
            ratio = 2.0
        else:
            ratio = float(np.clip(self.target / brightness, 0.25, 4.0)) ** self.damping
        want = self.level * ratio
        lo = 0.02
        if want > self.max_level:  # LED at its safe limit: lengthen exposure for the rest
            rest = want / self.max_level
            self.level = self.max_level
            self.exposure_us = int(np.clip(self.exposure_us * rest, *self.exposure_range))
        elif want < lo:
            rest = want / lo
            self.level = lo
            self.exposure_us = int(np.clip(self.exposure_us * rest, *self.exposure_range))
        else:
            self.level = want
        return self.level, self.exposure_us


class FocusController:
    """Hill-climbing autofocus on the gate's focus metric through the optic module's focus motor."""

    def __init__(self, optic_module, step: int = 40, min_step: int = 5, limits: tuple[int, int] = (0, 1000)):
        self.module = optic_module
        self.step = step
        self.min_step = min_step
        self.limits = limits
        self.direction = 1
        self.best = -1.0
        self.position = None

    def update(self, focus: float) -> int | None:
        if self.module is None:
            return None
        if self.position is None:
            self.position = self.module.focus_position()
        if focus > self.best * 1.02:
            self.best = focus
        else:
            self.direction = -self.direction
            self.step = max(self.min_step, self.step // 2)
            self.best = focus
        target = int(np.clip(self.position + self.direction * self.step, *self.limits))
        if target == self.position:
            self.direction = -self.direction
            return self.position
        self.position = self.module.focus(target)
        return self.position


class CaptureLoop:
    def __init__(self, camera, gate: QualityGate, settings: CaptureConfig, *, illumination=None, optic_module=None):
        self.camera = camera
        self.gate = gate
        self.settings = settings
        self.illumination = illumination
        self.optic_module = optic_module
        self.light = IlluminationController(settings.target_brightness, settings.max_led_level)
        self.focus = FocusController(optic_module)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._button = threading.Event()
        self._jpeg: bytes | None = None
        self._jpeg_at = 0.0
        self._state: dict = {"running": False, "armed_eye": None, "gradable": False, "instruction": "Starting the camera",
                             "reasons": [], "streak": 0, "needed": settings.consecutive_gradable, "light": 0.0,
                             "exposure_us": self.light.exposure_us, "focus": None, "captured": False, "error": None}
        self._armed: str | None = None
        self._armed_at = 0.0
        self._captured: CapturedPhoto | None = None
        self._trace: dict = {}
        self._last_frame = time.monotonic()
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

    def begin(self, eye: str) -> None:
        if eye not in ("right", "left"):
            raise ValueError("eye must be 'right' or 'left'")
        if self.optic_module is not None:
            try:
                self.optic_module.fixation("disc", eye)
            except Exception as exc:  # noqa: BLE001 - fixation is a help, not a must
                log.warning("fixation target not set: %s", exc)
        with self._lock:
            self._armed = eye
            self._armed_at = time.monotonic()
            self._captured = None
            self._button.clear()
            self._trace = {"eye": eye, "frames": 0, "rejected": Counter(), "light": [], "exposure_us": [], "focus": []}
            self._state.update(armed_eye=eye, captured=False, streak=0)

    def cancel(self) -> None:
        with self._lock:
            self._armed = None
            self._state.update(armed_eye=None, captured=False, streak=0)

    def press_button(self) -> None:
        self._button.set()

    def latest_jpeg(self) -> bytes | None:
        with self._lock:
            return self._jpeg

    def state(self) -> dict:
        with self._lock:
            s = dict(self._state)
            s["reasons"] = list(s["reasons"])
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

    def take_photo(self) -> CapturedPhoto | None:
        with self._lock:
            photo, self._captured = self._captured, None
            if photo is not None:
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
            self._set_light()
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
        level, exposure = self.light.update(m.get("brightness", float("nan")))
        self._set_light()
        pos = None
        blurred = report.field is not None and any(r.code == "out_of_focus" for r in report.reasons)
        if blurred or self.focus.position is None:
            pos = self.focus.update(m.get("focus", 0.0))
        now = time.monotonic()
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
                               focus=pos if pos is not None else self._state["focus"])
            armed = self._armed
            if armed:
                t = self._trace
                t["frames"] += 1
                for r in report.reasons:
                    t["rejected"][r.code] += 1
                t["light"].append(round(level, 3))
                t["exposure_us"].append(exposure)
                t["focus"].append(self._state["focus"])
        if armed and (streak >= self.settings.consecutive_gradable or self._button.is_set()):
            self._capture(armed, manual=self._button.is_set())

    def _capture(self, eye: str, manual: bool) -> None:
        with self._lock:
            self._state["instruction"] = "Taking the photo - hold still"
        stills = []
        for _ in range(max(1, self.settings.burst)):
            if self.illumination is not None:
                self.illumination.flash(self.light.level, self.settings.max_flash_s)
            still = self.camera.capture_still()
            stills.append((sharpness(still), still))
        self._set_light()
        best = max(stills, key=lambda s: s[0])[1]
        quality = self.gate.assess(best)
        with self._lock:
            trace = self._trace
            trace["burst_sharpness"] = [round(s[0], 1) for s in stills]
            if not quality.gradable and not manual:
                # the eye moved or blinked during the burst: keep aligning and try again
                trace["stills_rejected"] = trace.get("stills_rejected", 0) + 1
                self._state.update(streak=0, instruction=quality.reasons[0].message)
                return
            trace["rejected"] = dict(trace["rejected"])
            trace["seconds_to_capture"] = round(time.monotonic() - self._armed_at, 2)
            trace["manual"] = manual
            self._captured = CapturedPhoto(eye, best, quality, trace)
            self._armed = None
            self._button.clear()
            self._state.update(captured=True, armed_eye=None, streak=0, instruction="Photo taken")

    def _set_light(self) -> None:
        try:
            self.camera.set_exposure(self.light.exposure_us, 1.0)
        except Exception as exc:  # noqa: BLE001
            log.debug("camera exposure not set: %s", exc)
        if self.illumination is not None:
            self.illumination.set_white(self.light.level)

    def _lights_off(self) -> None:
        if self.illumination is not None:
            try:
                self.illumination.off()
            except Exception:  # noqa: BLE001 - best effort on the way out
                log.exception("could not turn the LEDs off")


def _explain(exc: Exception) -> str:
    name = type(exc).__name__
    if name == "CameraError":
        return f"The camera stopped working: {exc}. Check the optic module's cable, then restart the unit."
    return f"The capture stopped ({name}: {exc}). Restart the unit; if it happens again, call support."
