"""Annotated fundus photos as one record type, whichever layout they arrive in.

Two layouts are read: the project's shared layout (images/, masks/, labels.csv) and the REFUGE
challenge's own (an index.json beside an images folder and a masks folder), so a researcher can
point training or evaluation at their own data without converting it first.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# The shared data sits beside the checkout; GLAUCOSCREEN_SHARED_DATA points elsewhere (as in the tests).
DEFAULT_DATA = Path(os.environ.get("GLAUCOSCREEN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
REFUGE_IMAGE_FOLDERS = ("images", "Images", "Training400", "Validation400", "Test400", "img", "imgs")
REFUGE_MASK_FOLDERS = ("masks", "Masks", "gts", "GT", "Disc_Cup_Masks", "Annotation-Training400", "mask")
# REFUGE mask coding: 0 cup, 128 rim, 255 background. Thresholds halfway between the levels absorb
# JPEG-ish noise and resampling.
CUP_BELOW = 64
DISC_BELOW = 192


class DatasetError(ValueError):
    """A dataset folder that cannot be read; the message says what was expected."""


@dataclass
class Record:
    """One photo with what is known about it; unknown fields are None."""

    id: str
    source: str
    image_path: Path
    mask_path: Path | None = None
    glaucoma: int | None = None
    vcdr: float | None = None
    split: str | None = None
    fovea: tuple[float, float] | None = None
    camera: str | None = None


def read_dataset(folder: str | Path) -> list[Record]:
    """Read a dataset folder in either the shared layout or the REFUGE index.json layout."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {folder}")
    if (folder / "labels.csv").exists():
        return _read_shared(folder)
    index = _find_index(folder)
    if index is not None:
        return _read_refuge_index(index)
    raise DatasetError(f"{folder} is not a dataset folder this project reads: expected either labels.csv beside "
                       f"images/ and masks/ (the shared layout) or a REFUGE index.json beside an images folder")


def _optional_int(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(float(text)) if text else None


def _optional_float(text: str | None) -> float | None:
    text = (text or "").strip()
    return float(text) if text else None


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.exists():
                return candidate
    return None


def _read_shared(folder: Path) -> list[Record]:
    records = []
    with open(folder / "labels.csv", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "id" not in reader.fieldnames:
            raise DatasetError(f"{folder / 'labels.csv'} has no 'id' column")
        for row in reader:
            rid = row["id"].strip()
            image = _find_image(folder / "images", rid)
            if image is None:
                raise DatasetError(f"{folder.name}: labels.csv names {rid} but images/ has no photo of that name")
            mask = folder / "masks" / f"{rid}.png"
            fx, fy = _optional_float(row.get("fovea_x")), _optional_float(row.get("fovea_y"))
            records.append(Record(
                id=rid, source=(row.get("source") or folder.name).strip(), image_path=image,
                mask_path=mask if mask.exists() else None, glaucoma=_optional_int(row.get("glaucoma")),
                vcdr=_optional_float(row.get("vcdr")), split=(row.get("split") or "").strip() or None,
                fovea=(fx, fy) if fx is not None and fy is not None else None,
                camera=(row.get("camera") or "").strip() or None))
    return records


def _find_index(folder: Path) -> Path | None:
    direct = folder / "index.json"
    if direct.exists():
        return direct
    found = sorted(folder.glob("*/index.json"))
    return found[0] if found else None


def _first_folder(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _read_refuge_index(index: Path) -> list[Record]:
    root = index.parent
    try:
        entries = json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{index} is not valid JSON: {exc}") from exc
    if isinstance(entries, dict):
        entries = [entries[k] for k in sorted(entries, key=lambda k: (len(k), k))]
    if not isinstance(entries, list):
        raise DatasetError(f"{index} should map indices to entries with ImgName")
    images = _first_folder(root, REFUGE_IMAGE_FOLDERS) or root
    masks = _first_folder(root, REFUGE_MASK_FOLDERS)
    records = []
    for entry in entries:
        name = entry.get("ImgName") if isinstance(entry, dict) else None
        if not name:
            raise DatasetError(f"{index}: an entry has no ImgName: {entry!r}")
        stem = Path(name).stem
        image = images / name if (images / name).exists() else _find_image(images, stem)
        if image is None:
            raise DatasetError(f"{index} names {name} but {images} has no such photo")
        mask = None
        if masks is not None:
            mask = masks / f"{stem}.bmp" if (masks / f"{stem}.bmp").exists() else _find_image(masks, stem)
        fx, fy = entry.get("Fovea_X"), entry.get("Fovea_Y")
        label = entry.get("Label")
        records.append(Record(
            id=stem, source="REFUGE", image_path=image, mask_path=mask,
            glaucoma=int(label) if label is not None else None, vcdr=None, split=None,
            fovea=(float(fx), float(fy)) if fx is not None and fy is not None else None, camera=None))
    return records


def load_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """REFUGE-coded mask file -> (disc, cup) boolean HxW arrays; the disc includes the cup."""
    path = Path(path)
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(f"mask {path} is missing or not an image")
    return decode_mask(mask)


def decode_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if mask.ndim == 3:
        mask = mask[..., 0]
    return mask < DISC_BELOW, mask < CUP_BELOW


def encode_mask(disc: np.ndarray, cup: np.ndarray) -> np.ndarray:
    """(disc, cup) -> REFUGE coding, uint8."""
    mask = np.full(disc.shape, 255, np.uint8)
    mask[disc] = 128
    mask[cup & disc] = 0
    return mask


def vcdr_from_masks(disc: np.ndarray, cup: np.ndarray) -> float:
    """Vertical cup-to-disc ratio as MTL-IO measures it: tallest cup column over tallest disc column."""
    disc_height = int(np.asarray(disc, bool).sum(axis=0).max(initial=0))
    if disc_height == 0:
        raise ValueError("no disc in the mask: vertical cup-to-disc ratio is undefined")
    return int(np.asarray(cup, bool).sum(axis=0).max(initial=0)) / disc_height


def disc_geometry(disc: np.ndarray) -> tuple[float, float, float]:
    """Centre (x, y) and vertical diameter of the disc, in mask pixels."""
    ys, xs = np.nonzero(disc)
    if ys.size == 0:
        raise ValueError("no disc in the mask")
    return (float(xs.min() + xs.max()) / 2.0, float(ys.min() + ys.max()) / 2.0, float(ys.max() - ys.min() + 1))
