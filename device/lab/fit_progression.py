"""`glaucoscreen fit-progression`: fit the progression fusion on GRAPE's validation patients, then
measure it on the test patients, which nothing else has seen.

Each eye is judged as the unit judges it: its first and last photos go through the screening
pipeline's pass 2 (GRAPE's photos are already disc crops, so pass 1 is replaced by a first pass 2
on the whole crop), giving each visit's vCDR and disc; the progression engine compares the two
disc crops. The fusion is a logistic regression on (engine logit, vCDR change per year) whose
coefficients may not be negative (a growing cup never argues against progression; a fit that says
so has learned noise, and that feature is dropped); its threshold is set at `specificity` on
validation. It is allowed to decide (`use_models`) only when its validation AUC's 95% interval lies
above 0.5. Confidence intervals resample patients. The vCDR rule's jump (`vcdr_jump`) is chosen on
the validation eyes too (`choose_vcdr_jump`) and reported beside it.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from device.lab.evaluate import auc_interval
from device.lab.fit_referral import fit_logistic_features
from device.lab.roc import auc, threshold_at_specificity
from device.screening.measurements import measure
from device.screening.pipeline import ScreeningPipeline
from device.screening.progression import PROGRESSION_POLICY, ProgressionAssessor, ProgressionPolicy, crop_input
from models.grape import Eye, patient_split, read_grape
from models.runtime import preprocess
from models.runtime.images import read_rgb

GRAPE_DISC_FRACTION = 0.4  # GRAPE's crops are about 2.5 disc diameters wide
JUMP_SPECIFICITY = 0.9  # share of stable validation eyes the vCDR rule must leave unflagged
JUMP_FLOOR, JUMP_STEP = 0.1, 0.05


def disc_of_crop(pipeline: ScreeningPipeline, rgb: np.ndarray) -> tuple[dict, float] | None:
    """(disc centre and vertical diameter, vCDR) of a photo that is already a disc crop, or None."""
    h, w = rgb.shape[:2]
    guess = (w / 2.0, h / 2.0, GRAPE_DISC_FRACTION * min(h, w))
    for _ in range(2):  # the second pass is centred on the disc the first one found
        seg = pipeline.segment_disc(rgb, *guess)
        disc, cup = seg.masks()
        m = measure(disc, cup, scale=seg.box.side / preprocess.INPUT_SIZE, offset=(seg.box.x0, seg.box.y0))
        if m is None:
            return None
        guess = (m.disc.cx, m.disc.cy, m.disc.vertical_diameter)
    assert m is not None  # the loop ran (twice) and returned on a photo without a disc
    return {"cx": m.disc.cx, "cy": m.disc.cy, "vertical_diameter": m.disc.vertical_diameter}, m.vcdr


def eye_features(pipeline: ScreeningPipeline, assessor: ProgressionAssessor, eye: Eye) -> dict | None:
    """Engine logit and vCDR slope between the eye's first and last photo."""
    first, last = eye.visits[0], eye.visits[-1]
    years = last.years - first.years
    if years <= 0:
        return None
    photos = [read_rgb(first.photo), read_rgb(last.photo)]
    found_first, found_last = [disc_of_crop(pipeline, rgb) for rgb in photos]
    if found_first is None or found_last is None:
        return None
    found = [found_first, found_last]
    crops = [crop_input(rgb, d["cx"], d["cy"], d["vertical_diameter"]) for rgb, (d, _) in zip(photos, found)]
    return {"eye": eye.key, "patient": eye.patient, "progressed": eye.progressed, "years": years,
            "vcdr_first": found[0][1], "vcdr_last": found[1][1],
            "vcdr_slope": (found[1][1] - found[0][1]) / years,
            "engine_logit": assessor.engine_logit(crops[0], crops[1], years)}


def choose_vcdr_jump(changes, progressed, specificity: float = JUMP_SPECIFICITY) -> float:
    """The smallest cup growth (vCDR, last minus first visit) the unit calls a change: a multiple of
    JUMP_STEP, at least JUMP_FLOOR, that leaves at least `specificity` of the stable eyes unflagged.

    Photo-to-photo noise of a measured vCDR is of the order of 0.1 (GRAPE's stable eyes move by 0.06
    from one visit to the next at the median, 0.15 to 0.25 at the 90th percentile), so a fixed 0.10
    flags many stable eyes. Graders read vCDR in steps of 0.05; the step keeps the choice from fitting
    the last decimal of a few dozen validation eyes."""
    changes = np.asarray(changes, float)
    stable = changes[~np.asarray(progressed, bool)]
    if len(stable) == 0:
        return JUMP_FLOOR
    jump = JUMP_FLOOR
    while (stable >= jump - 1e-9).mean() > 1.0 - specificity:
        jump += JUMP_STEP
    return round(jump, 4)


def fit(pipeline: ScreeningPipeline, assessor: ProgressionAssessor, grape: Path, specificity: float = 0.8,
        out: Path = PROGRESSION_POLICY) -> dict:
    eyes = read_grape(grape)
    split = patient_split(eyes)
    rows: dict[str, list[dict]] = {"val": [], "test": []}
    for eye in eyes:
        if split[eye.patient] in rows and len(eye.visits) >= 2:
            f = eye_features(pipeline, assessor, eye)
            if f is not None:
                rows[split[eye.patient]].append(f)

    def columns(part: str):
        r = rows[part]
        y = np.array([x["progressed"] for x in r], float)
        slope = np.array([x["vcdr_slope"] for x in r], float)
        logit = np.array([x["engine_logit"] if x["engine_logit"] is not None else 0.0 for x in r], float)
        return r, y, slope, logit

    val_rows, y, slope, logit = columns("val")
    have_engine = assessor.engine is not None
    use = {"engine": have_engine, "slope": True}
    while True:
        names = [k for k in ("engine", "slope") if use[k]]
        x = np.stack([{"engine": logit, "slope": slope}[k] for k in names], 1) if names else np.zeros((len(y), 0))
        w = fit_logistic_features(x, y, l2=1.0)
        negative = [k for k, c in zip(names, w[:-1]) if c < 0]
        if not negative:
            break
        use[negative[0]] = False
    coef = dict(zip(names, w[:-1]))
    policy = ProgressionPolicy(engine_coef=float(coef.get("engine", 0.0)), slope_coef=float(coef.get("slope", 0.0)),
                               intercept=float(w[-1]), fitted=True)
    val_p = np.array([policy.probability(lg if have_engine else None, s) for lg, s in zip(logit, slope)])
    policy.threshold = threshold_at_specificity(y, val_p, specificity)
    ci = auc_interval([r["patient"] for r in val_rows], y, val_p) if names else None
    policy.use_models = bool(ci and ci[0] > 0.5)
    policy.vcdr_jump = choose_vcdr_jump([x["vcdr_last"] - x["vcdr_first"] for x in val_rows], y)

    report: dict = {"specificity_target": specificity}
    for part in ("val", "test"):
        r, y, slope, logit = columns(part)
        fused = np.array([policy.probability(lg if have_engine else None, s) for lg, s in zip(logit, slope)])
        patients = [x["patient"] for x in r]
        called = fused >= policy.threshold
        jump = np.array([x["vcdr_last"] - x["vcdr_first"] >= policy.vcdr_jump for x in r])
        verdict = jump | (called if policy.use_models else False)
        report[part] = {
            "eyes": len(r), "patients": len(set(patients)), "progressing_eyes": int(y.sum()),
            "auc_fused": auc(y, fused), "auc_fused_ci95": auc_interval(patients, y, fused),
            "auc_engine": auc(y, logit) if have_engine else None,
            "auc_engine_ci95": auc_interval(patients, y, logit) if have_engine else None,
            "auc_vcdr_slope": auc(y, slope), "auc_vcdr_slope_ci95": auc_interval(patients, y, slope),
            "sensitivity": float(called[y == 1].mean()) if y.any() else None,
            "specificity": float((~called[y == 0]).mean()) if (y == 0).any() else None,
            "vcdr_jump_sensitivity": float(jump[y == 1].mean()) if y.any() else None,
            "vcdr_jump_specificity": float((~jump[y == 0]).mean()) if (y == 0).any() else None,
            "verdict_sensitivity": float(verdict[y == 1].mean()) if y.any() else None,
            "verdict_specificity": float((~verdict[y == 0]).mean()) if (y == 0).any() else None,
        }
    policy.operating_point = {k: report["val"][k] for k in ("eyes", "progressing_eyes", "auc_fused", "sensitivity",
                                                             "specificity")}
    versions = pipeline.model_versions
    policy.source = (f"progression fitted {dt.date.today().isoformat()} on GRAPE validation patients with "
                     f"{versions.get('progression', 'no engine')} and {versions.get('segmentation', '?')}")
    policy.save(out)
    report["policy"] = {"engine_coef": policy.engine_coef, "slope_coef": policy.slope_coef,
                        "intercept": policy.intercept, "threshold": policy.threshold, "use_models": policy.use_models,
                        "vcdr_jump": policy.vcdr_jump,
                        "features_kept": names, "val_auc_ci95": ci}
    report["eyes"] = rows
    return report
