"""The quality gate's thresholds and the illumination's aims, changed by an administrator on the unit.

A clinic whose patients have small pupils or dark fundi may need a looser exposure threshold, one
with a shaky table more frames in a row: the IT person should not have to edit /etc over SSH for
that. Changes are checked (`device.config.check_overrides`), written whole to the overrides file in
the data directory that the configuration loads at every start, and put to work in the running
capture loop at once. The light limit can be lowered, and raised again, but never above the safety
cap of the unit's configuration file.
"""
from __future__ import annotations

import logging
import threading

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext
from flask_babel import lazy_gettext as _l

from device.config import (
    ADJUSTABLE_CAPTURE,
    MAX_CONSECUTIVE_GRADABLE,
    MIN_LED_LEVEL,
    TARGET_BRIGHTNESS_RANGE,
    SettingsError,
    changed_from_file,
    check_overrides,
    write_overrides,
)
from device.kiosk import get_unit
from device.kiosk.security import require_admin
from device.kiosk.wording import said
from device.visits.datadir import DataDir

bp = Blueprint("settings", __name__, url_prefix="/admin/settings")
log = logging.getLogger(__name__)
_saving = threading.Lock()  # two administrators saving at once must not interleave read, check and write

# (label, what it means and the range real photos span): from the comments of QualitySettings. The figures
# stay as the fields take them (a dot for decimals), in every language.
LABELS = {
    "capture": {
        "consecutive_gradable": (_l("Good frames in a row before the photo is taken"),
                                 _l("More gives steadier photos but a longer wait. 1 to %(most)s.", most=MAX_CONSECUTIVE_GRADABLE)),
        "target_brightness": (_l("Brightness the light aims for"),
                              _l("Mean brightness of the retina, %(low)s to %(high)s; must stay under the most brightness below.",
                                 low=f"{TARGET_BRIGHTNESS_RANGE[0]:g}", high=f"{TARGET_BRIGHTNESS_RANGE[1]:g}")),
        "max_led_level": (_l("White light limit"),
                          _l("Highest level of the white ring, %(low)s up to the safety cap.", low=f"{MIN_LED_LEVEL:g}")),
    },
    "quality": {
        "min_field_fraction": (_l("Least part of the frame the retina fills"), _l("Real photos 0.72 to 0.87; moved away 0.29 or less.")),
        "min_focus": (_l("Least sharpness"), _l("0 blurred to 1 sharp. Real photos 0.33 or more; slightly blurred 0.30 or less.")),
        "min_exposure": (_l("Least exposure"), _l("Mean of the brightest colour. Real photos 0.19 or more.")),
        "min_highlight": (_l("Least highlight"), _l("Brightest %(share)s of the brightest colour. Real photos 0.55 or more.", share="1%")),
        "max_brightness": (_l("Most brightness of the retina"), _l("Real photos 0.58 or less; above it the worker sees “too bright”.")),
        "max_clipped_fraction": (_l("Most of the retina with a colour at full brightness"),
                                 _l("Some cameras run red to full on up to 0.89; over-exposed photos 0.19 or more.")),
        "max_green_clipped_fraction": (_l("Most of the retina with green at full brightness"),
                                       _l("The disc washed out. Real photos 0.003 or less; over-exposed 0.005 or more.")),
        "max_dark_fraction": (_l("Most of the field in shadow"), _l("Lid, lashes, pupil shadow. Real photos 0.17 or less.")),
        "dark_level": (_l("Darkness that counts as shadow"), _l("Brightness below which a pixel shows nothing.")),
        "min_uniformity": (_l("Least evenness of the light"), _l("Darker half of the field against the other. Real photos 0.48 or more.")),
        "max_glare_fraction": (_l("Most of the field in reflection"), _l("Real photos 0.046 or less; a corneal reflex 0.08 or more.")),
        "glare_level": (_l("Blue level of a reflection"), _l("The retina's blue stays well below it.")),
        "min_disc_contrast": (_l("Least contrast of the optic disc"), _l("Real photos 0.27 or more; no disc 0.14 or less.")),
        "max_disc_offset": (_l("Furthest the disc may lie from the centre"), _l("In field radii, 0 to 1, for disc-centred photos.")),
        "min_red_ratio": (_l("Least redness (red / green)"), _l("Real photos 1.31 or more; paper and walls about 1. 0.5 to 3.")),
    },
}


bp.before_request(require_admin)


def _fields(current: dict, base: dict, entered: dict | None, problems: dict) -> list[dict]:
    """The form's rows, by section: value shown (what was entered, on an error), the file's value, the error."""
    rows = []
    for section in ("capture", "quality"):
        for name, value in current[section].items():
            key = f"{section}.{name}"
            label, hint = LABELS[section].get(name, (name.replace("_", " ").capitalize(), ""))
            rows.append({"section": section, "name": name, "key": key, "label": label, "hint": hint,
                         "value": entered.get(key, _show(value)) if entered else _show(value),
                         "file_value": _show(base[section].get(name)), "changed": base[section].get(name) != value,
                         "error": said(problems.get(key))})  # the configuration says it in English
    return rows


def _show(value) -> str:
    return "" if value is None else (str(value) if isinstance(value, int) else f"{value:g}")


def _page(entered: dict | None = None, problems: dict | None = None, status: int = 200):
    unit = get_unit()
    cfg = unit.config
    problems = problems or {}
    path = DataDir(cfg.data_dir).settings_overrides
    rows = _fields(cfg.adjustable(), cfg.file_values(), entered, problems)
    return render_template("settings.html", capture_rows=[r for r in rows if r["section"] == "capture"],
                           quality_rows=[r for r in rows if r["section"] == "quality"], problems=problems,
                           cap=cfg.led_safety_cap, fixed=cfg.capture, overrides_file=path,
                           overridden=path.exists(), changed=sum(r["changed"] for r in rows)), status


@bp.get("/")
def index():
    return _page()


@bp.post("/")
def save():
    unit = get_unit()
    cfg = unit.config
    entered = {f"{s}.{n}": request.form[f"{s}.{n}"] for s, names in
               (("capture", ADJUSTABLE_CAPTURE), ("quality", cfg.adjustable()["quality"])) for n in names
               if f"{s}.{n}" in request.form}
    values: dict[str, dict] = {"capture": {}, "quality": {}}
    for key, text in entered.items():
        section, name = key.split(".", 1)
        values[section][name] = text
    with _saving:
        try:
            clean = check_overrides(cfg, values)
        except SettingsError as exc:
            return _page(entered, exc.problems, 422)
        merged = cfg.adjustable()
        for section, entries in clean.items():
            merged[section].update(entries)
        try:
            write_overrides(cfg.data_dir, changed_from_file(cfg, merged), changed_by=session["user"])
        except OSError as exc:
            log.error("settings not saved: %s", exc)
            return _page(entered, {"file": gettext("The settings could not be saved (%(reason)s); nothing was changed.",
                                                   reason=exc.strerror or exc)}, 507)
        unit.apply_settings(clean)
    log.info("kiosk: %s changed settings: %s", session["user"], clean)
    flash(gettext("Saved. The camera uses the new settings from now on, and after every restart."), "info")
    return redirect(url_for("settings.index"))


@bp.post("/reset")
def reset():
    """Back to the configuration file's values: the overrides file goes, and the running loop follows."""
    unit = get_unit()
    cfg = unit.config
    with _saving:
        try:
            write_overrides(cfg.data_dir, {})
        except OSError as exc:
            flash(gettext("The settings could not be reset (%(reason)s).", reason=exc.strerror or exc), "warning")
            return redirect(url_for("settings.index"))
        unit.apply_settings(cfg.file_values())
    log.info("kiosk: %s put the settings back to the configuration file's", session["user"])
    flash(gettext("Back to the values of the unit's configuration file."), "info")
    return redirect(url_for("settings.index"))
