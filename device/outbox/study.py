"""An outbox item as DICOM files: the eye's photo, disc/cup masks and result read from the visit log and
its image store, mapped by `device.outbox.dicom`, and written as bytes in the order they are sent.
The sync and the USB export both take this one path, so a stick and the PACS get the same files."""
from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

from pydicom import dcmwrite

from device.outbox.dicom import EyeStudy, build_datasets
from device.visits.imagestore import CorruptImageError
from device.visits.visitlog import VisitLog, decode_masks
from models.runtime.images import ImageError


def eye_study(visits: VisitLog, item_id: int, *, device_id: str) -> EyeStudy:
    """The EyeStudy of one outbox item, from the visit log and its image store. The unit that took the photo
    (the visit's device_id) signs it; `device_id` stands in for visits recorded without one."""
    eye = visits.outbox_eye(item_id)
    visit, patient, capture, result = eye["visit"], eye["patient"], eye["capture"], eye["result"]
    disc = cup = None
    if result.get("masks_sha256"):
        disc, cup = decode_masks(visits.images.get(result["masks_sha256"]))
    return EyeStudy(
        visit_uuid=visit["uuid"], eye=eye["item"]["eye"], device_id=visit["device_id"] or device_id,
        patient_id=patient["identifier"], patient_name=patient["name"], year_of_birth=patient["year_of_birth"],
        sex=patient["sex"], captured_at=dt.datetime.fromisoformat(capture["captured_at"]),
        photo_jpeg=visits.images.get(capture["photo_sha256"]), disc_mask=disc, cup_mask=cup,
        result=result["screening"], calibration=capture.get("calibration"), light_dose=eye.get("light_dose"))


UNENCODABLE = (ValueError, LookupError, FileNotFoundError, CorruptImageError, ImageError)


@dataclass(frozen=True)
class Unencodable:
    """Why an eye cannot become DICOM (a damaged image, a bad mask): sending it again will not help."""

    reason: str


def encode_item(visits: VisitLog, item_id: int, device_id: str) -> list[bytes] | Unencodable:
    """The item's DICOM files (photo, segmentation where there are masks, report) as bytes, in the order sent."""
    try:
        study = eye_study(visits, item_id, device_id=device_id)
    except UNENCODABLE as exc:
        return Unencodable(str(exc))
    return encode_study(study)


def encode_study(study: EyeStudy) -> list[bytes] | Unencodable:
    try:
        datasets = build_datasets(study)
    except UNENCODABLE as exc:
        return Unencodable(str(exc))
    files = []
    for ds in datasets:
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files
