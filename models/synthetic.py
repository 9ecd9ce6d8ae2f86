"""Seeded synthetic colour fundus photos, for what real photos cannot give us in quantity.

Real annotated photos decide what a model is worth; this generator adds what they lack: volume with
exact disc/cup masks and fovea positions, eyes seen again years later with a growing cup, and
defective frames (blur, bad exposure, glare, misalignment, eyelid) for the quality gate.

The eye and its rendering live in `models.fundus`, which the simulated camera also uses on the
appliance's run-time path; this module is the training side's (samples with their ground truth,
longitudinal series, the dataset writer), and re-exports the renderer's names for its callers.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from models.fundus import (  # noqa: F401 - re-exported: the generator's callers know these names from here
    BACKGROUND,
    CUP,
    DEFAULT_GLAUCOMA_PREVALENCE,
    GAMMA,
    RIM,
    EyeParams,
    Scene,
    apply_optics,
    field_geometry,
    photo_mask,
    random_eye,
    render_reflectance,
)
from models.runtime.images import encode_png

DEFECTS = ("defocus", "underexposed", "overexposed", "glare", "off_centre", "eyelid")

VCDR_MAX = 0.9  # a cup never grows past this (the rim never vanishes entirely in the photo)
PROGRESSION_RATE = {True: 0.02, False: 0.002}  # vCDR per year, glaucomatous vs normal eyes


def progress(eye: EyeParams, years: float, rate: float | None = None) -> EyeParams:
    """The same eye `years` later: only the cup has grown (glaucoma enlarges the cup, not the disc)."""
    if years < 0:
        raise ValueError(f"years must be zero or more (a later visit), not {years}")
    rate = PROGRESSION_RATE[eye.glaucoma] if rate is None else rate
    if rate < 0:
        raise ValueError(f"rate is vCDR growth per year and cannot be negative, not {rate}")
    return replace(eye, vcdr=float(max(eye.vcdr, min(VCDR_MAX, eye.vcdr + rate * years))))


@dataclass
class Sample:
    """One photo with its ground truth, as training, tests and evaluation consume it."""

    image: np.ndarray
    mask: np.ndarray
    fovea: tuple[float, float]
    glaucoma: int
    vcdr: float
    laterality: str
    defects: tuple[str, ...]
    eye: EyeParams


# ---------------------------------------------------------------- photos with ground truth


def render(eye: EyeParams, size: tuple[int, int] = (512, 512), *, defects: Sequence[str] = (), seed: int = 0) -> Sample:
    """A photo of the eye as a health worker would take it (slight pose/exposure variation), plus any defects.

    Each named defect is applied strongly enough that a grader would reject the photo for that reason.
    """
    unknown = [d for d in defects if d not in DEFECTS]
    if unknown:
        raise ValueError(f"unknown defect(s) {', '.join(map(repr, unknown))}; known defects: {', '.join(DEFECTS)}")
    scene = render_reflectance(eye, size)
    rng = np.random.default_rng([int(seed), eye.seed, 0xCA])
    radius = scene.field_radius
    light = float(np.exp(rng.normal(0.0, 0.12)))
    jitter = rng.normal(0.0, 0.02 * radius, 2)
    shift = (float(jitter[0]), float(jitter[1]))
    defocus = rng.uniform(0.0, 0.004 * radius)
    glare = rng.uniform(0.0, 0.06) if rng.random() < 0.2 else 0.0
    eyelid = 0.0
    noise = rng.uniform(0.004, 0.015)
    if "defocus" in defects:
        defocus = rng.uniform(0.07, 0.1) * radius
    if "underexposed" in defects:
        light = rng.uniform(0.12, 0.18)
    if "overexposed" in defects:
        light = rng.uniform(2.8, 3.4)
    if "glare" in defects:
        glare = rng.uniform(0.8, 1.0)
    if "eyelid" in defects:
        eyelid = rng.uniform(0.42, 0.5)
    if "off_centre" in defects:
        shift = _off_centre_shift(scene, rng)
    shift = (float(np.round(shift[0])), float(np.round(shift[1])))  # whole pixels keep the mask exact
    image = apply_optics(scene, light=light, defocus_px=defocus, shift=shift, glare=glare, eyelid=eyelid,
                         noise=noise, rng=rng)
    mask = photo_mask(scene, shift)
    fovea = (scene.fovea[0] + shift[0], scene.fovea[1] + shift[1])
    return Sample(image=image, mask=mask, fovea=fovea, glaucoma=int(eye.glaucoma), vcdr=eye.vcdr,
                  laterality=eye.laterality, defects=tuple(defects), eye=eye)


def _off_centre_shift(scene: Scene, rng: np.random.Generator) -> tuple[float, float]:
    """The eye movement that puts the disc centre at or just past the field's edge."""
    c, disc = np.array(scene.field_center), np.array(scene.disc_center)
    away = disc - c
    dist = float(np.hypot(*away))
    if dist < 0.05 * scene.field_radius:  # a disc-centred photo: any direction will do
        a = rng.uniform(0, 2 * np.pi)
        away, dist = np.array([math.cos(a), math.sin(a)]), 1.0
    edge = c + away / dist * rng.uniform(0.92, 1.05) * scene.field_radius
    return float(edge[0] - disc[0]), float(edge[1] - disc[1])


def samples(n: int, seed: int, size: tuple[int, int] = (512, 512), glaucoma_fraction: float = 0.3,
            defect_fraction: float = 0.0) -> Iterator[Sample]:
    """n photos of n different eyes; the i-th depends only on (seed, i), so any prefix is reproducible."""
    if n < 0:
        raise ValueError(f"n must be zero or more, not {n}")
    for name, f in (("glaucoma_fraction", glaucoma_fraction), ("defect_fraction", defect_fraction)):
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"{name} must lie between 0 and 1, not {f}")
    for i in range(n):
        rng = np.random.default_rng([int(seed), i, 0x5A])
        glaucoma = bool(rng.random() < glaucoma_fraction)
        eye = random_eye(int(rng.integers(0, 2**31 - 1)), glaucoma=glaucoma)
        defects: tuple[str, ...] = ()
        if rng.random() < defect_fraction:
            k = 1 if rng.random() < 0.8 else 2
            defects = tuple(DEFECTS[j] for j in sorted(rng.choice(len(DEFECTS), k, replace=False)))
        yield render(eye, size, defects=defects, seed=int(rng.integers(0, 2**31 - 1)))


def longitudinal(eye: EyeParams, visits: Sequence[float], size: tuple[int, int] = (512, 512),
                 seed: int = 0) -> list[Sample]:
    """The same eye photographed at each visit (years from the first); pose and exposure differ a little."""
    return [render(progress(eye, t), size, seed=int(np.random.SeedSequence([int(seed), k]).generate_state(1)[0]))
            for k, t in enumerate(visits)]


# ---------------------------------------------------------------- command line


def write_dataset(out: Path, n: int, seed: int, size: tuple[int, int] = (512, 512), glaucoma_fraction: float = 0.3,
                  defect_fraction: float = 0.0) -> list[str]:
    """Write photos, masks and labels.csv in the project's dataset layout; returns the ids written.

    details.csv adds what labels.csv has no column for (laterality, fovea, defects).
    """
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    ids = []
    with open(out / "labels.csv", "w", newline="") as lf, open(out / "details.csv", "w", newline="") as df:
        labels, details = csv.writer(lf), csv.writer(df)
        labels.writerow(["id", "glaucoma", "vcdr", "split", "source", "camera"])
        details.writerow(["id", "laterality", "fovea_x", "fovea_y", "defects"])
        for i, s in enumerate(samples(n, seed, size, glaucoma_fraction, defect_fraction)):
            sid = f"syn{seed}_{i:05d}"
            (out / "images" / f"{sid}.png").write_bytes(encode_png(s.image))
            (out / "masks" / f"{sid}.png").write_bytes(encode_png(s.mask))
            labels.writerow([sid, s.glaucoma, f"{s.vcdr:.3f}", "test" if i % 5 == 4 else "train", "synthetic",
                             "synthetic fundus camera"])
            details.writerow([sid, s.laterality, f"{s.fovea[0]:.1f}", f"{s.fovea[1]:.1f}", " ".join(s.defects)])
            ids.append(sid)
    return ids


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.synthetic",
                                description="Write a synthetic fundus dataset (images/, masks/, labels.csv).")
    p.add_argument("--out", type=Path, required=True, help="folder to write the dataset into")
    p.add_argument("--n", type=int, required=True, help="number of photos")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--defect-fraction", type=float, default=0.0, help="share of ungradable photos (0..1)")
    p.add_argument("--glaucoma-fraction", type=float, default=0.3)
    p.add_argument("--size", default="512x512", help="WIDTHxHEIGHT in pixels, e.g. 2048x1750")
    a = p.parse_args(argv)
    try:
        w, h = (int(v) for v in a.size.lower().split("x"))
    except ValueError:
        p.error(f"--size must look like WIDTHxHEIGHT (e.g. 512x512), not {a.size!r}")
    try:
        ids = write_dataset(a.out, a.n, a.seed, (h, w), a.glaucoma_fraction, a.defect_fraction)
    except ValueError as e:
        p.error(str(e))
    print(f"wrote {len(ids)} photos to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
