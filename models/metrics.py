"""The two figures every part of the project judges a model by: Dice of a mask and ROC AUC of a score.

One definition for training's validation, the unit's evaluation and the referral fit, so a figure
in a training log and one in the model card mean the same thing. `models` holds it because the
unit may import the models package but not the other way round.
"""
from __future__ import annotations

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (any truthy pixel is in the mask); two empty masks agree fully."""
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * (a & b).sum() / total)


def auc(labels, scores) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None without both classes."""
    y = np.asarray(labels, bool)
    s = np.asarray(scores, float)
    if np.isnan(s).any():
        raise ValueError("a score is NaN: leave unscored cases out before computing an AUC")
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return None
    ranks = _midranks(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return ((last - counts + 1 + last) / 2.0)[inverse]
