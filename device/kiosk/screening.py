"""A screening visit: capture the right eye, then the left (live preview, quality instruction,
auto-capture or the button, or skip with a reason), screen each photo as it is taken, show the
result, finish the visit and print the patient's slip.

A capture page arms the camera for its visit and eye and gets a capture token; the photo is recorded
only when the page that asks for it holds the token that armed the camera. A page whose camera was
taken over (another tab, another patient) is told so and records nothing. An eye that already has its
photo (or was skipped) is armed again only on the worker's explicit "Retake": Back or a reload of an
old capture page never re-arms it."""
from __future__ import annotations

import datetime as dt
import logging
import time

import segno
from flask import Blueprint, Response, abort, current_app, flash, jsonify, redirect, render_template, request, session, url_for
from flask_babel import gettext
from markupsafe import Markup

from device.kiosk import get_unit
from device.kiosk.errors import camera_trouble, model_trouble
from device.kiosk.languages import current_language, in_language
from device.kiosk.outcome import EYE_NAME, visit_outcome
from device.kiosk.security import passive
from device.kiosk.wording import CANCELLED, said
from device.screening.wording import N_
from device.unit import StaleCapture
from device.visits.visitlog import EYES

bp = Blueprint("screening", __name__)
log = logging.getLogger(__name__)

PREVIEW_INTERVAL_S = 0.1     # ~10 preview frames a second: smooth enough to aim, light on a Pi's CPU
PREVIEW_RESEND_S = 1.0       # an unchanged frame is sent again this often, so a closed page is noticed
STATE_FIELDS = ("running", "armed_eye", "gradable", "instruction", "reasons", "streak", "needed", "captured", "error")
# recorded in English with the visit (the reading centre reads them), shown in the reader's language
SKIP_REASONS = {
    "declined": N_("The patient did not want this eye photographed"),
    "cannot": N_("This eye cannot be photographed (injury, infection, artificial eye)"),
}
CANCEL_REASONS = {
    "left": N_("The patient left before the photos were taken"),
    "mistake": N_("Registered by mistake"),
    "unit": N_("The unit could not take the photos"),
}
RETAKE_KEY = "retake"  # the session's record of the one eye the worker asked to photograph again
CAMERA_TAKEN = N_("The camera is now in use for another patient or eye. Nothing was recorded from this page. "
                  "To photograph this eye, press “Use the camera here”.")


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
    """The capture page. Opening it arms the capture for this eye and binds it to this visit; an eye that
    is done is armed only after "Retake" (POST), so Back from the result page never takes a second photo."""
    eye, visit = _eye(eye), _visit(visit_uuid)
    if visit["status"] == "finished":
        return redirect(url_for("screening.result", visit_uuid=visit_uuid))
    status = next(e["status"] for e in visit_outcome(visit)["eyes"] if e["eye"] == eye)
    if status != "waiting" and session.get(RETAKE_KEY) != f"{visit_uuid}:{eye}":
        flash(gettext("The %(eye)s is done. To photograph it again, press “Retake”.", eye=EYE_NAME[eye].lower()), "info")
        return _next_step(visit_uuid)
    unit = get_unit()
    error = unit.capture.state()["error"]
    if error:
        log.error("capture page: %s", error)
        return camera_trouble(error)
    models = unit.status().get("models", {})
    if not models.get("ok"):
        return model_trouble(models.get("error"), gettext("The screening model did not load."))
    token = unit.begin_capture(visit_uuid, eye)
    return render_template("capture.html", visit=visit, outcome=visit_outcome(visit), eye=eye, eye_name=EYE_NAME[eye],
                           capture_token=token, camera_taken=gettext(CAMERA_TAKEN))


@bp.post("/visits/<visit_uuid>/eye/<eye>/retake")
def retake(visit_uuid: str, eye: str):
    """The worker asks to photograph this eye (again): the one way a done eye's capture page arms the camera."""
    eye, visit = _eye(eye), _visit(visit_uuid)
    if visit["status"] == "finished":
        return redirect(url_for("screening.result", visit_uuid=visit_uuid))
    session[RETAKE_KEY] = f"{visit_uuid}:{eye}"
    return redirect(url_for("screening.capture", visit_uuid=visit_uuid, eye=eye))


@bp.get("/capture/state")
@passive
def capture_state():
    """The loop's state for a capture page; `stale` when the page's token no longer owns the camera."""
    unit = get_unit()
    state = unit.capture.state()
    out = {k: state.get(k) for k in STATE_FIELDS}
    out["instruction"] = said(out["instruction"])  # the loop says it in English; the worker reads it in theirs
    token = request.args.get("token")
    if token is not None:
        out["stale"] = unit.capture_bound_to(token) is None
        if out["stale"]:
            out["captured"] = False
    return jsonify(out)


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
    """The on-screen capture button: it presses only for the page that armed the camera."""
    if not get_unit().capture.press_button(request.form.get("token", "")):
        return jsonify({"stale": True, "message": gettext(CAMERA_TAKEN)}), 409
    return "", 204


@bp.post("/visits/<visit_uuid>/eye/<eye>/accept")
def accept(visit_uuid: str, eye: str):
    """Screen the photo the capture loop took and store it with its result."""
    eye, visit = _eye(eye), _visit(visit_uuid)
    if visit["status"] == "finished":
        return redirect(url_for("screening.result", visit_uuid=visit_uuid))
    unit = get_unit()
    try:
        photo = unit.take_capture(visit_uuid, eye, request.form.get("token", ""))
    except StaleCapture:
        log.warning("a stale capture page for visit %s, %s eye, asked for a photo: nothing recorded", visit_uuid, eye)
        return render_template("camera_taken.html", visit=visit, eye=eye, eye_name=EYE_NAME[eye],
                               message=gettext(CAMERA_TAKEN)), 409
    if photo is None or photo.eye != eye:
        flash(gettext("No photo was taken yet. Keep the eye steady, or press “Take photo now”."), "warning")
        return redirect(url_for("screening.capture", visit_uuid=visit_uuid, eye=eye))
    session.pop(RETAKE_KEY, None)
    unit.screen_and_record(visit_uuid, eye, photo)
    return _next_step(visit_uuid)


def reason_given(reasons: dict[str, str]) -> tuple[str, str, str]:
    """The form's choice, the worker's own words, and the reason they make ("" when none was given)."""
    choice, other = request.form.get("reason", ""), request.form.get("other", "").strip()
    return choice, other, reasons.get(choice) or (other if choice == "other" else "")


@bp.route("/visits/<visit_uuid>/eye/<eye>/skip", methods=["GET", "POST"])
def skip(visit_uuid: str, eye: str):
    eye, visit = _eye(eye), _visit(visit_uuid)
    if visit["status"] == "finished":
        return redirect(url_for("screening.result", visit_uuid=visit_uuid))
    choice, other, reason = reason_given(SKIP_REASONS)
    error = None
    if request.method == "POST":
        if reason:
            unit = get_unit()
            unit.cancel_capture(visit_uuid)
            unit.visits.skip_eye(visit_uuid, eye, reason)
            session.pop(RETAKE_KEY, None)
            return _next_step(visit_uuid)
        error = gettext("Write why this eye is skipped.") if choice == "other" else gettext("Choose why this eye is skipped.")
    return render_template("skip.html", visit=visit, eye=eye, eye_name=EYE_NAME[eye], reasons=SKIP_REASONS,
                           choice=choice, other=other, error=error), 422 if error else 200


@bp.route("/visits/<visit_uuid>/cancel", methods=["GET", "POST"])
def cancel(visit_uuid: str):
    """End a visit that cannot be finished, with a reason: what was photographed is kept and sent."""
    visit = _visit(visit_uuid)
    if visit["status"] == "finished":
        return redirect(url_for("screening.result", visit_uuid=visit_uuid))
    choice, other, reason = reason_given(CANCEL_REASONS)
    error = None
    if request.method == "POST":
        if reason:
            unit = get_unit()
            unit.cancel_capture(visit_uuid)
            unit.visits.close_visit(visit_uuid, CANCELLED.format(reason=reason))
            session.pop(RETAKE_KEY, None)
            name = visit["patient"]["name"] or visit["patient"]["identifier"]
            flash(gettext("%(name)s's visit was cancelled. Photos already taken are kept and sent.", name=name), "info")
            return redirect(url_for("home.index"))
        error = gettext("Write why the visit is cancelled.") if choice == "other" else gettext("Choose why the visit is cancelled.")
    return render_template("cancel.html", visit=visit, reasons=CANCEL_REASONS, choice=choice, other=other,
                           error=error), 422 if error else 200


@bp.get("/visits/<visit_uuid>")
def result(visit_uuid: str):
    visit = _visit(visit_uuid)
    return render_template("result.html", visit=visit, outcome=visit_outcome(visit))


@bp.post("/visits/<visit_uuid>/finish")
def finish(visit_uuid: str):
    outcome = visit_outcome(_visit(visit_uuid))
    if outcome["next_eye"]:
        flash(gettext("Photograph or skip the %(eye)s before finishing.", eye=EYE_NAME[outcome["next_eye"]].lower()), "warning")
        return redirect(url_for("screening.result", visit_uuid=visit_uuid))
    unit = get_unit()
    unit.cancel_capture(visit_uuid)
    unit.visits.finalize_visit(visit_uuid)
    return redirect(url_for("screening.slip", visit_uuid=visit_uuid))


@bp.get("/visits/<visit_uuid>/slip")
def slip(visit_uuid: str):
    """The patient's slip, in the patient's language (the worker's where none was recorded); the kiosk
    around it, and its buttons, stay in the worker's."""
    visit = _visit(visit_uuid)
    if visit["status"] != "finished":
        return redirect(url_for("screening.result", visit_uuid=visit_uuid))
    clinic = get_unit().config.clinic
    go_by = dt.datetime.fromisoformat(visit["started_at"]).astimezone().date() + dt.timedelta(days=clinic.refer_within_days)
    qr = segno.make(visit["uuid"], error="m").svg_inline(scale=3, dark="#000", omitsize=False)
    worker_language = current_language()
    with in_language(visit["patient"].get("language")) as language:
        article = render_template("_slip.html", visit=visit, outcome=visit_outcome(visit), clinic=clinic, go_by=go_by,
                                  visit_qr=Markup(qr), language=language)
    return render_template("slip.html", visit=visit, slip=Markup(article), slip_language=language,
                           worker_language=worker_language)
