"""The INT8 calibration set: which photos, chosen how, preprocessed exactly as the screening does.

The recipe (`python -m calibration.calibration_set --data DIR...`) takes photos from the `train`
split only (never val/test, which judge the INT8 model), stratified by source and glaucoma, plus
seeded synthetic photos for the defects and camera variety real data lacks. Each photo yields both
inputs the segmentation network sees on the unit: the whole photo (pass 1) and a disc-centred crop
(pass 2), built with the same `models.runtime.preprocess` functions the pipeline uses.
"""
from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path
from typing import Iterator

import numpy as np

from models.datasets import disc_geometry, read_dataset
from models.runtime import preprocess
from models.runtime.images import read_rgb
from models.splits import load_splits

HERE = Path(__file__).resolve().parent
SET_CSV = HERE / "calibration_set.csv"
SEED = 20261123
PER_SOURCE = 24
SYNTHETIC = 16


def choose(data: list[Path], per_source: int = PER_SOURCE, seed: int = SEED) -> list[tuple[str, str]]:
    """(dataset folder name, id) of the real calibration photos: train split, stratified by source and glaucoma."""
    splits = load_splits()
    rng = random.Random(seed)
    chosen: list[tuple[str, str]] = []
    for folder in data:
        records = [r for r in read_dataset(folder) if splits.get((folder.name, r.id)) == "train" and r.has_mask]
        by_class: dict[int | None, list] = {}
        for r in sorted(records, key=lambda r: r.id):
            by_class.setdefault(r.glaucoma, []).append(r)
        glaucoma_share = max(1, per_source // 3)  # over-represent glaucoma: large cups must calibrate well too
        for label, group in sorted(by_class.items(), key=lambda kv: str(kv[0])):
            k = glaucoma_share if label == 1 else per_source - glaucoma_share
            chosen += [(folder.name, r.id) for r in rng.sample(group, min(k, len(group)))]
    return chosen


def write(chosen: list[tuple[str, str]], path: Path = SET_CSV) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "id"])
        w.writerows(sorted(chosen))


def read(path: Path = SET_CSV) -> set[tuple[str, str]]:
    with open(path, newline="") as f:
        return {(row["source"], row["id"]) for row in csv.DictReader(f)}


def views(rgb: np.ndarray, disc: np.ndarray) -> list[np.ndarray]:
    """The two network inputs of one photo, as the pipeline builds them."""
    cx, cy, diameter = disc_geometry(disc)
    return [preprocess.to_input(rgb, preprocess.whole_image_box(rgb.shape)),
            preprocess.to_input(rgb, preprocess.disc_crop_box(cx, cy, diameter, rgb.shape))]


def batches(data: list[Path], path: Path = SET_CSV, synthetic: int = SYNTHETIC) -> Iterator[np.ndarray]:
    """Calibration inputs, one 1x3xHxW tensor at a time: real photos from the recipe, then synthetic."""
    wanted = read(path)
    found = 0
    for folder in data:
        for r in read_dataset(folder):
            if (Path(folder).name, r.id) in wanted:
                rgb = read_rgb(r.image_path)
                disc, _ = r.load_mask(rgb.shape)
                found += 1
                yield from views(rgb, disc)
    if found < len(wanted):
        raise FileNotFoundError(f"only {found} of the {len(wanted)} calibration photos were found in "
                                f"{', '.join(map(str, data))}")
    from models import synthetic as synth
    from models.datasets import decode_mask

    for s in synth.samples(synthetic, seed=SEED, size=(512, 512), defect_fraction=0.25):
        disc, _ = decode_mask(s.mask)
        if disc.any():
            yield from views(s.image, disc)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="choose the INT8 calibration photos (writes calibration_set.csv)")
    p.add_argument("--data", action="append", required=True, type=Path)
    p.add_argument("--per-source", type=int, default=PER_SOURCE)
    args = p.parse_args(argv)
    chosen = choose(args.data, args.per_source)
    write(chosen)
    print(f"{len(chosen)} photos written to {SET_CSV.name}")


if __name__ == "__main__":
    main()
