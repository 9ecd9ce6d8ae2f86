"""ROC figures used to judge the glaucoma score and to pick the referral threshold."""
from __future__ import annotations

import numpy as np


def auc(labels, scores) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None without both classes."""
    y = np.asarray(labels, bool)
    s = np.asarray(scores, float)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return None
    ranks = _ranks(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


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


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks
