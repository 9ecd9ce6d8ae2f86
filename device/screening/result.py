"""What a screening decides, in two shapes: `ScreeningResult` as the pipeline makes it (with the crop's
probability maps, for the overlay and the masks) and `StoredResult` as the visit log gives it back
(figures and words only), so the DICOM builder reads named fields rather than the JSON's keys.

The JSON (`ScreeningResult.to_dict()`) is the one persistent form: the visit log stores it, the kiosk
shows it and the CLI prints it. `StoredResult.from_dict` reads it back leniently, because results
stored by earlier releases (or by hand, in tests and trials) may lack a field this one writes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from device.screening.measurements import Measurements, clean_masks
from device.screening.progression import Assessment
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
