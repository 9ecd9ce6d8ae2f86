"""Registered visit pairs of GRAPE's eyes: what the progression network is trained and measured on.

Each eye is lined up as `glaucoscreen fit-progression` lines it up, the way the unit does (`fit_progression.line_up`):
every earlier photo registered onto the eye's last one, all of them measured with a shared disc through
the last photo's disc crop windows. A pair is one aligned earlier photo against the last: the earlier
photo warped into the last one's frame with that registration (`registration.earlier_in_region`), the last
photo cut through the same box (`preprocess.warp`), both `progression_net.MARGIN` times wider than the
unit's crop (`progression.crop_input`'s box) so training can turn and zoom them; and the pair's
noise-aware change measures, as the unit computes them (`progression.features`: each measure's change
towards worsening in units of its noise, from the shipped policy's noise model). An earlier photo whose
registration is refused makes no pair, as the unit measures no change there; an eye whose first photo
is refused has no first-against-last pair and is not scored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from device.lab.fit_progression import disc_of_crop, line_up
from device.screening.change import MEASURES, VIEWS, NoiseModel, event
from device.screening.pipeline import ScreeningPipeline
from device.screening.progression import features
from device.screening.registration import earlier_in_region
from models.grape import Eye, patient_split, read_grape
from models.progression_net import MARGIN, PAIR_SIDE, Pairs, write_pairs
from models.runtime import preprocess
from models.runtime.images import read_rgb
from models.runtime.preprocess import Box

CHANGE_NAMES = [f"z_{m}" for m in MEASURES]


def widened(box: Box, margin: float = MARGIN) -> Box:
    side = box.side * margin
    return Box(box.x0 + box.side / 2 - side / 2, box.y0 + box.side / 2 - side / 2, side)


def eye_pairs(pipeline: ScreeningPipeline, eye: Eye, split: str, noise: NoiseModel, views=VIEWS) -> list[dict]:
    """The eye's pairs (each aligned earlier photo against the last), oldest first; none where the last photo
    shows no disc or nothing lines up."""
    photos = [read_rgb(v.photo) for v in eye.visits]
    found = disc_of_crop(pipeline, photos[-1])
    if found is None:
        return []
    lined = line_up(pipeline, photos, found[0], eye.laterality, views)
    if lined is None:
        return []
    wide = widened(lined.box)
    current = preprocess.warp(photos[-1], wide, PAIR_SIDE)
    now = lined.measured[-1]
    out = []
    for k, then in zip(lined.kept[:-1], lined.measured[:-1]):
        reg = lined.registrations[k]
        z = features([c for m in MEASURES if (c := event(m, then, now, noise)) is not None])
        out.append({"earlier": earlier_in_region(photos[k], reg, wide, PAIR_SIDE), "current": current,
                    "years": eye.visits[-1].years - eye.visits[k].years, "change": [z.get(n, 0.0) for n in CHANGE_NAMES],
                    "progressed": eye.progressed, "patient": eye.patient, "eye": eye.key, "split": split, "first": k == 0,
                    "correlation": reg.correlation})
    return out


def build_pairs(pipeline: ScreeningPipeline, grape: Path, noise: NoiseModel, out: Path, limit_eyes: int = 0,
                say: Callable[[str], None] = print, views=VIEWS) -> Pairs:
    """Every GRAPE eye with two photos or more, split by patient (`models.grape.patient_split`), as pairs in
    `out`. `limit_eyes`: the first N such eyes only (a quick run); 0, all."""
    eyes = read_grape(grape)
    split = patient_split(eyes)  # on all eyes, so the split is GRAPE's whatever the limit
    eyes = [e for e in eyes if len(e.visits) >= 2][:limit_eyes or None]
    rows: list[dict] = []
    for n, eye in enumerate(eyes, 1):
        rows += eye_pairs(pipeline, eye, split[eye.patient], noise, views)
        if n % 20 == 0 or n == len(eyes):
            say(f"{n} of {len(eyes)} eyes lined up: {len(rows)} pairs")
    return write_pairs(out, rows, CHANGE_NAMES)
