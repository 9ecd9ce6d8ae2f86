"""A compact copy of the training data, for training on a machine the photos must first travel to.

    python -m models.pack --out DIR [--data ../shared/data] [--splits train,val] [--max-side 1024]

Why: Drishti-GS1's photos are ~2 megapixels, but the network never sees more than a 256-pixel view of
a region three disc diameters wide, which is about a thousand source pixels; photos downscaled so the
longest side is 1024 keep every pixel the views use at least twice over, at a fifth of the bytes. Masks
are resized with nearest-neighbour so their three levels survive. GRAPE's disc crops are only ever
used at 160 pixels (192 leaves room for augmentation). The copy keeps each dataset's layout, folder names and ids, so `splits.csv` and
every reader work on it unchanged. `--splits` leaves out the photos evaluation keeps for itself.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2

from models.datasets import DEFAULT_DATA, encode_mask, read_dataset
from models.splits import load_splits

JPEG_QUALITY = 85


def _scaled(image, max_side: int, interpolation: int):
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return image
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=interpolation)


def pack_dataset(src: Path, dst: Path, max_side: int, splits: set[str] | None = None) -> int:
    """Copy one dataset folder in the shared layout; returns the number of photos written."""
    records = read_dataset(src)
    if splits is not None:
        assigned = load_splits()
        records = [r for r in records if assigned.get((src.name, r.id)) in splits]
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(parents=True, exist_ok=True)
    for r in records:
        image = cv2.imread(str(r.image_path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"unreadable photo {r.image_path}")
        cv2.imwrite(str(dst / "images" / f"{r.id}.jpg"), _scaled(image, max_side, cv2.INTER_AREA),
                    [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if r.has_mask:
            mask = encode_mask(*r.load_mask(image.shape))
            cv2.imwrite(str(dst / "masks" / f"{r.id}.png"), _scaled(mask, max_side, cv2.INTER_NEAREST))
    kept = {r.id for r in records}
    lines = (src / "labels.csv").read_text().splitlines(keepends=True)
    (dst / "labels.csv").write_text(lines[0] + "".join(line for line in lines[1:] if line.split(",", 1)[0] in kept))
    return len(records)


def pack_grape(src: Path, dst: Path, side: int) -> int:
    (dst / "rois").mkdir(parents=True, exist_ok=True)
    for name in ("eyes.csv", "visits.csv"):
        shutil.copyfile(src / name, dst / name)
    count = 0
    for path in sorted((src / "rois").glob("*.jpg")):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        cv2.imwrite(str(dst / "rois" / path.name), _scaled(image, side, cv2.INTER_AREA),
                    [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        count += 1
    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a compact copy of the training data.")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-side", type=int, default=1024, help="longest side of annotated photos")
    parser.add_argument("--grape-side", type=int, default=192, help="side of GRAPE's disc crops")
    parser.add_argument("--splits", help="comma-separated splits of splits.csv to keep (default: every photo)")
    args = parser.parse_args(argv)
    for folder in sorted(p for p in args.data.iterdir() if p.is_dir()):
        if (folder / "labels.csv").exists():
            n = pack_dataset(folder, args.out / folder.name, args.max_side,
                             set(args.splits.split(",")) if args.splits else None)
        elif (folder / "eyes.csv").exists():
            n = pack_grape(folder, args.out / folder.name, args.grape_side)
        else:
            continue
        print(f"{folder.name}: {n} photos", flush=True)


if __name__ == "__main__":
    main()
