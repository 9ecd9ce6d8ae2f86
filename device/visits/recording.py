"""Storing a screened photo in the visit log: the one path the CLI and the kiosk both take, so a
visit recorded from the command line looks exactly like one recorded at the kiosk."""
from __future__ import annotations

import numpy as np

from device.screening.progression import EyeHistory
from device.screening.result import ScreeningResult
from device.visits.visitlog import VisitLog, encode_masks
from models.runtime.images import archived_jpeg, decode_rgb, encode_jpeg


def photo_bytes(rgb: np.ndarray, original: bytes | None = None) -> bytes:
    """The photo as archived: the camera's own JPEG, untouched, when it shows exactly `rgb` (8-bit greyscale
    or colour, upright, the same size), else `rgb` as a fine JPEG. So what is stored is what was screened,
    and a CMYK or EXIF-turned JPEG, whose pixels a PACS would read otherwise, never reaches the visit log."""
    return archived_jpeg(rgb, original)


def eye_history(visits: VisitLog, patient: str, eye: str) -> EyeHistory:
    """What the screening compares this eye with, read before the photo is screened: its finished visits
    only, so the visit being recorded (still open) is never compared with itself. A stored photo passed the
    size bound when it came in, so it is read back without one."""
    return EyeHistory(visits.eye_history(patient, eye), lambda sha: decode_rgb(visits.images.get(sha), max_pixels=None))


def record_eye(visits: VisitLog, visit_uuid: str, eye: str, rgb: np.ndarray, result: ScreeningResult,
               *, original: bytes | None = None, source: str = "camera", raw: np.ndarray | None = None,
               calibration: dict | None = None) -> dict:
    """Photo -> image store, capture row, result row with the disc/cup overlay (JPEG, for the worker) and the
    disc/cup masks (for the reading centre's Segmentation). `raw`: the still before the optic module's
    `calibration` corrected it into `rgb`, kept beside it (the PACS gets the corrected photo)."""
    capture_id = visits.add_capture(visit_uuid, eye, photo_bytes(rgb, original), quality=result.quality.to_dict(), source=source,
                                    raw_jpeg=encode_jpeg(raw, quality=95) if raw is not None else None,
                                    calibration=calibration)
    overlay = encode_jpeg(result.overlay(rgb), quality=88)
    masks = None
    if result.segmentation is not None:
        masks = encode_masks(*result.segmentation.masks_on_photo(rgb.shape))
    result_id = visits.add_result(capture_id, result, overlay=overlay, masks_png=masks)
    return {"capture_id": capture_id, "result_id": result_id}
