"""Dice and AUC, the figures the training logs, the evaluation and the referral fit all report."""
import numpy as np
import pytest

from models.metrics import auc, dice


def test_auc_counts_ties_half_and_matches_pairwise_counting():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert abs(auc(labels, scores) - pairwise) < 1e-12
    assert auc([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.9, 0.8]) == 0.0
    assert auc([1, 0], [0.5, 0.5]) == 0.5
    assert auc([1, 1], [0.3, 0.4]) is None and auc([], []) is None
    with pytest.raises(ValueError, match="NaN"):
        auc([1, 0, 0], [float("nan"), 1.0, float("nan")])


def test_dice_of_masks():
    a = np.zeros((10, 10), np.uint8)
    b = np.zeros((10, 10), bool)
    assert dice(a, b) == 1.0  # nothing to find, nothing found
    a[2:6, 2:6] = 255
    b[4:8, 2:6] = True
    assert dice(a, b) == 2 * 8 / 32
    assert dice(a, a) == 1.0 and dice(a, np.zeros_like(a)) == 0.0
