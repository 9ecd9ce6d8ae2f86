"""A unit's optical calibration: what its own optic module does to light, kept on the unit, and the one
correction every preview frame and still goes through before the quality gate and the screening.

Every optic module differs: its lens vignettes (and not always about the centre), its LEDs differ in colour
and age, its sensor has its own black level and colour balance. The calibration (`calibration.measure`)
measures them on a flat grey target; the correction then undoes them in linear light:

    linear = (pixel / 255) ** sensor_gamma           the camera's encoding undone
    flat   = (linear - dark_level) * white_balance / flat_field       (`FrameCorrection.flatten`)
    linear = flat * reference_falloff(r)             r: distance from the field's centre, in field radii
    pixel  = 255 * linear ** (1 / sensor_gamma)

`flatten` makes a flat grey target flat and neutral. The last step gives every module the same, reference
falloff (`models.fundus.FALLOFF`: 1 - 0.75 r^2.2, as real fundus cameras fall off) rather than none: the
quality gate's thresholds and the networks were tuned on photos with a camera's natural falloff, and a photo
flattened completely lies outside what they know (on a flat photo the gate misses a disc it finds on the
same eye through the reference camera: it judges a disc's contrast against the field's mean brightness).
So the gate and the networks see every unit's photos as the reference module shows them. The LED response
(commanded level -> brightness -> irradiance at the pupil) goes to the lights' dose ledger
(`hardware.light_dose`).

Files, in the data directory (`DataDir.calibration` names the first; the rest are named from it):
    calibration.json                 the calibration in use: version, date, module serial, figures
    calibration/flat-field-<v>.npy   its flat-field map (float32, H x W x 3, 1 at the field's centre)
    calibration/calibration-<v>.json every version made, so a photo's calibration version can be looked up
Each version's map has its own name and is written (and synced) before the JSON that names it, which is
replaced in one rename: a power cut leaves the old calibration or the new one, whole.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from models.fundus import FALLOFF, FALLOFF_POWER
from models.runtime.durable import write_whole

FORMAT = 1  # the layout of calibration.json; a newer one is refused rather than misread
MAX_GAIN = 16.0  # the correction never lifts a pixel more than this (the field's very edge, where light is least)


class CalibrationError(ValueError):
    """A calibration file that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class OpticalCalibration:
    """One calibration of one optic module. `flat_field` is H x W x 3 float32, 1 at the field's centre,
    at the size the module was measured at (the correction resizes it to each frame: the light falls off
    smoothly, and preview and still show the same field)."""

    version: int
    date: str  # ISO 8601, UTC
    module_serial: str
    sensor_gamma: float
    dark_level: tuple[float, float, float]
    white_balance: tuple[float, float, float]
    flat_field: np.ndarray = field(repr=False, compare=False)
    led_response: dict = field(default_factory=dict)  # levels, relative, irradiance_mw_cm2, power, source
    field_circle: dict = field(default_factory=dict)  # the lit field as measured: cx, cy, r in frame fractions
    checks: dict = field(default_factory=dict)  # the sanity checks' figures, for the record

    @functools.cached_property
    def edge_to_centre(self) -> list[float]:
        """Per channel, the light at 0.9 of the field's radius against its centre: the vignetting in one figure."""
        return _edge_to_centre(self.flat_field, self.field_circle)

    @property
    def when(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.date)

    def age_days(self, now: dt.datetime | None = None) -> float:
        now = now or dt.datetime.now(dt.timezone.utc)
        return (now - self.when).total_seconds() / 86400.0

    def summary(self) -> dict:
        """What a photo, a report or a page says of the calibration it went through."""
        return {"version": self.version, "date": self.date, "module_serial": self.module_serial}

    def to_json(self, flat_field_file: str, flat_field_sha256: str) -> dict:
        return {"format": FORMAT, "version": self.version, "date": self.date, "module_serial": self.module_serial,
                "sensor_gamma": round(self.sensor_gamma, 4),
                "dark_level": [round(float(v), 6) for v in self.dark_level],
                "white_balance": [round(float(v), 6) for v in self.white_balance],
                "flat_field": {"file": flat_field_file, "sha256": flat_field_sha256,
                               "size": [int(self.flat_field.shape[0]), int(self.flat_field.shape[1])],
                               "edge_to_centre": self.edge_to_centre},
                "led_response": self.led_response, "field": self.field_circle, "checks": self.checks}


def _edge_to_centre(flat: np.ndarray, circle: dict) -> list[float]:
    h, w = flat.shape[:2]
    cx, cy, r = circle.get("cx", 0.5) * w, circle.get("cy", 0.5) * h, circle.get("r", 0.45) * h
    ys, xs = np.mgrid[0:h, 0:w]
    ring = np.abs(np.hypot(xs - cx, ys - cy) / max(r, 1.0) - 0.9) < 0.03
    if not ring.any():
        return [1.0, 1.0, 1.0]
    return [round(float(flat[..., c][ring].mean()), 4) for c in range(3)]


# -- files ---------------------------------------------------------------------------------------------
def maps_folder(path: Path) -> Path:
    """Where the flat-field maps and earlier versions live: beside calibration.json, named after it."""
    return Path(path).with_suffix("")


def load(path: Path) -> OpticalCalibration | None:
    """The calibration in use (None where the unit has none). A file that is damaged, of a newer format or
    whose map does not match its hash raises CalibrationError with what to do."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path} cannot be read ({exc}); calibrate the optic module again") from exc
    try:
        if data.get("format", 0) > FORMAT:
            raise CalibrationError(f"{path} was written by newer software (format {data['format']}); update the software")
        flat = data["flat_field"]
        map_path = maps_folder(path) / flat["file"]
        raw = map_path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != flat["sha256"]:
            raise CalibrationError(f"the flat-field map {map_path} does not match its hash; calibrate the optic module again")
        flat_field = np.load(io.BytesIO(raw), allow_pickle=False).astype(np.float32)
        if flat_field.ndim != 3 or flat_field.shape[2] != 3:
            raise CalibrationError(f"the flat-field map {map_path} is not an image of three channels")
        return OpticalCalibration(
            version=int(data["version"]), date=str(data["date"]), module_serial=str(data["module_serial"]),
            sensor_gamma=float(data["sensor_gamma"]),
            dark_level=_triple(data["dark_level"]), white_balance=_triple(data["white_balance"]),
            flat_field=flat_field, led_response=dict(data.get("led_response", {})),
            field_circle=dict(data.get("field", {})), checks=dict(data.get("checks", {})))
    except CalibrationError:
        raise
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise CalibrationError(f"{path} is incomplete or damaged ({type(exc).__name__}: {exc}); "
                               "calibrate the optic module again") from exc


def next_version(path: Path) -> int:
    """The version number the next calibration gets: one more than any made on this unit."""
    seen = [0]
    try:
        seen.append(int(json.loads(Path(path).read_text(encoding="utf-8")).get("version", 0)))
    except (OSError, ValueError, AttributeError):
        pass
    folder = maps_folder(path)
    if folder.is_dir():
        for p in folder.glob("calibration-*.json"):
            try:
                seen.append(int(p.stem.rsplit("-", 1)[1]))
            except ValueError:
                continue
    return max(seen) + 1


def save(calibration: OpticalCalibration, path: Path) -> Path:
    """Write the calibration as the one in use (the map first, then the JSON in one rename); returns the JSON's path."""
    path = Path(path)
    folder = maps_folder(path)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, calibration.flat_field.astype(np.float32), allow_pickle=False)
    raw = buffer.getvalue()
    name = f"flat-field-{calibration.version}.npy"
    write_whole(folder / name, raw)
    text = (json.dumps(calibration.to_json(name, hashlib.sha256(raw).hexdigest()), indent=1) + "\n").encode("utf-8")
    write_whole(folder / f"calibration-{calibration.version}.json", text)
    write_whole(path, text)
    return path


def _triple(values) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c


# -- the correction --------------------------------------------------------------------------------------
class FrameCorrection:
    """Dark level, flat field and white balance undone on a frame (RGB uint8, any size) in linear light.

    The gain map for each frame size is made once and kept; the correction itself is a table lookup, a
    subtraction, a multiplication and the encoding again, cheap enough for every preview frame."""

    def __init__(self, calibration: OpticalCalibration):
        self.calibration = calibration
        gamma = float(calibration.sensor_gamma)
        self._to_linear = ((np.arange(256, dtype=np.float32) / 255.0) ** gamma).astype(np.float32)
        self._inverse = 1.0 / gamma
        self._dark = np.asarray(calibration.dark_level, np.float32)
        self._gains: dict[tuple[int, int, bool], np.ndarray] = {}
        self._lock = threading.Lock()

    def gain(self, size: tuple[int, int], *, reference: bool = True) -> np.ndarray:
        """H x W x 3 float32 at this frame size: white balance / flat field, times the reference falloff
        (without it, with `reference` False: what flattens)."""
        key = (size[0], size[1], reference)
        with self._lock:
            found = self._gains.get(key)
            if found is None:
                h, w = size
                flat = cv2.resize(self.calibration.flat_field, (w, h), interpolation=cv2.INTER_LINEAR)
                wb = np.asarray(self.calibration.white_balance, np.float32)
                found = np.minimum(wb / np.maximum(flat, 1e-6), MAX_GAIN)
                if reference:
                    found = found * reference_falloff(size, self.calibration.field_circle)[..., None]
                found = found.astype(np.float32)
                found.setflags(write=False)
                self._gains[key] = found
            return found

    def linear(self, frame: np.ndarray) -> np.ndarray:
        """The frame's light, dark level taken off, before the flat field: float32, 0..1 (the calibration's own view)."""
        lin = self._to_linear[frame]
        lin -= self._dark
        return lin

    def flatten(self, frame: np.ndarray) -> np.ndarray:
        """The frame's light with dark level, flat field and colour undone: float32, linear. A flat grey target
        comes out flat and neutral."""
        _check_frame(frame)
        lin = self.linear(frame)
        cv2.multiply(lin, self.gain(frame.shape[:2], reference=False), dst=lin)
        return lin

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """The frame as the reference module would have taken it: RGB uint8, the camera's encoding."""
        _check_frame(frame)
        lin = self.linear(frame)
        cv2.multiply(lin, self.gain(frame.shape[:2]), dst=lin)
        np.clip(lin, 0.0, 1.0, out=lin)
        if self._inverse == 0.5:
            cv2.sqrt(lin, dst=lin)
        else:
            cv2.pow(lin, self._inverse, dst=lin)
        return cv2.convertScaleAbs(lin, alpha=255.0)


def _check_frame(frame: np.ndarray) -> None:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError("the correction takes an RGB frame of 8-bit pixels")


def reference_falloff(size: tuple[int, int], circle: dict) -> np.ndarray:
    """H x W float32: the reference camera's falloff about the field's circle as the calibration found it
    (frame fractions; the field's centre 1, its edge 1 - FALLOFF; beyond the edge held at that)."""
    h, w = size
    cx, cy, r = circle.get("cx", 0.5) * w, circle.get("cy", 0.5) * h, max(circle.get("r", 0.45) * h, 1.0)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    rho = np.minimum(np.hypot(xs - cx, ys - cy) / r, 1.0)
    return (1.0 - FALLOFF * rho ** FALLOFF_POWER).astype(np.float32)
