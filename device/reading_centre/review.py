"""The grader's pages: the worklist (blueprint `home`, as the kiosk's security expects), one eye with the photo
and the unit's outlines and result, and the verdict form. A PACS that does not answer is said in words on the
page; a verdict that could not be stored keeps what the grader typed on the form. Every word is in the grader's
language; what the unit recorded in English (its reasons) is said in it too, and what the PACS answered is shown as
it came, for the IT person, marked as English."""
from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, flash, jsonify, redirect, render_template, request, session, url_for
from flask_babel import gettext, lazy_gettext

from device.outbox.codes import VERDICT_VALUES
from device.outbox.dicomweb import STORED, DicomWebError
from device.outbox.verdicts import MAX_NOTE
from device.reading_centre import get_room

bp = Blueprint("home", __name__)
log = logging.getLogger(__name__)

VERDICT_CHOICES = {
    "urgent": lazy_gettext("Urgent referral"),
    "refer": lazy_gettext("Referral"),
    "routine": lazy_gettext("Routine: no glaucoma signs"),
    "retake": lazy_gettext("Ungradable: take the photo again"),
}
assert set(VERDICT_CHOICES) == set(VERDICT_VALUES)  # the form offers exactly the coded verdicts
REFERRAL_WORDS = {"refer": lazy_gettext("Refer"), "rescreen": lazy_gettext("Take the photo again"),
                  "normal": lazy_gettext("No glaucoma signs seen")}


def _pacs_down(exc: DicomWebError):
    log.warning("reading centre: %s", exc)
    return render_template("error.html", title=gettext("The PACS did not answer"),
                           message=gettext("Try again in a moment; nothing was lost."), detail=str(exc)), 503


def init_app(app: Flask) -> None:
    from device.kiosk.outcome import EYE_NAME

    app.register_error_handler(DicomWebError, _pacs_down)
    app.jinja_env.globals.update(VERDICT_CHOICES=VERDICT_CHOICES, REFERRAL_WORDS=REFERRAL_WORDS, EYE_NAME=EYE_NAME)

    from device.kiosk.security import CSRFError

    @app.errorhandler(CSRFError)
    def _csrf(_exc):
        return render_template("error.html", title=gettext("This form has expired"),
                               message=gettext("Go back, reload the page and send it again.")), 400


@bp.get("/")
def index():
    return render_template("worklist.html", eyes=get_room().worklist())


@bp.get("/healthz")
def healthz():
    return jsonify(ok=True)


def _study_page(study_uid: str, values: dict, error: str | None, status: int = 200, detail: str | None = None):
    found = get_room().study(study_uid)
    if found is None:
        return render_template("error.html", title=gettext("No such eye"),
                               message=gettext("The PACS holds no screened eye under study %(study)s.", study=study_uid)), 404
    eye, described = found
    return render_template("study.html", eye=eye, has_photo="OP" in described, values=values, error=error,
                           detail=detail), status


@bp.get("/studies/<study_uid>")
def study(study_uid: str):
    return _study_page(study_uid, {"verdict": "", "note": ""}, None)


@bp.get("/images/<study_uid>.jpg")
def photo(study_uid: str):
    jpeg = get_room().photo_with_outlines(study_uid)
    if jpeg is None:
        return Response("no photo", status=404, mimetype="text/plain")
    return Response(jpeg, mimetype="image/jpeg")


@bp.post("/studies/<study_uid>/verdict")
def verdict(study_uid: str):
    values = {"verdict": request.form.get("verdict", ""), "note": request.form.get("note", "")}
    if values["verdict"] not in VERDICT_CHOICES:
        return _study_page(study_uid, values, gettext("Choose a verdict."), 422)
    if len(" ".join(values["note"].split())) > MAX_NOTE:
        return _study_page(study_uid, values, gettext("The note is at most %(num)d characters.", num=MAX_NOTE), 422)
    try:
        result = get_room().record_verdict(study_uid, verdict=values["verdict"], note=values["note"],
                                           grader=session["user"])
    except LookupError:
        return _study_page(study_uid, values, gettext("The PACS holds no screened eye under study %(study)s.",
                                                      study=study_uid), 404)
    if result.outcome != STORED:
        log.warning("verdict for %s not stored: %s", study_uid, result.reason)
        return _study_page(study_uid, values, gettext("The verdict was not stored. Send it again."), 503,
                           detail=result.reason)
    log.info("verdict for %s by %s: %s", study_uid, session["user"], values["verdict"])
    flash(gettext("Verdict stored: %(verdict)s.", verdict=VERDICT_CHOICES[values["verdict"]]), "info")
    return redirect(url_for("home.index"))
