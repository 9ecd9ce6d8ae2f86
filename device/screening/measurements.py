"""Optic disc and cup measurements from segmentation masks: the numbers a reading centre reads.

Everything is measured in the pixels of the photo the worker took, so a vCDR means the same on a
512 px REFUGE photo and a 12 MP phone photo.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Region:
    """One structure (disc or cup): centre and diameters in photo pixels."""

    cx: float
    cy: float
    vertical_diameter: float
    horizontal_diameter: float
    area: float

    def to_dict(self) -> dict:
        return {k: round(v, 2) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Measurements:
    disc: Region
    cup: Region | None
    vcdr: float
    hcdr: float
    area_cdr: float
    rim: dict[str, float]  # rim width by ISNT sector, in disc diameters (NaN where unknown)
    isnt_violated: bool | None  # healthy rims follow inferior >= superior >= nasal >= temporal

    def to_dict(self) -> dict:
        return {
            "disc": self.disc.to_dict(),
            "cup": self.cup.to_dict() if self.cup else None,
            "vcdr": round(self.vcdr, 4),
            "hcdr": round(self.hcdr, 4),
            "area_cdr": round(self.area_cdr, 4),
            "rim": {k: (None if np.isnan(v) else round(v, 4)) for k, v in self.rim.items()},
            "isnt_violated": self.isnt_violated,
        }


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest connected blob: a disc is one piece, specks elsewhere are errors."""
    mask = mask.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == best


def fill_holes(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out.astype(bool)


def region(mask: np.ndarray, scale: float = 1.0, offset: tuple[float, float] = (0.0, 0.0)) -> Region | None:
    """Centre and extents of a mask; vertical diameter as MTL-IO measures it (max column sum)."""
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    vert = float(mask.sum(axis=0).max())
    horiz = float(mask.sum(axis=1).max())
    return Region(
        cx=offset[0] + (float(xs.mean()) + 0.5) * scale,
        cy=offset[1] + (float(ys.mean()) + 0.5) * scale,
        vertical_diameter=vert * scale,
        horizontal_diameter=horiz * scale,
        area=float(mask.sum()) * scale * scale,
    )


def clean_masks(disc_prob: np.ndarray, cup_prob: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Probability maps -> one solid disc and a cup kept inside it."""
    disc = fill_holes(largest_component(disc_prob >= threshold))
    cup = largest_component((cup_prob >= threshold) & disc)
    cup = fill_holes(cup) & disc
    return disc, cup


def measure(disc: np.ndarray, cup: np.ndarray, *, scale: float = 1.0, offset: tuple[float, float] = (0.0, 0.0),
            fovea: tuple[float, float] | None = None) -> Measurements | None:
    """Measure cleaned masks that live on a grid `scale` photo pixels per cell, offset in the photo.

    `fovea` (photo pixels) tells which side is temporal; without it the nasal/temporal rims are
    reported as left/right-agnostic NaN.
    """
    d = region(disc, scale, offset)
    if d is None:
        return None
    c = region(cup, scale, offset)
    vcdr = c.vertical_diameter / d.vertical_diameter if c else 0.0
    hcdr = c.horizontal_diameter / d.horizontal_diameter if c else 0.0
    area_cdr = c.area / d.area if c else 0.0
    rim = rim_widths(disc, cup, fovea=None if fovea is None else ((fovea[0] - offset[0]) / scale, (fovea[1] - offset[1]) / scale))
    isnt = None
    if not any(np.isnan(v) for v in rim.values()):
        isnt = not (rim["inferior"] >= rim["superior"] >= rim["nasal"] >= rim["temporal"])
    return Measurements(d, c, float(vcdr), float(hcdr), float(area_cdr), rim, isnt)


def rim_widths(disc: np.ndarray, cup: np.ndarray, fovea: tuple[float, float] | None) -> dict[str, float]:
    """Neuroretinal rim width along the four ISNT directions, in disc diameters."""
    ys, xs = np.nonzero(disc)
    cx, cy = xs.mean(), ys.mean()
    diam = float(disc.sum(axis=0).max())
    out = {"inferior": np.nan, "superior": np.nan, "nasal": np.nan, "temporal": np.nan}

    def width(dx: int, dy: int) -> float:
        # walk from the disc centre outward; rim = disc pixels on the ray that are not cup
        h, w = disc.shape
        n = 0
        x, y = cx, cy
        while 0 <= int(round(y)) < h and 0 <= int(round(x)) < w:
            xi, yi = int(round(x)), int(round(y))
            if not disc[yi, xi] and n > 0:
                break
            if disc[yi, xi] and not cup[yi, xi]:
                n += 1
            x += dx
            y += dy
        return n / diam if diam else np.nan

    out["superior"] = width(0, -1)
    out["inferior"] = width(0, 1)
    if fovea is not None:
        towards = 1 if fovea[0] > cx else -1  # temporal is the side facing the macula
        out["temporal"] = width(towards, 0)
        out["nasal"] = width(-towards, 0)
    return out
