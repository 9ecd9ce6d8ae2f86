"""Sentences the unit records in English and the kiosk shows in the reader's language.

The visit log, the DICOM report and the reading centre keep what the screening said in English, so a
record reads the same wherever it goes. Where such a sentence is made it is marked with `N_`, gettext's
no-op marker (it returns the text as it is), so that `pybabel extract` puts it in the kiosk's catalogs;
the kiosk translates it when it shows it (device/kiosk/wording.py). A sentence with figures in it is a
`{name}` template, so that the figures can be read back out of the stored English and written the
reader's way (0,72 in French).
"""
from __future__ import annotations

import functools
import re


def N_(message: str) -> str:
    """Marks `message` for translation where it is shown, not here (gettext's own name for the marker,
    which `pybabel extract` looks for)."""
    return message


@functools.lru_cache(maxsize=None)
def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>.+?)" for i, part in enumerate(parts))
    return re.compile(regex + r"\Z", re.S)


def read_back(template: str, text: str) -> dict[str, str] | None:
    """The values a `{name}` template was filled with to make `text`, or None when it did not make it."""
    found = _pattern(template).match(text)
    return found.groupdict() if found else None
