"""Graders sign in with their name and PIN, as health workers do at the kiosk (the same accounts module, its
lock after wrong PINs, and sessions the server can end); the blueprint is named `auth` because the kiosk's
security checks send the signed-out to `auth.signin`. As at the kiosk, a grader's account keeps a language: the
one an administrator set, else the one the grader first signs in with."""
from __future__ import annotations

import logging

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext

from device.accounts import AccountLocked
from device.kiosk import get_accounts
from device.kiosk.auth import language_at_sign_in, wait_words
from device.kiosk.languages import session_language, use_language
from device.kiosk.security import clear_session, safe_next, sign_in

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
            error, status = gettext("Too many wrong PINs for %(name)s. Try again in %(wait)s.", name=locked.username,
                                    wait=wait_words(locked.remaining_s)), 429
        else:
            user = accounts.get(name) if ok else None
            if user is not None:
                language_before = session_language()
                sign_in(user["username"], user["admin"], accounts.session_key(user["username"]) or "")
                use_language(language_at_sign_in(accounts, user["username"], language_before))
                log.info("reading centre sign-in: %s", user["username"])
                return redirect(safe_next(next_page))
            error, status = gettext("That name and PIN do not match an account here."), 401
    return render_template("signin.html", name=name, next_page=next_page, error=error,
                           no_accounts=accounts.count() == 0), status


@bp.post("/signout")
def signout():
    user = session.get("user", "")
    clear_session()  # the grader's language stays for the sign-in page that follows
    try:
        get_accounts().end_sessions(user)
    except LookupError:
        pass
    flash(gettext("You are signed out."), "info")
    return redirect(url_for("auth.signin"))
