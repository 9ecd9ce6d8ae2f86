"""`glaucoscreen fit-referral`: fit the vCDR regression and the referral threshold on validation photos.

Only the project's `val` split is used (never `test`), so the figures `evaluate` reports on the test
split stay honest. The result is `models/artifacts/screening.json`, shipped with the models.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from device.lab.evaluate import select
from device.lab.roc import auc, threshold_at_specificity
from device.screening.pipeline import SCREENING_POLICY, ScreeningPipeline
from device.screening.referral import ReferralPolicy
from models.datasets import read_dataset
from models.runtime.images import read_rgb


def fit_logistic_features(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 50) -> np.ndarray:
    """Logistic regression by Newton's method (a tiny ridge keeps it finite when separable); x is n x k,
    returns k coefficients and the intercept last."""
    x = np.asarray(x, float).reshape(len(y), -1)
    X = np.concatenate([x, np.ones((len(x), 1))], 1)
    w = np.zeros(X.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(X @ w, -60, 60)))
        g = X.T @ (p - y) + l2 * w
        H = X.T @ (X * (p * (1 - p))[:, None]) + l2 * np.eye(X.shape[1])
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 50) -> tuple[float, float]:
    """One-feature logistic regression: (coefficient, intercept)."""
    coef, intercept = fit_logistic_features(x, y, l2, iters)
    return float(coef), float(intercept)


def _auc(y: np.ndarray, scores: np.ndarray) -> float:
    value = auc(y, scores)
    assert value is not None  # fit() refuses validation photos without both classes
    return round(value, 4)


def measured_on(cameras: list[str], y: np.ndarray) -> dict[str, dict[str, int]]:
    """Photos and glaucomatous eyes per camera the threshold was fitted on: the kiosk and the model card
    say for which cameras the operating point was measured, because it does not carry to others."""
    out: dict[str, dict[str, int]] = {}
    for camera, label in zip(cameras, y):
        entry = out.setdefault(camera, {"photos": 0, "glaucoma": 0})
        entry["photos"] += 1
        entry["glaucoma"] += int(label)
    return out


def fit(pipeline: ScreeningPipeline, data: list[Path], specificity: float = 0.9, out: Path = SCREENING_POLICY) -> dict:
    rows = []
    cameras: list[str] = []  # the camera of each row: the operating point holds for these and no others
    for folder in data:
        for rec in select(Path(folder), read_dataset(folder), "val"):
            if rec.glaucoma is None:
                continue
            result = pipeline.screen(read_rgb(rec.image_path))
            if result.measurements is None:
                continue  # no disc found: nothing to learn the fusion from
            seg = result.segmentation
            assert seg is not None  # the measurements are taken from the segmentation
            rows.append((result.vcdr, seg.glaucoma_logit, seg.disc_classifier_logit, rec.glaucoma))
            source = rec.source or Path(folder).name
            cameras.append(f"{source}, {rec.camera}" if rec.camera else source)
    if not rows:
        raise SystemExit("no labelled validation photos found: pass the shared data folders with --data")
    with_classifier = all(r[2] is not None for r in rows)
    vcdr, logit, y = (np.array(c, float) for c in zip(*[(r[0], r[1], r[3]) for r in rows]))
    if y.all() or not y.any():
        raise SystemExit("the validation photos must include both glaucoma and normal eyes to fit a referral policy")
    second = np.array([r[2] for r in rows], float) if with_classifier else None
    coef, intercept = fit_logistic(vcdr, y)
    policy = ReferralPolicy(vcdr_coef=coef, vcdr_intercept=intercept, fitted=True,
                            uses_disc_classifier=with_classifier)
    fused = np.array([policy.fuse(lg, v, None if second is None else second[i])
                      for i, (lg, v) in enumerate(zip(logit, vcdr))])
    policy.refer_threshold = threshold_at_specificity(y, fused, specificity)
    sens = float((fused[y == 1] >= policy.refer_threshold).mean())
    policy.operating_point = {
        "specificity_target": specificity,
        "sensitivity_val": round(sens, 4),
        "auc_val": _auc(y, fused),
        "auc_val_vcdr_only": _auc(y, vcdr),
        "auc_val_classifier_only": _auc(y, logit),
        "auc_val_disc_classifier_only": None if second is None else _auc(y, second),
        "n_val": int(len(y)),
        "n_val_glaucoma": int(y.sum()),
        "cameras": measured_on(cameras, y),
    }
    stamp = dt.date.today().isoformat()
    policy.source = f"referral fitted {stamp} on val split of {', '.join(Path(d).name for d in data)} with {pipeline.model_versions.get('segmentation', '?')}"
    policy.save(out)
    return policy.operating_point | {"refer_threshold": policy.refer_threshold, "vcdr_coef": coef, "vcdr_intercept": intercept}
