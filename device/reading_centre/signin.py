"""Graders sign in with their name and PIN, as health workers do at the kiosk (the same accounts module, its
lock after wrong PINs, and sessions the server can end); the blueprint is named `auth` because the kiosk's
security checks send the signed-out to `auth.signin`."""
from __future__ import annotations

import logging

from flask import Blueprint, flash, redirect, render_template, request, session, url_for

from device.accounts import AccountLocked, describe_wait
from device.kiosk import get_accounts
from device.kiosk.security import safe_next, sign_in

bp = Blueprint("auth", __name__)
log = logging.getLogger(__name__)


@bp.route("/signin", methods=["GET", "POST"])
def signin():
    accounts = get_accounts()
    name = (request.form.get("user") or "").strip()
    next_page = request.values.get("next", "")
    error, status = None, 200
    if request.method == "POST":
        try:
            ok = accounts.verify(name, request.form.get("pin", ""))
        except AccountLocked as locked:
            error, status = (f"Too many wrong PINs for {locked.username}. Try again in "
                             f"{describe_wait(locked.remaining_s)}."), 429
        else:
            user = accounts.get(name) if ok else None
            if user is not None:
                sign_in(user["username"], user["admin"], accounts.session_key(user["username"]) or "")
                log.info("reading centre sign-in: %s", user["username"])
                return redirect(safe_next(next_page))
            error, status = "That name and PIN do not match an account here.", 401
    return render_template("signin.html", name=name, next_page=next_page, error=error,
                           no_accounts=accounts.count() == 0), status


@bp.post("/signout")
def signout():
    user = session.get("user", "")
    session.clear()
    try:
        get_accounts().end_sessions(user)
    except LookupError:
        pass
    flash("You are signed out.", "info")
    return redirect(url_for("auth.signin"))
