"""A screening visit: capture the right eye, then the left (live preview, quality instruction,
auto-capture or the button, or skip with a reason), screen each photo as it is taken, show the
result, finish the visit and print the patient's slip."""
from __future__ import annotations

import logging
import time

from flask import (Blueprint, Response, abort, current_app, flash, jsonify, redirect, render_template, request, session,
                   url_for)

from device.kiosk import get_unit
from device.kiosk.errors import camera_trouble, model_trouble
from device.kiosk.outcome import EYE_NAME, visit_outcome
from device.kiosk.security import passive
from device.visitlog import EYES

bp = Blueprint("screening", __name__)
log = logging.getLogger(__name__)

PREVIEW_INTERVAL_S = 0.1     # ~10 preview frames a second: smooth enough to aim, light on a Pi's CPU
PREVIEW_RESEND_S = 1.0       # an unchanged frame is sent again this often, so a closed page is noticed
STATE_FIELDS = ("running", "armed_eye", "gradable", "instruction", "reasons", "streak", "needed", "captured", "error")
SKIP_REASONS = {
    "declined": "The patient did not want this eye photographed",
    "cannot": "This eye cannot be photographed (injury, infection, artificial eye)",
}


def _visit(visit_uuid: str) -> dict:
    try:
        return get_unit().visits.get_visit(visit_uuid)
    except LookupError:
        abort(404)


def _eye(eye: str) -> str:
    if eye not in EYES:
        abort(404)
    return eye


def _next_step(visit_uuid: str):
    """The next eye still to photograph, or the result once both are screened or skipped."""
    outcome = visit_outcome(_visit(visit_uuid))
    if outcome["next_eye"]:
        return redirect(url_for("screening.capture", visit_uuid=visit_uuid, eye=outcome["next_eye"]))
    return redirect(url_for("screening.result", visit_uuid=visit_uuid))


@bp.post("/visits")
def start():
    unit = get_unit()
    patient = unit.visits.get_patient(request.form.get("patient", ""))
    if patient is None:
        abort(404)
    visit_uuid = unit.visits.start_visit(patient["identifier"], operator=session["user"], device_id=unit.config.device_id)
    return redirect(url_for("screening.capture", visit_uuid=visit_uuid, eye=EYES[0]))


@bp.get("/visits/<visit_uuid>/eye/<eye>")
def capture(visit_uuid: str, eye: str):
    """The capture page. Opening it arms the capture for this eye (a reload re-arms, as a worker expects)."""
    eye, visit = _eye(eye), _visit(visit_uuid)
    if visit["status"] == "finished":
        return redirect(url_for("screening.result", visit_uuid=visit_uuid))
    unit = get_unit()
    error = unit.capture.state()["error"]
    if error:
        log.error("capture page: %s", error)
        return camera_trouble(error)
    models = unit.status().get("models", {})
    if not models.get("ok"):
        return model_trouble(models.get("error") or "The screening model did not load.")
    unit.begin_capture(visit_uuid, eye)
    return render_template("capture.html", visit=visit, outcome=visit_outcome(visit), eye=eye, eye_name=EYE_NAME[eye])


@bp.get("/capture/state")
@passive
def capture_state():
    state = get_unit().capture.state()
    return jsonify({k: state.get(k) for k in STATE_FIELDS})


@bp.get("/capture/preview.mjpg")
@passive
def preview():
    """The live preview as MJPEG for a plain <img>; it ends when the page goes away (the next write
    fails) or after a session's length, whichever comes first."""
    capture = get_unit().capture
    limit = current_app.config["SESSION_TIMEOUT_S"]

    def frames():
        start = last_sent = time.monotonic()
        last = None
        while time.monotonic() - start < limit:
            jpeg = capture.latest_jpeg()
            now = time.monotonic()
            if jpeg is not None and (jpeg is not last or now - last_sent >= PREVIEW_RESEND_S):
                last, last_sent = jpeg, now
                yield b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg)
            time.sleep(PREVIEW_INTERVAL_S)

    return Response(frames(), mimetype="multipart/x-mixed-replace; boundary=frame",
                    headers={"X-Accel-Buffering": "no"})


@bp.post("/capture/press")
def press():
    get_unit().capture.press_button()
    return "", 204


@bp.post("/visits/<visit_uuid>/eye/<eye>/accept")
def accept(visit_uuid: str, eye: str):
    """Screen the photo the capture loop took and store it with its result."""
    eye, visit = _eye(eye), _visit(visit_uuid)
    if visit["status"] == "finished":
        return redirect(url_for("screening.result", visit_uuid=visit_uuid))
    unit = get_unit()
    photo = unit.capture.take_photo()
    if photo is None or photo.eye != eye:
        flash("No photo was taken yet. Keep the eye steady, or press “Take photo now”.", "warning")
        return redirect(url_for("screening.capture", visit_uuid=visit_uuid, eye=eye))
    unit.screen_and_record(visit_uuid, eye, photo)
    return _next_step(visit_uuid)


@bp.route("/visits/<visit_uuid>/eye/<eye>/skip", methods=["GET", "POST"])
def skip(visit_uuid: str, eye: str):
    eye, visit = _eye(eye), _visit(visit_uuid)
    if visit["status"] == "finished":
        return redirect(url_for("screening.result", visit_uuid=visit_uuid))
    choice, other, error = request.form.get("reason", ""), request.form.get("other", "").strip(), None
    if request.method == "POST":
        reason = SKIP_REASONS.get(choice) or (other if choice == "other" else "")
        if reason:
            unit = get_unit()
            unit.capture.cancel()
            unit.visits.skip_eye(visit_uuid, eye, reason)
            return _next_step(visit_uuid)
        error = "Write why this eye is skipped." if choice == "other" else "Choose why this eye is skipped."
    return render_template("skip.html", visit=visit, eye=eye, eye_name=EYE_NAME[eye], reasons=SKIP_REASONS,
                           choice=choice, other=other, error=error), 422 if error else 200


@bp.get("/visits/<visit_uuid>")
def result(visit_uuid: str):
    visit = _visit(visit_uuid)
    return render_template("result.html", visit=visit, outcome=visit_outcome(visit))


@bp.post("/visits/<visit_uuid>/finish")
def finish(visit_uuid: str):
    outcome = visit_outcome(_visit(visit_uuid))
    if outcome["next_eye"]:
        flash(f"Photograph or skip the {EYE_NAME[outcome['next_eye']].lower()} before finishing.", "warning")
        return redirect(url_for("screening.result", visit_uuid=visit_uuid))
    unit = get_unit()
    unit.capture.cancel()
    unit.visits.finalize_visit(visit_uuid)
    return redirect(url_for("screening.slip", visit_uuid=visit_uuid))


@bp.get("/visits/<visit_uuid>/slip")
def slip(visit_uuid: str):
    visit = _visit(visit_uuid)
    if visit["status"] != "finished":
        return redirect(url_for("screening.result", visit_uuid=visit_uuid))
    return render_template("slip.html", visit=visit, outcome=visit_outcome(visit))
