"""The kiosk's language: English, Hindi, Swahili, Spanish or French, chosen per health worker, and the
patient's own language for the slip they take home.

Who chooses, first match wins: `?lang=xx` on any page (the session's language from then on: how the
tests and the reading centre's support staff reach a language); the signed-in worker's account language,
put in the session at sign-in (an account without one keeps the language it first signs in with); the
language the sign-in page was switched to; the languages the browser asks for; English. The session keeps
its language through signing out, so the next worker finds the sign-in page in the clinic's language.

Words are gettext catalogs under translations/ (Flask-Babel; see the README for `pybabel extract, update,
compile`). English is the source language and has no catalog. Numbers, percentages, dates and times are
written by Babel for the locale (0,72 and 4 mars 2025 in French). The scripts get their words from a JSON
block in every page (`script_words`): the `_("...")` calls Babel finds in them, in the page's language.

The reading centre's review app (device/reading_centre) speaks from the same catalogs, through the same rules.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode

from babel import Locale
from babel.dates import format_date, format_time
from babel.messages.extract import extract_from_file
from babel.numbers import format_decimal, format_percent
from flask import Flask, request, session
from flask_babel import Babel, force_locale, get_locale, gettext, ngettext, refresh
from markupsafe import Markup, escape

# Each language in its own words, as a worker who reads only that language looks for it.
LANGUAGES = {"en": "English", "hi": "हिन्दी", "sw": "Kiswahili", "es": "Español", "fr": "Français"}
DEFAULT_LANGUAGE = "en"
SESSION_KEY = "lang"
# The locale figures are written for. The kiosk's English is that of the clinics it serves (4 Mar 2025,
# 24-hour clock), which is British usage.
FORMAT_LOCALE = {"en": "en_GB"}
STATIC = Path(__file__).resolve().parent / "static"
# the one set of catalogs: the kiosk's, which the reading centre's review app speaks from too
TRANSLATIONS = Path(__file__).resolve().parent / "translations"


def known(code: object) -> str | None:
    """`code` if it is one of the kiosk's languages, else None."""
    return code if isinstance(code, str) and code in LANGUAGES else None


def session_language() -> str:
    """The language this browser's session asked for (see the module's docstring for the order)."""
    chosen = known(session.get(SESSION_KEY))
    if chosen:
        return chosen
    return request.accept_languages.best_match(list(LANGUAGES)) or DEFAULT_LANGUAGE


def locale_for(language: str) -> str:
    return FORMAT_LOCALE.get(language, language)


def _select_locale() -> str:
    try:
        return locale_for(session_language())
    except RuntimeError:  # no request: a page rendered for a test or a command
        return locale_for(DEFAULT_LANGUAGE)


def current_language() -> str:
    """The language the page being made is in: the session's, or the patient's inside `in_language`."""
    locale = get_locale()
    return known(locale.language if locale else None) or DEFAULT_LANGUAGE


def use_language(language: str) -> None:
    """Make `language` this session's from now on, this request included."""
    session[SESSION_KEY] = language
    refresh()


@contextlib.contextmanager
def in_language(language: str | None) -> Iterator[str]:
    """Words and figures in `language` (a patient's) for the block; the session's language when it is
    not one of the kiosk's. Yields the language used."""
    chosen = known(language) or current_language()
    with force_locale(locale_for(chosen)):
        yield chosen


def page_in(language: str) -> str:
    """The address of this page in `language`, for a language switch: its own query with `lang=` added (after a
    form was sent, the page it came from is not one to go back to: the first page instead)."""
    args = request.args.to_dict() if request.method == "GET" else {}
    args["lang"] = language
    return request.script_root + (request.path if request.method == "GET" else "/") + "?" + urlencode(args)


def _switch_from_query() -> None:
    """`?lang=xx` on any page switches the session's language; anything else in it is ignored."""
    chosen = known(request.args.get("lang"))
    if chosen:
        use_language(chosen)


# -- figures --------------------------------------------------------------------------------------
def _locale() -> Locale:
    return get_locale() or Locale.parse(locale_for(DEFAULT_LANGUAGE))


def _local(stamp: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(stamp).astimezone() if stamp else None


def local_time(stamp: str | None) -> str:
    """A stored UTC timestamp as the clinic's clock shows it (24-hour, as most clinics write it)."""
    t = _local(stamp)
    return format_time(t.time(), "HH:mm", locale=_locale()) if t else ""


def local_date(stamp: str | None) -> str:
    t = _local(stamp)
    return format_date(t.date(), "medium", locale=_locale()) if t else ""


def day(d: dt.date | str | None, length: str = "medium") -> str:
    """A calendar day, or one stored as year-month-day (no time zone to turn: a referral's go-by day, the day
    a patient was seen)."""
    if isinstance(d, str):
        d = dt.date.fromisoformat(d[:10]) if d else None
    return format_date(d, length, locale=_locale()) if d else ""


def percent(p: float | None) -> str:
    return "" if p is None else format_percent(p, locale=_locale())


def ratio(x: float | None) -> str:
    """A cup-to-disc ratio, two decimals, as the reader writes decimals."""
    return "" if x is None else format_decimal(x, "0.00", locale=_locale())


def signed_ratio(x: float | None) -> str:
    """A change of ratio, always with its sign."""
    return "" if x is None else format_decimal(x, "+0.00;-0.00", locale=_locale())


def decimal(x: float | None, pattern: str = "0.#") -> str:
    return "" if x is None else format_decimal(x, pattern, locale=_locale())


def number(n: int | float | None) -> str:
    """A count, with the reader's digit grouping."""
    return "" if n is None else format_decimal(n, locale=_locale())


def size(n: int | float | None) -> str:
    """Bytes as a person reads them (the powers of 1024 that file managers show; the units' symbols are the
    same in every language the kiosk speaks)."""
    if n is None:
        return gettext("unknown")
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{decimal(n / scale, '0.0')} {unit}"
    return ngettext("%(num)d byte", "%(num)d bytes", int(n))


def gib(n: float) -> str:
    return f"{decimal(n / 2**30, '0.0')} GB"


# -- what a part of the unit said in its own words -------------------------------------------------
def english(text: object) -> Markup:
    """What a part of the unit said in its own words (English, written for the person who looks after the unit: a
    camera's or a server's error, a file's name), marked as English so that a page in another language does not
    pass it off as its own sentence (and a screen reader reads it as English)."""
    return Markup('<span lang="en">{}</span>').format(text)


def language_name(code: str) -> Markup:
    """A language's name in its own words, marked as that language (inside a sentence in another one)."""
    return Markup('<span lang="{}">{}</span>').format(code, LANGUAGES[code])


def filled(template: str, **values: object) -> Markup:
    """A translated `template` (gettext's without values, which leaves its %(name)s) filled with `values`: words are
    escaped, an `english(...)` detail keeps its mark. For a notice that carries such a detail."""
    return escape(template) % values


# -- the scripts' words ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def script_messages() -> tuple[str, ...]:
    """Every `_("...")` of the kiosk's own scripts, found as `pybabel extract` finds them."""
    found: set[str] = set()
    for path in sorted(STATIC.glob("*.js")):
        for _line, message, _comments, _context in extract_from_file("javascript", str(path), keywords={"_": None}):
            if isinstance(message, str):
                found.add(message)
    return tuple(sorted(found))


def script_words() -> dict[str, str]:
    """The scripts' words in the page's language, for the JSON block every page carries."""
    return {m: gettext(m) for m in script_messages()}


def init_app(app: Flask) -> None:
    Babel(app, locale_selector=_select_locale, default_translation_directories=str(TRANSLATIONS))
    app.before_request(_switch_from_query)
    app.jinja_env.globals.update(LANGUAGES=LANGUAGES, current_language=current_language, script_words=script_words,
                                 page_in=page_in, language_name=language_name)
    app.jinja_env.filters.update(local_time=local_time, local_date=local_date, day=day, percent=percent,
                                 ratio=ratio, signed_ratio=signed_ratio, decimal=decimal, number=number, gib=gib,
                                 english=english)
