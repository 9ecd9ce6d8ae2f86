"""The home page: start a screening, find a patient, today's visits, and whether the unit is well."""
from __future__ import annotations

import datetime as dt
import logging

from flask import Blueprint, jsonify, render_template

from device.kiosk import get_unit
from device.kiosk.followup import referred_list
from device.kiosk.outcome import visit_outcome
from device.visits.followup import ATTENDED, OVERDUE

bp = Blueprint("home", __name__)
log = logging.getLogger(__name__)

LOW_DISK_BYTES = 2 * 2**30   # about 1000 visits' photos: time to sync and free space before it runs out


def device_problems(status: dict) -> list[str]:
    """What is wrong with the unit, in words; an empty list when it is ready to screen."""
    problems = []
    camera = status.get("camera", {})
    if not camera.get("ok"):
        problems.append("Camera: " + (camera.get("error") or "not ready yet"))
    if not status.get("models", {}).get("ok"):
        problems.append("Screening model: " + (status.get("models", {}).get("error") or "not loaded"))
    if not status.get("illumination", {}).get("ok", True):
        problems.append("Lights: " + (status["illumination"].get("error") or "not working"))
    module = status.get("optic_module", {})
    if not module.get("ok"):
        problems.append("Optic module: " + (module.get("error") or "not answering"))
    if status.get("disk_free_bytes", LOW_DISK_BYTES) < LOW_DISK_BYTES:
        problems.append(f"Storage nearly full: {status['disk_free_bytes'] / 2**30:.1f} GB free. Let the unit sync.")
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
    return render_template("home.html", today=today, outbox=unit.visits.outbox_counts(),
                           problems=device_problems(status), status=status,
                           waiting=sum(r["state"] != ATTENDED for r in referred),
                           overdue=sum(r["state"] == OVERDUE for r in referred))


@bp.get("/healthz")
def healthz():
    """For the kiosk browser's start-up and the watchdog: is the server up and the capture loop alive?
    Says nothing about patients, so it needs no sign-in."""
    state = get_unit().capture.state()
    ok = state["running"] and not state["error"]
    return jsonify(ok=ok, capture_running=state["running"], error=state["error"]), (200 if ok else 503)
