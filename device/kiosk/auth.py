"""Sign-in with a name and a PIN, and sign-out; at sign-in the kiosk takes the account's language."""
from __future__ import annotations

import logging
import sqlite3

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext, ngettext

from device.accounts import AccountLocked, Accounts
from device.kiosk import get_accounts
from device.kiosk.languages import known, session_language, use_language
from device.kiosk.security import clear_session, safe_next, sign_in

bp = Blueprint("auth", __name__)
log = logging.getLogger(__name__)


def wait_words(seconds: float) -> str:
    """A wait in words a worker reads at a glance ("45 seconds", "2 minutes")."""
    seconds = max(1, int(-(-seconds // 1)))
    if seconds < 90:
        return ngettext("%(num)d second", "%(num)d seconds", seconds)
    return ngettext("%(num)d minute", "%(num)d minutes", -(-seconds // 60))


def language_at_sign_in(accounts: Accounts, username: str, language_before: str) -> str:
    """The account's language; an account without one keeps the language its worker first signs in with."""
    user = accounts.get(username) or {}
    chosen = known(user.get("language"))
    if chosen:
        return chosen
    try:
        accounts.set_language(username, language_before)
    except (LookupError, sqlite3.OperationalError) as exc:  # removed meanwhile, or the file cannot be written
        log.warning("kiosk sign-in: %s's language not kept (%s)", username, exc)
    return language_before


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
            error = gettext("Too many wrong PINs for %(name)s. Try again in %(wait)s, or ask an administrator to unlock "
                            "the account.", name=locked.username, wait=wait_words(locked.remaining_s))
            status = 429
        else:
            user = accounts.get(chosen) if ok else None
            if user is not None:  # (None: removed in the moment since; its key is None too, which no request passes)
                language_before = session_language()
                sign_in(user["username"], user["admin"], accounts.session_key(user["username"]) or "")
                use_language(language_at_sign_in(accounts, user["username"], language_before))
                log.info("kiosk sign-in: %s", user["username"])
                return redirect(safe_next(next_page))
            if not chosen:
                error = gettext("Choose your name first, then enter your PIN.")
            else:
                left = accounts.attempts_left(chosen)
                error = gettext("Wrong PIN.") if left is None else ngettext(
                    "Wrong PIN. %(num)d more try before the account is locked.",
                    "Wrong PIN. %(num)d more tries before the account is locked.", left)
            status = 401
    return render_template("signin.html", users=users, chosen=chosen, next_page=next_page, error=error), status


@bp.post("/signout")
def signout():
    """Signs the account out on every screen: a copy of this session's cookie stops working too."""
    user = session.get("user", "")
    clear_session()
    try:
        get_accounts().end_sessions(user)
    except LookupError:
        pass  # removed meanwhile: its sessions ended with it
    log.info("kiosk sign-out: %s", user)
    flash(gettext("You are signed out."), "info")
    return redirect(url_for("auth.signin"))
