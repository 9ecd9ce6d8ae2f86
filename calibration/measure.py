"""The calibration procedure: with the flat grey calibration target held against the optic module (the whole
view covered, the room's light kept out), the unit measures in about a hundred frames

  (d) its dark level: the sensor's black, found where the light grows with exposure from (and the frame with
      the LEDs off, which must be dark: room light reaching the sensor would be taken for the module's own);
  the camera's encoding: brightness against exposure time at one light level, which is linear in light;
  (a) the flat field: how the light falls off across the field (lens vignetting and the LED ring's spread);
  (b) the white balance: the grey target's colour at the field's centre, made neutral;
  (c) the LED response: brightness at eight commanded levels up to the light limit, and so, scaled by a light
      meter's reading in a model eye (or the module's datasheet), the irradiance at the pupil in mW/cm2.

It refuses, with the reason in words, a calibration that fails its own sanity checks: a target that does not
fill the field, a camera that saturates on it, a light that does not grow with its level.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable, Protocol

import cv2
import numpy as np

from calibration.optical import OpticalCalibration

REFERENCE_EXPOSURE_US = 20000
EXPOSURES_US = (4000, 8000, 16000, 32000)  # the encoding's sweep; the longest still fits a 30 frames/s period
FLAT_LEVEL = 0.5                # of full light: the flat field and the encoding are measured here (or at the limit, if lower)
SWEEP_STEPS = 8                 # LED levels measured, evenly up to the light limit
SATURATED = 250                 # an 8-bit channel at or above this has run out of range
MAX_SATURATED_SHARE = 0.002     # of the field: more than this saturated and the figures mean nothing
LIT_SHARE = 0.01                # of the field's brightest light: above it a pixel sees the target
MIN_FIELD_SHARE = 0.35          # of the frame a filled field covers (the quality gate's smallest field)
MIN_FILL = 0.85                 # of the smallest circle around the lit area: a target askew leaves a part dark
MIN_RISE = 0.01                 # each level up must give at least this much more light (of the top level's)
MAX_DARK_SHARE = 0.05           # with the LEDs off the field must stay under this share of its lit brightness
GAMMA_RANGE = (1.0, 3.0)
SMOOTH_PX = 2.0                 # the flat field's smoothing (pixels of the half-size map): noise out, falloff kept


class Camera(Protocol):
    def read(self) -> np.ndarray: ...
    def set_exposure(self, exposure_us: int, gain: float) -> None: ...


class Lights(Protocol):
    def set_white(self, level: float) -> float: ...
    def off(self) -> None: ...


class CalibrationRefused(ValueError):
    """The calibration failed one of its own sanity checks; the message says which, with the figures, and what
    to do. Nothing was saved."""


@dataclass(frozen=True)
class Procedure:
    """How many frames each step takes: `settle` thrown away after every change (a camera applies a new
    exposure a frame or two late), `average` kept and averaged."""

    settle: int = 2
    average: int = 4


def calibrate(camera: Camera, lights: Lights, *, module_serial: str, version: int, max_level: float,
              light_meter: Callable[[float], float] | None = None, datasheet_full_mw_cm2: float = 0.2,
              procedure: Procedure = Procedure(), now: dt.datetime | None = None) -> OpticalCalibration:
    """Measure the module in front of the target (camera started, lights free to use); the lights are left off.

    `light_meter(level)`: the irradiance at the pupil (mW/cm2) a light meter in a model eye reads with the ring
    at `level`, which is lit while it is asked; without one the module's datasheet figure at full level is
    used, scaled along the measured response."""
    try:
        return _calibrate(camera, lights, module_serial=module_serial, version=version, max_level=max_level,
                          light_meter=light_meter, datasheet_full_mw_cm2=datasheet_full_mw_cm2, procedure=procedure,
                          now=now)
    finally:
        lights.off()


def _calibrate(camera, lights, *, module_serial, version, max_level, light_meter, datasheet_full_mw_cm2, procedure,
               now) -> OpticalCalibration:
    def frames(n: int) -> np.ndarray:
        for _ in range(procedure.settle):
            camera.read()
        return np.mean([camera.read().astype(np.float32) for _ in range(n)], axis=0)

    camera.set_exposure(REFERENCE_EXPOSURE_US, 1.0)
    lights.off()
    dark_frame = frames(procedure.average)
    flat_level = lights.set_white(min(FLAT_LEVEL, max_level))
    if flat_level <= 0:
        raise CalibrationRefused("the white ring gave no light at all: check its cable and driver, then calibrate again")
    flat_frame = frames(procedure.average * 6)
    saturated = _refuse_saturation(flat_frame, flat_level)
    sweep = []
    for exposure in EXPOSURES_US:
        camera.set_exposure(exposure, 1.0)
        sweep.append((exposure, frames(procedure.average)))
    camera.set_exposure(REFERENCE_EXPOSURE_US, 1.0)
    for exposure, frame in sweep:
        saturated = max(saturated, _refuse_saturation(frame, flat_level, exposure_us=exposure))

    centre_box = _centre_box(flat_frame.shape[:2])
    gamma, dark = _encoding(sweep, centre_box)
    to_linear = _linear(gamma, dark)
    flat_linear = to_linear(flat_frame)
    lit, circle, checks = _refuse_a_field_not_filled(flat_linear)
    dark_share = float(np.clip(to_linear(dark_frame)[lit].mean(), 0, None) / max(flat_linear[lit].mean(), 1e-6))
    if dark_share > MAX_DARK_SHARE:
        raise CalibrationRefused(
            f"with the LEDs off the target still shows {dark_share:.0%} of its lit brightness: room light reaches "
            "the sensor. Close the module's cover (or dim the room) and calibrate again")
    flat_field, white_balance = _flat_field(flat_linear, lit, circle)

    levels: list[float] = []
    brightness: list[float] = []
    for i in range(1, SWEEP_STEPS + 1):
        applied = lights.set_white(max_level * i / SWEEP_STEPS)
        if levels and applied <= levels[-1] + 1e-9:
            continue  # the lights' own limit held it at the last level
        frame = frames(procedure.average)
        saturated = max(saturated, _refuse_saturation(frame, applied))
        centre = to_linear(frame)[centre_box].reshape(-1, 3).mean(axis=0)
        levels.append(float(applied))
        brightness.append(float(np.dot(centre, white_balance) / 3.0))
    top_reading = None
    if light_meter is not None and levels:
        top_reading = float(light_meter(lights.set_white(levels[-1])))  # read with the ring lit at the top level
    lights.off()
    response = _led_response(levels, brightness, top_reading, datasheet_full_mw_cm2)
    checks.update(dark_share=round(dark_share, 4), saturated_share=round(saturated, 5), sensor_gamma=round(gamma, 3))
    return OpticalCalibration(
        version=version, date=(now or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds"),
        module_serial=module_serial, sensor_gamma=gamma, dark_level=(float(dark[0]), float(dark[1]), float(dark[2])),
        white_balance=(float(white_balance[0]), float(white_balance[1]), float(white_balance[2])),
        flat_field=flat_field, led_response=response, field_circle=circle, checks=checks)


def _centre_box(shape: tuple[int, ...]) -> tuple[slice, slice]:
    h, w = shape[:2]
    return slice(int(h * 0.42), int(h * 0.58)), slice(int(w * 0.44), int(w * 0.56))


def _refuse_saturation(frame: np.ndarray, level: float, exposure_us: int | None = None) -> float:
    """The share of the lit field at the top of the camera's range; refused above MAX_SATURATED_SHARE."""
    lit = frame.max(axis=2) > 8
    if not lit.any():
        return 0.0
    share = float((frame.max(axis=2)[lit] >= SATURATED).mean())
    if share > MAX_SATURATED_SHARE:
        at = f"light level {level:.0%}" + (f" and {exposure_us / 1000:g} ms exposure" if exposure_us else "")
        raise CalibrationRefused(
            f"the camera saturates on the target at {at} ({share:.1%} of the field at the top of its range): the "
            "target is too bright. Use the grey side of the calibration target, not the white, and calibrate again")
    return share


def _encoding(sweep: list[tuple[int, np.ndarray]], box) -> tuple[float, np.ndarray]:
    """The camera's gamma and the sensor's dark level: brightness grows in proportion to exposure in linear light,
    from the dark level. The gamma whose linear light lies best on a straight line against exposure wins; the
    line's intercept is the dark level, per channel."""
    t = np.array([e for e, _ in sweep], np.float64) / REFERENCE_EXPOSURE_US
    encoded = [f[box].reshape(-1, 3).astype(np.float64) / 255.0 for _, f in sweep]
    best: tuple[float, float, np.ndarray] | None = None
    for gamma in np.arange(GAMMA_RANGE[0], GAMMA_RANGE[1] + 1e-9, 0.01):
        y = np.array([(e ** gamma).mean(axis=0) for e in encoded])  # exposures x channels
        design = np.stack([t, np.ones_like(t)], axis=1)
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        residual = float(((design @ coef - y) ** 2).sum() / max((y ** 2).sum(), 1e-12))
        if best is None or residual < best[1]:
            best = (float(gamma), residual, np.clip(coef[1], 0.0, None))
    assert best is not None  # the range is not empty
    return round(best[0], 2), best[2].astype(np.float32)


def _linear(gamma: float, dark: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def to_linear(frame: np.ndarray) -> np.ndarray:
        return (np.clip(frame, 0, 255) / 255.0) ** gamma - dark
    return to_linear


def _refuse_a_field_not_filled(flat: np.ndarray) -> tuple[np.ndarray, dict, dict]:
    """The lit area: it must be the whole field (a disc, perhaps cut by the frame's edges, of the gate's
    smallest field or more). Returns the lit mask, the field's circle (frame fractions) and the figures."""
    h, w = flat.shape[:2]
    light = flat.mean(axis=2)
    top = float(np.percentile(light, 99.5))
    if top <= 0:
        raise CalibrationRefused("the camera sees no light from the target: put the grey target against the module "
                                 "and calibrate again")
    lit = (cv2.GaussianBlur(light.astype(np.float32), (0, 0), 2.0) > LIT_SHARE * top).astype(np.uint8)
    contours, _ = cv2.findContours(lit, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        raise CalibrationRefused("the camera sees no light from the target: put the grey target against the module "
                                 "and calibrate again")
    biggest = max(contours, key=cv2.contourArea)
    (cx, cy), r = cv2.minEnclosingCircle(biggest)
    area = float(lit.sum())
    share, fill = area / (h * w), area / (np.pi * r * r)
    checks = {"field_share": round(share, 4), "field_fill": round(fill, 4)}
    if share < MIN_FIELD_SHARE or fill < MIN_FILL:
        raise CalibrationRefused(
            f"the target does not fill the field: it lights {share:.0%} of the frame and {fill:.0%} of the field's "
            f"circle (a filled field lights {MIN_FIELD_SHARE:.0%} or more, and {MIN_FILL:.0%} or more of its "
            "circle). Hold the grey target flat against the module's front lens so that it covers the whole view, "
            "and calibrate again")
    mask = np.zeros((h, w), np.uint8)
    cv2.drawContours(mask, [biggest], -1, 1, thickness=-1)
    circle = {"cx": round(cx / w, 5), "cy": round(cy / h, 5), "r": round(r / h, 5)}
    return (mask > 0) & (lit > 0), circle, checks


def _flat_field(flat: np.ndarray, lit: np.ndarray, circle: dict) -> tuple[np.ndarray, np.ndarray]:
    """The light across the field per channel, smoothed, relative to the field's centre (half the frame's
    size, and carried beyond the field's edge so that a resize never mixes in the dark outside); and the white
    balance that makes the grey target's centre neutral at its green."""
    h, w = flat.shape[:2]
    size = (max(w // 2, 8), max(h // 2, 8))
    small = cv2.resize(flat.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    mask = cv2.resize(lit.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    inside = mask > 0.99
    m = inside.astype(np.float32)
    smooth = np.empty_like(small)
    far = np.empty_like(small)
    weight = cv2.GaussianBlur(m, (0, 0), SMOOTH_PX) + 1e-9
    weight_far = cv2.GaussianBlur(m, (0, 0), 20.0) + 1e-12
    for c in range(3):
        smooth[..., c] = cv2.GaussianBlur(small[..., c] * m, (0, 0), SMOOTH_PX) / weight
        far[..., c] = cv2.GaussianBlur(small[..., c] * m, (0, 0), 20.0) / weight_far
    smooth = np.where(inside[..., None], smooth, far)
    sh, sw = smooth.shape[:2]
    ys, xs = np.mgrid[0:sh, 0:sw]
    centre = np.hypot(xs - circle["cx"] * sw, ys - circle["cy"] * sh) < max(circle["r"] * sh * 0.12, 2.0)
    centre_light = smooth[centre].mean(axis=0)
    if np.any(centre_light <= 0):
        raise CalibrationRefused("the field's centre shows no light in one colour: the target or the LEDs are not "
                                 "right; check them and calibrate again")
    flat_field = np.clip(smooth / centre_light, 1.0 / 64, None).astype(np.float32)
    white_balance = (centre_light[1] / centre_light).astype(np.float32)
    return flat_field, white_balance


def _led_response(levels: list[float], brightness: list[float], top_reading: float | None,
                  datasheet_full_mw_cm2: float) -> dict:
    if len(levels) < 3:
        raise CalibrationRefused(f"only {len(levels)} light levels could be measured (the light limit holds the ring "
                                 "too low): raise max_led_level or check the light limits, and calibrate again")
    top = brightness[-1]
    for (l0, b0), (l1, b1) in zip(zip(levels, brightness), zip(levels[1:], brightness[1:])):
        if b1 < b0 + MIN_RISE * top:
            raise CalibrationRefused(
                f"the light does not grow with its level: at {l1:.0%} the target was {b1 / top:.3f} of the top "
                f"level's brightness, against {b0 / top:.3f} at {l0:.0%}. The LED ring or its driver is failing: "
                "have the module serviced, then calibrate again")
    if brightness[0] <= 0:
        raise CalibrationRefused(f"the lowest level ({levels[0]:.0%}) gave no light: check the LED ring, then calibrate again")
    x, y = np.log(levels), np.log(brightness)
    power, intercept = np.polyfit(x, y, 1)
    if top_reading is not None:
        per_unit = top_reading / top
        source = f"light meter: {top_reading:.4g} mW/cm2 at {levels[-1]:.0%}"
    else:
        per_unit = datasheet_full_mw_cm2 / float(np.exp(intercept))  # the fitted brightness at full level
        source = f"datasheet: {datasheet_full_mw_cm2:g} mW/cm2 at full level, along the measured response"
    return {"levels": [round(v, 4) for v in levels], "relative": [round(b / top, 5) for b in brightness],
            "irradiance_mw_cm2": [round(b * per_unit, 6) for b in brightness], "power": round(float(power), 3),
            "source": source}
