"""From measurements and model scores to one decision a health worker can act on.

The glaucoma probability is the mean of independent opinions, as in MTL-IO: a logistic regression on
the vertical cup-to-disc ratio, the segmentation network's own glaucoma logit and the disc-crop
classifier's. Which of them are averaged is part of the fitted policy (`opinions`), because they do
not carry equally to other cameras: the networks' logits learned what REFUGE's and Drishti-GS1's
cameras look like, while the vCDR is a length ratio. The referral threshold comes from an operating
point (sensitivity at a chosen specificity) fitted on validation photos only (`glaucoscreen
fit-referral`), never a bare 0.5.
"""
from __future__ import annotations

import json
import math
from dataclasses import Field, asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from device.screening.wording import N_

REFER, RESCREEN, NORMAL = "refer", "rescreen", "normal"

# The opinions a policy can average, by the name screening.json gives them.
VCDR, SEGMENTATION, DISC_CLASSIFIER = "vcdr", "segmentation", "disc_classifier"
OPINIONS = (VCDR, SEGMENTATION, DISC_CLASSIFIER)
OPINION_WORDS = {
    VCDR: N_("the vertical cup-to-disc ratio"),
    SEGMENTATION: N_("the segmentation network's glaucoma score"),
    DISC_CLASSIFIER: N_("the disc-crop classifier's glaucoma score"),
}
MEAN_OF = N_("the mean of {opinions} and {last}")  # {opinions}: all but the last, separated by ", "

# Recorded in English and shown in the reader's language (device/screening/wording.py): short and literal,
# so that a clinician reviewing a translation can check it line by line.
ADVICE = {
    REFER: N_("Signs that can mean glaucoma were found. Please see an eye doctor within the next month. "
              "Glaucoma damage can be stopped if it is treated early; it does not hurt, so do not wait for pain."),
    RESCREEN: N_("The photo was not clear enough to judge. Please take the photo again now, or come back for a new photo."),
    NORMAL: N_("No signs of glaucoma were seen on this photo. Have your eyes checked again in one to two years, "
               "or sooner if your sight changes."),
}
HEADLINE = {
    REFER: N_("Refer to an eye doctor"),
    RESCREEN: N_("Take the photo again"),
    NORMAL: N_("No glaucoma signs seen"),
}
# Why an eye is referred or not. The figures are filled in English ("73%", "0.72"); the kiosk reads them back
# to write them the reader's way, so each template names what its figures are (`REASON_FIGURES`).
RISK_AT_OR_ABOVE = N_("Glaucoma risk {risk} is at or above the referral level of {level}.")
LARGE_CUP = N_("The cup is large: cup-to-disc ratio {vcdr} (refer at {limit} or more).")
RISK_BELOW = N_("Glaucoma risk {risk} is below the referral level of {level}; cup-to-disc ratio {vcdr}.")
NO_DISC_FOUND = N_("The optic disc could not be found on the photo.")
REASON_FIGURES = {
    RISK_AT_OR_ABOVE: {"risk": "percent", "level": "percent"},
    LARGE_CUP: {"vcdr": "ratio", "limit": "ratio"},
    RISK_BELOW: {"risk": "percent", "level": "percent", "vcdr": "ratio"},
}


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


class PolicyFile:
    """A fitted policy dataclass kept as JSON beside the models. Keys the dataclass does not know are
    ignored, so a policy file written by a newer fit still loads; missing ones take the defaults."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # set by @dataclass on each subclass

    @classmethod
    def load(cls, path: Path):
        data = json.loads(Path(path).read_text())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass
class ReferralPolicy(PolicyFile):
    """Fusion weights and thresholds; loaded from the shipped `screening.json`."""

    vcdr_coef: float = 12.0
    vcdr_intercept: float = -7.8  # p = 0.5 at vCDR 0.65 until fitted on data
    refer_threshold: float = 0.5
    vcdr_refer: float = 0.8  # a cup this large is referred whatever the classifier says
    # The threshold was fitted on the mean of the opinions it was fitted with: a policy fitted before the
    # disc classifier existed must not average it in.
    uses_disc_classifier: bool = False
    # The opinions averaged, from OPINIONS. None: a policy written before the choice existed, which
    # averaged the segmentation logit and the vCDR (and the disc classifier where it says so).
    opinions: list[str] | None = None
    fitted: bool = False
    operating_point: dict = field(default_factory=dict)
    source: str = "built-in defaults (not fitted)"

    def vcdr_probability(self, vcdr: float) -> float:
        return sigmoid(self.vcdr_coef * vcdr + self.vcdr_intercept)

    def __post_init__(self) -> None:
        unknown = set(self.opinions or ()) - set(OPINIONS)
        if unknown or self.opinions == []:
            raise ValueError(f"a referral policy averages some of {', '.join(OPINIONS)}; got {self.opinions}")

    def fused_opinions(self) -> tuple[str, ...]:
        if self.opinions is not None:
            return tuple(self.opinions)
        return (SEGMENTATION, VCDR) + ((DISC_CLASSIFIER,) if self.uses_disc_classifier else ())

    def described(self) -> str:
        """What the probability is made of, for the Models page."""
        words = [OPINION_WORDS[name] for name in self.fused_opinions()]
        return words[0] if len(words) == 1 else MEAN_OF.format(opinions=", ".join(words[:-1]), last=words[-1])

    def fuse(self, glaucoma_logit: float, vcdr: float, disc_classifier_logit: float | None = None) -> float:
        """The mean of the policy's opinions. One whose network is not installed is left out, so a unit
        without the disc classifier still screens, on a probability its threshold was not fitted on."""
        given = {SEGMENTATION: sigmoid(glaucoma_logit), VCDR: self.vcdr_probability(vcdr)}
        if disc_classifier_logit is not None:
            given[DISC_CLASSIFIER] = sigmoid(disc_classifier_logit)
        used = [given[name] for name in self.fused_opinions() if name in given]
        return sum(used) / len(used)

    def decide(self, *, gradable: bool, quality_messages: list[str], vcdr: float | None,
               probability: float | None) -> tuple[str, list[str]]:
        """One decision with its reasons in plain words."""
        if not gradable or vcdr is None or probability is None:
            reasons = quality_messages or [NO_DISC_FOUND]
            return RESCREEN, reasons
        reasons = []
        if probability >= self.refer_threshold:
            reasons.append(RISK_AT_OR_ABOVE.format(risk=f"{probability:.0%}", level=f"{self.refer_threshold:.0%}"))
        if vcdr >= self.vcdr_refer:
            reasons.append(LARGE_CUP.format(vcdr=f"{vcdr:.2f}", limit=f"{self.vcdr_refer:.2f}"))
        if reasons:
            return REFER, reasons
        return NORMAL, [RISK_BELOW.format(risk=f"{probability:.0%}", level=f"{self.refer_threshold:.0%}", vcdr=f"{vcdr:.2f}")]
