"""Repeatability of the vCDR on repeated captures of one simulated eye: how far two photos of an eye that
has not changed disagree, the floor under any change the unit can call.

Each simulated eye is photographed several times (`models.synthetic.render` with another seed: the eye
sits a little elsewhere in the field, the light, focus and sensor noise differ), then measured two ways:
each photo screened on its own, as the referral reads it, and all of them together in one registered
frame with a shared disc, as the progression step reads them. The repeatability coefficient is
1.96 * sqrt(2) * the within-eye SD (Bland and Altman): two measurements of one eye differ by less than it
95% of the time.
"""
from __future__ import annotations

import math

import numpy as np

from device.screening.change import VIEWS, measure_visits, registered_views
from device.screening.pipeline import ScreeningPipeline
from device.screening.progression import macula_side
from device.screening.registration import region_around_disc, register
from models.runtime import preprocess

SIZE = (768, 768)
EYES, CAPTURES, SEED = 8, 5, 20240604


def coefficient(per_eye: list[list[float]]) -> float | None:
    """1.96 * sqrt(2) * the pooled within-eye SD of repeated measurements (each eye's own mean taken out)."""
    variances = [float(np.var(v, ddof=1)) for v in per_eye if len(v) > 1]
    return 1.96 * math.sqrt(2.0 * float(np.mean(variances))) if variances else None


def simulated_repeatability(pipeline: ScreeningPipeline, eyes: int = EYES, captures: int = CAPTURES, seed: int = SEED,
                            views=VIEWS) -> dict:
    from models.synthetic import random_eye, render  # the training side's generator: the lab only

    alone: list[list[float]] = []
    together: list[list[float]] = []
    spread: list[float] = []
    refused = 0
    for i in range(eyes):
        rng = np.random.default_rng([seed, i])
        eye = random_eye(int(rng.integers(0, 2**31 - 1)), glaucoma=bool(i % 2))
        shots = [render(eye, SIZE, seed=int(rng.integers(0, 2**31 - 1))) for _ in range(captures)]
        results = [pipeline.screen(s.image) for s in shots]
        alone.append([r.measurements.vcdr for r in results if r.measurements is not None])
        last, m = shots[-1].image, results[-1].measurements
        if m is None:
            continue
        disc = (m.disc.cx, m.disc.cy, m.disc.vertical_diameter)
        here = region_around_disc(*disc, last.shape)
        earlier = []
        for s, r in zip(shots[:-1], results[:-1]):
            if r.measurements is None:
                continue
            d = r.measurements.disc
            reg = register(s.image, last, region_around_disc(d.cx, d.cy, d.vertical_diameter, s.image.shape), here)
            if reg.aligned:
                earlier.append((s.image, reg))
            else:
                refused += 1
        box = preprocess.disc_crop_box(*disc, last.shape)
        measured = measure_visits(pipeline.outline_views, registered_views(last, box, earlier, views),
                                  macula_side(disc, results[-1].fovea, shots[-1].laterality))
        if measured is None:
            continue
        together.append([x.values["vcdr"] for x in measured])
        spread += [x.spread["vcdr"] for x in measured if not math.isnan(x.spread["vcdr"])]

    def rounded(v: float | None) -> float | None:
        return None if v is None else round(v, 4)

    return {"eyes": eyes, "captures_per_eye": captures, "size": list(SIZE), "seed": seed,
            "vcdr_coefficient_each_photo_alone": rounded(coefficient(alone)),
            "vcdr_coefficient_registered": rounded(coefficient(together)),
            "registrations_refused": refused,
            "vcdr_tta_sd_median": rounded(float(np.median(spread))) if spread else None}
