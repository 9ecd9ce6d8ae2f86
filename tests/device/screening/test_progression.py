"""Progression against the eye's earlier visits, on a real visit log with the shipped engines: measured in one
registered frame, called only beyond the noise, a trend from three visits, and a failed alignment said."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from device.screening.pipeline import ScreeningPipeline
from device.screening.progression import (
    MESSAGES,
    NO_HISTORY,
    NOT_ALIGNED,
    PROGRESSING,
    STABLE,
    TOO_RECENT,
    EyeHistory,
    ProgressionAssessor,
    ProgressionPolicy,
)
from device.screening.result import Assessment
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


def _history_row(rgb, result, when: str, sha: str) -> dict:
    """An `eye_history` row as the visit log gives it back."""
    return {"time": when, "gradable": True, "vcdr": round(result.vcdr, 4), "photo_sha256": sha, "visit_uuid": f"visit-{sha}",
            "result_json": json.dumps(result.to_dict())}


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
        a = assessor.assess(history, read, grown, now, now=later, outline=pipeline.outline_views, eye=eye.laterality)
        # the screening's own step reads the typed result as the stored JSON would be read
        assert assessor.assess_screening(EyeHistory(history, read), grown, screened, now=later,
                                         outline=pipeline.outline_views, eye=eye.laterality) == a
        assert a.verdict == PROGRESSING and a.exceeds_noise and a.years == pytest.approx(3.0, abs=0.01)
        assert a.registration["aligned"] and a.registration["correlation"] > 0.8 and len(a.registration["matrix"]) == 2
        assert a.earlier_visit == history[0]["visit_uuid"] and a.earlier_photo == history[0]["photo_sha256"]
        vcdr = a.change("vcdr")
        assert vcdr["exceeds"] and vcdr["change"] > 0.15 and vcdr["change"] > vcdr["limit"]
        assert vcdr["then"] == pytest.approx(first.vcdr, abs=0.05)  # the shared disc moves the ratio a little
        assert a.change("cup_area")["exceeds"] and a.change("rim_inferior")["change"] < 0
        assert a.vcdr_change_per_year > 0.04 and a.confidence == 0.95 and a.trend is None  # two visits: no trend
        assert a.engine_probability is not None and 0.0 < a.engine_probability < 1.0  # the network ran on both crops
        assert Assessment.from_dict(json.loads(json.dumps(a.to_dict()))) == Assessment.from_dict(a.to_dict())

        same = _photo(eye, 0.0, 0.0, seed=3)  # the same disc, another photo
        b = assessor.assess(history, read, same, pipeline.screen(same).to_dict(), now=later,
                            outline=pipeline.outline_views, eye=eye.laterality)
        assert b.verdict == STABLE and b.exceeds_noise is False
        assert not any(c["exceeds"] for c in b.changes) and abs(b.change("vcdr")["change"]) < 0.03


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
        assert a.vcdr_then is None and a.probability is None and a.registration is None  # nothing was compared


def test_an_earlier_photo_that_does_not_line_up_is_said_and_nothing_is_called(pipeline, assessor):
    """The earlier photo is of another eye (a mix-up of patients): no change is measured or called."""
    other = _photo(random_eye(11, glaucoma=False), 0.0, 0.0, seed=1)
    today = _photo(random_eye(5, glaucoma=False), 0.0, 0.0, seed=2)
    then = pipeline.screen(other)
    history = [_history_row(other, then, "2020-01-01T00:00:00+00:00", "a" * 64)]
    now = dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)
    a = assessor.assess(history, lambda sha: other, today, pipeline.screen(today).to_dict(), now=now,
                        outline=pipeline.outline_views, eye="left")
    assert a.verdict == NOT_ALIGNED and a.message == MESSAGES[NOT_ALIGNED]
    assert "could not be lined up" in a.message and "the eye doctor should compare the photos" in a.message
    assert a.registration["aligned"] is False and a.registration["matrix"] is None
    assert "may not show the same eye" in a.registration["refusal"]
    assert a.changes == [] and a.exceeds_noise is None and a.probability is None


def test_three_visits_give_a_trend_with_its_interval(pipeline, assessor):
    eye = random_eye(8, glaucoma=False)
    rgbs = [_photo(eye, t, 0.05, seed=k) for k, t in enumerate((0.0, 2.0, 4.0))]  # vCDR 0.52 +0.05 a year
    results = [pipeline.screen(rgb) for rgb in rgbs]
    history = [_history_row(rgbs[k], results[k], when, str(k) * 64)
               for k, when in ((0, "2019-01-01T00:00:00+00:00"), (1, "2021-01-01T00:00:00+00:00"))]
    photos = {str(k) * 64: rgbs[k] for k in range(2)}
    a = assessor.assess(history, photos.__getitem__, rgbs[2], results[2].to_dict(),
                        now=dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc), outline=pipeline.outline_views, eye=eye.laterality)
    assert a.trend["visits"] == 3 and a.trend["years"] == pytest.approx(4.0, abs=0.01)
    assert a.trend["low"] < a.trend["slope"] < a.trend["high"] and 0.02 < a.trend["slope"] < 0.09
    assert a.vcdr_change_per_year == pytest.approx(a.trend["slope"], abs=1e-4)
    assert a.registration["visits_aligned"] == a.registration["visits_tried"] == 2
    assert a.verdict == PROGRESSING


def test_the_model_decides_only_where_the_policy_allows_it(pipeline):
    """A model that calls everything: its probability is neither shown nor used until `use_models`."""
    eye = random_eye(5, glaucoma=False)
    then_rgb, now_rgb = _photo(eye, 0.0, 0.0, seed=1), _photo(eye, 0.0, 0.0, seed=3)
    history = [_history_row(then_rgb, pipeline.screen(then_rgb), "2020-01-01T00:00:00+00:00", "b" * 64)]
    policy = ProgressionPolicy(coefficients={"z_vcdr": 1.0}, intercept=8.0, threshold=0.6, use_models=False)
    assessor = ProgressionAssessor(engine=None, policy=policy)
    now = dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)
    result = pipeline.screen(now_rgb).to_dict()

    def ask():
        return assessor.assess(history, lambda sha: then_rgb, now_rgb, result, now=now, outline=pipeline.outline_views)

    a = ask()
    assert a.verdict == STABLE and a.probability is None and a.engine_probability is None
    policy.use_models = True
    b = ask()
    assert b.verdict == PROGRESSING and b.probability > 0.99 and b.exceeds_noise is False


def test_a_policy_written_before_the_noise_model_still_loads(tmp_path):
    old = tmp_path / "progression.json"
    old.write_text(json.dumps({"engine_coef": 0.22, "slope_coef": 0.08, "intercept": -0.9, "threshold": 0.29,
                               "vcdr_jump": 0.15, "use_models": False, "fitted": True}))
    policy = ProgressionPolicy.load(old)
    assert policy.coefficients == {} and not policy.needs_engine
    assert policy.noise_model.change_sd["vcdr"] > 0 and policy.noise_model.confidence == 0.95
    assert np.isclose(policy.probability({"z_vcdr": 3.0}), 1 / (1 + np.exp(0.9)))
