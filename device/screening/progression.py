"""Progression: has this eye's disc changed since the first visit the unit screened it at?

Two opinions, fused by a logistic regression fitted on GRAPE's validation patients
(`glaucoscreen fit-progression`): the progression engine, which compares the two disc crops, and
the vertical cup-to-disc ratio's change per year. A cup that has grown by `vcdr_jump` or more is
called progressing whatever the models say, as a reader would. With no earlier gradable visit there
is nothing to compare, and the worker is told so rather than shown a number.

The fusion only decides when its fit earned it (`use_models`: the lower end of its validation AUC's
95% interval above chance). On GRAPE's few progressing eyes it has not, so today the verdict rests on
the vCDR rule alone, and the fused probability is kept in the record for the reading centre, not
shown as a decision.

Why the first visit and not the last: GRAPE's labels describe the whole follow-up, the change is
slow, and the longest interval carries the most signal for the same photo noise.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from device.screening.referral import PolicyFile, sigmoid
from models.runtime import preprocess, registry
from models.runtime.engine import Engine

if TYPE_CHECKING:
    from device.screening.result import ScreeningResult

PROGRESSION_POLICY = registry.ARTIFACTS / "progression.json"
CROP_SIZE = 160
MIN_YEARS = 0.25  # visits closer than three months show noise, not progression

PROGRESSING, STABLE, NO_HISTORY, TOO_RECENT = "progressing", "stable", "no_history", "too_recent"
MESSAGES = {
    PROGRESSING: "The optic disc has changed since the first visit: the eye doctor should compare the photos.",
    STABLE: "No change of the optic disc was found since the first visit.",
    NO_HISTORY: "No earlier photo of this eye to compare with.",
    TOO_RECENT: "The earlier photo of this eye is less than three months old: too soon to judge change. "
                "Change is compared at a later visit.",
}


@dataclass
class ProgressionPolicy(PolicyFile):
    engine_coef: float = 1.0
    slope_coef: float = 40.0  # per (vCDR per year)
    intercept: float = -1.0
    threshold: float = 0.5
    vcdr_jump: float = 0.1
    use_models: bool = False
    fitted: bool = False
    operating_point: dict = field(default_factory=dict)
    source: str = "built-in defaults (not fitted)"

    def probability(self, engine_logit: float | None, vcdr_slope: float | None) -> float:
        z = self.intercept
        if engine_logit is not None:
            z += self.engine_coef * engine_logit
        if vcdr_slope is not None:
            z += self.slope_coef * vcdr_slope
        return sigmoid(z)


@dataclass
class Assessment:
    verdict: str
    message: str
    compared_with: str | None = None  # when the earlier visit was
    years: float | None = None
    vcdr_then: float | None = None
    vcdr_now: float | None = None
    vcdr_change_per_year: float | None = None
    probability: float | None = None  # the fused probability, only where the policy lets it decide
    engine_probability: float | None = None  # the engine's own output, kept for the reading centre

    def to_dict(self) -> dict:
        out = asdict(self)
        for k in ("years", "vcdr_then", "vcdr_now", "vcdr_change_per_year", "probability", "engine_probability"):
            if out[k] is not None:
                out[k] = round(out[k], 4)
        return out

    @classmethod
    def from_dict(cls, stored: dict) -> "Assessment":
        """The verdict as a result's JSON keeps it; a field an older result lacks is None."""
        return cls(verdict=stored.get("verdict") or "", message=stored.get("message", ""),
                   **{k: stored.get(k) for k in ("compared_with", "years", "vcdr_then", "vcdr_now",
                                                 "vcdr_change_per_year", "probability", "engine_probability")})


@dataclass(frozen=True)
class EyeHistory:
    """The eye's earlier finished visits (`VisitLog.eye_history` rows, oldest first) and how to read their
    photos: gathered by whoever holds the visit log before the photo is screened, so that the screening
    compares and the write path afterwards only stores."""

    visits: list[dict]
    read_photo: Callable[[str], np.ndarray]


def crop_input(rgb: np.ndarray, cx: float, cy: float, diameter: float) -> np.ndarray:
    """The engine's input for one visit: the pass-2 disc crop (three disc diameters) at 160 px."""
    box = preprocess.disc_crop_box(cx, cy, diameter, rgb.shape)
    return preprocess.to_input(rgb, box, size=CROP_SIZE)


def _years_between(earlier: str, later: dt.datetime) -> float:
    then = dt.datetime.fromisoformat(earlier)
    if then.tzinfo is None:
        then = then.replace(tzinfo=dt.timezone.utc)
    return (later - then).total_seconds() / (365.25 * 86400)


class ProgressionAssessor:
    def __init__(self, engine: Engine | None, policy: ProgressionPolicy | None = None):
        self.engine = engine
        self.policy = policy or ProgressionPolicy()

    @classmethod
    def from_artifacts(cls, threads: int | None = None, engine_cache: Path | None = None) -> "ProgressionAssessor":
        engine = None
        if "progression" in registry.manifest():
            engine = registry.load_engine("progression", "fp32", threads=threads, engine_cache=engine_cache)
        policy = ProgressionPolicy.load(PROGRESSION_POLICY) if PROGRESSION_POLICY.exists() else ProgressionPolicy()
        return cls(engine, policy)

    def engine_logit(self, earlier: np.ndarray, current: np.ndarray, years: float) -> float | None:
        if self.engine is None:
            return None
        out = self.engine.run({"earlier": earlier, "current": current,
                               "years": np.array([[years]], dtype=np.float32)})
        return float(out["progression"].reshape(-1)[0])

    def assess(self, history: list[dict], read_photo: Callable[[str], np.ndarray], rgb: np.ndarray,
               result: dict, now: dt.datetime | None = None) -> Assessment:
        """`history`: the eye's earlier results (`VisitLog.eye_history` rows with `result_json`), oldest
        first; `result`: this visit's `ScreeningResult.to_dict()`."""
        disc = result.get("disc")
        where = None if disc is None else (disc.get("cx"), disc.get("cy"), disc.get("vertical_diameter"))
        return self._compare(history, read_photo, rgb, bool(result.get("gradable")), where, result.get("vcdr"), now)

    def assess_screening(self, history: EyeHistory, rgb: np.ndarray, result: ScreeningResult,
                         now: dt.datetime | None = None) -> Assessment:
        """The progression step of a screening. This visit's disc and vCDR are rounded as the visit log
        stores them, so the eye is measured now exactly as its earlier visits were read back."""
        m = result.measurements
        where = vcdr = None
        if m is not None:
            where = (round(m.disc.cx, 2), round(m.disc.cy, 2), round(m.disc.vertical_diameter, 2))
            vcdr = round(m.vcdr, 4)
        return self._compare(history.visits, history.read_photo, rgb, result.gradable, where, vcdr, now)

    def _compare(self, history: list[dict], read_photo: Callable[[str], np.ndarray], rgb: np.ndarray, gradable: bool,
                 disc: tuple[float, float, float] | None, vcdr: float | None, now: dt.datetime | None) -> Assessment:
        """`disc`: this photo's disc centre and vertical diameter, in its pixels."""
        now = now or dt.datetime.now(dt.timezone.utc)
        earlier, then = next(((h, d) for h in history if h.get("gradable") and h.get("vcdr") is not None
                              and _years_between(h["time"], now) >= MIN_YEARS
                              and (d := json.loads(h["result_json"]).get("disc"))), (None, None))
        if earlier is None and gradable and vcdr is not None:
            # an earlier photo there is, but too close in time for any change to show above the noise
            recent = next((h for h in history if h.get("gradable") and h.get("vcdr") is not None), None)
            if recent is not None:
                return Assessment(TOO_RECENT, MESSAGES[TOO_RECENT], recent["time"], _years_between(recent["time"], now))
        if not gradable or disc is None or vcdr is None or earlier is None:
            return Assessment(NO_HISTORY, MESSAGES[NO_HISTORY])
        assert then is not None  # found together with `earlier`
        years = _years_between(earlier["time"], now)
        slope = (vcdr - earlier["vcdr"]) / years
        logit = None
        if self.engine is not None:
            before = crop_input(read_photo(earlier["photo_sha256"]), then["cx"], then["cy"], then["vertical_diameter"])
            logit = self.engine_logit(before, crop_input(rgb, *disc), years)
        p = self.policy.probability(logit, slope)
        progressing = vcdr - earlier["vcdr"] >= self.policy.vcdr_jump or (self.policy.use_models and p >= self.policy.threshold)
        verdict = PROGRESSING if progressing else STABLE
        return Assessment(verdict, MESSAGES[verdict], earlier["time"], years, earlier["vcdr"], vcdr, slope,
                          p if self.policy.use_models else None, None if logit is None else sigmoid(logit))
