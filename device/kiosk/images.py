"""Photos and overlays from the image store, only to a signed-in worker and never cached; and a
close-up of the optic disc, where the cup a worker is asked about is only a few dozen pixels of
the whole photo."""
from __future__ import annotations

import cv2
import numpy as np
from flask import Blueprint, Response, abort

from device.kiosk import get_unit
from device.visits.visitlog import EYES

bp = Blueprint("images", __name__)

_TYPES = ((b"\xff\xd8", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"))
ZOOM_DISC_DIAMETERS = 2.5   # the close-up shows the disc with a rim of retina around it
ZOOM_SIZE = 480             # pixels square: sharp on a 1280x800 screen, small enough for a Pi to make


@bp.get("/images/<sha256>")
def image(sha256: str):
    store = get_unit().visits.images
    try:
        data = store.get(sha256)
    except (ValueError, FileNotFoundError):
        abort(404)
    kind = next((t for magic, t in _TYPES if data.startswith(magic)), None)
    if kind is None:
        abort(404)  # not a picture (the store holds only photos, overlays and masks)
    return Response(data, mimetype=kind)


def disc_close_up(jpeg: bytes, disc: dict) -> bytes:
    """A square crop of the overlay centred on the disc, padded with black where it meets the edge."""
    photo = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if photo is None:
        abort(404)
    half = max(8, int(round(ZOOM_DISC_DIAMETERS * max(disc["vertical_diameter"], disc["horizontal_diameter"]) / 2)))
    cx, cy = int(round(disc["cx"])), int(round(disc["cy"]))
    padded = cv2.copyMakeBorder(photo, half, half, half, half, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    crop = padded[cy:cy + 2 * half, cx:cx + 2 * half]
    crop = cv2.resize(crop, (ZOOM_SIZE, ZOOM_SIZE), interpolation=cv2.INTER_AREA if 2 * half > ZOOM_SIZE else cv2.INTER_CUBIC)
    ok, out = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        abort(404)
    return out.tobytes()


@bp.get("/visits/<visit_uuid>/eye/<eye>/disc.jpg")
def disc_zoom(visit_uuid: str, eye: str):
    visits = get_unit().visits
    if eye not in EYES:
        abort(404)
    try:
        result = visits.get_visit(visit_uuid)["eyes"][eye]["result"]
    except LookupError:
        abort(404)
    disc = result and result["screening"].get("disc")
    if not disc or not result.get("overlay_sha256"):
        abort(404)
    return Response(disc_close_up(visits.images.get(result["overlay_sha256"]), disc), mimetype="image/jpeg")


@bp.get("/visits/<visit_uuid>/eye/<eye>/compare/<which>.jpg")
def compare(visit_uuid: str, eye: str, which: str):
    """The earlier (`which` = earlier) or today's (current) close-up of a lined-up comparison, in today's frame."""
    from device.kiosk.comparison import NotComparable, close_up, lined_up

    visits = get_unit().visits
    if eye not in EYES or which not in ("earlier", "current"):
        abort(404)
    try:
        state = visits.get_visit(visit_uuid)["eyes"][eye]
        result = state["result"]
        screening = result["screening"]
        progression = screening.get("progression") or {}
        matrix, disc = lined_up(progression), screening.get("disc")
        if matrix is None or not disc:
            abort(404)
        if which == "current":
            photo, masks, move = state["capture"]["photo_sha256"], result.get("masks_sha256"), None
        else:
            before = visits.get_visit(progression["earlier_visit"])["eyes"][eye]
            photo, masks, move = progression["earlier_photo"], (before["result"] or {}).get("masks_sha256"), matrix
        jpeg = close_up(visits.images.get(photo), visits.images.get(masks) if masks else None, disc, move)
    except (LookupError, TypeError, ValueError, FileNotFoundError, NotComparable):
        abort(404)
    return Response(jpeg, mimetype="image/jpeg")
