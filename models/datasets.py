"""Annotated fundus photos as one record type, whichever layout they arrive in.

A researcher points training or evaluation at the data they hold, as it came, without converting
it first. `read_dataset` recognises the layout from the folder: the project's shared layout
(images/, masks/, labels.csv), the REFUGE challenge's own (index.json), and the public releases of
ORIGA, PAPILA and G1020 (`models.readers`). GRAPE's longitudinal layout is read by `models.grape`.

Each source draws its outlines its own way (REFUGE grey levels, 0/1/2 label images, MATLAB files,
contour point lists); `Record.load_mask` turns any of them into the same disc and cup masks.

The shared layout's labels.csv has one row per photo: `id,glaucoma,vcdr,split,source,camera`, an empty
cell meaning "not known". Optional columns: `patient` (or `patient_id`), `eye` (or `laterality`),
`fovea_x`/`fovea_y`, and `gradable` (1 = a person judged the photo good enough to grade, 0 = not,
empty = nobody said). `gradable` is what the quality gate's false rejections are counted against.
Without the column it is unknown, except in the `other-cameras` folder (KNOWN_GRADABLE_FOLDERS),
whose research photos were all chosen and annotated by their curators, i.e. judged gradable.
"""
from __future__ import annotations

import csv
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# The mask codec is the unit's too: it lives with the run-time image codec, and is re-exported for the readers' callers.
from models.runtime.images import CUP_BELOW, DISC_BELOW, decode_mask, encode_mask  # noqa: F401 - re-exported for the readers' callers

# The shared data sits beside the checkout; GLAUCOSCREEN_SHARED_DATA points elsewhere (as in the tests).
DEFAULT_DATA = Path(os.environ.get("GLAUCOSCREEN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
REFUGE_IMAGE_FOLDERS = ("images", "Images", "Training400", "Validation400", "Test400", "img", "imgs")
REFUGE_MASK_FOLDERS = ("masks", "Masks", "gts", "GT", "Disc_Cup_Masks", "Annotation-Training400", "mask")
# Shared-layout folders whose every photo is known to be gradable though labels.csv has no `gradable`
# column: public research sets whose curators picked and annotated each photo (other-cameras/README.md).
KNOWN_GRADABLE_FOLDERS = ("other-cameras",)


class DatasetError(ValueError):
    """A dataset folder that cannot be read; the message says what was expected."""


MASK_CODINGS = {
    "refuge": "grey levels: 0 cup, 128 disc rim, 255 background (REFUGE, the shared layout)",
    "labels": "label image: 0 background, 1 disc rim, 2 cup (G1020, ORIGA's PNG masks)",
    "mat": "MATLAB v5 .mat file holding a 0/1/2 label image (ORIGA)",
    "contours": "text files of x y outline points, one for the disc and one for the cup (PAPILA)",
}


@dataclass(frozen=True)
class Annotation:
    """Where a photo's disc and cup outlines are and how they are written (a key of MASK_CODINGS)."""

    coding: str
    path: Path
    cup_path: Path | None = None  # contours: the cup has a file of its own

    def __post_init__(self):
        if self.coding not in MASK_CODINGS:
            raise ValueError(f"unknown mask coding {self.coding!r}; known: {', '.join(MASK_CODINGS)}")

    def load(self, shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(disc, cup) boolean masks; the disc includes the cup. Contours need the photo's shape."""
        if self.coding == "refuge":
            return load_mask(self.path)
        if self.coding == "labels":
            labels = cv2.imread(str(self.path), cv2.IMREAD_UNCHANGED)
            if labels is None:
                raise DatasetError(f"mask {self.path} is missing or not an image")
            return decode_labels(labels)
        if self.coding == "mat":
            return decode_labels(read_mat_mask(self.path))
        if shape is None:
            raise ValueError("outline points need the photo's height and width to be drawn")
        height_width = (shape[0], shape[1])
        disc = draw_outline(read_outline(self.path), height_width)
        cup = draw_outline(read_outline(self.cup_path), height_width) & disc if self.cup_path else np.zeros_like(disc)
        return disc, cup


@dataclass
class Record:
    """One photo with what is known about it; unknown fields are None.

    `mask_path` is a mask image in REFUGE coding (what older code reads directly); `annotation` says
    where the outlines are in any coding, so `load_mask()` is the way to read them. `patient` groups
    the photos of one person (both eyes, repeat photos) for splits and confidence intervals.
    """

    id: str
    source: str
    image_path: Path
    mask_path: Path | None = None
    glaucoma: int | None = None
    vcdr: float | None = None
    split: str | None = None
    fovea: tuple[float, float] | None = None
    camera: str | None = None
    patient: str | None = None
    eye: str | None = None  # "right" (OD) or "left" (OS)
    annotation: Annotation | None = None
    gradable: int | None = None  # 1: a person judged the photo gradable, 0: not; None: nobody said

    def __post_init__(self):
        if self.annotation is None and self.mask_path is not None:
            self.annotation = Annotation("refuge", Path(self.mask_path))

    @property
    def has_mask(self) -> bool:
        return self.annotation is not None

    def load_mask(self, shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The experts' (disc, cup) on the photo's pixel grid; `shape` spares reading the photo for contours."""
        if self.annotation is None:
            raise DatasetError(f"{self.source} {self.id} has no disc/cup outlines")
        if shape is None and self.annotation.coding == "contours":
            shape = image_shape(self.image_path)
        return self.annotation.load(shape)


def read_dataset(folder: str | Path) -> list[Record]:
    """Read a dataset folder in any layout this project knows; the error names them all when none fits."""
    from models import readers  # the public datasets' own layouts build on the record type above

    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {folder}")
    return readers.read_any(folder)


def eye_from(text: str | None) -> str | None:
    """'OD' / 'R' / 'right' -> 'right'; 'OS' / 'L' / 'left' -> 'left'; anything else None."""
    t = (text or "").strip().lower()
    if t in ("od", "r", "right", "re"):
        return "right"
    if t in ("os", "l", "left", "le"):
        return "left"
    return None


def image_shape(path: Path) -> tuple[int, int]:
    """Height and width of a photo file."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DatasetError(f"photo {path} is missing or not an image")
    return image.shape[:2]


def optional_int(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(float(text)) if text else None


def optional_float(text: str | None) -> float | None:
    text = (text or "").strip()
    return float(text) if text else None


def gradable_from(text: str | None, where: str) -> int | None:
    """The `gradable` column: 1, 0 or empty; anything else is refused rather than guessed, since it
    decides which rejections count as false ones."""
    text = (text or "").strip()
    if text not in ("", "0", "1"):
        raise DatasetError(f"{where}: gradable must be 1, 0 or empty, not {text!r}")
    return int(text) if text else None


def default_gradable(folder: Path) -> int | None:
    """Gradability of a photo whose labels.csv has no `gradable` column: 1 in KNOWN_GRADABLE_FOLDERS, else unknown."""
    return 1 if folder.name in KNOWN_GRADABLE_FOLDERS else None


def find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.exists():
                return candidate
    return None


def read_shared(folder: Path) -> list[Record]:
    """The shared layout; a details.csv beside labels.csv (the synthetic generator writes one) adds the
    fovea and the eye where labels.csv has no column for them."""
    details: dict[str, dict] = {}
    if (folder / "details.csv").exists():
        with open(folder / "details.csv", newline="") as f:
            details = {row["id"].strip(): row for row in csv.DictReader(f) if row.get("id")}
    records = []
    with open(folder / "labels.csv", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "id" not in reader.fieldnames:
            raise DatasetError(f"{folder / 'labels.csv'} has no 'id' column")
        says_gradable = "gradable" in reader.fieldnames
        for row in reader:
            rid = row["id"].strip()
            row = {**details.get(rid, {}), **{k: v for k, v in row.items() if (v or "").strip()}}
            image = find_image(folder / "images", rid)
            if image is None:
                raise DatasetError(f"{folder.name}: labels.csv names {rid} but images/ has no photo of that name")
            mask = folder / "masks" / f"{rid}.png"
            fx, fy = optional_float(row.get("fovea_x")), optional_float(row.get("fovea_y"))
            records.append(Record(
                id=rid, source=(row.get("source") or folder.name).strip(), image_path=image,
                mask_path=mask if mask.exists() else None, glaucoma=optional_int(row.get("glaucoma")),
                vcdr=optional_float(row.get("vcdr")), split=(row.get("split") or "").strip() or None,
                fovea=(fx, fy) if fx is not None and fy is not None else None,
                camera=(row.get("camera") or "").strip() or None,
                patient=(row.get("patient") or row.get("patient_id") or "").strip() or None,
                eye=eye_from(row.get("eye") or row.get("laterality")),
                gradable=(gradable_from(row.get("gradable"), f"{folder.name} {rid}") if says_gradable
                          else default_gradable(folder))))
    return records


def find_refuge_index(folder: Path) -> Path | None:
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


def read_refuge_index(index: Path) -> list[Record]:
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
        image = images / name if (images / name).exists() else find_image(images, stem)
        if image is None:
            raise DatasetError(f"{index} names {name} but {images} has no such photo")
        mask = None
        if masks is not None:
            mask = masks / f"{stem}.bmp" if (masks / f"{stem}.bmp").exists() else find_image(masks, stem)
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


def decode_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0 background / 1 disc rim / 2 cup label image -> (disc, cup); the disc includes the cup."""
    labels = np.asarray(labels)
    if labels.ndim == 3:
        labels = labels[..., 0]
    if labels.size and labels.max() > 2:
        raise DatasetError(f"a 0/1/2 label mask holds the value {labels.max()}: this is not that coding")
    return labels >= 1, labels >= 2


# MATLAB level 5 MAT-file: data types of the element tags and numeric array classes, as numpy dtypes
_MAT_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_MAT_MATRIX, _MAT_COMPRESSED = 14, 15
_MAT_NUMERIC_CLASSES = set(range(6, 16))


def read_mat_arrays(path: Path) -> dict[str, np.ndarray]:
    """The numeric arrays of a MATLAB v5 .mat file (compressed or not), by variable name.

    Written here because scipy is not a dependency of the unit; cells, structs and v7.3 (HDF5)
    files are refused with a message saying how to convert them.
    """
    data = Path(path).read_bytes()
    if data[:10] == b"MATLAB 7.3":
        raise DatasetError(f"{path} is a MATLAB v7.3 (HDF5) file; save it with save(..., '-v7') or as a PNG label image")
    if len(data) < 128 or not data.startswith(b"MATLAB 5.0"):
        raise DatasetError(f"{path} is not a MATLAB v5 .mat file")
    endian = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if endian is None:
        raise DatasetError(f"{path}: unreadable MAT-file header")
    arrays: dict[str, np.ndarray] = {}
    _mat_elements(data, 128, endian, arrays, path)
    return arrays


def _mat_tag(data: bytes, pos: int, endian: str) -> tuple[int, int, int, int]:
    """(type, size, data start, next element) of the element at `pos`; small elements pack into 8 bytes."""
    first, size = struct.unpack_from(endian + "II", data, pos)
    if first >> 16:
        return first & 0xFFFF, first >> 16, pos + 4, pos + 8
    return first, size, pos + 8, pos + 8 + size + (-size % 8)


def _mat_elements(data: bytes, pos: int, endian: str, arrays: dict, path: Path) -> None:
    while pos + 8 <= len(data):
        kind, size, start, following = _mat_tag(data, pos, endian)
        if kind == _MAT_COMPRESSED:
            try:
                _mat_elements(zlib.decompress(data[start:start + size]), 0, endian, arrays, path)
            except zlib.error as exc:
                raise DatasetError(f"{path}: damaged compressed variable ({exc})") from exc
            following = start + size  # compressed elements are not padded
        elif kind == _MAT_MATRIX and size:
            name, array = _mat_matrix(data[start:start + size], endian, path)
            if array is not None:
                arrays[name] = array
        pos = following


def _mat_matrix(body: bytes, endian: str, path: Path) -> tuple[str, np.ndarray | None]:
    parts: list[tuple[int, bytes]] = []
    pos = 0
    while pos + 8 <= len(body) and len(parts) < 4:
        kind, size, start, pos = _mat_tag(body, pos, endian)
        parts.append((kind, body[start:start + size]))
    if len(parts) < 3:
        raise DatasetError(f"{path}: truncated variable")
    flags = struct.unpack_from(endian + "I", parts[0][1])[0]
    dims = np.frombuffer(parts[1][1], endian + "i4")
    name = parts[2][1].decode("latin-1")
    if (flags & 0xFF) not in _MAT_NUMERIC_CLASSES or len(parts) < 4:
        return name, None  # a cell, struct, text or empty variable: not a mask
    kind, raw = parts[3]
    if kind not in _MAT_TYPES:
        raise DatasetError(f"{path}: variable {name!r} is stored in an unsupported data type {kind}")
    values = np.frombuffer(raw, endian + _MAT_TYPES[kind])
    if values.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: variable {name!r} holds {values.size} values for a {'x'.join(map(str, dims))} array")
    return name, values.reshape(tuple(int(d) for d in dims), order="F")


def read_mat_mask(path: Path, names: tuple[str, ...] = ("mask", "Mask", "gt", "label", "labels")) -> np.ndarray:
    """The label image of an ORIGA-style .mat file: the variable called mask (or the only 2-D one)."""
    arrays = read_mat_arrays(path)
    for name in names:
        if name in arrays:
            return arrays[name]
    images = [a for a in arrays.values() if a.ndim == 2 and min(a.shape) > 1]
    if len(images) == 1:
        return images[0]
    raise DatasetError(f"{path} holds no mask variable (found: {', '.join(arrays) or 'nothing numeric'})")


def read_outline(path: Path) -> np.ndarray:
    """An outline as an Nx2 array of (x, y) photo pixels, from a text file of one point per line."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise DatasetError(f"outline {path} cannot be read: {exc}") from exc
    points = []
    for line in text.splitlines():
        fields = [f for f in re.split(r"[\s,;]+", line.strip()) if f]
        if not fields:
            continue
        try:
            points.append((float(fields[0]), float(fields[1])))
        except (ValueError, IndexError):
            raise DatasetError(f"outline {path}: a line is not an x y point: {line!r}") from None
    if len(points) < 3:
        raise DatasetError(f"outline {path} has {len(points)} points; an outline needs at least 3")
    return np.asarray(points, float)


def draw_outline(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Fill a closed outline on an HxW grid (sub-pixel vertices, pixel centres at integer coordinates)."""
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [np.round(np.asarray(points) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return canvas.astype(bool)


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
