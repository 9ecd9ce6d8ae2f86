"""The home page: start a screening, find a patient, today's visits, and whether the unit is well."""
from __future__ import annotations

import datetime as dt
import logging

from flask import Blueprint, jsonify, render_template
from flask_babel import gettext
from markupsafe import Markup

from device.kiosk import get_unit
from device.kiosk.followup import referred_list
from device.kiosk.languages import english, filled, gib
from device.kiosk.outcome import EYE_NAME, VERDICT_SAYS, visit_outcome
from device.visits.followup import ATTENDED, OVERDUE

bp = Blueprint("home", __name__)
log = logging.getLogger(__name__)

LOW_DISK_BYTES = 2 * 2**30   # about 1000 visits' photos: time to sync and free space before it runs out


def _part_says(template: str, detail: str | None, otherwise: str) -> Markup:
    """`template` (the part in the worker's words, "Camera: %(problem)s", translated) with what the part itself
    said, which is English for the person who looks after the unit and marked so; or, when it said nothing,
    `otherwise` in the worker's words."""
    return filled(template, problem=english(detail) if detail else otherwise)


def device_problems(status: dict) -> list[str]:
    """What is wrong with the unit, in words; an empty list when it is ready to screen."""
    problems: list[str] = []
    camera = status.get("camera", {})
    # (gettext without values leaves the template's %(problem)s for _part_says to fill)
    if not camera.get("ok"):
        problems.append(_part_says(gettext("Camera: %(problem)s"), camera.get("error"), gettext("not ready yet")))
    if not status.get("models", {}).get("ok"):
        problems.append(_part_says(gettext("Screening model: %(problem)s"), status.get("models", {}).get("error"),
                                   gettext("not loaded")))
    if not status.get("illumination", {}).get("ok", True):
        problems.append(_part_says(gettext("Lights: %(problem)s"), status["illumination"].get("error"), gettext("not working")))
    module = status.get("optic_module", {})
    if not module.get("ok"):
        problems.append(_part_says(gettext("Optic module: %(problem)s"), module.get("error"), gettext("not answering")))
    if status.get("disk_free_bytes", LOW_DISK_BYTES) < LOW_DISK_BYTES:
        problems.append(gettext("Storage nearly full: %(free)s free. Let the unit sync.", free=gib(status["disk_free_bytes"])))
    return problems


def unit_status() -> dict:
    try:
        return get_unit().status()
    except Exception as exc:  # noqa: BLE001 - the home page must open even when the unit is unwell
        log.exception("unit status failed")
        return {"camera": {"ok": False, "error": str(exc)}, "models": {"ok": False, "error": "unknown"}}


@bp.get("/")
def index():
    unit = get_unit()
    visits = unit.visits.visits_on(dt.date.today())
    today = [(v, visit_outcome(v)) for v in reversed(visits)]
    status = unit_status()
    referred = referred_list(unit)
    calling_back = [v | {"says": VERDICT_SAYS[v["verdict"]], "eye_name": EYE_NAME[v["eye"]]}
                    for v in unit.visits.verdicts_calling_back()]
    return render_template("home.html", today=today, outbox=unit.visits.outbox_counts(),
                           problems=device_problems(status), status=status,
                           waiting=sum(r["state"] != ATTENDED for r in referred),
                           overdue=sum(r["state"] == OVERDUE for r in referred), calling_back=calling_back)


@bp.get("/healthz")
def healthz():
    """For the kiosk browser's start-up and the watchdog: is the server up and the capture loop alive?
    Says nothing about patients, so it needs no sign-in."""
    state = get_unit().capture.state()
    ok = state["running"] and not state["error"]
    return jsonify(ok=ok, capture_running=state["running"], error=state["error"]), (200 if ok else 503)
