"""What a screening decides, in two shapes: `ScreeningResult` as the pipeline makes it (with the crop's
probability maps, for the overlay and the masks) and `StoredResult` as the visit log gives it back
(figures and words only), so the DICOM builder reads named fields rather than the JSON's keys.

The JSON (`ScreeningResult.to_dict()`) is the one persistent form: the visit log stores it, the kiosk
shows it and the CLI prints it. `StoredResult.from_dict` reads it back leniently, because results
stored by earlier releases (or by hand, in tests and trials) may lack a field this one writes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from device.screening.measurements import Measurements, clean_masks
from device.screening.quality import QualityReport
from device.screening.referral import ADVICE, HEADLINE
from models.runtime import preprocess


@dataclass
class DiscSegmentation:
    """Pass-2 output: disc and cup probability maps on the crop grid, and where the crop lies."""

    box: preprocess.Box
    disc_prob: np.ndarray
    cup_prob: np.ndarray
    glaucoma_logit: float
    disc_classifier_logit: float | None = None

    @property
    def scale(self) -> float:
        """Photo pixels per pixel of the maps."""
        return self.box.side / self.disc_prob.shape[0]

    def masks(self) -> tuple[np.ndarray, np.ndarray]:
        return clean_masks(self.disc_prob, self.cup_prob)

    def masks_on_photo(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Disc and cup masks on the photo's own pixel grid (for Dice, overlays and DICOM). Only the part of
        the photo the crop covers is resampled and cleaned (both masks are empty everywhere else): on a
        12 MP photo that is a tenth of its pixels."""
        h, w = shape[:2]
        # a pixel or two beyond the crop: bilinear resampling still reads the crop's edge there
        x0, y0 = max(0, math.floor(self.box.x0) - 1), max(0, math.floor(self.box.y0) - 1)
        x1, y1 = min(w, math.ceil(self.box.x0 + self.box.side) + 2), min(h, math.ceil(self.box.y0 + self.box.side) + 2)
        disc, cup = np.zeros((h, w), bool), np.zeros((h, w), bool)
        if x1 > x0 and y1 > y0:
            region = preprocess.Box(self.box.x0 - x0, self.box.y0 - y0, self.box.side)
            disc[y0:y1, x0:x1], cup[y0:y1, x0:x1] = clean_masks(preprocess.unwarp(self.disc_prob, region, (y1 - y0, x1 - x0)),
                                                                preprocess.unwarp(self.cup_prob, region, (y1 - y0, x1 - x0)))
        return disc, cup


@dataclass
class Assessment:
    """Progression's verdict on one eye against its earlier visits (`device.screening.progression`), as a
    screening result carries it and the visit log keeps it."""

    verdict: str
    message: str
    compared_with: str | None = None  # when the earlier visit was
    years: float | None = None
    vcdr_then: float | None = None  # measured together, in today's frame, with the disc the visits share
    vcdr_now: float | None = None
    vcdr_change_per_year: float | None = None
    probability: float | None = None  # the model's probability, only where the policy lets it decide
    engine_probability: float | None = None  # the network's own output, kept for the reading centre
    exceeds_noise: bool | None = None  # a change in the vCDR or cup area beyond the noise, or a worsening trend
    confidence: float | None = None  # at which a change is said to exceed the noise (one-sided)
    changes: list[dict] = field(default_factory=list)  # `Change.to_dict()` per measure
    trend: dict | None = None  # `Trend.to_dict()` of the vCDR, with three visits or more
    registration: dict | None = None  # `Registration.to_dict()` of the earlier photo onto today's, and its matrix
    earlier_visit: str | None = None  # the visit compared with, and its photo: what the kiosk shows beside today's
    earlier_photo: str | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        for k in ("years", "vcdr_then", "vcdr_now", "vcdr_change_per_year", "probability", "engine_probability"):
            if out[k] is not None:
                out[k] = round(out[k], 4)
        return out

    @classmethod
    def from_dict(cls, stored: dict) -> "Assessment":
        """The verdict as a result's JSON keeps it; a field an older result lacks is None (or empty)."""
        return cls(verdict=stored.get("verdict") or "", message=stored.get("message", ""),
                   changes=list(stored.get("changes") or []),
                   **{k: stored.get(k) for k in ("compared_with", "years", "vcdr_then", "vcdr_now",
                                                 "vcdr_change_per_year", "probability", "engine_probability",
                                                 "exceeds_noise", "confidence", "trend", "registration",
                                                 "earlier_visit", "earlier_photo")})

    def change(self, measure: str) -> dict | None:
        return next((c for c in self.changes if c.get("measure") == measure), None)


@dataclass
class ScreeningResult:
    gradable: bool
    quality: QualityReport
    referral: str
    reasons: list[str]
    model_versions: dict[str, str]
    measurements: Measurements | None = None
    glaucoma_probability: float | None = None
    classifier_probability: float | None = None
    disc_classifier_probability: float | None = None
    vcdr_probability: float | None = None
    progression: Assessment | None = None
    fovea: tuple[float, float] | None = None
    segmentation: DiscSegmentation | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def vcdr(self) -> float | None:
        return self.measurements.vcdr if self.measurements else None

    def to_dict(self) -> dict:
        m = self.measurements
        return {
            "gradable": self.gradable,
            "quality": self.quality.to_dict(),
            "disc": m.disc.to_dict() if m else None,
            "cup": m.cup.to_dict() if m and m.cup else None,
            "vcdr": round(m.vcdr, 4) if m else None,
            "measurements": m.to_dict() if m else None,
            "fovea": None if self.fovea is None else [round(self.fovea[0], 1), round(self.fovea[1], 1)],
            "glaucoma_probability": None if self.glaucoma_probability is None else round(self.glaucoma_probability, 4),
            "classifier_probability": None if self.classifier_probability is None else round(self.classifier_probability, 4),
            "disc_classifier_probability": (None if self.disc_classifier_probability is None
                                            else round(self.disc_classifier_probability, 4)),
            "vcdr_probability": None if self.vcdr_probability is None else round(self.vcdr_probability, 4),
            "referral": self.referral,
            "referral_headline": HEADLINE[self.referral],
            "referral_reasons": self.reasons,
            "advice": ADVICE[self.referral],
            "progression": None if self.progression is None else self.progression.to_dict(),
            "model_versions": self.model_versions,
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }

    def overlay(self, rgb: np.ndarray) -> np.ndarray:
        """The photo with the disc (green) and cup (yellow) outlines drawn, for the worker and the slip."""
        out = rgb.copy()
        if self.segmentation is None:
            return out
        disc, cup = self.segmentation.masks_on_photo(rgb.shape)
        thick = max(2, int(round(min(rgb.shape[:2]) / 250)))
        for mask, colour in ((disc, (40, 220, 40)), (cup, (255, 220, 0))):
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, colour, thick, lineType=cv2.LINE_AA)
        if self.fovea is not None:
            cv2.drawMarker(out, (int(self.fovea[0]), int(self.fovea[1])), (80, 160, 255), cv2.MARKER_CROSS, 6 * thick, thick)
        return out


@dataclass(frozen=True)
class StoredResult:
    """A screening result as the visit log keeps it. The referral is left as stored (possibly missing or
    misspelt): whoever sends it on refuses what a reading centre could not read, with the reason."""

    gradable: bool
    referral: str | None
    reasons: tuple[str, ...] = ()
    model_versions: dict[str, str] = field(default_factory=dict)
    vcdr: float | None = None
    hcdr: float | None = None
    area_cdr: float | None = None
    glaucoma_probability: float | None = None
    progression: Assessment | None = None

    @classmethod
    def from_dict(cls, stored: dict) -> "StoredResult":
        ratios = stored.get("measurements") or {}
        progression = stored.get("progression")
        return cls(
            gradable=bool(stored.get("gradable")),
            referral=stored.get("referral"),
            reasons=tuple(str(reason) for reason in stored.get("referral_reasons") or []),
            model_versions=dict(stored.get("model_versions") or {}),
            vcdr=_number(stored.get("vcdr")),
            hcdr=_number(ratios.get("hcdr")),
            area_cdr=_number(ratios.get("area_cdr")),
            glaucoma_probability=_number(stored.get("glaucoma_probability")),
            progression=Assessment.from_dict(progression) if progression else None,
        )


def _number(value) -> float | None:
    return None if value is None else float(value)
