"""The reading centre: a small web app where a grader reviews the eyes the units sent to the PACS and records a
verdict that goes back to the unit (`device.outbox.verdicts`).

It holds no patient data of its own: the worklist, the photos and the verdicts are the PACS's, over DICOMweb.
It keeps the kiosk's conventions: accounts with a PIN (`device.accounts`, in this machine's data folder;
`glaucoscreen user add NAME` makes a grader), sign-in on every page but the sign-in page, a CSRF token on every
form, only its own host names, and no caching of patient pages (`device.kiosk.security`), and its languages
(`device.kiosk.languages`: the same catalogs, `?lang=xx` on any page, a switch in the bar, and each grader's account
language from sign-in on).
"""
from __future__ import annotations

import logging
import secrets
import signal

from flask import Flask, current_app

from device.accounts import Accounts
from device.config import Config
from device.reading_centre.pacs import ReadingRoom
from device.visits.datadir import DataDir

log = logging.getLogger(__name__)
DEFAULT_PORT = 8090


def create_app(room: ReadingRoom, accounts: Accounts, *, host: str = "127.0.0.1", allowed_hosts: list[str] | None = None,
               session_timeout_min: float = 30, secret_key: bytes | None = None, testing: bool = False) -> Flask:
    """The review app over `room`'s PACS, signing graders in with `accounts`."""
    from device.kiosk import languages, security
    from device.kiosk.wording import said
    from device.reading_centre import review, signin

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key or secrets.token_bytes(32), TESTING=testing,
        SESSION_COOKIE_NAME="glaucoscreen_reading_centre", SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict", MAX_CONTENT_LENGTH=64 * 1024,
        SESSION_TIMEOUT_S=60.0 * session_timeout_min,
        ALLOWED_HOSTS=security.allowed_hosts(host, allowed_hosts or []))
    app.extensions["glaucoscreen.accounts"] = accounts  # what device.kiosk.security checks each session against
    app.extensions["glaucoscreen.reading_room"] = room
    languages.init_app(app)  # first: the language a page is in is chosen before anything answers
    app.jinja_env.filters["said"] = said  # the unit's reasons, recorded in English, in the grader's language
    security.init_app(app)
    review.init_app(app)
    app.register_blueprint(signin.bp)
    app.register_blueprint(review.bp)
    return app


def get_room() -> ReadingRoom:
    return current_app.extensions["glaucoscreen.reading_room"]


def serve(config: Config, *, host: str, port: int) -> int:
    """Serve the review app with waitress until SIGTERM/SIGINT, over the PACS that [sync] names."""
    import waitress

    from device.outbox.sync import client_from_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    room = ReadingRoom(client_from_config(config.sync))
    accounts = Accounts(DataDir(config.data_dir).accounts_db)
    app = create_app(room, accounts, host=host, allowed_hosts=config.kiosk.allowed_hosts)
    server = waitress.create_server(app, host=host, port=port, threads=4)
    signal.signal(signal.SIGTERM, lambda *_: server.close())
    print(f"GlaucoScreen reading centre on http://{host}:{server.effective_port}/  PACS: {room.client.url}  "
          f"graders: {config.data_dir}", flush=True)
    try:
        server.run()
    except (KeyboardInterrupt, OSError):
        pass
    finally:
        room.close()
        accounts.close()
    return 0
