"""Sign-in with a name and a PIN, and sign-out."""
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
    users = accounts.list()
    chosen = request.form.get("user", "") if request.method == "POST" else request.args.get("user", "")
    next_page = request.values.get("next", "")
    error, status = None, 200
    if request.method == "POST":
        pin = request.form.get("pin", "")
        try:
            ok = accounts.verify(chosen, pin)
        except AccountLocked as locked:
            log.warning("kiosk sign-in: %s is locked for %.0f s", locked.username, locked.remaining_s)
            error = (f"Too many wrong PINs for {locked.username}. "
                     f"Try again in {describe_wait(locked.remaining_s)}, or ask an administrator to unlock the account.")
            status = 429
        else:
            user = accounts.get(chosen) if ok else None
            if user is not None:  # (None: removed in the moment since; its key is None too, which no request passes)
                sign_in(user["username"], user["admin"], accounts.session_key(user["username"]) or "")
                log.info("kiosk sign-in: %s", user["username"])
                return redirect(safe_next(next_page))
            if not chosen:
                error = "Choose your name first, then enter your PIN."
            else:
                left = accounts.attempts_left(chosen)
                error = "Wrong PIN." if left is None else f"Wrong PIN. {left} more {'try' if left == 1 else 'tries'} before the account is locked."
            status = 401
    return render_template("signin.html", users=users, chosen=chosen, next_page=next_page, error=error), status


@bp.post("/signout")
def signout():
    """Signs the account out on every screen: a copy of this session's cookie stops working too."""
    user = session.get("user", "")
    session.clear()
    try:
        get_accounts().end_sessions(user)
    except LookupError:
        pass  # removed meanwhile: its sessions ended with it
    log.info("kiosk sign-out: %s", user)
    flash("You are signed out.", "info")
    return redirect(url_for("auth.signin"))
