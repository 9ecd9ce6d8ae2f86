"""The public datasets' own layouts, and which one a folder is in.

A researcher who holds ORIGA, PAPILA or G1020 points `read_dataset` at the folder the download
unpacked to; the layout is recognised by the files each release ships with:

| layout | recognised by | photos | outlines | labels |
|---|---|---|---|---|
| shared | `labels.csv` | `images/` | `masks/*.png`, REFUGE grey levels | `labels.csv` (+ `details.csv`) |
| REFUGE | `index.json` (here or one folder down) | `Images/` ... | `gts/*.bmp` ..., REFUGE grey levels | `index.json` |
| ORIGA | `OrigaList.csv` | `Images/*.jpg` | `Masks/*.png` or `*.mat`, 0/1/2 labels | `OrigaList.csv`: Filename, ExpCDR, Eye, Set, Glaucoma |
| PAPILA | `FundusImages/` | `FundusImages/RET*.jpg` | `ExpertsSegmentations/Contours/*_{disc,cup}_exp1.txt` | `ClinicalData/patient_data_{od,os}.csv` |
| G1020 | `G1020.csv` | `Images/*.jpg` | `Masks/*.png`, 0/1/2 labels | `G1020.csv`: imageID, binaryLabels |

A folder that holds one of these one level down (an archive's top folder) is read too.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from models.datasets import (
    Annotation,
    DatasetError,
    Record,
    eye_from,
    find_image,
    find_refuge_index,
    optional_float,
    optional_int,
    read_refuge_index,
    read_shared,
)


@dataclass(frozen=True)
class Layout:
    name: str
    looks_for: str  # what a person should put in the folder, for the error message
    matches: Callable[[Path], bool]
    read: Callable[[Path], list[Record]]


def _images_folder(root: Path) -> Path:
    for name in ("Images", "images", "IMAGES"):
        if (root / name).is_dir():
            return root / name
    raise DatasetError(f"{root} has no Images/ folder beside its list of photos")


def _csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows with stripped keys and values (the releases' CSVs carry stray spaces and a BOM)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(f)]


def _column(row: dict[str, str], *names: str) -> str | None:
    lowered = {k.lower(): v for k, v in row.items()}
    for name in names:
        if lowered.get(name.lower()):
            return lowered[name.lower()]
    return None


def _photo(images: Path, name: str) -> Path | None:
    return images / name if (images / name).is_file() else find_image(images, Path(name).stem)


def _listed_photo(table: Path, row: dict, images: Path, *columns: str) -> tuple[str, Path]:
    """The photo a table's row names (under the first of `columns` it has), which must exist."""
    name = _column(row, *columns)
    if not name:
        raise DatasetError(f"{table}: a row has no {columns[0]}")
    image = _photo(images, name)
    if image is None:
        raise DatasetError(f"{table.name} names {name} but {images} has no such photo")
    return name, image


# ---------------------------------------------------------------- ORIGA

ORIGA_SETS = {"A": "train", "B": "test"}  # the release's two halves of 325 photos, used as train / test


def read_origa(root: Path) -> list[Record]:
    """ORIGA (650 photos, Singapore Malay Eye Study): `Set` A/B become the train/test split; `ExpCDR` is
    the graders' cup-to-disc ratio. The release names no patients, so each photo stands alone."""
    images = _images_folder(root)
    mask_folders = [root / n for n in ("Masks", "masks", "Semi-automatic-annotations") if (root / n).is_dir()]
    records = []
    for row in _csv_rows(root / "OrigaList.csv"):
        name, image = _listed_photo(root / "OrigaList.csv", row, images, "Filename", "Image", "filename")
        stem = Path(name).stem
        annotation = None
        for folder in mask_folders:
            if (folder / f"{stem}.png").is_file():
                annotation = Annotation("labels", folder / f"{stem}.png")
            elif (folder / f"{stem}.mat").is_file():
                annotation = Annotation("mat", folder / f"{stem}.mat")
            if annotation is not None:
                break
        records.append(Record(
            id=stem, source="ORIGA", image_path=image, glaucoma=optional_int(_column(row, "Glaucoma", "Label")),
            vcdr=optional_float(_column(row, "ExpCDR", "CDR")),
            split=ORIGA_SETS.get((_column(row, "Set") or "").upper()), eye=eye_from(_column(row, "Eye")),
            annotation=annotation))
    return records


# ---------------------------------------------------------------- PAPILA

PAPILA_DIAGNOSIS = {0: 0, 1: 1, 2: None}  # healthy, glaucoma, suspect (neither: no label)


def read_papila(root: Path) -> list[Record]:
    """PAPILA (488 photos of both eyes of 244 patients): outlines are expert 1's contours (expert 2's
    where expert 1 drew none); the diagnosis comes from the clinical sheets exported as CSV, since
    reading .xlsx would need a spreadsheet library the unit does not carry."""
    photos = sorted(p for p in (root / "FundusImages").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    contours = root / "ExpertsSegmentations" / "Contours"
    clinical = _papila_clinical(root / "ClinicalData")
    records = []
    for image in photos:
        m = re.fullmatch(r"RET(\d+)(OD|OS)", image.stem, re.IGNORECASE)
        patient, side = (f"{int(m.group(1)):03d}", m.group(2).upper()) if m else (None, None)
        disc = _first_file(contours, [f"{image.stem}_disc_exp1.txt", f"{image.stem}_disc_exp2.txt"])
        cup = _first_file(contours, [f"{image.stem}_cup_exp1.txt", f"{image.stem}_cup_exp2.txt",
                                     f"{image.stem}_cup_e_exp2.txt"])
        records.append(Record(
            id=image.stem, source="PAPILA", image_path=image,
            glaucoma=clinical.get((patient, side)) if patient and side else None,
            eye=eye_from(side), patient=patient,
            annotation=Annotation("contours", disc, cup) if disc is not None else None))
    return records


def _first_file(folder: Path, names: list[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _papila_clinical(folder: Path) -> dict[tuple[str, str], int | None]:
    """(patient, 'OD'|'OS') -> glaucoma label, from patient_data_od.csv and patient_data_os.csv."""
    out: dict[tuple[str, str], int | None] = {}
    for side in ("OD", "OS"):
        sheet = folder / f"patient_data_{side.lower()}.csv"
        if not sheet.is_file():
            if (folder / f"patient_data_{side.lower()}.xlsx").is_file():
                raise DatasetError(
                    f"{folder / f'patient_data_{side.lower()}.xlsx'} is a spreadsheet this project cannot read "
                    f"(no .xlsx library on the unit): save both sheets as CSV beside them "
                    f"(patient_data_od.csv, patient_data_os.csv) and read the folder again")
            continue
        with open(sheet, newline="", encoding="utf-8-sig") as f:
            rows = [[c.strip() for c in r] for r in csv.reader(f)]
        # The sheets carry two or three heading rows (grouped headings over the column names), and ID and
        # Diagnosis need not be on the same one: take each column from whichever row names it.
        id_col = _heading_column(rows, "id") or 0
        dx_col = _heading_column(rows, "diagnosis")
        if dx_col is None:
            raise DatasetError(f"{sheet} has no Diagnosis column")
        for r in rows:
            m = re.fullmatch(r"#?(\d+)", r[id_col] if len(r) > id_col else "")
            if not m or len(r) <= dx_col or not r[dx_col]:
                continue
            try:
                diagnosis = int(float(r[dx_col]))
            except ValueError:
                raise DatasetError(f"{sheet}: patient {r[id_col]} has diagnosis {r[dx_col]!r}, not 0, 1 or 2") from None
            out[(f"{int(m.group(1)):03d}", side)] = PAPILA_DIAGNOSIS.get(diagnosis)
    return out


def _heading_column(rows: list[list[str]], name: str) -> int | None:
    for r in rows:
        for i, cell in enumerate(r):
            if cell.lower() == name:
                return i
    return None


# ---------------------------------------------------------------- G1020

def read_g1020(root: Path) -> list[Record]:
    """G1020 (1020 photos, 432 patients): a patient column is used where the CSV has one. Photos whose
    cup was not outlined decode with an empty cup."""
    images = _images_folder(root)
    masks = next((root / n for n in ("Masks", "masks") if (root / n).is_dir()), None)
    records = []
    for row in _csv_rows(root / "G1020.csv"):
        name, image = _listed_photo(root / "G1020.csv", row, images, "imageID", "image", "filename")
        stem = Path(name).stem
        mask = masks / f"{stem}.png" if masks is not None else None
        records.append(Record(
            id=stem, source="G1020", image_path=image, glaucoma=optional_int(_column(row, "binaryLabels", "label")),
            patient=_column(row, "patientID", "patient_id", "patient"),
            annotation=Annotation("labels", mask) if mask is not None and mask.is_file() else None))
    return records


# ---------------------------------------------------------------- which layout

def _is_grape(folder: Path) -> bool:
    return ((folder / "eyes.csv").is_file() and (folder / "visits.csv").is_file()) or \
        any(folder.glob("*[Cc]linical [Ii]nformation*"))


def _read_refuge(folder: Path) -> list[Record]:
    index = find_refuge_index(folder)
    if index is None:  # `detect` only picks this layout where the index is there
        raise DatasetError(f"{folder} has no REFUGE index.json, here or one folder down")
    return read_refuge_index(index)


def _not_here(folder: Path) -> list[Record]:
    raise DatasetError(f"{folder} is GRAPE's longitudinal layout (eyes and visits, not single annotated photos): "
                       f"read it with models.grape.read_grape")


LAYOUTS = (
    Layout("shared", "labels.csv beside images/ and masks/", lambda f: (f / "labels.csv").is_file(), read_shared),
    Layout("ORIGA", "OrigaList.csv beside Images/ and Masks/", lambda f: (f / "OrigaList.csv").is_file(), read_origa),
    Layout("G1020", "G1020.csv beside Images/ and Masks/", lambda f: (f / "G1020.csv").is_file(), read_g1020),
    Layout("PAPILA", "FundusImages/, ExpertsSegmentations/Contours/ and ClinicalData/",
           lambda f: (f / "FundusImages").is_dir(), read_papila),
    Layout("REFUGE", "index.json beside an images folder (here or one folder down)",
           lambda f: find_refuge_index(f) is not None, _read_refuge),
    Layout("GRAPE", "eyes.csv and visits.csv", _is_grape, _not_here),
)


def detect(folder: Path) -> tuple[Layout, Path]:
    """The layout of `folder`, or of the one dataset folder directly inside it."""
    for layout in LAYOUTS:
        if layout.matches(folder):
            return layout, folder
    inside = [(layout, child) for child in sorted(p for p in folder.iterdir() if p.is_dir())
              for layout in LAYOUTS[:4] if layout.matches(child)]
    if len(inside) == 1:
        return inside[0]
    if inside:
        found = ", ".join(f"{layout.name} in {child.name}/" for layout, child in inside)
        raise DatasetError(f"{folder} holds several datasets ({found}): pass each folder on its own")
    known = "; ".join(f"{layout.name}: {layout.looks_for}" for layout in LAYOUTS)
    raise DatasetError(f"{folder} is not in a dataset layout this project reads. Known layouts - {known}")


def read_any(folder: Path) -> list[Record]:
    layout, root = detect(Path(folder))
    return layout.read(root)
