"""Export visits to a USB stick from the kiosk, for a clinic whose unit cannot reach a PACS.

Only drives mounted under the export roots (/media and /run/media unless configured otherwise) are
offered: a folder there that is not a mount point is the unit's own storage, and writing patients'
data there while the worker believes it went onto a stick would lose it from the clinic's hands.
The export itself is `device.outbox.usb` (what `glaucoscreen export` runs), into a folder named for the
unit on the stick, in a thread of its own so the page can show how far it got.

App settings: EXPORT_ROOTS (folders to look in; GLAUCOSCREEN_EXPORT_ROOTS, separated by ':', when not
set) and EXPORT_MOUNTED_ONLY (True; False offers every writable folder in a root, for a workstation
or a test where a plain folder stands in for a stick).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, flash, jsonify, redirect, render_template, request, session, url_for
from flask_babel import gettext, ngettext

from device.kiosk import get_unit
from device.kiosk.languages import english, filled
from device.kiosk.security import passive, require_admin
from device.outbox import health
from device.outbox.usb import ExportError, export
from device.screening.wording import N_

bp = Blueprint("usb_export", __name__, url_prefix="/admin/export")
log = logging.getLogger(__name__)

DEFAULT_ROOTS = ("/media", "/run/media")
ROOTS_ENV = "GLAUCOSCREEN_EXPORT_ROOTS"
JOB = "glaucoscreen.export_job"
# what the export's own thread says went wrong: kept in English with the job, shown in the reader's language
STICK_GONE = N_("{drive} is not there any more: is the USB stick plugged in?")
STICK_UNWRITABLE = N_("cannot write to {drive} ({reason}): is the stick write-protected or mounted read-only?")
EXPORT_STOPPED = N_("the export stopped ({reason}); the files already on the stick are whole")


@bp.record_once
def _setup(state) -> None:
    app = state.app
    env = os.environ.get(ROOTS_ENV)
    app.config.setdefault("EXPORT_ROOTS", [p for p in env.split(":") if p] if env else list(DEFAULT_ROOTS))
    app.config.setdefault("EXPORT_MOUNTED_ONLY", True)
    app.extensions[JOB] = ExportJob()


bp.before_request(require_admin)


# -- drives -------------------------------------------------------------------------------------
def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:  # a per-user folder this service may not list
        return []


def describe_drive(path: Path) -> dict:
    """A drive as the page shows it: its name, space, and whether the unit can write there (and if not, why)."""
    out = {"path": str(path), "name": path.name, "mounted": os.path.ismount(path), "writable": False, "problem": None,
           "free": None, "total": None}
    try:
        st = os.statvfs(path)
    except OSError as exc:
        out["problem"] = filled(gettext("cannot be read (%(reason)s)"), reason=english(exc.strerror))  # the system's words
        return out
    out["free"], out["total"] = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    if st.f_flag & os.ST_RDONLY:
        out["problem"] = gettext("mounted read-only (is the stick's write-protect switch on?)")
    elif not os.access(path, os.W_OK | os.X_OK):
        out["problem"] = gettext("the unit is not allowed to write there (the stick was mounted for another user)")
    else:
        out["writable"] = True
    return out


def find_drives(roots, mounted_only: bool = True) -> list[dict]:
    """Drives under `roots`: mount points directly in a root (/media/STICK) or one folder down, where desktop
    systems mount a user's sticks (/media/USER/STICK, /run/media/USER/STICK). With `mounted_only` False,
    every folder directly in a root counts."""
    found: dict[str, dict] = {}
    for root in roots:
        for folder in _subfolders(Path(root)):
            if os.path.ismount(folder) or not mounted_only:
                found.setdefault(str(folder), describe_drive(folder))
                continue
            for inner in _subfolders(folder):
                if os.path.ismount(inner):
                    found.setdefault(str(inner), describe_drive(inner))
    return list(found.values())


def export_folder_name(device_id: str) -> str:
    """The unit's own folder on the stick: several units can share one stick without mixing their sheets."""
    return "GlaucoScreen-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", device_id).strip("-.") or "unit")


# -- the export job -----------------------------------------------------------------------------
class ExportJob:
    """One export at a time, run in a thread; its state is what the page and its polling show."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict = {"status": "idle"}
        self._thread: threading.Thread | None = None

    def state(self) -> dict:
        with self._lock:
            return dict(self._state)

    def start(self, unit, drive: Path, *, since: dt.date | None, until: dt.date | None, by: str) -> bool:
        """False when an export is already running."""
        with self._lock:
            if self._state["status"] == "running":
                return False
            target = drive / export_folder_name(unit.config.device_id)
            self._state = {"status": "running", "drive": str(drive), "folder": str(target), "by": by,
                           "since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
                           "started": time.time(), "done": 0, "total": None}
            self._thread = threading.Thread(target=self._run, args=(unit, drive, target, since, until),
                                            name="usb-export", daemon=True)
            self._thread.start()
            return True

    def wait(self, timeout: float | None = None) -> dict:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.state()

    def _progress(self, done: int, total: int) -> None:
        with self._lock:
            self._state.update(done=done, total=total)

    def _run(self, unit, drive: Path, target: Path, since, until) -> None:
        outcome: dict[str, Any]
        try:
            if not drive.is_dir():
                raise ExportError(STICK_GONE.format(drive=drive))
            try:
                target.mkdir(exist_ok=True)
            except OSError as exc:
                raise ExportError(STICK_UNWRITABLE.format(drive=drive, reason=exc.strerror or exc)) from None
            unit.visits.close_abandoned(dt.timedelta(hours=unit.config.abandon_visit_after_h))
            result = export(unit.visits, target, since=since, until=until, device_id=unit.config.device_id,
                            progress=self._progress, refer_within_days=unit.config.clinic.refer_within_days,
                            health=health.report(unit.config, unit.visits))
        except (ExportError, ValueError, LookupError) as exc:
            log.warning("export to %s failed: %s", drive, exc)
            outcome = {"status": "failed", "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the page must say it failed, not spin for ever
            log.exception("export to %s failed", drive)
            outcome = {"status": "failed", "error": EXPORT_STOPPED.format(reason=f"{type(exc).__name__}: {exc}")}
        else:
            log.info("exported %d visits (%d eyes) to %s", result["visits"], result["eyes"], target)
            outcome = {"status": "finished", "result": result}
        with self._lock:
            self._state.update(outcome, ended=time.time())


def get_job() -> ExportJob:
    return current_app.extensions[JOB]


def _drives() -> list[dict]:
    return find_drives(current_app.config["EXPORT_ROOTS"], current_app.config["EXPORT_MOUNTED_ONLY"])


def _day(text: str, not_a_date: str) -> dt.date | None:
    """The day typed, None for none; a ValueError saying `not_a_date` for anything else."""
    text = text.strip()
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(not_a_date) from None


def _page(error: str | None = None, form: dict | None = None, status: int = 200):
    unit = get_unit()
    job = get_job().state()
    return render_template("export.html", drives=_drives(), job=job, progress=progress_words(job), error=error, form=form or {},
                           roots=current_app.config["EXPORT_ROOTS"], finished=unit.visits.count_finished(),
                           folder_name=export_folder_name(unit.config.device_id)), status


@bp.get("/")
def index():
    return _page()


@bp.post("/")
def start():
    form = {k: request.form.get(k, "") for k in ("drive", "since", "until")}
    chosen = next((d for d in _drives() if d["path"] == form["drive"]), None)
    if chosen is None:
        return _page(gettext("Choose a USB drive from the list. If yours is not there, plug it in, wait a few seconds "
                             "and look again.") if not form["drive"] else
                     gettext("%(drive)s is not there any more: plug the stick in again and look again.", drive=form["drive"]),
                     form, 422)
    if not chosen["writable"]:
        return _page(gettext("%(name)s cannot be written: %(problem)s.", name=chosen["name"], problem=chosen["problem"]), form, 422)
    try:
        since = _day(form["since"], gettext("the first date is not a date (year-month-day, such as 2025-03-04)"))
        until = _day(form["until"], gettext("the last date is not a date (year-month-day, such as 2025-03-04)"))
        if since and until and since > until:
            raise ValueError(gettext("the first date is after the last date"))
    except ValueError as exc:
        return _page(gettext("Not exported: %(reason)s.", reason=exc), form, 422)
    if not get_job().start(get_unit(), Path(chosen["path"]), since=since, until=until, by=session["user"]):
        flash(gettext("An export is already running: wait for it to finish."), "warning")
    else:
        log.info("kiosk: %s started an export to %s", session["user"], chosen["path"])
    return redirect(url_for("usb_export.index"))


@bp.get("/state")
@passive
def state():
    """For the export page's progress bar; polling it does not count as the administrator being active."""
    state = get_job().state()
    state["progress"] = progress_words(state)  # the script shows it as it is: the words are the page's
    return jsonify(state)


def progress_words(state: dict) -> str:
    done, total = state.get("done") or 0, state.get("total")
    if total is None:
        return ngettext("%(num)d visit written so far. Do not pull the stick out.",
                        "%(num)d visits written so far. Do not pull the stick out.", done)
    return ngettext("%(done)s of %(num)d visit written. Do not pull the stick out.",
                    "%(done)s of %(num)d visits written. Do not pull the stick out.", total, done=done)
