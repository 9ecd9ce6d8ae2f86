"""Change measured against its noise: the event call at a stated confidence, the trend's interval, and the
measures of a shared disc."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from device.screening.change import Measured, NoiseModel, event, measure_shared_disc, t_quantile, trend

NOISE = NoiseModel(change_sd={"vcdr": 0.04, "cup_area": 0.03, "rim_inferior": 0.02}, confidence=0.95)


def visit(vcdr: float, spread: float = 0.0, **more: float) -> Measured:
    values = {"vcdr": vcdr, **more}
    return Measured(values, {k: spread for k in values})


def test_a_change_is_called_only_beyond_the_noise_at_the_stated_confidence():
    limit = 1.6449 * 0.04  # one-sided 95%: 0.0658
    assert NOISE.z == pytest.approx(1.6449, abs=1e-4)
    within = event("vcdr", visit(0.50), visit(0.56), NOISE)
    beyond = event("vcdr", visit(0.50), visit(0.57), NOISE)
    assert within.limit == pytest.approx(limit, abs=1e-4) and not within.exceeds
    assert beyond.exceeds and beyond.change == pytest.approx(0.07) and beyond.z == pytest.approx(0.07 / 0.04)
    # a smaller cup is not progression, however large the change
    assert not event("vcdr", visit(0.60), visit(0.40), NOISE).exceeds
    # a stricter confidence needs a larger change
    strict = NoiseModel(change_sd=NOISE.change_sd, confidence=0.99)
    assert not event("vcdr", visit(0.50), visit(0.57), strict).exceeds


def test_an_unsteady_outline_raises_the_bar_for_that_pair():
    """The views of each photo disagree by 0.05 (SD): the pair's own noise, sqrt(2) * 0.05, exceeds the stable
    eyes' 0.04, so 0.07 is no longer beyond it."""
    c = event("vcdr", visit(0.50, spread=0.05), visit(0.57, spread=0.05), NOISE)
    assert c.noise_sd == pytest.approx(0.05 * math.sqrt(2)) and not c.exceeds


def test_the_rim_worsens_downwards():
    then, thinner = visit(0.5, rim_inferior=0.20), visit(0.5, rim_inferior=0.15)
    assert event("rim_inferior", then, thinner, NOISE).exceeds  # lost 0.05 > 1.645 * 0.02
    assert not event("rim_inferior", thinner, then, NOISE).exceeds
    assert event("rim_inferior", then, visit(0.5), NOISE) is None  # not measured now: nothing to say


def test_the_noise_model_reads_back_what_it_wrote():
    again = NoiseModel.from_dict(NOISE.to_dict())
    assert again == NOISE
    assert NoiseModel.from_dict(None).change_sd["vcdr"] > 0  # an unfitted policy still has a noise to compare with


def test_t_quantiles():
    assert t_quantile(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(20) == pytest.approx(2.086, abs=2e-3)  # past the table, the expansion
    assert t_quantile(200) == pytest.approx(1.972, abs=2e-3)
    with pytest.raises(ValueError, match="degree of freedom"):
        t_quantile(0)


def test_the_trend_is_a_slope_with_its_interval():
    years = [0.0, 1.0, 2.0, 3.0, 4.0]
    values = [0.50, 0.53, 0.54, 0.58, 0.59]
    tr = trend("vcdr", years, values)
    # by hand: slope 0.023 a year; residuals -0.002, 0.005, -0.008, 0.009, -0.004 (sum of squares 0.00019) on 3
    # degrees of freedom; sxx 10
    assert tr.slope == pytest.approx(0.023)
    half = 3.182 * math.sqrt(0.00019 / 3) / math.sqrt(10)
    assert (tr.low, tr.high) == pytest.approx((0.023 - half, 0.023 + half), abs=1e-4)
    assert tr.worsening and tr.visits == 5 and tr.years == 4.0
    # the same slope over three visits that happen to lie on a line: the known noise keeps the interval honest
    exact = trend("vcdr", [0.0, 1.0, 2.0], [0.50, 0.52, 0.54], single_sd=0.03)
    assert exact.low < 0 < exact.high and not exact.worsening
    assert exact.high - exact.low == pytest.approx(2 * 12.706 * 0.03 / math.sqrt(2), rel=1e-3)


def test_no_trend_from_two_visits_or_from_one_day():
    assert trend("vcdr", [0.0, 2.0], [0.5, 0.6]) is None
    assert trend("vcdr", [1.0, 1.0, 1.0], [0.5, 0.6, 0.7]) is None
    assert trend("vcdr", [0.0, 1.0, 2.0, 3.0], [0.5, math.nan, 0.6, 0.7]).visits == 3


def test_a_thinning_rim_is_a_negative_trend():
    tr = trend("rim_inferior", [0.0, 1.0, 2.0, 3.0], [0.20, 0.17, 0.14, 0.11])
    assert tr.slope == pytest.approx(-0.03) and tr.worsening


def _disc_and_cup(disc_radius: int, cup: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    d = np.zeros((200, 200), np.float32)
    c = np.zeros((200, 200), np.float32)
    cv2.circle(d, (100, 100), disc_radius, 1.0, -1)
    cv2.ellipse(c, (100, 100), cup, 0, 0, 360, 1.0, -1)
    return d, c


def test_the_cup_of_each_visit_is_measured_in_the_disc_they_share():
    """Two visits whose disc outlines disagree by 4 px of radius: both are measured in the mean disc, so the
    vCDR's change is the cup's alone."""
    d1, c1 = _disc_and_cup(60, (30, 30))
    d2, c2 = _disc_and_cup(64, (30, 40))  # the cup grew upwards and downwards
    rows = measure_shared_disc([d1, d2], [c1, c2], macula_side=-1)
    shared = 0.5 * (d1 + d2) >= 0.5  # the disc of radius 60
    height = shared.sum(axis=0).max()
    assert rows[0]["vcdr"] == pytest.approx(61 / height, abs=0.01)
    assert rows[1]["vcdr"] == pytest.approx(81 / height, abs=0.01)
    area = shared.sum()
    assert rows[0]["cup_area"] == pytest.approx(c1.sum() / area, abs=0.01)
    # the cup grew up and down: the superior and inferior rims thinned, the nasal and temporal ones far less
    # (only where the taller cup crosses into their quarters near the diagonals)
    loss = {s: rows[0][f"rim_{s}"] - rows[1][f"rim_{s}"] for s in ("superior", "inferior", "nasal", "temporal")}
    assert min(loss["superior"], loss["inferior"]) > 0.03
    assert max(loss["nasal"], loss["temporal"]) < min(loss["superior"], loss["inferior"]) / 3
    # the four quarters' rims and the cup make up the disc
    assert sum(rows[0][f"rim_{s}"] for s in ("superior", "inferior", "nasal", "temporal")) + rows[0]["cup_area"] == pytest.approx(1.0)


def test_without_knowing_where_the_macula_is_nasal_and_temporal_are_not_guessed():
    d, c = _disc_and_cup(60, (30, 30))
    rows = measure_shared_disc([d], [c], macula_side=None)
    assert math.isnan(rows[0]["rim_nasal"]) and math.isnan(rows[0]["rim_temporal"])
    assert rows[0]["rim_superior"] > 0
    assert measure_shared_disc([np.zeros_like(d)], [c], macula_side=1) is None
