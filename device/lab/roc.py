"""ROC figures used to judge the glaucoma score and to pick the referral threshold."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.metrics import auc  # noqa: F401 - the unit's callers read it from here


def threshold_at_specificity(labels, scores, specificity: float = 0.9) -> float:
    """The lowest threshold whose specificity on these scores is at least `specificity`."""
    y = np.asarray(labels, bool)
    neg = np.sort(np.asarray(scores, float)[~y])
    if len(neg) == 0:
        raise ValueError("no negative (normal) cases to set a specificity on")
    k = int(np.ceil(specificity * len(neg))) - 1
    # scores >= threshold are referred; put the threshold just above the k-th normal score
    return float(np.nextafter(neg[k], np.inf))


def sensitivity_at_specificity(labels, scores, specificity: float = 0.9) -> float | None:
    y = np.asarray(labels, bool)
    if y.all() or not y.any():
        return None
    t = threshold_at_specificity(y, scores, specificity)
    return float((np.asarray(scores, float)[y] >= t).mean())


# ---------------------------------------------------------------- weighted figures, for the bootstrap
#
# A bootstrap resample draws some photos several times and others not at all; counting each photo
# `weight` times gives the resample's figure without building it. Weights are an n-vector or a B x n
# matrix (one row per resample), so all resamples are computed in a few matrix operations.

def _weighted_levels(labels, scores, weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normal weight per score level B x L, glaucoma weights B x P, their levels P)."""
    y = np.asarray(labels, bool)
    s = np.asarray(scores, float)
    w = np.atleast_2d(np.asarray(weights, float))
    if w.shape[1] != len(y):
        raise ValueError(f"{w.shape[1]} weights for {len(y)} photos")
    _, level = np.unique(s, return_inverse=True)
    n_levels = int(level.max()) + 1 if len(level) else 0
    one_hot = np.zeros((int((~y).sum()), n_levels))
    one_hot[np.arange(one_hot.shape[0]), level[~y]] = 1.0
    return w[:, ~y] @ one_hot, w[:, y], level[y]


def weighted_auc(labels, scores, weights) -> np.ndarray:
    """AUC (ties count half) with each photo counted `weights` times; NaN where a class weighs nothing.

    With all weights 1 this is `auc`."""
    normal_at, pos_w, pos_level = _weighted_levels(labels, scores, weights)
    below = np.cumsum(normal_at, axis=1) - normal_at
    wins = (pos_w * (below[:, pos_level] + 0.5 * normal_at[:, pos_level])).sum(axis=1)
    pairs = pos_w.sum(axis=1) * normal_at.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1), np.nan)


def weighted_sensitivity_at_specificity(labels, scores, weights, specificity: float = 0.9) -> np.ndarray:
    """`sensitivity_at_specificity` with each photo counted `weights` times (integer weights); NaN where
    a class weighs nothing. The threshold sits just above the k-th lowest normal score, as there."""
    normal_at, pos_w, pos_level = _weighted_levels(labels, scores, weights)
    cum = np.cumsum(normal_at, axis=1)
    n_normal = cum[:, -1] if cum.shape[1] else np.zeros(len(cum))
    need = np.ceil(specificity * n_normal)  # normal photos at or below the threshold's level
    kth_level = np.argmax(cum >= (need - 1e-9)[:, None], axis=1)
    detected = (pos_w * (pos_level[None, :] > kth_level[:, None])).sum(axis=1)
    total = pos_w.sum(axis=1)
    ok = (total > 0) & (n_normal > 0)
    return np.where(ok, detected / np.where(ok, total, 1), np.nan)


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, threshold) for `score >= threshold`, from (0, 0) to (1, 1)."""
    y = np.asarray(labels, bool)
    s = np.asarray(scores, float)
    thresholds = np.unique(s)[::-1]
    tp = np.array([(s[y] >= t).sum() for t in thresholds], float)
    fp = np.array([(s[~y] >= t).sum() for t in thresholds], float)
    n_pos, n_neg = max(1, int(y.sum())), max(1, int((~y).sum()))
    return (np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos], np.r_[np.inf, thresholds])


def operating_point(labels, scores, threshold: float) -> tuple[float | None, float | None]:
    """(sensitivity, specificity) of referring every photo whose score is at or above `threshold`."""
    y = np.asarray(labels, bool)
    s = np.asarray(scores, float)
    sens = float((s[y] >= threshold).mean()) if y.any() else None
    spec = float((s[~y] < threshold).mean()) if (~y).any() else None
    return sens, spec


# ---------------------------------------------------------------- the ROC figure
#
# Drawn with OpenCV (already on the unit) rather than a plotting library the unit does not carry.

CURVE_COLOURS = [(150, 60, 20), (20, 120, 230), (40, 150, 40), (140, 40, 150), (30, 30, 200), (120, 120, 0)]  # BGR
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK, _GRID, _DIAGONAL, _POINT = (40, 40, 40), (225, 225, 225), (150, 150, 150), (20, 20, 220)


@dataclass
class RocFigure:
    """Where the plot sits on the canvas, so marks land at the same (1 - specificity, sensitivity)."""

    left: int = 110
    top: int = 80
    side: int = 620
    bottom_margin: int = 90
    right_margin: int = 40

    @property
    def size(self) -> tuple[int, int]:
        return self.top + self.side + self.bottom_margin, self.left + self.side + self.right_margin

    def to_pixel(self, fpr: float, tpr: float) -> tuple[int, int]:
        return int(round(self.left + fpr * self.side)), int(round(self.top + (1.0 - tpr) * self.side))


def _text(img, text: str, org: tuple[int, int], scale: float = 0.5, colour=_INK, thick: int = 1, anchor: str = "left"):
    (w, h), _ = cv2.getTextSize(text, _FONT, scale, thick)
    x, y = org
    if anchor == "centre":
        x -= w // 2
    elif anchor == "right":
        x -= w
    cv2.putText(img, text, (x, y), _FONT, scale, colour, thick, cv2.LINE_AA)
    return w, h


def _dashed(img, a, b, colour, thick=1, dash=10, gap=7):
    a, b = np.asarray(a, float), np.asarray(b, float)
    length = float(np.hypot(*(b - a)))
    step = (b - a) / max(length, 1e-9)
    t = 0.0
    while t < length:
        p, q = a + step * t, a + step * min(t + dash, length)
        cv2.line(img, tuple(int(round(v)) for v in p), tuple(int(round(v)) for v in q), colour, thick, cv2.LINE_AA)
        t += dash + gap


def draw_roc(path, curves: list[dict], point: dict | None = None, title: str = "", subtitle: str = "",
             figure: RocFigure | None = None) -> np.ndarray:
    """Write a ROC figure as PNG and return it (BGR).

    `curves`: dicts with fpr, tpr and a legend line (`label`); the first is drawn thickest.
    `point`: the referral operating point, a dict with fpr, tpr and its `label`.
    """
    fig = figure or RocFigure()
    h, w = fig.size
    img = np.full((h, w, 3), 255, np.uint8)
    x0, y0 = fig.to_pixel(0, 0)
    x1, y1 = fig.to_pixel(1, 1)
    for i in range(11):
        v = i / 10
        gx, _ = fig.to_pixel(v, 0)
        _, gy = fig.to_pixel(0, v)
        cv2.line(img, (gx, y1), (gx, y0), _GRID, 1)
        cv2.line(img, (x0, gy), (x1, gy), _GRID, 1)
        if i % 2 == 0:
            cv2.line(img, (gx, y0), (gx, y0 + 6), _INK, 1)
            cv2.line(img, (x0 - 6, gy), (x0, gy), _INK, 1)
            _text(img, f"{v:.1f}", (gx, y0 + 24), anchor="centre")
            _text(img, f"{v:.1f}", (x0 - 10, gy + 5), anchor="right")
    cv2.rectangle(img, (x0, y1), (x1, y0), _INK, 1)
    _text(img, "1 - specificity (false positive rate)", ((x0 + x1) // 2, y0 + 56), 0.6, anchor="centre")
    label: np.ndarray = np.full((30, 420, 3), 255, np.uint8)
    _text(label, "sensitivity (true positive rate)", (210, 21), 0.6, anchor="centre")
    label = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
    top = (y1 + y0) // 2 - label.shape[0] // 2
    img[top:top + label.shape[0], 22:22 + label.shape[1]] = label
    if title:
        _text(img, title, (x0, 32), 0.7, thick=2)
    if subtitle:
        _text(img, subtitle, (x0, 58), 0.45, colour=(90, 90, 90))

    _dashed(img, (x0, y0), (x1, y1), _DIAGONAL, 1)
    _text(img, "chance", fig.to_pixel(0.62, 0.56), 0.45, colour=_DIAGONAL)
    sx, _ = fig.to_pixel(0.1, 0)
    _dashed(img, (sx, y0), (sx, y1), _DIAGONAL, 1, dash=3, gap=4)
    _text(img, "90% specificity", (sx + 6, y0 - 10), 0.45, colour=(110, 110, 110))  # below the curves, which hug the left

    for i, curve in reversed(list(enumerate(curves))):
        pts = np.array([fig.to_pixel(f, t) for f, t in zip(curve["fpr"], curve["tpr"])], np.int32)
        cv2.polylines(img, [pts], False, CURVE_COLOURS[i % len(CURVE_COLOURS)], 3 if i == 0 else 2, cv2.LINE_AA)

    if point is not None:
        # the label sits in a white box below and right of the point (where a ROC curve rarely runs),
        # tied to it by a leader line, so it stays legible over any curve
        px, py = fig.to_pixel(point["fpr"], point["tpr"])
        lines = point["label"].split("\n")
        tw = max(cv2.getTextSize(t, _FONT, 0.5, 1)[0][0] for t in lines)
        bw, bh = tw + 16, 22 * len(lines) + 8
        bx = px + 60 if px + 60 + bw < x1 - 4 else max(x0 + 4, px - 60 - bw)
        by = py + 70 if py + 70 + bh < y0 - 4 else max(y1 + 4, py - 70 - bh)
        cv2.line(img, (px, py), (bx if bx > px else bx + bw, by + bh // 2), _POINT, 1, cv2.LINE_AA)
        cv2.rectangle(img, (bx, by), (bx + bw, by + bh), (255, 255, 255), -1)
        cv2.rectangle(img, (bx, by), (bx + bw, by + bh), _POINT, 1)
        for k, t in enumerate(lines):
            _text(img, t, (bx + 8, by + 20 + 22 * k), 0.5, colour=_POINT)
        cv2.circle(img, (px, py), 8, _POINT, -1, cv2.LINE_AA)
        cv2.circle(img, (px, py), 9, (255, 255, 255), 2, cv2.LINE_AA)

    # legend, lower right inside the plot
    rows = [c["label"] for c in curves]
    width = max(cv2.getTextSize(r, _FONT, 0.5, 1)[0][0] for r in rows) + 50
    bottom = y0 - 28  # leaves the foot of the plot to the 90% specificity label
    lx, ly = x1 - width - 12, bottom - 6 - 24 * len(rows)
    cv2.rectangle(img, (lx - 8, ly - 8), (x1 - 8, bottom), (255, 255, 255), -1)
    cv2.rectangle(img, (lx - 8, ly - 8), (x1 - 8, bottom), (200, 200, 200), 1)
    for i, row in enumerate(rows):
        y = ly + 24 * i + 12
        cv2.line(img, (lx, y - 5), (lx + 30, y - 5), CURVE_COLOURS[i % len(CURVE_COLOURS)], 3 if i == 0 else 2, cv2.LINE_AA)
        _text(img, row, (lx + 40, y), 0.5)
    if path is not None:
        ok, png = cv2.imencode(".png", img)
        if not ok:
            raise OSError("PNG encoding failed")
        Path(path).write_bytes(png.tobytes())
    return img
