"""The project's own train / val / test split of the shared photos, fixed once and kept in the repo.

Why our own split: REFUGE's test photos are kept apart to measure the project independently, so
model selection, fusion fitting and referral thresholds all come from splits of what we have. The
split is stratified by glaucoma (glaucoma is ~10% of REFUGE, so an unstratified val could hold
almost none) and seeded, so it never changes under a model. Only ids are stored, never data.

    python -m models.splits [--data ../shared/data]   # rewrites artifacts/splits.csv
"""
from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from models.datasets import DEFAULT_DATA, Record, read_dataset

SPLITS_CSV = Path(__file__).resolve().parent / "artifacts" / "splits.csv"
SEED = 20240601
REFUGE_FRACTIONS = (0.6, 0.2, 0.2)  # train, val, test
DRISHTI_VAL = 10  # of Drishti-GS1's official 50 training photos; its official test 51 stay test


def stratified_split(records: list[Record], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """id -> split, each glaucoma class divided in the same proportions."""
    rng = random.Random(seed)
    out: dict[str, str] = {}
    by_class: dict[object, list[str]] = {}
    for r in records:
        by_class.setdefault(r.glaucoma, []).append(r.id)
    for label in sorted(by_class, key=str):
        ids = sorted(by_class[label])
        rng.shuffle(ids)
        n_train = round(fractions[0] * len(ids))
        n_val = round(fractions[1] * len(ids))
        for i, rid in enumerate(ids):
            out[rid] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return out


def make_splits(data: Path, seed: int = SEED) -> list[tuple[str, str, str]]:
    """Rows (source, id, split) for REFUGE-val and Drishti-GS1."""
    rows = []
    refuge = read_dataset(data / "refuge-val")
    for rid, split in sorted(stratified_split(refuge, REFUGE_FRACTIONS, seed).items()):
        rows.append(("refuge-val", rid, split))
    drishti = read_dataset(data / "drishti-gs1")
    official_train = [r for r in drishti if r.split == "train"]
    frac_val = DRISHTI_VAL / len(official_train)
    inner = stratified_split(official_train, (1.0 - frac_val, frac_val, 0.0), seed)
    for r in sorted(drishti, key=lambda r: r.id):
        rows.append(("drishti-gs1", r.id, inner[r.id] if r.split == "train" else "test"))
    return rows


def write_splits(rows: list[tuple[str, str, str]], path: Path = SPLITS_CSV) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["source", "id", "split"])
        w.writerows(rows)


def load_splits(path: Path = SPLITS_CSV) -> dict[tuple[str, str], str]:
    """(source folder, id) -> 'train' | 'val' | 'test'."""
    if not path.exists():
        raise FileNotFoundError(f"no split file at {path}; run `python -m models.splits`")
    with open(path, newline="") as f:
        return {(row["source"], row["id"]): row["split"] for row in csv.DictReader(f)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=SPLITS_CSV)
    args = parser.parse_args(argv)
    rows = make_splits(args.data)
    write_splits(rows, args.out)
    counts: dict[tuple[str, str], int] = {}
    for source, _, split in rows:
        counts[(source, split)] = counts.get((source, split), 0) + 1
    print(", ".join(f"{s}/{p}: {n}" for (s, p), n in sorted(counts.items())))


if __name__ == "__main__":
    main()
