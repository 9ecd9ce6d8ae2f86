"""How much an eye's optic disc has changed between visits, and whether that is more than the noise.

Every visit is measured in today's frame: the earlier photos are aligned with today's
(`registration`) and cut with exactly the boxes today's photo is cut with, so the segmentation sees
each visit through the same window and the outlines compare pixel for pixel. Glaucoma enlarges the
cup and thins the rim; the disc itself does not change. So the disc outline is shared by all the
visits (the mean of their disc maps) and only the cup is each visit's own: the noise of outlining the
disc edge, the largest part of a vCDR's photo-to-photo noise, then no longer enters the change.

Each visit is outlined through a few slightly shifted and zoomed windows (`VIEWS`, test-time
augmentation); a measure is their mean and its spread says how steady the outline is on this photo.

A change is called only when it exceeds the noise at a stated confidence (event analysis, as a
visual-field progression analysis does): the noise of a change is what stable eyes show between two
visits (`NoiseModel`, measured on GRAPE's eyes that did not progress), or this pair's own spread
where that is larger. With three or more visits, a trend is the least-squares slope per year with its
interval; it is called when the whole interval lies on the side of worsening.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np

from device.screening.measurements import clean_masks, fill_holes, largest_component
from device.screening.registration import Registration, earlier_in_region
from models.runtime import preprocess
from models.runtime.preprocess import Box

# (shift right, shift down, zoom) of each window, in fractions of the disc crop's side
VIEWS = ((0.0, 0.0, 1.0), (0.04, 0.0, 1.0), (-0.04, 0.0, 1.0), (0.0, 0.04, 1.0), (0.0, -0.04, 1.0),
         (0.0, 0.0, 0.92), (0.0, 0.0, 1.08))
SECTORS = ("superior", "inferior", "nasal", "temporal")
MEASURES = ("vcdr", "cup_area") + tuple(f"rim_{s}" for s in SECTORS)
# the way glaucoma moves each measure: the cup grows, the rim shrinks
WORSENING = {"vcdr": 1, "cup_area": 1, **{f"rim_{s}": -1 for s in SECTORS}}
CALLED_ON = ("vcdr", "cup_area")  # the measures whose change the verdict rests on; the rims are reported
CONFIDENCE = 0.95

# views (N x S x S x 3 uint8) -> (disc, cup) probability maps (N x S x S) on the views' own grids
Outliner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Measured:
    """One visit's measures in the shared frame: the mean over the views and the spread (SD) across them.
    Areas are fractions of the shared disc's area; each rim sector is the rim within that quarter."""

    values: dict[str, float]
    spread: dict[str, float]


def view_boxes(box: Box, views: Sequence[tuple[float, float, float]] = VIEWS) -> list[Box]:
    out = []
    for dx, dy, zoom in views:
        side = box.side * zoom
        cx, cy = box.x0 + box.side * (0.5 + dx), box.y0 + box.side * (0.5 + dy)
        out.append(Box(cx - side / 2, cy - side / 2, side))
    return out


def sector_masks(shape: tuple[int, int], cx: float, cy: float, macula_side: int | None) -> dict[str, np.ndarray]:
    """Quarters around the disc centre: superior and inferior (up and down the photo), temporal facing the
    macula (`macula_side` +1 right, -1 left; None: nasal and temporal not told apart, left empty)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    angle = np.degrees(np.arctan2(-(ys + 0.5 - cy), xs + 0.5 - cx))  # 0 = right, 90 = up
    out = {"superior": (angle > 45) & (angle <= 135), "inferior": (angle < -45) & (angle >= -135)}
    right, left = np.abs(angle) <= 45, np.abs(angle) > 135
    if macula_side is None:
        out["temporal"] = out["nasal"] = np.zeros(shape, bool)
    else:
        out["temporal"], out["nasal"] = (right, left) if macula_side > 0 else (left, right)
    return out


def _vertical(mask: np.ndarray) -> float:
    return float(mask.sum(axis=0).max()) if mask.any() else 0.0


def measure_shared_disc(disc_probs: Sequence[np.ndarray] | np.ndarray, cup_probs: Sequence[np.ndarray] | np.ndarray,
                        macula_side: int | None) -> list[dict[str, float]] | None:
    """Each visit's measures through one view: the disc from the mean of the visits' disc maps, each
    visit's cup kept inside it. None where no disc is found."""
    disc, _ = clean_masks(np.mean(disc_probs, axis=0), np.zeros_like(disc_probs[0]))
    if not disc.any():
        return None
    ys, xs = np.nonzero(disc)
    sectors = sector_masks(disc.shape, float(xs.mean()) + 0.5, float(ys.mean()) + 0.5, macula_side)
    area, height = float(disc.sum()), _vertical(disc)
    out = []
    for cup_prob in cup_probs:
        cup = fill_holes(largest_component((cup_prob >= 0.5) & disc)) & disc
        rim = disc & ~cup
        row = {"vcdr": _vertical(cup) / height, "cup_area": float(cup.sum()) / area}
        for s in SECTORS:
            row[f"rim_{s}"] = float((rim & sectors[s]).sum()) / area if sectors[s].any() else math.nan
        out.append(row)
    return out


def measure_visits(outline: Outliner, views_per_visit: Sequence[np.ndarray], macula_side: int | None) -> list[Measured] | None:
    """`views_per_visit`: for each visit (oldest first), its views (V x S x S x 3) through the same windows."""
    n, v = len(views_per_visit), len(views_per_visit[0])
    disc, cup = outline(np.concatenate(list(views_per_visit)))
    disc, cup = disc.reshape(n, v, *disc.shape[1:]), cup.reshape(n, v, *cup.shape[1:])
    per_view = [measure_shared_disc(disc[:, k], cup[:, k], macula_side) for k in range(v)]
    seen = [rows for rows in per_view if rows is not None]
    if not seen:
        return None
    out = []
    for t in range(n):
        values, spread = {}, {}
        for m in MEASURES:
            x = np.array([rows[t][m] for rows in seen], float)
            values[m] = float(np.mean(x))
            spread[m] = float(np.std(x, ddof=1)) if len(x) > 1 else math.nan
        out.append(Measured(values, spread))
    return out


def registered_views(current: np.ndarray, box: Box, earlier: Sequence[tuple[np.ndarray, Registration]],
                     views: Sequence[tuple[float, float, float]] = VIEWS,
                     size: int = preprocess.INPUT_SIZE) -> list[np.ndarray]:
    """Each earlier photo (aligned) and today's, cut through the same windows around today's disc crop `box`:
    the earlier ones first, in the order given, today's last."""
    boxes = view_boxes(box, views)
    out = [np.stack([earlier_in_region(rgb, reg, b, size) for b in boxes]) for rgb, reg in earlier]
    out.append(np.stack([preprocess.warp(current, b, size) for b in boxes]))
    return out


# ---------------------------------------------------------------- is it more than the noise?

@dataclass
class NoiseModel:
    """The SD of each measure's change between two photos of an eye that did not change (stable eyes'
    visit pairs), and the confidence a change must reach."""

    change_sd: dict[str, float] = field(default_factory=lambda: {
        "vcdr": 0.06, "cup_area": 0.05, **{f"rim_{s}": 0.03 for s in SECTORS}})
    confidence: float = CONFIDENCE
    source: str = "built-in guesses (not measured)"

    @property
    def z(self) -> float:
        """One-sided: only a change towards worsening is called."""
        return NormalDist().inv_cdf(self.confidence)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "NoiseModel":
        if not d:
            return cls()
        return cls(change_sd={k: float(v) for k, v in (d.get("change_sd") or {}).items()} or cls().change_sd,
                   confidence=float(d.get("confidence", CONFIDENCE)), source=str(d.get("source", "")))


@dataclass(frozen=True)
class Change:
    """One measure, then and now, and whether the change towards worsening exceeds the noise."""

    measure: str
    then: float
    now: float
    noise_sd: float  # SD of a change between two photos of a stable eye, or this pair's own spread if larger
    limit: float  # the change (towards worsening) the noise reaches at the stated confidence
    exceeds: bool

    @property
    def change(self) -> float:
        return self.now - self.then

    @property
    def z(self) -> float:
        """The change towards worsening in units of its noise SD."""
        return WORSENING[self.measure] * self.change / self.noise_sd if self.noise_sd > 0 else 0.0

    def to_dict(self) -> dict:
        return {"measure": self.measure, "then": round(self.then, 4), "now": round(self.now, 4),
                "change": round(self.change, 4), "noise_sd": round(self.noise_sd, 4), "limit": round(self.limit, 4),
                "exceeds": self.exceeds}


def event(measure: str, then: Measured, now: Measured, noise: NoiseModel) -> Change | None:
    """Has `measure` worsened between the two visits by more than the noise allows at `noise.confidence`?"""
    a, b = then.values.get(measure), now.values.get(measure)
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return None
    own = math.sqrt(sum(s ** 2 for s in (then.spread.get(measure), now.spread.get(measure))
                        if s is not None and not math.isnan(s)))
    sd = max(noise.change_sd.get(measure, 0.0), own)
    limit = noise.z * sd
    return Change(measure, a, b, sd, limit, WORSENING[measure] * (b - a) > limit)


# two-sided 95% quantiles of Student's t for 1..10 degrees of freedom; past 10 a Cornish-Fisher expansion
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t_quantile(df: int, confidence: float = 0.95) -> float:
    """The two-sided `confidence` quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"a t quantile needs at least one degree of freedom, not {df}")
    if abs(confidence - 0.95) < 1e-9 and df <= len(_T975):
        return _T975[df - 1]
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


@dataclass(frozen=True)
class Trend:
    """The least-squares change per year across the visits, with its two-sided interval."""

    measure: str
    visits: int
    years: float  # from the first visit to the last
    slope: float
    low: float
    high: float
    confidence: float
    worsening: bool  # the whole interval lies on the side of worsening

    def to_dict(self) -> dict:
        return {"measure": self.measure, "visits": self.visits, "years": round(self.years, 3),
                "slope": round(self.slope, 4), "low": round(self.low, 4), "high": round(self.high, 4),
                "confidence": self.confidence, "worsening": self.worsening}


def trend(measure: str, years: Sequence[float], values: Sequence[float], single_sd: float | None = None,
          confidence: float = CONFIDENCE) -> Trend | None:
    """Slope per year with a `confidence` interval from Student's t on n - 2 degrees of freedom. The
    residual SD is never taken below `single_sd` (one measurement's known noise): three visits that happen
    to lie on a line do not make a trend certain. None with fewer than three visits or no time between them."""
    t = np.asarray(years, float)
    y = np.asarray(values, float)
    keep = ~np.isnan(y)
    t, y = t[keep], y[keep]
    if len(t) < 3:
        return None
    sxx = float(((t - t.mean()) ** 2).sum())
    if sxx <= 0:
        return None
    slope = float(((t - t.mean()) * (y - y.mean())).sum() / sxx)
    residual = y - (y.mean() + slope * (t - t.mean()))
    df = len(t) - 2
    sd = math.sqrt(float((residual ** 2).sum()) / df)
    if single_sd is not None:
        sd = max(sd, single_sd)
    half = t_quantile(df, confidence) * sd / math.sqrt(sxx)
    low, high = slope - half, slope + half
    worsening = low > 0 if WORSENING.get(measure, 1) > 0 else high < 0
    return Trend(measure, len(t), float(t.max() - t.min()), slope, low, high, confidence, worsening)
