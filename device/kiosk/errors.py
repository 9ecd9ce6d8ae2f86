"""What the worker sees when something fails: what happened in plain words and what to do next,
never a stack trace. The details go to the unit's log for the IT person.

Every word of these pages is in the worker's language. What a part of the unit said in its own words (a camera's
or a model's error, a file's name: English, written for the IT person) is shown apart, under a heading in the
worker's language and marked as English, so that it is never taken for the page's own sentence."""
from __future__ import annotations

import logging
import sqlite3

from flask import Flask, current_app, jsonify, render_template, request
from flask_babel import gettext
from werkzeug.exceptions import HTTPException

from device.kiosk.languages import size
from device.kiosk.security import CSRFError, UnknownHost
from device.visits.imagestore import CorruptImageError, DiskFullError, is_disk_full
from device.visits.visitlog import DatabaseCorruptError
from hardware.camera import CameraError
from hardware.optic_module import OpticModuleError
from models.runtime.engine import EngineError

log = logging.getLogger(__name__)


def call_support() -> str:
    return gettext("If it happens again, write down the time and call the person who looks after the unit.")


def error_page(title: str, message: str | None, steps: list[str], status: int, *, retry: bool = False,
               detail: str | None = None):
    """The error as a page (or JSON for what pages fetch); `retry` offers to load the page again; `detail` is what
    the part that failed said, in English, for the person who looks after the unit."""
    if request.path.startswith("/capture/") or request.accept_mimetypes.best == "application/json":
        return jsonify(error=title, message=message, steps=steps, detail=detail), status
    return render_template("error.html", title=title, message=message, steps=steps, detail=detail,
                           retry=retry and request.method == "GET"), status


def storage_full(message: str):
    return error_page(gettext("The unit's storage is full"), message,
                      [gettext("Let the unit send its visits: connect it to the network."),
                       gettext("Ask the person who looks after the unit to free space."),
                       gettext("Patients already registered are kept: find them again once space is free.")], 507)


def _disk_full(exc: DiskFullError):
    """The visit log and the image store say it in English for the log; the worker reads it in their language."""
    log.error("kiosk request %s %s: %s", request.method, request.path, exc)
    return storage_full(gettext("There is not enough free space on the unit's storage to record this: %(free)s free, "
                                "%(needed)s needed.", free=size(exc.free), needed=size(exc.needed)))


def _sqlite(exc: sqlite3.OperationalError):
    """SQLite stopped by a full disk ("database or disk is full", or "disk I/O error" with no space left)
    is the storage page; anything else it says is unexpected. Nothing is half-written either way: the
    step's transaction was rolled back."""
    data_dir = current_app.extensions["glaucoscreen.unit"].config.data_dir
    if not is_disk_full(exc, data_dir):
        return _unexpected(exc)
    log.error("kiosk request %s %s: storage full (%s)", request.method, request.path, exc)
    return storage_full(gettext("There is no room left on the unit's storage to record this step, so it was not recorded. "
                                "Everything recorded before is kept and can still be looked at."))


def model_trouble(detail: str | None, message: str | None = None):
    """`detail`: the model's own error (English, for the IT person)."""
    return error_page(gettext("The screening model is not working"), message,
                      [gettext("Restart the unit (switch it off and on). This visit is kept: find the patient to go on."),
                       call_support() + " " + gettext("The models may need reinstalling.")], 503, retry=True, detail=detail)


def camera_trouble(detail: str | None):
    """`detail`: the camera's or the optic module's own error (English, for the IT person)."""
    return error_page(gettext("The camera is not working"), None,
                      [gettext("Check that the optic module's cable is plugged in firmly."),
                       gettext("Restart the unit (switch it off and on). This visit is kept: find the patient to go on."),
                       call_support()], 503, retry=True, detail=detail)


def _engine(exc: EngineError):
    log.error("screening model failed: %s", exc)
    return model_trouble(str(exc), gettext("The photo could not be checked."))


def _camera(exc: Exception):
    log.error("camera or optic module failed: %s", exc)
    return camera_trouble(str(exc))


def _damaged(exc: Exception):
    log.error("stored data damaged: %s", exc)
    what = (gettext("A stored photo is damaged: its bytes no longer match its name.") if isinstance(exc, CorruptImageError)
            else gettext("The visit log is damaged and cannot be trusted until it is restored from a backup."))
    return error_page(gettext("Stored data is damaged"), what,
                      [gettext("Stop screening on this unit."),
                       gettext("Call the person who looks after the unit: the storage may be failing.")], 500,
                      detail=str(exc))


def _csrf(exc: CSRFError):
    return error_page(gettext("This page was open too long"), gettext("The form could not be sent, to keep patients' data safe."),
                      [gettext("Go back, reload the page and try again.")], 400)


def _unknown_host(exc: UnknownHost):
    log.warning("kiosk: refused a request for host %r (not in kiosk.allowed_hosts)", request.headers.get("Host", ""))
    return error_page(gettext("Not the kiosk's address"), gettext("The kiosk answers only at its own address."),
                      [gettext("Open the kiosk from the unit's own screen."),
                       gettext("The person who looks after the unit can add the name to kiosk.allowed_hosts in its configuration.")], 400)


def _http(exc: HTTPException):
    if exc.code == 404:
        return error_page(gettext("Not found"), gettext("There is nothing at this address."), [], 404)
    if exc.code == 403:
        return error_page(gettext("Only for an administrator"), gettext("Your account cannot open this page."),
                          [gettext("Ask an administrator of the unit.")], 403)
    # HTTP's own name for the answer, which a browser's request rarely meets here (the detail is for the IT person)
    return error_page(gettext("The unit could not answer this request (%(code)s %(name)s)", code=exc.code, name=exc.name),
                      None, [], exc.code or 500, detail=exc.description)


def _unexpected(exc: Exception):
    if isinstance(exc, HTTPException):
        return _http(exc)
    log.exception("kiosk request %s %s failed", request.method, request.path)
    return error_page(gettext("Something went wrong"), gettext("The unit could not finish this step."),
                      [gettext("Go back to the home page and try again."), call_support()], 500, retry=True)


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
