"""The administrator's page: health-worker accounts (add, new PIN, language, unlock, remove) and the unit's state."""
from __future__ import annotations

import logging

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext

from device.accounts import check_pin, check_username
from device.kiosk import get_accounts, get_unit
from device.kiosk.home import device_problems, unit_status
from device.kiosk.languages import current_language, filled, known, language_name, use_language
from device.kiosk.security import admin_required

bp = Blueprint("admin", __name__, url_prefix="/admin")
log = logging.getLogger(__name__)


def _check_name(name: str) -> str:
    try:
        return check_username(name)
    except ValueError:  # said again here in the administrator's language
        raise ValueError(gettext("a name is 1 to 32 letters, digits, dots, dashes or underscores, starting with a letter "
                                 "or digit")) from None


def _check_new_pin(form) -> str:
    try:
        pin = check_pin(form.get("pin", ""))
    except ValueError:
        raise ValueError(gettext("a PIN is 4 to 8 digits (numbers only)")) from None
    if form.get("pin_again", "") != pin:
        raise ValueError(gettext("the two PINs differ"))
    return pin


def _no_such_user(username: str) -> str:
    return gettext("there is no health worker called %(name)s", name=username)


def _page(values: dict | None = None, error: str | None = None, status: int = 200):
    status_now = unit_status()
    return render_template("admin.html", users=get_accounts().list(), values=values or {}, error=error,
                           status=status_now, problems=device_problems(status_now),
                           outbox=get_unit().visits.outbox_counts()), status


@bp.get("/")
@admin_required
def index():
    return _page()


@bp.post("/users")
@admin_required
def add_user():
    values = {"username": request.form.get("username", "").strip(), "admin": request.form.get("admin") == "yes",
              "language": known(request.form.get("language")) or current_language()}
    try:
        name = _check_name(values["username"])
        pin = _check_new_pin(request.form)
        accounts = get_accounts()
        taken = ValueError(gettext("there is already a health worker called %(name)s", name=name))
        if accounts.get(name) is not None:
            raise taken
        try:
            accounts.add(name, pin, admin=values["admin"], language=values["language"])
        except ValueError:  # added on another screen in the moment since (the accounts say so in English)
            raise taken from None
    except ValueError as exc:
        return _page(values, gettext("Not added: %(reason)s.", reason=exc), 422)
    log.info("kiosk: %s added user %s", session["user"], name)
    flash(gettext("%(name)s can sign in now.", name=name), "info")
    return redirect(url_for("admin.index"))


@bp.post("/pin")
@admin_required
def new_pin():
    username = request.form.get("username", "")
    accounts = get_accounts()
    try:
        accounts.set_pin(username, _check_new_pin(request.form))
    except ValueError as exc:
        return _page(error=gettext("PIN not changed: %(reason)s.", reason=exc), status=422)
    except LookupError:
        return _page(error=gettext("PIN not changed: %(reason)s.", reason=_no_such_user(username)), status=422)
    log.info("kiosk: %s gave %s a new PIN; their sessions ended", session["user"], username)
    if username.lower() == session["user"].lower():  # one's own new PIN: this screen stays signed in, no other does
        session["key"] = accounts.session_key(session["user"])
    flash(gettext("%(name)s has a new PIN. Anyone signed in as %(name)s is signed out.", name=username), "info")
    return redirect(url_for("admin.index"))


@bp.post("/language")
@admin_required
def set_language():
    """The language the kiosk speaks to a health worker in, from their next sign-in (now, for one's own)."""
    username = request.form.get("username", "")
    language = known(request.form.get("language"))
    if language is None:
        return _page(error=gettext("Language not changed: choose one of the languages listed."), status=422)
    try:
        get_accounts().set_language(username, language)
    except LookupError:
        return _page(error=gettext("Language not changed: %(reason)s.", reason=_no_such_user(username)), status=404)
    log.info("kiosk: %s set %s's language to %s", session["user"], username, language)
    if username.lower() == session["user"].lower():
        use_language(language)
    flash(filled(gettext("%(name)s's kiosk is in %(language)s from their next sign-in."), name=username,
                 language=language_name(language)), "info")
    return redirect(url_for("admin.index"))


@bp.post("/users/<username>/unlock")
@admin_required
def unlock(username: str):
    try:
        get_accounts().unlock(username)
    except LookupError:
        return _page(error=gettext("Not unlocked: %(reason)s.", reason=_no_such_user(username)), status=404)
    flash(gettext("%(name)s can try their PIN again.", name=username), "info")
    return redirect(url_for("admin.index"))


@bp.post("/users/<username>/remove")
@admin_required
def remove(username: str):
    if username.lower() == session["user"].lower():
        return _page(error=gettext("You cannot remove your own account while signed in with it."), status=422)
    try:
        get_accounts().remove(username)
    except LookupError:
        return _page(error=gettext("Not removed: %(reason)s.", reason=_no_such_user(username)), status=404)
    log.info("kiosk: %s removed user %s", session["user"], username)
    flash(gettext("%(name)s was removed.", name=username), "info")
    return redirect(url_for("admin.index"))
