"""What the worker sees when something fails: what happened in plain words and what to do next,
never a stack trace. The details go to the unit's log for the IT person."""
from __future__ import annotations

import logging
import sqlite3

from flask import Flask, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from device.kiosk.security import CSRFError, UnknownHost
from device.visits.imagestore import CorruptImageError, DiskFullError, is_disk_full
from device.visits.visitlog import DatabaseCorruptError
from hardware.camera import CameraError
from hardware.optic_module import OpticModuleError
from models.runtime.engine import EngineError

log = logging.getLogger(__name__)

CALL_SUPPORT = "If it happens again, write down the time and call the person who looks after the unit."


def error_page(title: str, message: str, steps: list[str], status: int, *, retry: bool = False):
    """The error as a page (or JSON for what pages fetch); `retry` offers to load the page again."""
    if request.path.startswith("/capture/") or request.accept_mimetypes.best == "application/json":
        return jsonify(error=title, message=message, steps=steps), status
    return render_template("error.html", title=title, message=message, steps=steps,
                           retry=retry and request.method == "GET"), status


def storage_full(message: str):
    return error_page("The unit's storage is full", message,
                      ["Let the unit send its visits: connect it to the network.",
                       "Ask the person who looks after the unit to free space.",
                       "Patients already registered are kept: find them again once space is free."], 507)


def _disk_full(exc: DiskFullError):
    return storage_full(str(exc))


def _sqlite(exc: sqlite3.OperationalError):
    """SQLite stopped by a full disk ("database or disk is full", or "disk I/O error" with no space left)
    is the storage page; anything else it says is unexpected. Nothing is half-written either way: the
    step's transaction was rolled back."""
    data_dir = current_app.extensions["glaucoscreen.unit"].config.data_dir
    if not is_disk_full(exc, data_dir):
        return _unexpected(exc)
    log.error("kiosk request %s %s: storage full (%s)", request.method, request.path, exc)
    return storage_full("There is no room left on the unit's storage to record this step, so it was not recorded. "
                        "Everything recorded before is kept and can still be looked at.")


def model_trouble(message: str):
    return error_page("The screening model is not working", message,
                      ["Restart the unit (switch it off and on). This visit is kept: find the patient to go on.",
                       CALL_SUPPORT + " The models may need reinstalling."], 503, retry=True)


def camera_trouble(message: str):
    return error_page("The camera is not working", message,
                      ["Check that the optic module's cable is plugged in firmly.",
                       "Restart the unit (switch it off and on). This visit is kept: find the patient to go on.",
                       CALL_SUPPORT], 503, retry=True)


def _engine(exc: EngineError):
    log.error("screening model failed: %s", exc)
    return model_trouble(f"The photo could not be checked: {exc}.")


def _camera(exc: Exception):
    log.error("camera or optic module failed: %s", exc)
    return camera_trouble(str(exc))


def _damaged(exc: Exception):
    log.error("stored data damaged: %s", exc)
    return error_page("Stored data is damaged", str(exc),
                      ["Stop screening on this unit.", "Call the person who looks after the unit: the storage may be failing."], 500)


def _csrf(exc: CSRFError):
    return error_page("This page was open too long", "The form could not be sent, to keep patients' data safe.",
                      ["Go back, reload the page and try again."], 400)


def _unknown_host(exc: UnknownHost):
    log.warning("kiosk: refused a request for host %r (not in kiosk.allowed_hosts)", request.headers.get("Host", ""))
    return error_page("Not the kiosk's address", "The kiosk answers only at its own address.",
                      ["Open the kiosk from the unit's own screen.",
                       "The person who looks after the unit can add the name to kiosk.allowed_hosts in its configuration."], 400)


def _http(exc: HTTPException):
    if exc.code == 404:
        return error_page("Not found", "There is nothing at this address.", [], 404)
    if exc.code == 403:
        return error_page("Only for an administrator", "Your account cannot open this page.",
                          ["Ask an administrator of the unit."], 403)
    return error_page(exc.name, exc.description or "", [], exc.code or 500)


def _unexpected(exc: Exception):
    if isinstance(exc, HTTPException):
        return _http(exc)
    log.exception("kiosk request %s %s failed", request.method, request.path)
    return error_page("Something went wrong", "The unit could not finish this step.",
                      ["Go back to the home page and try again.", CALL_SUPPORT], 500, retry=True)


def init_app(app: Flask) -> None:
    app.register_error_handler(DiskFullError, _disk_full)
    app.register_error_handler(EngineError, _engine)
    app.register_error_handler(CameraError, _camera)
    app.register_error_handler(OpticModuleError, _camera)
    app.register_error_handler(CorruptImageError, _damaged)
    app.register_error_handler(DatabaseCorruptError, _damaged)
    app.register_error_handler(CSRFError, _csrf)
    app.register_error_handler(sqlite3.OperationalError, _sqlite)
    app.register_error_handler(UnknownHost, _unknown_host)
    app.register_error_handler(HTTPException, _http)
    app.register_error_handler(Exception, _unexpected)
