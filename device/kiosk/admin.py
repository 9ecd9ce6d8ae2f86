"""The administrator's page: health-worker accounts (add, new PIN, unlock, remove) and the unit's state."""
from __future__ import annotations

import logging

from flask import Blueprint, flash, redirect, render_template, request, session, url_for

from device.accounts import check_pin, check_username
from device.kiosk import get_accounts, get_unit
from device.kiosk.home import device_problems, unit_status
from device.kiosk.security import admin_required

bp = Blueprint("admin", __name__, url_prefix="/admin")
log = logging.getLogger(__name__)


def _check_new_pin(form) -> str:
    pin = check_pin(form.get("pin", ""))
    if form.get("pin_again", "") != pin:
        raise ValueError("the two PINs differ")
    return pin


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
    values = {"username": request.form.get("username", "").strip(), "admin": request.form.get("admin") == "yes"}
    try:
        name = check_username(values["username"])
        get_accounts().add(name, _check_new_pin(request.form), admin=values["admin"])
    except ValueError as exc:
        return _page(values, f"Not added: {exc}.", 422)
    log.info("kiosk: %s added user %s", session["user"], name)
    flash(f"{name} can sign in now.", "info")
    return redirect(url_for("admin.index"))


@bp.post("/pin")
@admin_required
def new_pin():
    username = request.form.get("username", "")
    accounts = get_accounts()
    try:
        accounts.set_pin(username, _check_new_pin(request.form))
    except (ValueError, LookupError) as exc:
        return _page(error=f"PIN not changed: {exc}.", status=422)
    log.info("kiosk: %s gave %s a new PIN; their sessions ended", session["user"], username)
    if username.lower() == session["user"].lower():  # one's own new PIN: this screen stays signed in, no other does
        session["key"] = accounts.session_key(session["user"])
    flash(f"{username} has a new PIN. Anyone signed in as {username} is signed out.", "info")
    return redirect(url_for("admin.index"))


@bp.post("/users/<username>/unlock")
@admin_required
def unlock(username: str):
    try:
        get_accounts().unlock(username)
    except LookupError as exc:
        return _page(error=f"Not unlocked: {exc}.", status=404)
    flash(f"{username} can try their PIN again.", "info")
    return redirect(url_for("admin.index"))


@bp.post("/users/<username>/remove")
@admin_required
def remove(username: str):
    if username.lower() == session["user"].lower():
        return _page(error="You cannot remove your own account while signed in with it.", status=422)
    try:
        get_accounts().remove(username)
    except LookupError as exc:
        return _page(error=f"Not removed: {exc}.", status=404)
    log.info("kiosk: %s removed user %s", session["user"], username)
    flash(f"{username} was removed.", "info")
    return redirect(url_for("admin.index"))
