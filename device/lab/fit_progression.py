"""`glaucoscreen fit-progression`: measure GRAPE's eyes as the unit measures change, estimate the noise,
fit the progression decision on the training patients, check it on the validation patients and measure
it on the test patients, which nothing else has seen; and a 5-fold cross-validation by patient over all
of GRAPE's eyes, whose interval is narrower than that of the 8 progressing test eyes.

Each eye is measured as the unit measures it at its last visit (`device.screening.change`): every
earlier photo is registered onto the last one (GRAPE's photos are disc crops, so the whole crop is
matched), all are cut through the last photo's disc crop windows and outlined with a shared disc. The
noise of each measure is the spread of its change between consecutive visits of eyes that did not
progress (an upper bound: a stable visual field does not promise a disc that did not change at all).

The decision: a change that exceeds that noise at 95% confidence in the vCDR or the cup area, or a
vCDR trend whose interval lies above zero (three visits or more). Beside it a small logistic model on
the noise-scaled changes (features in `FEATURES`, coefficients kept non-negative in the worsening
direction) is fitted on the training patients; it may decide (`use_models`) only where its validation
AUC's 95% interval lies above 0.5. The progression network, trained on the training patients, is
measured on val and test as before and kept only on the same condition. Intervals resample patients.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.lab.evaluate import auc_interval, resample_weights
from device.lab.fit_referral import fit_logistic_features
from device.lab.repeatability import EYES, simulated_repeatability
from device.lab.roc import auc, threshold_at_specificity, weighted_auc
from device.screening.change import (
    CALLED_ON,
    MEASURES,
    VIEWS,
    WORSENING,
    Measured,
    NoiseModel,
    event,
    measure_visits,
    registered_views,
    trend,
)
from device.screening.measurements import measure
from device.screening.pipeline import ScreeningPipeline
from device.screening.progression import PROGRESSION_POLICY, ProgressionAssessor, ProgressionPolicy, crop_input
from device.screening.registration import Registration, register
from models.grape import Eye, patient_split, read_grape
from models.runtime import preprocess
from models.runtime.images import read_rgb
from models.runtime.preprocess import Box

GRAPE_DISC_FRACTION = 0.4  # GRAPE's crops are about 2.5 disc diameters wide
MACULA_SIDE = {"OD": -1, "OS": 1}  # in an upright photo the macula lies left of a right eye's disc
FEATURES = ("z_vcdr", "z_cup_area", "z_rim_superior", "z_rim_inferior")
FOLDS = 5
CV_SEED = 20240603


def disc_of_crop(pipeline: ScreeningPipeline, rgb: np.ndarray) -> tuple[dict, float] | None:
    """(disc centre and vertical diameter, vCDR) of a photo that is already a disc crop, or None."""
    h, w = rgb.shape[:2]
    guess = (w / 2.0, h / 2.0, GRAPE_DISC_FRACTION * min(h, w))
    for _ in range(2):  # the second pass is centred on the disc the first one found
        seg = pipeline.segment_disc(rgb, *guess)
        disc, cup = seg.masks()
        m = measure(disc, cup, scale=seg.scale, offset=(seg.box.x0, seg.box.y0))
        if m is None:
            return None
        guess = (m.disc.cx, m.disc.cy, m.disc.vertical_diameter)
    assert m is not None  # the loop ran (twice) and returned on a photo without a disc
    return {"cx": m.disc.cx, "cy": m.disc.cy, "vertical_diameter": m.disc.vertical_diameter}, m.vcdr


@dataclass(frozen=True)
class LinedUp:
    """An eye's photos in its last photo's frame: that photo's disc crop `box`, each earlier photo's
    registration onto it, the visits measured (`kept`: the aligned earlier ones, then the last) and their
    measures with a shared disc, in that order."""

    box: Box
    registrations: list[Registration]
    kept: list[int]
    measured: list[Measured]


def line_up(pipeline: ScreeningPipeline, photos: list[np.ndarray], disc: dict, laterality: str, views=VIEWS) -> LinedUp | None:
    """Register every earlier photo onto the last one (GRAPE's photos are disc crops: the whole crop is matched)
    and measure the aligned ones with it through the last photo's disc crop windows, as the unit measures a
    visit; `disc`: the last photo's disc (`disc_of_crop`). None where no disc is found once lined up."""
    current = photos[-1]
    box = preprocess.disc_crop_box(disc["cx"], disc["cy"], disc["vertical_diameter"], current.shape)
    regs = [register(rgb, current) for rgb in photos[:-1]]
    aligned = [k for k, r in enumerate(regs) if r.aligned]
    measured = measure_visits(pipeline.outline_views, registered_views(current, box, [(photos[k], regs[k]) for k in aligned], views),
                              MACULA_SIDE.get(laterality))
    if measured is None:
        return None
    return LinedUp(box, regs, aligned + [len(photos) - 1], measured)


def measure_eye(pipeline: ScreeningPipeline, assessor: ProgressionAssessor | None, eye: Eye,
                views=VIEWS) -> dict | None:
    """One eye's visits measured in its last visit's frame, as a JSON-ready row; None where the last photo
    shows no disc. Visits whose registration was refused are left out of the measures (kept in
    `registrations` with the reason)."""
    photos = [read_rgb(v.photo) for v in eye.visits]
    plain = [disc_of_crop(pipeline, rgb) for rgb in photos]  # each photo on its own, as before registration
    if plain[-1] is None:
        return None
    lined = line_up(pipeline, photos, plain[-1][0], eye.laterality, views)
    if lined is None:
        return None
    logit = None
    if assessor is not None and assessor.engine is not None and plain[0] is not None:
        crops = [crop_input(rgb, d["cx"], d["cy"], d["vertical_diameter"])
                 for rgb, (d, _) in ((photos[0], plain[0]), (photos[-1], plain[-1]))]
        logit = assessor.engine_logit(crops[0], crops[1], eye.visits[-1].years - eye.visits[0].years)
    return {"eye": eye.key, "patient": eye.patient, "progressed": eye.progressed,
            "years": [eye.visits[k].years for k in lined.kept],
            "values": [m.values for m in lined.measured], "spread": [m.spread for m in lined.measured],
            "registrations": [r.to_dict() for r in lined.registrations],
            "plain_vcdr": [None if p is None else p[1] for p in plain], "plain_years": [v.years for v in eye.visits],
            "engine_logit": logit}


# ---------------------------------------------------------------- noise

def stable_changes(rows: list[dict]) -> dict[str, list[float]]:
    """Each measure's change between consecutive measured visits of the eyes that did not progress."""
    out: dict[str, list[float]] = {m: [] for m in MEASURES}
    for r in rows:
        if r["progressed"]:
            continue
        for a, b in zip(r["values"][:-1], r["values"][1:]):
            for m in MEASURES:
                if not (math.isnan(a[m]) or math.isnan(b[m])):
                    out[m].append(b[m] - a[m])
    return out


def fit_noise(rows: list[dict], source: str) -> NoiseModel:
    """The root mean square of the stable eyes' changes: a change's SD, with any slow drift counted in."""
    changes = stable_changes(rows)
    sd = {m: float(np.sqrt(np.mean(np.square(v)))) for m, v in changes.items() if v}
    pairs = len(changes["vcdr"])
    return NoiseModel(change_sd=sd, source=f"{source}: {pairs} consecutive visit pairs of eyes that did not progress")


def repeatability(rows: list[dict]) -> dict:
    """Repeatability of the vCDR on consecutive visits of stable eyes: registered (shared disc) and as each
    photo was measured on its own. The coefficient is 1.96 SD of the change between two measurements."""
    registered = np.array(stable_changes(rows)["vcdr"])
    plain = []
    for r in rows:
        if r["progressed"]:
            continue
        v = [x for x in r["plain_vcdr"] if x is not None]
        plain += [b - a for a, b in zip(v[:-1], v[1:])]
    tta = [s["vcdr"] for r in rows for s in r["spread"] if not math.isnan(s["vcdr"])]

    def summary(d) -> dict:
        d = np.abs(np.asarray(d, float))
        return {"pairs": int(len(d)), "coefficient": round(1.96 * float(np.sqrt(np.mean(d ** 2))), 4) if len(d) else None,
                "median_abs_change": round(float(np.median(d)), 4) if len(d) else None,
                "p90_abs_change": round(float(np.percentile(d, 90)), 4) if len(d) else None}

    return {"vcdr_registered": summary(registered), "vcdr_unregistered": summary(plain),
            "vcdr_tta_sd_median": round(float(np.median(tta)), 4) if tta else None, "tta_views": len(VIEWS)}


def registration_summary(rows: list[dict]) -> dict:
    regs = [g for r in rows for g in r["registrations"]]
    aligned = [g for g in regs if g["aligned"]]
    corr = [g["correlation"] for g in aligned]
    return {"pairs": len(regs), "aligned": len(aligned),
            "correlation_median": round(float(np.median(corr)), 3) if corr else None,
            "correlation_p10": round(float(np.percentile(corr, 10)), 3) if corr else None,
            "matches_p10": int(np.percentile([g["matches"] for g in aligned], 10)) if aligned else None,
            "refused": [g["refusal"] for g in regs if not g["aligned"]][:10]}


# ---------------------------------------------------------------- features and decision

def eye_features(row: dict, noise: NoiseModel) -> dict:
    """First against last measured visit: each measure's change in units of its noise (positive =
    worsening), the shipped rule's verdict and the vCDR trend where there are three visits or more."""
    first, last = row["values"][0], row["values"][-1]
    out: dict = {"eye": row["eye"], "patient": row["patient"], "progressed": row["progressed"],
                 "visits": len(row["values"]), "years": row["years"][-1] - row["years"][0]}
    if len(row["values"]) < 2:
        out.update({f"z_{m}": 0.0 for m in MEASURES}, event=False, trend=None, called=False)
        return out
    a = Measured(first, row["spread"][0])
    b = Measured(last, row["spread"][-1])
    called = False
    for m in MEASURES:
        c = event(m, a, b, noise)
        out[f"z_{m}"] = 0.0 if c is None else c.z
        called |= bool(c is not None and c.exceeds and m in CALLED_ON)
    out["event"] = called
    single = noise.change_sd.get("vcdr", 0.0) / math.sqrt(2)
    tr = trend("vcdr", row["years"], [v["vcdr"] for v in row["values"]], single, noise.confidence)
    out["trend"] = None if tr is None else tr.to_dict()
    out["called"] = called or bool(tr is not None and tr.worsening)
    return out


def design(feats: list[dict]) -> np.ndarray:
    return np.array([[f[k] for k in FEATURES] for f in feats], float).reshape(len(feats), len(FEATURES))


def fit_model(feats: list[dict], l2: float = 1.0) -> tuple[list[str], list[float], float]:
    """Logistic regression on FEATURES; a feature whose coefficient comes out negative (a worsening that
    argues against progression: noise learned) is dropped and the fit repeated."""
    y = np.array([f["progressed"] for f in feats], float)
    names = list(FEATURES)
    while True:
        x = np.array([[f[k] for k in names] for f in feats], float).reshape(len(feats), len(names))
        w = fit_logistic_features(x, y, l2=l2)
        negative = [k for k, c in zip(names, w[:-1]) if c < 0]
        if not negative or len(names) == 1:
            return names, [float(c) for c in w[:-1]], float(w[-1])
        names.remove(negative[0])


def score(feats: list[dict], names: list[str], coef: list[float], intercept: float) -> np.ndarray:
    z = np.array([sum(c * f[k] for k, c in zip(names, coef)) + intercept for f in feats], float)
    return 1.0 / (1.0 + np.exp(-z))


def _rates(y: np.ndarray, called: np.ndarray) -> dict:
    return {"sensitivity": float(called[y == 1].mean()) if (y == 1).any() else None,
            "specificity": float((~called[y == 0]).mean()) if (y == 0).any() else None,
            "called_progressing": f"{int(called[y == 1].sum())} of {int((y == 1).sum())}",
            "called_stable": f"{int((~called[y == 0]).sum())} of {int((y == 0).sum())}"}


def _auc_figures(patients: list[str], y: np.ndarray, s: np.ndarray) -> dict:
    a = auc(y, s)
    ci = auc_interval(patients, y, s) if a is not None else None
    return {"auc": a, "auc_low": ci[0] if ci else None, "auc_high": ci[1] if ci else None}


def part_report(feats: list[dict], rows: list[dict], policy: ProgressionPolicy, names, coef, intercept) -> dict:
    y = np.array([f["progressed"] for f in feats], float)
    patients = [f["patient"] for f in feats]
    p = score(feats, names, coef, intercept)
    z = np.array([f["z_vcdr"] for f in feats], float)
    rule = np.array([f["called"] for f in feats], bool)
    verdict = rule | (p >= policy.threshold) if policy.use_models else rule
    shipped = p if policy.use_models else z  # the shipped opinion's score
    return {"eyes": len(feats), "patients": len(set(patients)), "progressing_eyes": int(y.sum()),
            **_auc_figures(patients, y, shipped), **_rates(y, verdict),
            "score": "logistic model" if policy.use_models else "vCDR change / its noise",
            "model": _auc_figures(patients, y, p), "model_rates": _rates(y, p >= policy.threshold),
            "vcdr_z": _auc_figures(patients, y, z), "rule": _rates(y, rule), "engine": engine_figures(rows)}


def engine_figures(rows: list[dict]) -> dict | None:
    """The progression network's AUC on the eyes it could compare (both photos with a disc found)."""
    scored = [r for r in rows if r["engine_logit"] is not None]
    if not scored:
        return None
    y = np.array([r["progressed"] for r in scored], float)
    return {"eyes": len(scored), **_auc_figures([r["patient"] for r in scored], y,
                                                np.array([r["engine_logit"] for r in scored], float))}


def grouped_folds(patients: list[str], labels: list[int], folds: int = FOLDS, seed: int = CV_SEED) -> list[int]:
    """A fold per eye, both eyes of a patient in one fold, patients with a progressing eye dealt out evenly."""
    by_patient: dict[str, int] = {}
    for p, y in zip(patients, labels):
        by_patient[p] = max(by_patient.get(p, 0), int(y))
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for label in (1, 0):
        group = sorted((p for p, y in by_patient.items() if y == label), key=lambda p: (len(p), p))
        for k, i in enumerate(rng.permutation(len(group))):
            fold_of[group[i]] = k % folds
    return [fold_of[p] for p in patients]


def cross_validate(rows: list[dict], folds: int = FOLDS, seed: int = CV_SEED, resamples: int = 1000) -> dict:
    """The whole fit (noise, model) on four folds, scored on the fifth: the mean of the five folds' AUCs and
    its 95% interval from resampling patients within each fold."""
    fold = grouped_folds([r["patient"] for r in rows], [r["progressed"] for r in rows], folds, seed)
    out: dict = {"folds": folds, "eyes": len(rows), "progressing_eyes": int(sum(r["progressed"] for r in rows))}
    per: dict[str, list] = {"model": [], "vcdr_z": []}
    boot: dict[str, list] = {"model": [], "vcdr_z": []}
    called, labels = [], []
    for k in range(folds):
        train = [r for r, f in zip(rows, fold) if f != k]
        test = [r for r, f in zip(rows, fold) if f == k]
        noise = fit_noise(train, "cross-validation")
        ftrain = [eye_features(r, noise) for r in train]
        ftest = [eye_features(r, noise) for r in test]
        names, coef, intercept = fit_model(ftrain)
        y = np.array([f["progressed"] for f in ftest], float)
        weights = resample_weights([f["patient"] for f in ftest], resamples, seed + k)
        for name, s in (("model", score(ftest, names, coef, intercept)), ("vcdr_z", np.array([f["z_vcdr"] for f in ftest]))):
            per[name].append(auc(y, s))
            boot[name].append(weighted_auc(y, s, weights))
        called += [f["called"] for f in ftest]
        labels += list(y)
    for name in per:
        b = np.nanmean(np.stack(boot[name]), axis=0)
        out[name] = {"auc": float(np.mean([a for a in per[name] if a is not None])),
                     "auc_low": float(np.nanpercentile(b, 2.5)), "auc_high": float(np.nanpercentile(b, 97.5)),
                     "fold_aucs": [None if a is None else round(a, 4) for a in per[name]]}
    out["rule"] = _rates(np.array(labels), np.array(called, bool))
    return out


def fit(pipeline: ScreeningPipeline, assessor: ProgressionAssessor | None, grape: Path, specificity: float = 0.8,
        out: Path | None = None, views=VIEWS, rows: list[dict] | None = None, simulated_eyes: int = EYES) -> dict:
    """Measure (or take the already measured `rows`), fit, and write the policy to `out` (default the shipped
    one); the report is what `--json-out` writes. `simulated_eyes`: how many simulated eyes are photographed
    repeatedly for the vCDR's repeatability (0: none)."""
    out = out or PROGRESSION_POLICY
    eyes = read_grape(grape)
    split = patient_split(eyes)
    if rows is None:
        rows = [r for r in (measure_eye(pipeline, assessor, e, views) for e in eyes if len(e.visits) >= 2) if r is not None]
    parts = {name: [r for r in rows if split[r["patient"]] == name] for name in ("train", "val", "test")}
    fitted_on = parts["train"] + parts["val"]
    noise = fit_noise(fitted_on, "GRAPE training and validation patients")
    feats = {name: [eye_features(r, noise) for r in part] for name, part in parts.items()}
    names, coef, intercept = fit_model(feats["train"])
    val_y = np.array([f["progressed"] for f in feats["val"]], float)
    val_p = score(feats["val"], names, coef, intercept)
    ci = auc_interval([f["patient"] for f in feats["val"]], val_y, val_p)
    versions = pipeline.model_versions
    policy = ProgressionPolicy(
        coefficients=dict(zip(names, coef)), intercept=intercept, threshold=threshold_at_specificity(val_y, val_p, specificity),
        use_models=bool(ci and ci[0] > 0.5), fitted=True, noise=noise.to_dict(),
        source=(f"progression fitted {dt.date.today().isoformat()} on GRAPE (noise: train+val stable eyes; model: train "
                f"patients; checked on val) with {versions.get('segmentation', '?')}"))
    engine_val = engine_figures(parts["val"])
    engine_ci = None if engine_val is None or engine_val["auc_low"] is None else [engine_val["auc_low"], engine_val["auc_high"]]
    report: dict = {"specificity_target": specificity}
    for name in ("val", "test"):
        report[name] = part_report(feats[name], parts[name], policy, names, coef, intercept)
    report["train"] = {"eyes": len(parts["train"]), "progressing_eyes": int(sum(r["progressed"] for r in parts["train"]))}
    policy.operating_point = {k: report["val"][k] for k in ("eyes", "progressing_eyes", "auc", "sensitivity", "specificity")}
    policy.save(out)
    report["cv"] = cross_validate(rows)
    report["cv"].update({k: report["cv"]["model" if policy.use_models else "vcdr_z"][k] for k in ("auc", "auc_low", "auc_high")})
    report["repeatability"] = {
        "simulated_eye": simulated_repeatability(pipeline, simulated_eyes, views=views) if simulated_eyes > 0 else None,
        "grape_stable_pairs": repeatability(fitted_on), "grape_stable_pairs_test": repeatability(parts["test"]),
        "noise_sd": noise.change_sd, "confidence": noise.confidence}
    report["registration"] = registration_summary(rows)
    report["policy"] = {"coefficients": policy.coefficients, "intercept": policy.intercept, "threshold": policy.threshold,
                        "use_models": policy.use_models, "val_auc_ci95": ci, "engine_val_auc_ci95": engine_ci,
                        "engine_kept": bool(engine_ci and engine_ci[0] > 0.5), "called_on": list(CALLED_ON),
                        "worsening": WORSENING}
    report["eyes"] = {name: feats[name] for name in ("train", "val", "test")}
    report["rows"] = rows
    return report
