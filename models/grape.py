"""GRAPE's longitudinal glaucoma eyes: each eye's disc crops across visits and whether it progressed.

GRAPE (Huang et al., Scientific Data 2023) follows 263 glaucomatous eyes of 144 patients. `eyes.csv`
has one row per eye with three progression flags computed from the visual fields (PLR2, PLR3 and MD
trend); as the GlaucoScreen paper does, an eye progresses if any of them says so. `visits.csv` has
one row per visit with the years since the first and the photo's name, "/" where none was taken.

Splits are by patient, never by eye or photo: a patient's two eyes look alike, and one in training
with the other in test would flatter the model.
"""
from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path

from models.datasets import DatasetError

PROGRESSION_FLAGS = ("PLR2", "PLR3", "MD")
NO_PHOTO = "/"
SPLIT_SEED = 20240602
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # train, val, test patients


@dataclass(frozen=True)
class Visit:
    number: int
    years: float  # since the eye's first visit
    photo: Path


@dataclass
class Eye:
    patient: str
    laterality: str  # "OD" right, "OS" left
    progressed: int
    visits: list[Visit] = field(default_factory=list)  # those with a photo, oldest first

    @property
    def key(self) -> str:
        return f"{self.patient}_{self.laterality}"


def read_grape(folder: str | Path) -> list[Eye]:
    """Every eye with at least one photo, in GRAPE's own layout (eyes.csv, visits.csv, rois/)."""
    folder = Path(folder)
    for name in ("eyes.csv", "visits.csv"):
        if not (folder / name).exists():
            raise DatasetError(f"{folder} is not a GRAPE folder: {name} is missing (expected eyes.csv, visits.csv "
                               f"and rois/)")
    eyes: dict[tuple[str, str], Eye] = {}
    with open(folder / "eyes.csv", newline="") as f:
        for row in csv.DictReader(f):
            flags = [int(float(row[k] or 0)) for k in PROGRESSION_FLAGS]
            key = (row["Subject Number"].strip(), row["Laterality"].strip())
            eyes[key] = Eye(key[0], key[1], int(any(flags)))
    with open(folder / "visits.csv", newline="") as f:
        for row in csv.DictReader(f):
            key = (row["Subject Number"].strip(), row["Laterality"].strip())
            name = row["Corresponding CFP"].strip()
            if key not in eyes or name in ("", NO_PHOTO):
                continue
            photo = folder / "rois" / name
            if not photo.exists():
                raise DatasetError(f"visits.csv names {name}, which is not in {folder / 'rois'}")
            eyes[key].visits.append(Visit(int(row["Visit Number"]), float(row["Interval Years"] or 0.0), photo))
    for eye in eyes.values():
        eye.visits.sort(key=lambda v: v.number)
    return [e for e in eyes.values() if e.visits]


def patient_split(eyes: list[Eye], seed: int = SPLIT_SEED,
                  fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> dict[str, str]:
    """patient -> train/val/test, stratified by whether any of the patient's eyes progressed."""
    progressed: dict[str, int] = {}
    for e in eyes:
        progressed[e.patient] = max(progressed.get(e.patient, 0), e.progressed)
    rng = random.Random(seed)
    out: dict[str, str] = {}
    for label in (0, 1):
        patients = sorted((p for p, y in progressed.items() if y == label), key=lambda p: (len(p), p))
        rng.shuffle(patients)
        n_train, n_val = round(fractions[0] * len(patients)), round(fractions[1] * len(patients))
        for i, p in enumerate(patients):
            out[p] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return out
