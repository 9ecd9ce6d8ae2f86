"""The optic module's calibration put to work: read from the data folder, checked against the module in
front of the camera, its LED response given to the lights (the dose ledger and the light limit hold by it)
and its correction to the capture loop, so every preview frame and still is corrected before the quality
gate and the screening. `glaucoscreen calibrate` and the admin's Camera and lights page make a new one here.

A calibration measured on another module is not applied (its vignetting and colours are not this one's):
the unit runs uncorrected and says so, as it does with none. One older than `[calibration] max_age_days`
is applied and called stale: LEDs age, so it is time to calibrate again.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from calibration import optical
from calibration.measure import CalibrationRefused, calibrate
from calibration.optical import CalibrationError, FrameCorrection, OpticalCalibration
from device.config import Config
from device.screening.wording import N_
from device.visits.datadir import DataDir
from hardware.light_dose import LedResponse

log = logging.getLogger(__name__)

# What the unit says of its calibration, in English for the log and the IT person; the kiosk shows it translated.
NONE = N_("This optic module has not been calibrated: photos are not corrected for its vignetting and colour, and "
          "the light dose uses the datasheet's figure.")
OTHER_MODULE = N_("The calibration was made on another optic module ({calibrated}); this one is {module}. It is not "
                  "used: calibrate this module.")
STALE = N_("The calibration is {days} days old, older than the {limit} days allowed: calibrate the optic module again.")
UNREADABLE = N_("The calibration cannot be used: {reason}")
SEEN_FILE = "module-seen.json"  # in the calibration's folder: the serial number of the module the unit last had


@dataclass
class CalibrationState:
    """The calibration as this unit uses it now, and what is wrong with it, in words."""

    calibration: OpticalCalibration | None = None
    applied: bool = False
    module_serial: str | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def correction(self) -> FrameCorrection | None:
        return FrameCorrection(self.calibration) if self.applied and self.calibration is not None else None

    def summary(self) -> dict | None:
        """What a photo, a capture report and the structured report say of the calibration they went through."""
        return self.calibration.summary() if self.applied and self.calibration is not None else None

    def to_dict(self, max_age_days: float, now: dt.datetime | None = None) -> dict:
        cal = self.calibration
        out: dict = {"ok": cal is not None and self.applied and not self.warnings, "applied": self.applied,
                     "module_serial": self.module_serial, "warnings": list(self.warnings), "max_age_days": max_age_days}
        if self.error:
            out["error"] = self.error
        if cal is not None:
            out.update(version=cal.version, date=cal.date, age_days=round(cal.age_days(now), 1),
                       calibrated_serial=cal.module_serial, white_balance=list(cal.white_balance),
                       led_response=cal.led_response.get("source"),
                       edge_to_centre=cal.edge_to_centre)
        return out


def calibration_file(config: Config) -> Path:
    return DataDir(config.data_dir).calibration


def state(config: Config, module_serial: str | None, now: dt.datetime | None = None) -> CalibrationState:
    """The data folder's calibration judged against the module (`module_serial`, None where unknown)."""
    out = CalibrationState(module_serial=module_serial)
    try:
        out.calibration = optical.load(calibration_file(config))
    except CalibrationError as exc:
        out.error = str(exc)
        out.warnings.append(UNREADABLE.format(reason=exc))
        return out
    cal = out.calibration
    if cal is None:
        out.warnings.append(NONE)
        return out
    if module_serial is not None and cal.module_serial != module_serial:
        out.warnings.append(OTHER_MODULE.format(calibrated=cal.module_serial, module=module_serial))
        return out
    out.applied = True
    limit = config.calibration.max_age_days
    if cal.age_days(now) > limit:
        out.warnings.append(STALE.format(days=f"{cal.age_days(now):.0f}", limit=f"{limit:g}"))
    return out


def module_serial_of(rig) -> str | None:
    """The serial number the optic module gives (None where it has none or does not answer)."""
    module = getattr(rig, "optic_module", None)
    if module is None:
        return None
    try:
        return str(module.identify()["serial"])
    except Exception as exc:  # noqa: BLE001 - an unanswering module leaves the calibration unchecked, not the unit down
        log.warning("the optic module's serial number could not be read: %s", exc)
        return None


def remember_module(config: Config, serial: str | None) -> None:
    """Note the serial number of the module the unit has now, for `doctor` (which does not open the module's
    port while the kiosk holds it) to compare the calibration with."""
    if serial is None:
        return
    folder = optical.maps_folder(calibration_file(config))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SEEN_FILE).write_text(json.dumps({"serial": serial, "seen_at": dt.datetime.now(dt.timezone.utc)
                                                   .isoformat(timespec="seconds")}) + "\n")
    except OSError as exc:
        log.warning("the optic module's serial number could not be noted: %s", exc)


def module_last_seen(config: Config) -> str | None:
    try:
        return str(json.loads((optical.maps_folder(calibration_file(config)) / SEEN_FILE).read_text())["serial"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def led_response(calibration: OpticalCalibration) -> LedResponse:
    found = calibration.led_response
    return LedResponse(tuple(found["levels"]), tuple(found["irradiance_mw_cm2"]),
                       source=f"calibration {calibration.version} of {calibration.date[:10]} ({found.get('source', '')})")


def put_to_work(config: Config, rig) -> CalibrationState:
    """Load the calibration and give it to the lights; the caller gives `state.correction` to the capture loop."""
    serial = module_serial_of(rig)
    remember_module(config, serial)
    found = state(config, serial)
    for warning in found.warnings:
        log.info("optical calibration: %s", warning)
    if found.applied and found.calibration is not None and rig.illumination is not None:
        try:
            rig.illumination.use_response(led_response(found.calibration))
        except (KeyError, TypeError, ValueError) as exc:
            found.warnings.append(UNREADABLE.format(reason=f"its LED response is unusable ({exc})"))
            found.applied = False
    return found


def run(config: Config, rig, *, light_meter=None) -> OpticalCalibration:
    """Calibrate the module in front of the camera now (the target in place, the camera free), save it as the
    one in use and give its LED response to the lights. CalibrationRefused says why, and nothing is saved."""
    serial = module_serial_of(rig)
    if serial is None:
        raise CalibrationRefused("the optic module did not give its serial number, so a calibration could not be "
                                 "tied to it: check the module's cable and calibrate again")
    path = calibration_file(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    rig.camera.start()
    made = calibrate(rig.camera, rig.illumination, module_serial=serial, version=optical.next_version(path),
                     max_level=config.capture.max_led_level, light_meter=light_meter,
                     datasheet_full_mw_cm2=config.light_safety.datasheet_mw_cm2)
    optical.save(made, path)
    remember_module(config, serial)
    rig.illumination.use_response(led_response(made))
    log.info("optic module %s calibrated: version %d", serial, made.version)
    return made
