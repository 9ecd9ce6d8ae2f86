"""The kiosk: the web app the health worker uses on the unit's touchscreen, served on 127.0.0.1.

It reads the unit (capture state, preview frames, visit log) and asks it to act (arm a capture,
screen a photo, finish a visit); it never touches the hardware or the models itself. Pages are
server-rendered with a little JavaScript for the live preview, so the kiosk works in any Chromium
with nothing fetched from the internet.
"""
from __future__ import annotations

import logging
import secrets
import signal
import threading

from flask import Flask, current_app

from device import sdnotify
from device.accounts import Accounts
from device.config import Config
from device.visits.datadir import DataDir
from models.runtime import tensorrt as trt_runtime


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


DEMO_USER, DEMO_PIN = "demo", "2580"


def _demo_account(config: Config) -> None:
    """In simulation only: an account to try the kiosk with, so the first screen is not a dead end."""
    accounts = Accounts(DataDir(config.data_dir).accounts_db)
    if accounts.count() == 0:
        accounts.add(DEMO_USER, DEMO_PIN, admin=True)
        print(f"Simulation: sign in as '{DEMO_USER}' with PIN {DEMO_PIN} (an admin; create real accounts with "
              f"`glaucoscreen user add NAME --admin`)", flush=True)


def serve(config: Config) -> int:
    """Run the unit until SIGTERM/SIGINT: capture loop in a thread, kiosk served by waitress."""
    import waitress

    from device.unit import Unit

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # a first start after an update builds TensorRT engines before READY: minutes on a Jetson, more than
    # TimeoutStartSec; systemd is asked for more time while each is built (or another builder is awaited)
    trt_runtime.set_long_wait(sdnotify.extending_timeout)
    unit = Unit.from_config(config)
    unit.start()
    if config.simulate:
        _demo_account(config)
    app = create_app(unit)
    server = waitress.create_server(app, host=config.kiosk.host, port=config.kiosk.port, threads=config.kiosk.threads)
    signal.signal(signal.SIGTERM, lambda *_: server.close())
    mode = "simulation" if config.simulate else "hardware"
    print(f"GlaucoScreen kiosk ({mode}) on http://{config.kiosk.host}:{server.effective_port}/  data: {config.data_dir}", flush=True)
    stop = threading.Event()
    sdnotify.start_watchdog(unit.capture.responsive, stop)
    sdnotify.notify("READY=1")
    try:
        server.run()
    except (KeyboardInterrupt, OSError):
        pass
    finally:
        stop.set()
        sdnotify.notify("STOPPING=1")
        unit.close()
    return 0
