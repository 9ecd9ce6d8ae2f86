"""The kiosk: the web app the health worker uses on the unit's touchscreen, served on 127.0.0.1.

It reads the unit (capture state, preview frames, visit log) and asks it to act (arm a capture,
screen a photo, finish a visit); it never touches the hardware or the models itself. Pages are
server-rendered with a little JavaScript for the live preview, so the kiosk works in any Chromium
with nothing fetched from the internet.
"""
from __future__ import annotations

import secrets

from flask import Flask, current_app

from device.accounts import Accounts
from device.visits.datadir import DataDir


def create_app(unit, *, secret_key: bytes | None = None, testing: bool = False) -> Flask:
    """The kiosk app for `unit`. Without `secret_key` a fresh one is made, so a restart signs everyone out."""
    from device.kiosk import (
        admin,
        auth,
        errors,
        followup,
        home,
        images,
        languages,
        operations,
        patient_edits,
        patients,
        screening,
        security,
        sending,
        settings,
        usb_export,
    )
    from device.kiosk.wording import said

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key or secrets.token_bytes(32),
        TESTING=testing,
        SESSION_COOKIE_NAME="glaucoscreen_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        MAX_CONTENT_LENGTH=64 * 1024,   # forms only: nothing a worker types comes near this
        SESSION_TIMEOUT_S=60.0 * unit.config.kiosk.session_timeout_min,
        # only the names it is served as: a page elsewhere that rebinds its own name to 127.0.0.1 is refused
        ALLOWED_HOSTS=security.allowed_hosts(unit.config.kiosk.host, unit.config.kiosk.allowed_hosts),
    )
    app.extensions["glaucoscreen.unit"] = unit
    app.extensions["glaucoscreen.accounts"] = Accounts(DataDir(unit.config.data_dir).accounts_db)
    languages.init_app(app)  # first: the language a page is in is chosen before anything answers
    app.jinja_env.filters["said"] = said
    security.init_app(app)
    errors.init_app(app)
    for bp in (auth.bp, home.bp, patients.bp, patient_edits.bp, followup.bp, screening.bp, images.bp, admin.bp, sending.bp, operations.bp,
               settings.bp, usb_export.bp):
        app.register_blueprint(bp)
    return app


def get_unit():
    return current_app.extensions["glaucoscreen.unit"]


def get_accounts() -> Accounts:
    return current_app.extensions["glaucoscreen.accounts"]

