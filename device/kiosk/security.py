"""Who may see what: sign-in required for every page but the sign-in page, an idle timeout, a CSRF
token on every form, and response headers that keep patient pages out of caches and frames.

The kiosk runs on 127.0.0.1, but Chromium on the unit can still be pointed at other sites, and a
page there could post to the kiosk: hence the CSRF token and SameSite=Strict cookies. Flask-WTF is
not used; a per-session random token compared in constant time is all it would add here.
"""
from __future__ import annotations

import functools
import hmac
import secrets
import time
from typing import Callable

from flask import Flask, abort, current_app, flash, jsonify, redirect, request, session, url_for

from device.kiosk import get_accounts

PUBLIC_ENDPOINTS = {"auth.signin", "static", "home.healthz"}
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
CSP = ("default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class CSRFError(Exception):
    """A POST without the token of this session: an old page, or a page from somewhere else."""


_PASSIVE = "kiosk_passive"  # the attribute `passive` sets on a view function


def passive(view: Callable) -> Callable:
    """Marks a view that pages poll on their own (preview, capture state): it needs a session but does
    not count as the worker being active, so a capture page left open still times out."""
    setattr(view, _PASSIVE, True)  # a function attribute: mypy knows no attributes of a Callable
    return view


def require_admin() -> None:
    """403 unless the signed-in account is an administrator; a blueprint's `before_request`."""
    if not session.get("admin"):
        abort(403)


def admin_required(view: Callable) -> Callable:
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        require_admin()
        return view(*args, **kwargs)
    return wrapped


def csrf_token() -> str:
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def sign_in(username: str, admin: bool) -> None:
    """A fresh session (and token) at sign-in, so nothing from before it carries over."""
    session.clear()
    session.update(user=username, admin=admin, seen=time.time())
    csrf_token()


def _is_api() -> bool:
    """What pages fetch by themselves (state, preview, photos): answered 401, not sent to the sign-in page."""
    return request.path.startswith(("/capture/", "/images/"))


def _signed_in() -> bool:
    user = session.get("user")
    if not user:
        return False
    timeout_s = current_app.config["SESSION_TIMEOUT_S"]
    if time.time() - session.get("seen", 0.0) > timeout_s:
        session.clear()  # the notice below survives it: it is read on the sign-in page the worker lands on
        flash(f"You were signed out after {round(timeout_s / 60)} minutes without use. Sign in again to go on.", "info")
        return False
    if get_accounts().get(user) is None:
        session.clear()
        flash("Your account is no longer on this unit. Ask an administrator.", "warning")
        return False
    view = current_app.view_functions.get(request.endpoint) if request.endpoint is not None else None
    if not getattr(view, _PASSIVE, False):
        session["seen"] = time.time()
    return True


def _guard():
    if request.endpoint not in PUBLIC_ENDPOINTS and not _signed_in():
        if _is_api():
            return jsonify(error="signed out", signin=url_for("auth.signin")), 401
        if request.method != "GET":  # a form sent after the timeout: what it held is not kept
            return redirect(url_for("auth.signin"))
        return redirect(url_for("auth.signin", next=request.full_path.rstrip("?")))
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
        if not hmac.compare_digest(sent.encode(), csrf_token().encode()):
            raise CSRFError()
    return None


def _headers(response):
    h = response.headers
    h.setdefault("Content-Security-Policy", CSP)
    h["X-Frame-Options"] = "DENY"
    h["X-Content-Type-Options"] = "nosniff"
    h["Referrer-Policy"] = "no-referrer"
    h["Cross-Origin-Opener-Policy"] = "same-origin"
    h["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
    if request.endpoint != "static":
        h["Cache-Control"] = "no-store"  # patient pages and photos must not linger in the browser's cache
    return response


def safe_next(target: str | None) -> str:
    """Only a path on this kiosk, so a crafted sign-in link cannot send the worker elsewhere."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("home.index")


def init_app(app: Flask) -> None:
    app.before_request(_guard)
    app.after_request(_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["CSRF_FIELD"] = CSRF_FIELD
