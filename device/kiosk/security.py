"""Who may see what: sign-in required for every page but the sign-in page, an idle timeout, sessions
the server can end, a CSRF token on every form, only the kiosk's own host names, and response headers
that keep patient pages out of caches and frames.

The kiosk runs on 127.0.0.1, but Chromium on the unit can still be pointed at other sites, and a
page there could post to the kiosk: hence the CSRF token and SameSite=Strict cookies. Flask-WTF is
not used; a per-session random token compared in constant time is all it would add here. A page
there could also use DNS rebinding (its own name made to resolve to 127.0.0.1) to reach the kiosk as
its own site, with its own cookies: hence the Host header is checked before anything else.

The session cookie is signed, not stored: what ends it on the server is the account's session key
(see device.accounts), which the cookie carries and every request compares.
"""
from __future__ import annotations

import functools
import hmac
import re
import secrets
import socket
import time
from typing import Callable, Iterable
from urllib.parse import urlsplit

from flask import Flask, abort, current_app, flash, jsonify, redirect, request, session, url_for
from flask_babel import gettext, ngettext
from werkzeug.exceptions import BadRequest

from device.kiosk import get_accounts
from device.kiosk.languages import SESSION_KEY as LANGUAGE_KEY

PUBLIC_ENDPOINTS = {"auth.signin", "static", "home.healthz"}
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
CSP = ("default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


WILDCARD_ADDRESSES = {"", "0.0.0.0", "::"}
_PORT = re.compile(r"(?::[0-9]{1,5})?")


class CSRFError(Exception):
    """A POST without the token of this session: an old page, or a page from somewhere else."""


class UnknownHost(BadRequest):
    """A request for a host name the kiosk is not served as: most likely DNS rebinding by another site."""

    description = "This address is not the kiosk's."


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


def clear_session() -> None:
    """Forget the session but its language: the next worker finds the sign-in page in the clinic's language."""
    language = session.get(LANGUAGE_KEY)
    session.clear()
    if language:
        session[LANGUAGE_KEY] = language


def sign_in(username: str, admin: bool, key: str) -> None:
    """A fresh session (and token) at sign-in, so nothing from before it carries over but its language;
    `key` is the account's session key: when the account's key changes, the session ends."""
    clear_session()
    session.update(user=username, admin=admin, key=key, seen=time.time())
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
        clear_session()  # the notice below survives it: it is read on the sign-in page the worker lands on
        flash(ngettext("You were signed out after %(num)d minute without use. Sign in again to go on.",
                       "You were signed out after %(num)d minutes without use. Sign in again to go on.",
                       round(timeout_s / 60)), "info")
        return False
    key = get_accounts().session_key(user)
    if key is None:
        clear_session()
        flash(gettext("Your account is no longer on this unit. Ask an administrator."), "warning")
        return False
    if not hmac.compare_digest(key.encode(), str(session.get("key", "")).encode()):
        clear_session()  # signed out on another screen, a new PIN, or locked by wrong PINs
        flash(gettext("You were signed out. Sign in again to go on."), "info")
        return False
    view = current_app.view_functions.get(request.endpoint) if request.endpoint is not None else None
    if not getattr(view, _PASSIVE, False):
        session["seen"] = time.time()
    return True


def host_name(host: str) -> str | None:
    """The name in a Host header ("localhost:8080", "[::1]:8080"), in lower case without the port; None
    when the header is not a name and a port."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, port = host[1:].partition("]")
        if not bracket:
            return None
    else:
        name, colon, port = host.partition(":")
        port = colon + port
    if not name or not _PORT.fullmatch(port):
        return None
    return name.rstrip(".")


def allowed_hosts(host: str, names: Iterable[str] = ()) -> set[str]:
    """The host names the kiosk answers to: `names` (the `kiosk.allowed_hosts` setting) when given;
    otherwise those it is served as: 127.0.0.1, localhost and `host`, the address it is bound to (the
    unit's own host name as well when that is every interface)."""
    chosen = {n.strip().lower().strip("[]").rstrip(".") for n in names if n.strip()}
    if chosen:
        return chosen
    chosen = {"127.0.0.1", "localhost", "::1"}
    host = host.strip().lower().strip("[]")
    if host in WILDCARD_ADDRESSES:
        me = socket.gethostname().lower()
        chosen |= {me, f"{me}.local"}
    else:
        chosen.add(host)
    return chosen


def _check_host():
    if host_name(request.headers.get("Host", "")) not in current_app.config["ALLOWED_HOSTS"]:
        raise UnknownHost()


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


def _same_site_path(target: str) -> bool:
    if not target.startswith("/") or "\\" in target:
        return False
    if target != target.strip() or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in target):
        return False  # a browser drops tabs and newlines ("/\t/evil" is "//evil"); a header cannot hold them
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return False
    # the path as the browser resolves its dot segments: "/.//evil" is "//evil" too
    segments: list[str] = []
    for segment in parts.path.split("/")[1:]:
        dots = segment.lower().replace("%2e", ".")
        if dots == "..":
            segments = segments[:-1]
        elif dots != ".":
            segments.append(segment)
    return not ("/" + "/".join(segments)).startswith("//")


def safe_next(target: str | None) -> str:
    """Only a path on this kiosk, so a crafted sign-in link cannot send the worker elsewhere: nothing with
    a scheme, a host, a backslash or a control character, nor one that a browser reads as "//host"."""
    if isinstance(target, str) and _same_site_path(target):
        return target
    return url_for("home.index")


def init_app(app: Flask) -> None:
    app.config.setdefault("ALLOWED_HOSTS", {"127.0.0.1", "localhost", "::1"})
    app.before_request(_check_host)
    app.before_request(_guard)
    app.after_request(_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["CSRF_FIELD"] = CSRF_FIELD
