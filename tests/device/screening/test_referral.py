import numpy as np
import pytest

from device.lab.fit_referral import fit_logistic
from device.lab.roc import auc, sensitivity_at_specificity, threshold_at_specificity
from device.screening.referral import NORMAL, REFER, RESCREEN, ReferralPolicy


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + y
    pairs = [(p > n) + 0.5 * (p == n) for p in s[y == 1] for n in s[y == 0]]
    assert auc(y, s) == pytest.approx(np.mean(pairs))
    assert auc([1, 1], [0.2, 0.3]) is None
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0


def test_threshold_gives_the_asked_specificity():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(100), np.ones(20)].astype(int)
    s = np.r_[rng.normal(0, 1, 100), rng.normal(2, 1, 20)]
    t = threshold_at_specificity(y, s, 0.9)
    spec = (s[y == 0] < t).mean()
    assert spec >= 0.9 and spec < 0.92
    assert 0 < sensitivity_at_specificity(y, s, 0.9) <= 1


def test_logistic_fit_recovers_a_known_slope():
    rng = np.random.default_rng(2)
    x = rng.uniform(0.2, 0.9, 4000)
    p = 1 / (1 + np.exp(-(10 * x - 6)))
    y = (rng.uniform(size=x.size) < p).astype(float)
    coef, intercept = fit_logistic(x, y)
    assert coef == pytest.approx(10, rel=0.15)
    assert intercept == pytest.approx(-6, rel=0.15)


def test_decisions_have_plain_reasons():
    policy = ReferralPolicy(refer_threshold=0.4, vcdr_refer=0.8)
    assert policy.decide(gradable=False, quality_messages=["Too dark"], vcdr=0.5, probability=0.1) == (RESCREEN, ["Too dark"])
    decision, reasons = policy.decide(gradable=True, quality_messages=[], vcdr=0.5, probability=0.6)
    assert decision == REFER and "60%" in reasons[0]
    decision, reasons = policy.decide(gradable=True, quality_messages=[], vcdr=0.85, probability=0.1)
    assert decision == REFER and "0.85" in reasons[0]
    decision, _ = policy.decide(gradable=True, quality_messages=[], vcdr=0.3, probability=0.1)
    assert decision == NORMAL


def test_policy_round_trips_through_its_file(tmp_path):
    p = ReferralPolicy(vcdr_coef=3.0, vcdr_intercept=-1.0, refer_threshold=0.33, fitted=True, source="test")
    p.save(tmp_path / "s.json")
    q = ReferralPolicy.load(tmp_path / "s.json")
    assert q == p
    assert q.fuse(0.0, 1 / 3) == pytest.approx(0.5)


def test_a_policy_fitted_without_the_disc_classifier_never_averages_it_in(tmp_path):
    """The threshold was fitted on the mean of the opinions it had: an older screening.json (no
    `uses_disc_classifier` key) must give the same probability with or without the classifier."""
    import json

    from device.screening.referral import ReferralPolicy

    old = tmp_path / "screening.json"
    old.write_text(json.dumps({"vcdr_coef": 20.0, "vcdr_intercept": -12.0, "refer_threshold": 0.3, "fitted": True}))
    before = ReferralPolicy.load(old)
    assert before.uses_disc_classifier is False
    assert before.fuse(0.0, 0.5, 5.0) == before.fuse(0.0, 0.5)
    now = ReferralPolicy(vcdr_coef=20.0, vcdr_intercept=-12.0, uses_disc_classifier=True)
    assert now.fuse(0.0, 0.5, 5.0) == pytest.approx((0.5 + now.vcdr_probability(0.5) + 1 / (1 + 2.718281828459045 ** -5)) / 3)


def test_the_operating_point_records_the_cameras_it_was_measured_on():
    from device.lab.fit_referral import measured_on

    got = measured_on(["Canon CR-2", "Canon CR-2", "Drishti-GS1", "Canon CR-2"], np.array([1, 0, 1, 0]))
    assert got == {"Canon CR-2": {"photos": 3, "glaucoma": 1}, "Drishti-GS1": {"photos": 1, "glaucoma": 1}}


def test_a_policy_averages_only_the_opinions_it_names():
    """A policy fitted on the vCDR alone ignores a network logit that has moved with the camera."""
    from device.screening.referral import ReferralPolicy

    p = ReferralPolicy(vcdr_coef=20.0, vcdr_intercept=-12.0, opinions=["vcdr"])
    assert p.fuse(9.0, 0.5, 9.0) == pytest.approx(p.vcdr_probability(0.5))
    q = ReferralPolicy(vcdr_coef=20.0, vcdr_intercept=-12.0, opinions=["vcdr", "disc_classifier"])
    assert q.fuse(9.0, 0.5, 0.0) == pytest.approx((p.vcdr_probability(0.5) + 0.5) / 2)
    with pytest.raises(ValueError, match="averages some of"):
        ReferralPolicy(opinions=["vcdr", "cup_colour"])
    with pytest.raises(ValueError):
        ReferralPolicy(opinions=[])


def test_the_opinions_survive_the_policy_file(tmp_path):
    from device.screening.referral import ReferralPolicy

    p = ReferralPolicy(vcdr_coef=20.0, vcdr_intercept=-12.0, opinions=["vcdr", "disc_classifier"])
    p.save(tmp_path / "s.json")
    assert ReferralPolicy.load(tmp_path / "s.json").fused_opinions() == ("vcdr", "disc_classifier")


def test_an_opinion_that_moved_with_the_camera_refers_more_of_the_other_cameras_photos():
    """At one specificity on val, the opinion whose scores rose on another camera refers more of that
    camera's (unlabelled) photos; the vCDR, unchanged there, refers no more than on val."""
    from device.lab.fit_referral import Opinions, referred_elsewhere
    from device.screening.referral import ReferralPolicy

    rng = np.random.default_rng(0)
    val, other = Opinions(), Opinions()
    for label in [0] * 80 + [1] * 20:
        vcdr = rng.normal(0.65 if label else 0.45, 0.05)
        val.vcdr.append(vcdr)
        val.segmentation.append(rng.normal(1.5 if label else -1.5, 0.5))
        val.disc_classifier.append(rng.normal(1.5 if label else -1.5, 0.5))
        val.glaucoma.append(label)
        val.camera.append("ours")
    for _ in range(100):  # another camera's normal eyes: same cups, network logits shifted up by 2
        other.vcdr.append(rng.normal(0.45, 0.05))
        other.segmentation.append(rng.normal(0.5, 0.5))
        other.disc_classifier.append(rng.normal(-1.5, 0.5))
        other.glaucoma.append(0)
        other.camera.append("theirs")
    policy = ReferralPolicy(vcdr_coef=40.0, vcdr_intercept=-22.0, opinions=["vcdr", "disc_classifier"])
    got = referred_elsewhere(policy, val, other, specificity=0.9)
    assert got["segmentation"]["theirs"] > 0.5
    assert got["vcdr"]["theirs"] < 0.2
    assert got["disc_classifier"]["theirs"] < 0.2
    assert got["policy"]["theirs"] < 0.2


def test_the_policy_says_in_words_what_its_probability_is_made_of():
    from device.screening.referral import ReferralPolicy

    assert ReferralPolicy(opinions=["vcdr"]).described() == "the vertical cup-to-disc ratio"
    both = ReferralPolicy(opinions=["vcdr", "disc_classifier"]).described()
    assert both == "the mean of the vertical cup-to-disc ratio and the disc-crop classifier's glaucoma score"
