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

Every frame and still is corrected with the optic module's calibration (`correction`: dark level, flat
field, white balance) before the gate sees it, so the gate and the screening see every unit's photos alike;
the still as the camera gave it is kept beside the corrected one. The light each eye gets is booked by the
lights' dose ledger from `begin` on; when the lights stop because an eye has had its visit's light (or a
flash would pass it), the loop stops that eye's capture and says why, with the lights off.

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

from device.capture.focus import FocusController
from device.capture.light import LightController
from device.config import CaptureConfig
from device.screening.quality import QualityGate, QualityReport
from device.screening.wording import N_
from hardware.light_dose import EyeDose, LightLimitReached
from models.runtime.images import encode_jpeg

log = logging.getLogger(__name__)

PREVIEW_JPEG_INTERVAL_S = 0.08  # ~12 preview frames/s to the kiosk is plenty and saves CPU
# Frames whose focus measure means nothing: no usable light, or the field cut or shaded.
_NOT_MEASURABLE = {"no_fundus", "field_too_small", "too_dark", "too_bright", "uneven_light"}
LIGHT_STOPPED = N_("The light limit for this eye is reached, so the lights are off. Do not photograph this eye again "
                   "today: skip it with a reason.")


@dataclass
class CapturedPhoto:
    eye: str
    rgb: np.ndarray
    quality: QualityReport
    trace: dict = field(default_factory=dict)
    token: str = ""  # the capture token of the `begin` that armed it
    raw: np.ndarray | None = None  # the still as the camera gave it, before the calibration's correction
    calibration: dict | None = None  # the calibration that corrected it (version, date, module serial); None: none


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian on a fixed-size greyscale copy: larger is sharper."""
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = 512.0 / max(g.shape)
    if scale < 1:
        g = cv2.resize(g, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(g, cv2.CV_32F).var())


class CaptureLoop:
    """Preview -> gate -> light and focus -> auto-capture, in its own thread.

    Times the worker sees (seconds to capture, the preview's rate) are on the camera's own clock where
    it keeps one (a simulated sensor runs on simulated time), else the wall clock. The watchdog's stall
    check is always wall time: it is about this process, not the eye.
    """

    def __init__(self, camera, gate: QualityGate, settings: CaptureConfig, *, illumination=None, optic_module=None,
                 correction=None):
        self.camera = camera
        self.correction = correction  # calibration.optical.FrameCorrection, or None: frames as the camera gives them
        self._clock = getattr(camera, "clock", None) or time.monotonic
        self.gate = gate
        self.settings = settings
        self.illumination = illumination
        self.optic_module = optic_module
        fps = getattr(camera, "fps", None)
        longest = int(0.9e6 / fps) if fps else 30000  # an exposure cannot outlast the frame period
        if getattr(camera, "live_controls", True):
            self.light = LightController(settings.target_brightness, settings.max_led_level,
                                         exposure_range=(100, longest))
        else:  # each exposure or gain change would restart the camera: the LED ring alone steers
            self.light = LightController(settings.target_brightness, settings.max_led_level,
                                         exposure_range=(longest, longest), max_gain=1.0)
        self.focus = FocusController(optic_module, quality=gate.settings)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._button = threading.Event()
        self._jpeg: bytes | None = None
        self._jpeg_at = 0.0
        self._state: dict = {"running": False, "armed_eye": None, "gradable": False, "instruction": N_("Starting the camera"),
                             "reasons": [], "streak": 0, "light": 0.0,
                             "exposure_us": self.light.exposure_us, "gain": 1.0, "focus": None,
                             "focus_search": self.focus.state, "captured": False, "error": None, "light_stopped": None}
        self._armed: str | None = None
        self._token: str | None = None
        self._armed_at = 0.0
        self._captured: CapturedPhoto | None = None
        self._trace: dict = {}
        self._last_frame = time.monotonic()
        self._light_sent: tuple | None = None  # what _set_light last sent
        self._light_stop: str | None = None  # why the lights stopped for the eye armed (None: they did not)
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

    def begin(self, eye: str, *, dose_key: str | None = None, prior_dose: EyeDose | None = None) -> str:
        """Arm the capture for one eye; returns the token that alone can take the photo it leads to.
        A new `begin` supersedes the last one, whose token then takes nothing. The light goes to this eye's
        account from now on (`dose_key`: the eye of a visit, by default the eye's name; `prior_dose`: what it
        had earlier in its visit)."""
        if eye not in ("right", "left"):
            raise ValueError("eye must be 'right' or 'left'")
        stopped = None
        if self.illumination is not None and hasattr(self.illumination, "expose"):
            self.illumination.expose(dose_key or eye, prior_dose)
            stopped = self.illumination.stopped
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
                           "gain": [], "focus": [], "focus_search": [],
                           "calibration": self.correction.calibration.summary() if self.correction is not None else None}
            self._light_stop = None
            self._light_sent = None  # the loop sends the light again on its next frame (it may have been stopped)
            self._state.update(armed_eye=eye, captured=False, streak=0, light_stopped=None)
        if stopped:
            self._stop_light(stopped)
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
        if self.illumination is not None and hasattr(self.illumination, "expose"):
            self.illumination.expose(None)  # the light from now on is nobody's eye's

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
        """Block until a photo is captured (for the command line; the kiosk polls instead); None when the loop
        stopped with an error or the lights stopped for this eye."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            photo = self.take_photo()
            if photo is not None:
                return photo
            state = self.state()
            if state["error"] or state["light_stopped"]:
                return None
            time.sleep(0.02)
        return None

    def light_dose(self) -> dict | None:
        """The light the armed (or last armed) eye has had, and the limits it was held to; None without a ledger."""
        lights = self.illumination
        if lights is None or not hasattr(lights, "dose"):
            return None
        dose = lights.dose()
        limits = lights.limits
        figures = dose.to_dict()
        return {**figures, "limits": limits.to_dict(), "led_response": lights.response.source,
                "within_limits": (dose.peak_irradiance_mw_cm2 <= limits.max_irradiance_mw_cm2 + 1e-12
                                  and dose.total_mj_cm2 <= limits.visit_exposure_mj_cm2 + 1e-12),
                "stopped": lights.stopped}

    def set_correction(self, correction) -> None:
        """A new calibration's correction, from the next frame on."""
        self.correction = correction

    def _corrected(self, frame: np.ndarray) -> np.ndarray:
        """The one place frames meet the calibration: every preview frame and still passes here."""
        return frame if self.correction is None else self.correction(frame)

    def _stop_light(self, reason: str) -> None:
        """The lights stopped for the armed eye: no photo of it now, the worker told why, the dose recorded."""
        log.warning("capture stopped: %s", reason)
        dose = self.light_dose()
        with self._lock:
            self._light_stop = reason  # no photo of this eye now: the capture below waits for a new `begin`
            if self._trace:
                self._trace["light_stopped"] = reason
                self._trace["light_dose"] = dose
            self._button.clear()
            self._state.update(light_stopped=reason, instruction=LIGHT_STOPPED, gradable=False, streak=0)

    # -- loop side ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            # the camera starts at the controller's exposure: a camera that restarts for a change has none to make
            self.camera.set_exposure(self.light.exposure_us, self.light.gain)
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
            except Exception:  # noqa: BLE001 - a camera already gone cannot be stopped twice
                pass
            with self._lock:
                self._state["running"] = False

    def _step(self) -> None:
        frame = self._corrected(self.camera.read())
        self._last_frame = time.monotonic()
        stopped = getattr(self.illumination, "stopped", None)
        if stopped and not self._light_stop and self._trace:  # the lights' own timer stopped them
            self._stop_light(stopped)
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
            instruction = report.reasons[0].message if report.reasons else N_("Hold still - taking the photo")
            if self._light_stop:
                instruction, streak = LIGHT_STOPPED, 0
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
        if self._light_stop:
            self._button.clear()  # the lights are off for this eye: no photo, whoever presses
        elif armed and ((ready and streak >= self.settings.consecutive_gradable) or self._button.is_set()):
            self._capture(armed, token, manual=self._button.is_set())

    def _capture(self, eye: str, token: str | None, manual: bool) -> None:
        with self._lock:
            self._state["instruction"] = N_("Taking the photo - hold still")
        stills = []
        for _ in range(max(1, self.settings.burst)):
            if self.illumination is not None:
                try:
                    self.illumination.flash(self.light.level, self.settings.max_flash_s)
                except LightLimitReached as exc:
                    self._stop_light(str(exc))
                    return
            raw = self.camera.capture_still()
            still = self._corrected(raw)
            stills.append((sharpness(still), still, raw))
        self._set_light(force=True)
        _, best, best_raw = max(stills, key=lambda s: s[0])
        quality = self.gate.assess(best)
        dose = self.light_dose()
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
            trace["light_dose"] = dose
            calibration = self.correction.calibration.summary() if self.correction is not None else None
            self._captured = CapturedPhoto(eye, best, quality, trace, token=token or "",
                                           raw=best_raw if self.correction is not None else None, calibration=calibration)
            self._armed = None
            self._button.clear()
            self._state.update(captured=True, armed_eye=None, streak=0, instruction=N_("Photo taken"))

    def _set_light(self, force: bool = False) -> None:
        """Send the light controller's exposure, gain and LED level, only where they changed: on a
        settled eye that is no command at all, so the camera's control queue and the LED driver see
        changes, not a steady stream of repeats. `force` after anything else has touched the light
        (the camera starting, a flash)."""
        wanted = (int(self.light.exposure_us), round(float(self.light.gain), 3), round(float(self.light.level), 4))
        if not force and wanted == self._light_sent:
            return
        sent: tuple[int, float, float] | None = wanted
        try:
            self.camera.set_exposure(self.light.exposure_us, self.light.gain)
        except Exception as exc:  # noqa: BLE001 - retried on the next frame
            log.debug("camera exposure not set: %s", exc)
            sent = None  # try again on the next frame
        if self.illumination is not None and not self._light_stop:
            try:
                self.illumination.set_white(self.light.level)
            except LightLimitReached as exc:
                self._stop_light(str(exc))
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
