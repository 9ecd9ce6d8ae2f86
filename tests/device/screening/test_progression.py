"""Progression against the eye's earlier visit, on a real visit log with the shipped engines."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from device.screening.pipeline import ScreeningPipeline
from device.screening.progression import NO_HISTORY, PROGRESSING, STABLE, TOO_RECENT, EyeHistory, ProgressionAssessor, ProgressionPolicy
from device.visits.recording import eye_history, record_eye
from device.visits.visitlog import VisitLog
from models.runtime.images import decode_rgb
from models.synthetic import progress, random_eye, render


@pytest.fixture(scope="module")
def pipeline():
    return ScreeningPipeline.from_artifacts(precision="fp32")


@pytest.fixture(scope="module")
def assessor():
    return ProgressionAssessor.from_artifacts()


def _photo(eye, years, rate, seed):
    return render(progress(eye, years, rate=rate), (768, 768), seed=seed).image


def _first_visit(visits, pipeline, rgb, assessor):
    visits.add_patient("P-1")
    uuid = visits.start_visit("P-1")
    result = pipeline.screen(rgb, history=eye_history(visits, "P-1", "right"), progression=assessor)
    record_eye(visits, uuid, "right", rgb, result)
    assert result.progression.verdict == NO_HISTORY  # nothing to compare with yet
    stored = visits.get_visit(uuid)["eyes"]["right"]["result"]["screening"]
    assert stored["progression"] == result.progression.to_dict()
    visits.finalize_visit(uuid)
    return result


def test_a_grown_cup_is_called_progressing_and_the_same_disc_stable(tmp_path, pipeline, assessor):
    eye = random_eye(5, glaucoma=False)
    baseline = _photo(eye, 0.0, 0.0, seed=1)
    with VisitLog(tmp_path) as visits:
        first = _first_visit(visits, pipeline, baseline, assessor)
        history = visits.eye_history("P-1", "right")
        later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3 * 365)

        def read(sha):
            return decode_rgb(visits.images.get(sha))

        grown = _photo(eye, 3.0, 0.08, seed=2)  # +0.24 vCDR over three years
        screened = pipeline.screen(grown)
        now = screened.to_dict()
        assert now["vcdr"] - first.vcdr > 0.12  # the segmentation sees the larger cup
        a = assessor.assess(history, read, grown, now, now=later)
        # the screening's own step reads the typed result as the stored JSON would be read
        assert assessor.assess_screening(EyeHistory(history, read), grown, screened, now=later) == a
        assert a.verdict == PROGRESSING and a.years == pytest.approx(3.0, abs=0.01)
        assert a.vcdr_change_per_year > 0.03 and a.vcdr_then == pytest.approx(first.vcdr, abs=1e-3)
        assert a.engine_probability is not None and 0.0 < a.engine_probability < 1.0  # the engine ran on both crops

        same = _photo(eye, 0.0, 0.0, seed=3)  # the same disc, another photo
        b = assessor.assess(history, read, same, pipeline.screen(same).to_dict(), now=later)
        assert b.verdict == STABLE and abs(b.vcdr_now - b.vcdr_then) < 0.1


def test_a_visit_too_soon_after_the_first_says_it_is_too_soon_to_judge(tmp_path, pipeline, assessor):
    eye = random_eye(6, glaucoma=True)
    with VisitLog(tmp_path) as visits:
        _first_visit(visits, pipeline, _photo(eye, 0.0, 0.0, seed=1), assessor)
        visits.start_visit("P-1")  # open, so not among the eye's history
        rgb = _photo(eye, 0.0, 0.0, seed=4)
        history = eye_history(visits, "P-1", "right")
        a = pipeline.screen(rgb, history=history, progression=assessor).progression  # minutes later
        assert a.verdict == TOO_RECENT and a.years is not None and a.years < 0.01
        assert "too soon to judge change" in a.message and "No earlier photo" not in a.message
        assert a.vcdr_then is None and a.probability is None  # nothing was compared


def test_the_fusion_decides_only_where_the_policy_allows_it():
    policy = ProgressionPolicy(engine_coef=1.0, slope_coef=0.0, intercept=0.0, threshold=0.6, use_models=False)
    assessor = ProgressionAssessor(engine=None, policy=policy)
    rgb = np.zeros((64, 64, 3), np.uint8)
    history = [{"time": "2020-01-01T00:00:00+00:00", "gradable": True, "vcdr": 0.5, "photo_sha256": "x",
                "result_json": '{"disc": {"cx": 32, "cy": 32, "vertical_diameter": 10}}'}]
    result = {"gradable": True, "vcdr": 0.55, "disc": {"cx": 32, "cy": 32, "vertical_diameter": 10}}
    now = dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)
    assert assessor.assess(history, None, rgb, result, now=now).verdict == STABLE
    assert assessor.assess(history, None, rgb, {**result, "vcdr": 0.62}, now=now).verdict == PROGRESSING  # the jump
    policy.intercept, policy.use_models = 5.0, True
    a = assessor.assess(history, None, rgb, result, now=now)
    assert a.verdict == PROGRESSING and a.probability > 0.99


def test_the_vcdr_jump_is_the_smallest_step_that_spares_the_stable_eyes():
    from device.lab.fit_progression import JUMP_FLOOR, choose_vcdr_jump

    quiet = [0.0, 0.02, -0.05, 0.04, 0.03, -0.01, 0.06, 0.01, 0.0, 0.05]
    # a progressing eye's growth does not count against the rule, and it never goes below the reader's 0.10
    assert choose_vcdr_jump(quiet + [0.3], [False] * 10 + [True]) == JUMP_FLOOR
    # 3 of 13 stable eyes grew by 0.10 or more (77% unflagged); at 0.15 only one does (92%)
    assert choose_vcdr_jump(quiet + [0.12, 0.13, 0.16], [False] * 13) == 0.15
    # one more noisy stable eye: 2 of 14 at 0.15 (86%), so the next step
    assert choose_vcdr_jump(quiet + [0.12, 0.13, 0.16, 0.21], [False] * 14) == 0.2
    assert choose_vcdr_jump(quiet + [0.12, 0.13, 0.16, 0.21], [False] * 14, specificity=0.8) == 0.15
