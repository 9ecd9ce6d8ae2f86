"""What the unit recorded in English (a result's headline, reasons and advice, the progression message,
the camera's instruction, why an eye was skipped or a visit closed), said in the reader's language.

The record stays in English for the visit log, the PACS and the reading centre; only the page is
translated. A sentence with figures is matched back to its `{name}` template (device/screening/wording.py)
and its figures written the reader's way. Words a worker typed (a skip reason of their own) and sentences
of an older release that this one no longer makes are shown as they were recorded.
"""
from __future__ import annotations

from flask_babel import gettext

from device.kiosk.languages import DEFAULT_LANGUAGE, current_language, decimal, percent, ratio
from device.kiosk.usb_export import EXPORT_STOPPED, STICK_GONE, STICK_UNWRITABLE
from device.screening import referral, registration
from device.screening.wording import N_, read_back
from device.visits.visitlog import ABANDONED

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
}


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
    for template, kinds in FIGURES.items():
        values = read_back(template, text)
        if values is None:
            continue
        try:
            return gettext(template).format(**{name: _written(kinds[name], value) for name, value in values.items()})
        except (ValueError, KeyError, IndexError):
            return text  # a figure that is not one, or a translation that lost a placeholder: the record as it is
    return text
