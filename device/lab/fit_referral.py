"""`glaucoscreen fit-referral`: fit the vCDR regression and the referral threshold on validation photos.

Only the project's `val` split is used (never `test`), so the figures `evaluate` reports on the test
split stay honest. The result is `models/artifacts/screening.json`, shipped with the models.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from device.lab.evaluate import select
from device.lab.roc import auc, threshold_at_specificity
from device.screening.pipeline import SCREENING_POLICY, ScreeningPipeline
from device.screening.referral import DISC_CLASSIFIER, OPINIONS, SEGMENTATION, VCDR, ReferralPolicy
from models.datasets import Record, read_dataset
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


@dataclass
class Opinions:
    """Each photo's opinions, as the fusion sees them (logits, the vCDR), with its label and camera."""

    vcdr: list[float] = field(default_factory=list)
    segmentation: list[float] = field(default_factory=list)
    disc_classifier: list[float | None] = field(default_factory=list)
    glaucoma: list[int] = field(default_factory=list)
    camera: list[str] = field(default_factory=list)

    def add(self, pipeline: ScreeningPipeline, rec: Record, folder: Path) -> None:
        result = pipeline.screen(read_rgb(rec.image_path))
        if result.measurements is None or result.vcdr is None:
            return  # no disc found: nothing to learn the fusion from
        seg = result.segmentation
        assert seg is not None  # the measurements are taken from the segmentation
        self.vcdr.append(result.vcdr)
        self.segmentation.append(seg.glaucoma_logit)
        self.disc_classifier.append(seg.disc_classifier_logit)
        self.glaucoma.append(int(rec.glaucoma or 0))
        source = rec.source or folder.name
        self.camera.append(f"{source}, {rec.camera}" if rec.camera else source)

    def probabilities(self, policy: ReferralPolicy) -> np.ndarray:
        return np.array([policy.fuse(s, v, d) for s, v, d in zip(self.segmentation, self.vcdr, self.disc_classifier)])


def read_opinions(pipeline: ScreeningPipeline, data: list[Path], split: str | None, labelled: bool) -> Opinions:
    out = Opinions()
    for folder in data:
        for rec in select(Path(folder), read_dataset(folder), split):
            if labelled and rec.glaucoma is None:
                continue
            out.add(pipeline, rec, Path(folder))
    return out


def referred_elsewhere(policy: ReferralPolicy, val: Opinions, other: Opinions, specificity: float) -> dict[str, dict[str, float]]:
    """For each opinion alone and for the policy's mean: the share of each other camera's photos it would
    refer at its own threshold for `specificity` on val. The other cameras' photos carry no glaucoma
    labels, but every opinion sees the same eyes, so at equal specificity on val an opinion that refers
    more of them refers more normal eyes there: it moved with the camera. That is the evidence for
    which opinions the policy averages."""
    y = np.array(val.glaucoma)
    choices = {name: [name] for name in OPINIONS} | {"all": list(OPINIONS), "policy": list(policy.fused_opinions())}
    out: dict[str, dict[str, float]] = {}
    for label, names in choices.items():
        if DISC_CLASSIFIER in names and None in val.disc_classifier:
            continue
        alone = replace(policy, opinions=names)
        threshold = threshold_at_specificity(y, val.probabilities(alone), specificity)
        scores = other.probabilities(alone)
        out[label] = {camera: round(float(np.mean([s >= threshold for s, c in zip(scores, other.camera) if c == camera])), 3)
                      for camera in sorted(set(other.camera))}
    return out


def fit(pipeline: ScreeningPipeline, data: list[Path], specificity: float = 0.9, out: Path = SCREENING_POLICY,
        opinions: tuple[str, ...] = (VCDR, SEGMENTATION, DISC_CLASSIFIER), elsewhere: list[Path] | None = None) -> dict:
    """Fit on the val split of `data`; with `elsewhere` (photos of other cameras, unlabelled), also report
    how many of those each opinion would refer (`referred_elsewhere`)."""
    val = read_opinions(pipeline, data, "val", labelled=True)
    if not val.glaucoma:
        raise SystemExit("no labelled validation photos found: pass the shared data folders with --data")
    y = np.array(val.glaucoma, float)
    if y.all() or not y.any():
        raise SystemExit("the validation photos must include both glaucoma and normal eyes to fit a referral policy")
    with_classifier = None not in val.disc_classifier
    if DISC_CLASSIFIER in opinions and not with_classifier:
        raise SystemExit("the disc classifier is not installed: fit without it (--opinions)")
    vcdr = np.array(val.vcdr)
    coef, intercept = fit_logistic(vcdr, y)
    policy = ReferralPolicy(vcdr_coef=coef, vcdr_intercept=intercept, fitted=True,
                            uses_disc_classifier=DISC_CLASSIFIER in opinions, opinions=list(opinions))
    fused = val.probabilities(policy)
    policy.refer_threshold = threshold_at_specificity(y, fused, specificity)
    sens = float((fused[y == 1] >= policy.refer_threshold).mean())
    policy.operating_point = {
        "specificity_target": specificity,
        "sensitivity_val": round(sens, 4),
        "auc_val": _auc(y, fused),
        "auc_val_vcdr_only": _auc(y, vcdr),
        "auc_val_classifier_only": _auc(y, np.array(val.segmentation)),
        "auc_val_disc_classifier_only": _auc(y, np.array(val.disc_classifier, float)) if with_classifier else None,
        "n_val": int(len(y)),
        "n_val_glaucoma": int(y.sum()),
        "cameras": measured_on(val.camera, y),
    }
    if elsewhere:
        other = read_opinions(pipeline, elsewhere, None, labelled=False)
        policy.operating_point["referred_on_other_cameras"] = referred_elsewhere(policy, val, other, specificity)
    stamp = dt.date.today().isoformat()
    policy.source = f"referral fitted {stamp} on val split of {', '.join(Path(d).name for d in data)} with {pipeline.model_versions.get('segmentation', '?')}"
    policy.save(out)
    return policy.operating_point | {"opinions": list(opinions), "refer_threshold": policy.refer_threshold,
                                     "vcdr_coef": coef, "vcdr_intercept": intercept}
