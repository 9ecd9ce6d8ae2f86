"""What the unit recorded in English (a result's headline, reasons and advice, the progression message,
the camera's instruction, why an eye was skipped or a visit closed), said in the reader's language.

The record stays in English for the visit log, the PACS and the reading centre; only the page is
translated. A sentence with figures is matched back to its `{name}` template (device/screening/wording.py)
and its figures written the reader's way. Words a worker typed (a skip reason of their own) and sentences
of an older release that this one no longer makes are shown as they were recorded.

The same goes for what a lower layer tells the kiosk in English when it refuses something a worker or an
administrator asked for (a settings value out of range, a visit to the eye clinic that cannot be recorded):
the refusal is a marked template there and said here, so no layer below the kiosk needs Flask.
"""
from __future__ import annotations

import re

from flask_babel import gettext

from device import config
from device.capture import calibration
from device.kiosk.languages import DEFAULT_LANGUAGE, current_language, day, decimal, percent, ratio
from device.kiosk.usb_export import EXPORT_STOPPED, STICK_GONE, STICK_UNWRITABLE
from device.screening import quality, referral, registration
from device.screening.wording import N_, read_back
from device.visits.visitlog import ABANDONED, ANOTHER_REGISTRATION, NOT_REFERRED, SEEN_OUTSIDE

CANCELLED = N_("Visit cancelled: {reason}")

# every template of a recorded sentence with figures, and what each figure is: a percentage, a ratio or a
# number written the reader's way, words recorded in English to say in theirs, or a name or a detail for the
# IT person shown as it is
FIGURES: dict[str, dict[str, str]] = {
    **referral.REASON_FIGURES,
    **registration.REFUSAL_FIGURES,
    ABANDONED: {"hours": "number"},
    CANCELLED: {"reason": "words"},
    STICK_GONE: {"drive": "as is"},
    STICK_UNWRITABLE: {"drive": "as is", "reason": "as is"},
    EXPORT_STOPPED: {"reason": "as is"},
    referral.MEAN_OF: {"opinions": "list", "last": "words"},
    NOT_REFERRED: {"visit": "as is"},
    SEEN_OUTSIDE: {"day": "day"},
    ANOTHER_REGISTRATION: {"number": "as is"},
    # a setting's figures stay as the settings form takes them (a dot for decimals), in every language
    config.WHOLE_UP_TO: {"most": "as is"},
    config.LIGHT_RANGE: {"low": "as is", "high": "as is"},
    config.BETWEEN: {"low": "as is", "high": "as is"},
    config.BELOW_TOO_BRIGHT: {"limit": "as is"},
    quality.SETTING_RANGE: {"low": "as is", "high": "as is", "value": "as is"},
    quality.SETTING_RADII: {"low": "as is", "high": "as is", "value": "as is"},
    calibration.OTHER_MODULE: {"calibrated": "as is", "module": "as is"},
    calibration.STALE: {"days": "number", "limit": "number"},
    calibration.UNREADABLE: {"reason": "as is"},
}

# A sentence may fit more than one template ("must lie between {low} and {high}" fits every sentence that the
# light limit's longer template makes, its {high} taking the rest): the template with the most words of its own
# explains the sentence, so it is tried first.
_MOST_SPECIFIC_FIRST = sorted(FIGURES.items(), key=lambda item: -len(re.sub(r"\{\w+\}", "", item[0])))


def _written(kind: str, value: str) -> str:
    """A figure read back from the English record, written the reader's way (a ValueError when it is not one)."""
    if kind == "percent":
        if not value.endswith("%"):
            raise ValueError(value)
        return percent(float(value[:-1]) / 100)
    if kind == "ratio":
        return ratio(float(value))
    if kind == "number":
        return decimal(float(value), "0.##")
    if kind == "day":
        return day(value, "long")
    if kind == "words":
        return said(value) or value
    if kind == "list":
        return ", ".join(said(item) or item for item in value.split(", "))
    return value


def said(text: str | None) -> str | None:
    """`text`, a sentence the unit recorded in English, in the language of the page being made."""
    if not text or current_language() == DEFAULT_LANGUAGE:
        return text
    translated = gettext(text)
    if translated != text:
        return translated
    for template, kinds in _MOST_SPECIFIC_FIRST:
        values = read_back(template, text)
        if values is None:
            continue
        try:
            return gettext(template).format(**{name: _written(kinds[name], value) for name, value in values.items()})
        except (ValueError, KeyError, IndexError):
            return text  # a figure that is not one, or a translation that lost a placeholder: the record as it is
    return text
