"""Progression: has this eye's disc changed since the first visit the unit screened it at?

The eye is measured as a reader compares photos over time. Each earlier photo is aligned with today's
(`registration`: vessels matched, a similarity refined to an affine), every visit is outlined through
today's disc crop windows with a shared disc, and the vCDR, the cup area and the rim of each ISNT
quarter are compared (`change`). A change is called only where it exceeds what stable eyes show
between two visits at the policy's confidence (95%, one-sided: event analysis), in the vCDR or the cup
area; with three or more visits, also where the vCDR's trend has its whole interval above zero. An
alignment that fails is said, in words, and nothing is called: the eye doctor compares the photos.
With no earlier gradable visit there is nothing to compare, and the worker is told so.

A logistic model on the noise-scaled changes (`glaucoscreen fit-progression`, fitted on GRAPE's
training patients) decides beside the rule only where its validation AUC's 95% interval lies above
chance (`use_models`); otherwise its probability is not shown. The progression network's output is
kept for the reading centre, as research output, unless the policy gives it a weight.

Why the first visit and not the last: GRAPE's labels describe the whole follow-up, the change is
slow, and the longest interval carries the most signal for the same photo noise.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from device.screening.change import CALLED_ON, MEASURES, Change, Measured, NoiseModel, Outliner, Trend, event, measure_visits, registered_views, trend
from device.screening.referral import PolicyFile, sigmoid
from device.screening.registration import Registration, region_around_disc, register
from device.screening.result import Assessment, ScreeningResult
from device.screening.wording import N_
from models.runtime import preprocess, registry
from models.runtime.engine import Engine, EngineError, close_engine

PROGRESSION_POLICY = registry.ARTIFACTS / "progression.json"
CROP_SIZE = 160
MIN_YEARS = 0.25  # visits closer than three months show noise, not progression

PROGRESSING, STABLE, NO_HISTORY, TOO_RECENT = "progressing", "stable", "no_history", "too_recent"
NOT_ALIGNED = "not_aligned"
NO_DISC_LINED_UP = N_("no optic disc was found in the photos once lined up")
MAX_VISITS = 6  # the first visit and the latest ones: what a trend needs, in a time a small CPU allows
MESSAGES = {  # recorded in English, shown in the reader's language (device/screening/wording.py)
    PROGRESSING: N_("The optic disc has changed since the first visit: the eye doctor should compare the photos."),
    STABLE: N_("No change of the optic disc was found since the first visit."),
    NO_HISTORY: N_("No earlier photo of this eye to compare with."),
    TOO_RECENT: N_("The earlier photo of this eye is less than three months old: too soon to judge change. "
                   "Change is compared at a later visit."),
    NOT_ALIGNED: N_("The earlier photo of this eye could not be lined up with today's, so change was not measured: "
                    "the eye doctor should compare the photos."),
}


@dataclass
class ProgressionPolicy(PolicyFile):
    """What `glaucoscreen fit-progression` fitted: the noise of each change measure (from GRAPE's stable
    eyes), and a logistic model on the noise-scaled changes (`features`) that decides beside the
    rule only where `use_models` says its validation earned it."""

    coefficients: dict = field(default_factory=dict)  # feature -> weight, as `features` names them
    intercept: float = -2.0
    engine_coef: float = 0.0  # the progression network's logit weight; 0: kept for the reading centre only
    threshold: float = 0.5
    use_models: bool = False
    noise: dict = field(default_factory=dict)  # `NoiseModel.to_dict()`; empty: its built-in guesses
    fitted: bool = False
    operating_point: dict = field(default_factory=dict)
    source: str = "built-in defaults (not fitted)"

    @property
    def noise_model(self) -> NoiseModel:
        return NoiseModel.from_dict(self.noise)

    @property
    def needs_engine(self) -> bool:
        return self.use_models and self.engine_coef != 0

    def probability(self, features: dict[str, float], engine_logit: float | None = None) -> float:
        z = self.intercept + sum(w * features.get(k, 0.0) for k, w in self.coefficients.items())
        if engine_logit is not None:
            z += self.engine_coef * engine_logit
        return sigmoid(z)


def features(changes: list[Change]) -> dict[str, float]:
    """The model's inputs: each measure's change towards worsening in units of its noise (`z_<measure>`)."""
    return {f"z_{c.measure}": c.z for c in changes}


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
        self.engine_error: str | None = None  # why the shipped progression network is not loaded, if it is not

    @classmethod
    def from_artifacts(cls, threads: int | None = None, engine_cache: Path | None = None,
                       without_engine_if_refused: bool = False, artifacts: Path | None = None) -> "ProgressionAssessor":
        """The shipped network and policy. With `without_engine_if_refused`, a network that does not load (a
        TensorRT build that failed) leaves an assessor without it, where the policy gives the network no weight
        (`needs_engine` false); the reason is kept in `engine_error`."""
        artifacts = artifacts or registry.ARTIFACTS  # an installed version's folder, or the shipped one
        policy_file = artifacts / PROGRESSION_POLICY.name
        policy = ProgressionPolicy.load(policy_file) if policy_file.exists() else ProgressionPolicy()
        engine, error = None, None
        if "progression" in registry.manifest(artifacts):
            try:
                engine = registry.load_engine("progression", "fp32", artifacts, threads=threads, engine_cache=engine_cache)
            except EngineError as exc:
                if not without_engine_if_refused or policy.needs_engine:
                    raise
                error = str(exc)
        assessor = cls(engine, policy)
        assessor.engine_error = error
        return assessor

    def close(self) -> None:
        """Free what the network holds (a TensorRT engine's GPU memory and CUDA context)."""
        if self.engine is not None:
            close_engine(self.engine)

    def engine_logit(self, earlier: np.ndarray, current: np.ndarray, years: float) -> float | None:
        if self.engine is None:
            return None
        out = self.engine.run({"earlier": earlier, "current": current,
                               "years": np.array([[years]], dtype=np.float32)})
        return float(out["progression"].reshape(-1)[0])

    def assess(self, history: list[dict], read_photo: Callable[[str], np.ndarray], rgb: np.ndarray,
               result: dict, now: dt.datetime | None = None, *, outline: Outliner, eye: str | None = None) -> Assessment:
        """`history`: the eye's earlier results (`VisitLog.eye_history` rows with `result_json`), oldest
        first; `result`: this visit's `ScreeningResult.to_dict()`; `outline`: the segmentation's pass 2 on
        views already cut (`ScreeningPipeline.outline_views`); `eye`: "right" or "left", where known."""
        disc = result.get("disc")
        where = None if disc is None else (disc.get("cx"), disc.get("cy"), disc.get("vertical_diameter"))
        return self._compare(history, read_photo, rgb, bool(result.get("gradable")), where, result.get("vcdr"), now,
                             outline, macula_side(where, result.get("fovea"), eye))

    def assess_screening(self, history: EyeHistory, rgb: np.ndarray, result: ScreeningResult,
                         now: dt.datetime | None = None, *, outline: Outliner, eye: str | None = None) -> Assessment:
        """The progression step of a screening. This visit's disc and vCDR are rounded as the visit log
        stores them, so the eye is measured now exactly as its earlier visits were read back."""
        m = result.measurements
        where = vcdr = None
        if m is not None:
            where = (round(m.disc.cx, 2), round(m.disc.cy, 2), round(m.disc.vertical_diameter, 2))
            vcdr = round(m.vcdr, 4)
        return self._compare(history.visits, history.read_photo, rgb, result.gradable, where, vcdr, now, outline,
                             macula_side(where, result.fovea, eye))

    def _compare(self, history: list[dict], read_photo: Callable[[str], np.ndarray], rgb: np.ndarray, gradable: bool,
                 disc: tuple[float, float, float] | None, vcdr: float | None, now: dt.datetime | None,
                 outline: Outliner, side: int | None) -> Assessment:
        """`disc`: this photo's disc centre and vertical diameter, in its pixels; `side`: where the macula lies
        (`macula_side`)."""
        now = now or dt.datetime.now(dt.timezone.utc)
        usable = [(h, d) for h in history if h.get("gradable") and h.get("vcdr") is not None
                  and (d := json.loads(h["result_json"]).get("disc"))]
        first = next((k for k, (h, _) in enumerate(usable) if _years_between(h["time"], now) >= MIN_YEARS), None)
        if first is None and gradable and vcdr is not None:
            # an earlier photo there is, but too close in time for any change to show above the noise
            recent = next((h for h in history if h.get("gradable") and h.get("vcdr") is not None), None)
            if recent is not None:
                return Assessment(TOO_RECENT, MESSAGES[TOO_RECENT], recent["time"], _years_between(recent["time"], now))
        if not gradable or disc is None or vcdr is None or first is None:
            return Assessment(NO_HISTORY, MESSAGES[NO_HISTORY])
        # the first visit and the latest ones after it, oldest first; today's photo makes MAX_VISITS
        visits = [usable[first]] + usable[first + 1:][-(MAX_VISITS - 2):]
        earlier, then = visits[0]
        years = _years_between(earlier["time"], now)
        here = region_around_disc(*disc, rgb.shape)
        photos = [read_photo(h["photo_sha256"]) for h, _ in visits]
        regs = [register(photo, rgb, region_around_disc(d["cx"], d["cy"], d["vertical_diameter"], photo.shape), here)
                for photo, (_, d) in zip(photos, visits)]
        logit = None
        if self.engine is not None:
            before = crop_input(photos[0], then["cx"], then["cy"], then["vertical_diameter"])
            logit = self.engine_logit(before, crop_input(rgb, *disc), years)
        said = dict(compared_with=earlier["time"], years=years, engine_probability=None if logit is None else sigmoid(logit),
                    earlier_visit=earlier.get("visit_uuid"), earlier_photo=earlier.get("photo_sha256"))
        if not regs[0].aligned:
            return Assessment(NOT_ALIGNED, MESSAGES[NOT_ALIGNED], vcdr_then=earlier["vcdr"], vcdr_now=vcdr,
                              registration=_registration_record(regs[0], regs), **said)
        kept = [k for k, r in enumerate(regs) if r.aligned]
        box = preprocess.disc_crop_box(*disc, rgb.shape)
        measured = measure_visits(outline, registered_views(rgb, box, [(photos[k], regs[k]) for k in kept]), side)
        if measured is None:
            refused = Registration(None, regs[0].matches, regs[0].correlation, regs[0].overlap, NO_DISC_LINED_UP)
            return Assessment(NOT_ALIGNED, MESSAGES[NOT_ALIGNED], vcdr_then=earlier["vcdr"], vcdr_now=vcdr,
                              registration=_registration_record(refused, regs), **said)
        noise = self.policy.noise_model
        changes = [c for m in MEASURES if (c := event(m, measured[0], measured[-1], noise)) is not None]
        since_first = [years - _years_between(visits[k][0]["time"], now) for k in kept] + [years]
        vcdr_trend = trend("vcdr", since_first, [m.values["vcdr"] for m in measured],
                           noise.change_sd.get("vcdr", 0.0) / math.sqrt(2), noise.confidence)
        return self._decide(said, measured[0], measured[-1], changes, vcdr_trend, noise, logit,
                            _registration_record(regs[0], regs))

    def _decide(self, said: dict, then: Measured, now: Measured, changes: list[Change], vcdr_trend: Trend | None,
                noise: NoiseModel, logit: float | None, registration: dict) -> Assessment:
        """The rule (a change beyond the noise in a measure the verdict rests on, or a worsening trend) and,
        where the policy lets it decide, the model."""
        exceeds = any(c.exceeds for c in changes if c.measure in CALLED_ON) or bool(vcdr_trend and vcdr_trend.worsening)
        p = self.policy.probability(features(changes), logit)
        verdict = PROGRESSING if exceeds or (self.policy.use_models and p >= self.policy.threshold) else STABLE
        vcdr_then, vcdr_now = then.values["vcdr"], now.values["vcdr"]
        per_year = vcdr_trend.slope if vcdr_trend else (vcdr_now - vcdr_then) / said["years"]
        return Assessment(verdict, MESSAGES[verdict], vcdr_then=vcdr_then, vcdr_now=vcdr_now, vcdr_change_per_year=per_year,
                          probability=p if self.policy.use_models else None, exceeds_noise=exceeds,
                          confidence=noise.confidence, changes=[c.to_dict() for c in changes],
                          trend=None if vcdr_trend is None else vcdr_trend.to_dict(), registration=registration, **said)


def macula_side(disc: tuple[float, float, float] | None, fovea, eye: str | None) -> int | None:
    """+1 where the macula lies right of the disc in the photo, -1 left, None unknown: the fovea where the
    screening found it, else the eye (a right eye's disc lies right of its macula in an upright photo)."""
    if disc is not None and fovea is not None and fovea[0] is not None:
        return 1 if fovea[0] > disc[0] else -1
    return {"right": -1, "left": 1}.get(eye or "")


def _registration_record(first: Registration, all_visits: list[Registration]) -> dict:
    """The first visit's alignment, its matrix (for the kiosk's side-by-side view) and how many of the
    visits measured for the trend lined up."""
    out = first.to_dict()
    out["matrix"] = None if first.matrix is None else [[round(float(v), 6) for v in row] for row in first.matrix]
    out["visits_aligned"] = sum(r.aligned for r in all_visits)
    out["visits_tried"] = len(all_visits)
    return out
