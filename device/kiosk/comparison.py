"""The earlier and today's photo of an eye, lined up, as a reader compares them: the same close-up window
of the disc on both, each with its own disc (green) and cup (yellow) outlines, side by side or flickering.

The earlier photo and its outlines are moved into today's frame with the matrix the progression step
found and stored (`Assessment.registration`), so what is shown is what was measured, and showing it
needs no network and no second registration. Nothing is drawn where that step did not line the photos up.
"""
from __future__ import annotations

import cv2
import numpy as np

from device.visits.visitlog import decode_masks

ZOOM_DISC_DIAMETERS = 2.5  # as the result page's close-up
SIZE = 360  # pixels square: two side by side fit a 800x480 screen's eye column
DISC, CUP = (40, 220, 40), (255, 220, 0)


class NotComparable(LookupError):
    """The visit holds no lined-up comparison to show."""


def _window(disc: dict) -> np.ndarray:
    """Today's photo pixels -> the close-up's, 3 x 3."""
    half = max(8.0, ZOOM_DISC_DIAMETERS * max(disc["vertical_diameter"], disc["horizontal_diameter"]) / 2)
    s = SIZE / (2 * half)
    return np.array([[s, 0, -(disc["cx"] - half) * s], [0, s, -(disc["cy"] - half) * s], [0, 0, 1]])


def close_up(photo_jpeg: bytes, masks_png: bytes | None, disc: dict, matrix: list[list[float]] | None = None) -> bytes:
    """One visit's close-up in today's frame (`matrix`: its photo -> today's photo; None for today's own)."""
    photo = cv2.imdecode(np.frombuffer(photo_jpeg, np.uint8), cv2.IMREAD_COLOR)
    if photo is None:
        raise NotComparable("the photo could not be read")
    m = _window(disc)
    if matrix is not None:
        m = m @ np.vstack([np.asarray(matrix, float), [0, 0, 1]])
    f = max(1, int(1 / np.sqrt(abs(np.linalg.det(m[:2, :2])))))
    if f > 1:  # shrink most of the way with an area filter first, as the disc close-up does
        photo = cv2.resize(photo, (max(1, photo.shape[1] // f), max(1, photo.shape[0] // f)), interpolation=cv2.INTER_AREA)
    shrink = np.diag([f, f, 1.0])
    out = cv2.warpAffine(photo, (m @ shrink)[:2], (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    if masks_png is not None:
        thick = max(2, SIZE // 180)
        for mask, colour in zip(decode_masks(masks_png), (DISC, CUP)):
            moved = cv2.warpAffine(mask.astype(np.uint8) * 255, m[:2], (SIZE, SIZE), flags=cv2.INTER_LINEAR) >= 128
            contours, _ = cv2.findContours(moved.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, colour[::-1], thick, lineType=cv2.LINE_AA)  # BGR, as decoded
    ok, jpeg = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise NotComparable("the close-up could not be encoded")
    return jpeg.tobytes()


def lined_up(progression: dict | None) -> list[list[float]] | None:
    """The stored matrix of a comparison whose photos were lined up, else None."""
    reg = (progression or {}).get("registration") or {}
    return reg.get("matrix") if reg.get("aligned") else None


def latest_comparisons(history: list[tuple[dict, dict]]) -> dict[str, dict | None]:
    """Per eye, the newest visit whose screening compared it with an earlier one (`visit_outcome` pairs, newest
    first): {"visit_uuid", "progression"}, or None."""
    out: dict[str, dict | None] = {}
    for visit, outcome in history:
        for e in outcome["eyes"]:
            p = (e.get("screening") or {}).get("progression") or {}
            if e["eye"] not in out and (p.get("registration") or p.get("changes")):
                out[e["eye"]] = {"visit_uuid": visit["uuid"], "progression": p}
    return out
