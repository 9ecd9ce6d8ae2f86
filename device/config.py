"""The unit's configuration: one TOML file (/etc/glaucoscreen/glaucoscreen.toml on a unit), overridden
by GLAUCOSCREEN_* environment variables and command-line flags, in that order; then the settings an
administrator changed on the kiosk's settings page (`settings-overrides.toml` in the data directory).

The kiosk writes its changes to the data directory, not to /etc: the service may not write there,
and the IT person's file stays as they wrote it. Only what is safe to tune in the clinic can be
overridden (quality thresholds, frames in a row, target brightness, the light limit); the light limit
never above the configuration file's own `max_led_level`, which is the hard safety cap.

Credentials for the central server live here (or in files it names), never in code.
"""
from __future__ import annotations

import copy
import datetime as dt
import logging
import math
import os
import socket
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from device.screening.quality import QualitySettings
from device.screening.wording import N_
from device.visits.datadir import DataDir
from hardware.light_dose import NOMINAL_FULL_MW_CM2, PHOTOCHEMICAL_GROUP1_MW_CM2, THERMAL_GROUP1_MW_CM2, VISIT_EXPOSURE_CAP_MJ_CM2, LedResponse, LightLimits
from models.runtime.durable import fsync_dir, write_whole

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6's Ubuntu 22.04)
    import tomli as tomllib

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/glaucoscreen/glaucoscreen.toml")
# What the kiosk's settings page may change: the whole quality gate, and these of the capture loop.
ADJUSTABLE_CAPTURE = ("consecutive_gradable", "target_brightness", "max_led_level")
MAX_CONSECUTIVE_GRADABLE = 30       # about a second of frames: more only makes the worker hold still longer
TARGET_BRIGHTNESS_RANGE = (0.1, 0.7)
MIN_LED_LEVEL = 0.05                # below this the ring gives too little light to grade any eye
# max_photo_pixels: from a small camera's 1 MP to what Pillow still reads a header of (its own bound is ~179 MP)
PHOTO_PIXELS_RANGE = (1_000_000, 150_000_000)


def default_data_dir() -> Path:
    """/var/lib/glaucoscreen on a unit; a per-user folder on a workstation."""
    unit = Path("/var/lib/glaucoscreen")
    if unit.is_dir() and os.access(unit, os.W_OK):
        return unit
    base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "glaucoscreen"


@dataclass
class KioskConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    session_timeout_min: int = 15
    threads: int = 6
    # Host names the kiosk answers to; any other Host header gets 400 (DNS rebinding). Empty: 127.0.0.1,
    # localhost and `host` (the unit's own host name too when `host` is every interface, 0.0.0.0).
    allowed_hosts: list[str] = field(default_factory=list)


@dataclass
class CaptureConfig:
    consecutive_gradable: int = 4     # frames that must pass the gate in a row before auto-capture
    burst: int = 3                    # full-resolution stills taken; the sharpest is kept
    target_brightness: float = 0.42   # mean luminance inside the field the illumination aims for
    max_led_level: float = 0.8        # light safety: never drive the white ring above this
    max_flash_s: float = 0.5          # light safety: longest white flash per still
    timeout_s: float = 60.0


@dataclass
class ClinicConfig:
    """What the patient's slip says about where they were screened and where to go when referred."""

    name: str = ""                    # e.g. "Kisumu East Health Centre"
    referral_to: str = ""             # e.g. "County Hospital eye clinic, Monday to Friday, 8 to 12"
    refer_within_days: int = 30       # a referred patient's slip gives a date to go by: the visit's day plus this


@dataclass
class SyncConfig:
    url: str = ""                     # DICOMweb root, e.g. https://pacs.example.org/dicom-web
    token_file: str = ""              # bearer token, read from this file
    username: str = ""
    password_file: str = ""
    ca_file: str = ""                 # CA bundle for a private TLS certificate; wins over REQUESTS_CA_BUNDLE
    timeout_s: float = 30.0           # to connect, and for each read: a PACS that says nothing
    deadline_s: float = 300.0         # for one whole request: a PACS that trickles its answer
    interval_s: float = 300.0
    max_retry_after_s: float = 3600.0  # the longest a PACS's Retry-After may hold an item back
    fhir_url: str = ""                # the EHR's FHIR base URL: each eye also goes there as a FHIR bundle; empty: not sent
    fhir_token_file: str = ""         # bearer token for the EHR, read from this file
    health_url: str = ""              # where each sync run POSTs the unit's health report (JSON); empty: not sent


@dataclass
class ModelsConfig:
    """Model updates: who may release them, and where a unit looks for new ones."""

    trusted_keys: list[str] = field(default_factory=list)  # PEM Ed25519 public keys whose bundles this unit installs
    release_url: str = ""             # a JSON index {"version": ..., "url": ...} of the newest bundle; empty: none fetched


@dataclass
class LightSafetyConfig:
    """The light the white ring may put into an eye, held by the lights themselves (hardware/light_dose.py
    says where the defaults come from: ISO 15004-2:2007 clause 5.4.1, Table 2, Group 1 continuous-wave limits,
    whose values must be checked against the standard's text before use on patients)."""

    photochemical_mw_cm2: float = PHOTOCHEMICAL_GROUP1_MW_CM2  # 5.4.1.3 a): irradiance at the pupil, continuous
    thermal_mw_cm2: float = THERMAL_GROUP1_MW_CM2             # 5.4.1.6 a): irradiance at the pupil, continuous
    visit_exposure_mj_cm2: float = VISIT_EXPOSURE_CAP_MJ_CM2   # radiant exposure one eye may get in one visit (retakes included)
    datasheet_mw_cm2: float = NOMINAL_FULL_MW_CM2             # the module's datasheet: irradiance at the pupil at full level,
                                                              # used until a calibration measures the module's own response

    def limits(self) -> LightLimits:
        return LightLimits(photochemical_mw_cm2=self.photochemical_mw_cm2, thermal_mw_cm2=self.thermal_mw_cm2,
                           visit_exposure_mj_cm2=self.visit_exposure_mj_cm2)


@dataclass
class CalibrationConfig:
    max_age_days: float = 90.0        # an optical calibration older than this is called stale (doctor, the admin page)


@dataclass
class Config:
    data_dir: Path = field(default_factory=default_data_dir)
    device_id: str = field(default_factory=socket.gethostname)
    board: str = "auto"               # auto | pi5 | jetson-orin-nano | workstation
    simulate: bool = False
    precision: str = "auto"           # auto | fp32 | int8
    # A visit left unfinished this long is closed as abandoned and sent with what it has
    abandon_visit_after_h: float = 12.0
    # Photos with more pixels are refused from their header, before decoding (models.runtime.images.MAX_PIXELS)
    max_photo_pixels: int = 50_000_000
    kiosk: KioskConfig = field(default_factory=KioskConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    quality: QualitySettings = field(default_factory=QualitySettings)
    sync: SyncConfig = field(default_factory=SyncConfig)
    clinic: ClinicConfig = field(default_factory=ClinicConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    light_safety: LightSafetyConfig = field(default_factory=LightSafetyConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    # Not a setting: the adjustable values as the configuration file (or the constructor) gave them, before
    # the settings page's overrides. The light-safety cap and "back to the file's values" come from here.
    _file_values: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._file_values = self.adjustable()

    @classmethod
    def load(cls, path: Path | None = None, **flags) -> "Config":
        cfg = cls()
        path = path or Path(os.environ.get("GLAUCOSCREEN_CONFIG", DEFAULT_CONFIG))
        if path and Path(path).exists():
            with open(path, "rb") as f:
                _apply(cfg, tomllib.load(f), str(path))
        env = os.environ.get("GLAUCOSCREEN_DATA_DIR")
        if env:
            cfg.data_dir = Path(env)
        for key, value in flags.items():
            if value is not None:
                setattr(cfg, key, value)
        cfg.data_dir = Path(cfg.data_dir).expanduser()
        low, high = PHOTO_PIXELS_RANGE
        if not low <= cfg.max_photo_pixels <= high:
            raise ValueError(f"{path}: max_photo_pixels must lie between {low:,} and {high:,} (a 12 MP phone photo is "
                             f"12,000,000), not {cfg.max_photo_pixels:,}")
        if not 0.5 <= cfg.abandon_visit_after_h <= 24 * 30:
            raise ValueError(f"{path}: abandon_visit_after_h must be from 0.5 hours to 30 days, not {cfg.abandon_visit_after_h}")
        if not 1 <= cfg.clinic.refer_within_days <= 365:
            raise ValueError(f"{path}: [clinic] refer_within_days must be 1 to 365 days, not {cfg.clinic.refer_within_days}")
        try:
            cfg.light_safety.limits()
            if not cfg.light_safety.datasheet_mw_cm2 > 0:
                raise ValueError(f"datasheet_mw_cm2 must be a positive number, not {cfg.light_safety.datasheet_mw_cm2}")
        except ValueError as exc:
            raise ValueError(f"{path}: [light_safety] {exc}") from None
        if not cfg.calibration.max_age_days > 0:
            raise ValueError(f"{path}: [calibration] max_age_days must be a positive number of days, not "
                             f"{cfg.calibration.max_age_days}")
        cfg._file_values = cfg.adjustable()
        _load_overrides(cfg)
        return cfg

    def adjustable(self) -> dict[str, dict]:
        """The settings the kiosk's settings page may change, as they are now."""
        return {"capture": {name: getattr(self.capture, name) for name in ADJUSTABLE_CAPTURE},
                "quality": {f.name: getattr(self.quality, f.name) for f in fields(self.quality)}}

    def file_values(self) -> dict[str, dict]:
        """The adjustable settings as the configuration file set them, before any override."""
        return copy.deepcopy(self._file_values)

    @property
    def led_safety_cap(self) -> float:
        """The white ring's hard limit: the configuration file's `max_led_level`. An override may lower the
        working limit, and raise it again up to this, never above."""
        return float(self._file_values["capture"]["max_led_level"])

    def rig_options(self) -> dict:
        """What `hardware.rig.open_rig` needs of this configuration, as plain values."""
        return {"simulate": self.simulate, "board": self.board, "max_led_level": self.capture.max_led_level,
                "max_flash_s": self.capture.max_flash_s, "light_limits": self.light_safety.limits(),
                "led_response": LedResponse.nominal(self.light_safety.datasheet_mw_cm2)}


# What the settings page is told of a value it refuses, by setting (the kiosk says it in the administrator's
# language: device/kiosk/wording.py reads the figures back out of these templates).
EMPTY = N_("must not be empty")
NOT_A_NUMBER = N_("must be a number, such as 0.25")
NOT_WHOLE = N_("must be a whole number")
WHOLE_UP_TO = N_("must be a whole number from 1 to {most}")
LIGHT_RANGE = N_("must lie between {low} and {high}, the light-safety cap of this unit's configuration file")
BETWEEN = N_("must lie between {low} and {high}")
BELOW_TOO_BRIGHT = N_("must stay below the gate's \"too bright\" limit (max_brightness {limit})")


class SettingsError(ValueError):
    """Overrides that cannot be used; `problems` says, per "section.name", what is wrong in words."""

    def __init__(self, problems: dict[str, str]):
        self.problems = problems
        super().__init__("; ".join(f"{key}: {text}" for key, text in problems.items()))


def overrides_path(data_dir: Path) -> Path:
    return DataDir(data_dir).settings_overrides


def check_overrides(cfg: Config, values: dict[str, dict]) -> dict[str, dict]:
    """`values` (numbers, or text from a form) checked against what is safe, as typed numbers by section.

    Raises SettingsError naming every setting that is unknown, not a number, or out of its range. The
    quality thresholds keep the gate's own ranges (`QualitySettings.validate`); the light limit must lie
    between MIN_LED_LEVEL and the safety cap; the target brightness must stay under the gate's
    "too bright" limit, or the light would be driven to a level the gate refuses.
    """
    problems: dict[str, str] = {}
    clean: dict[str, dict] = {"capture": {}, "quality": {}}
    known = {"capture": ADJUSTABLE_CAPTURE, "quality": tuple(f.name for f in fields(cfg.quality))}
    for section, entries in values.items():
        if section not in known:
            problems[section] = f"[{section}] cannot be changed here (only {', '.join(known)})"
            continue
        if not isinstance(entries, dict):
            problems[section] = f"[{section}] must be a table"
            continue
        for name, raw in entries.items():
            key = f"{section}.{name}"
            if name not in known[section]:
                problems[key] = f"{name} cannot be changed here"
                continue
            try:
                clean[section][name] = _number(raw, whole=name == "consecutive_gradable")
            except ValueError as exc:
                problems[key] = str(exc)
    quality = clean["quality"]
    for name, value in quality.items():
        try:  # on the defaults, which are valid: any complaint is about this one setting
            replace(QualitySettings(), **{name: value}).validate()
        except ValueError as exc:
            problems[f"quality.{name}"] = str(exc).replace(f"quality setting {name} ", "")
    capture = clean["capture"]
    if "consecutive_gradable" in capture and not 1 <= capture["consecutive_gradable"] <= MAX_CONSECUTIVE_GRADABLE:
        problems["capture.consecutive_gradable"] = WHOLE_UP_TO.format(most=MAX_CONSECUTIVE_GRADABLE)
    cap = cfg.led_safety_cap
    if "max_led_level" in capture and not MIN_LED_LEVEL <= capture["max_led_level"] <= cap:
        problems["capture.max_led_level"] = LIGHT_RANGE.format(low=f"{MIN_LED_LEVEL:g}", high=f"{cap:g}")
    if "target_brightness" in capture:
        low, high = TARGET_BRIGHTNESS_RANGE
        too_bright = quality.get("max_brightness", cfg.quality.max_brightness)
        if not low <= capture["target_brightness"] <= high:
            problems["capture.target_brightness"] = BETWEEN.format(low=f"{low:g}", high=f"{high:g}")
        elif capture["target_brightness"] >= too_bright:
            problems["capture.target_brightness"] = BELOW_TOO_BRIGHT.format(limit=f"{too_bright:g}")
    if problems:
        raise SettingsError(problems)
    return clean


def read_overrides(data_dir: Path) -> dict[str, dict]:
    """The overrides file's contents by section (empty when there is none); not yet checked."""
    path = DataDir(data_dir).settings_overrides
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path} cannot be read ({exc}); delete it to use the configuration file's values") from exc
    return data


def write_overrides(data_dir: Path, values: dict[str, dict], *, changed_by: str = "") -> Path | None:
    """Write the overrides whole or not at all (temporary file, fsync, rename, fsync the folder), so a power
    cut never leaves half a file that would stop the unit from starting. No overrides: the file is removed."""
    path = DataDir(data_dir).settings_overrides
    sections = {s: dict(sorted(v.items())) for s, v in values.items() if v}
    if not sections:
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)
        return None
    stamp = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    lines = ["# Settings changed on the kiosk's settings page. They apply on top of the unit's configuration file;",
             "# delete this file to go back to that file's values.",
             f"# Last changed{' by ' + changed_by if changed_by else ''} on {stamp}."]
    for section, entries in sections.items():
        lines += ["", f"[{section}]"] + [f"{name} = {_toml_number(value)}" for name, value in entries.items()]
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, text.encode("utf-8"))
    return path


def changed_from_file(cfg: Config, values: dict[str, dict]) -> dict[str, dict]:
    """Only the values that differ from the configuration file's: what the overrides file needs to hold, so a
    later change to the configuration file still applies to every setting nobody changed here."""
    base = cfg.file_values()
    return {section: {name: value for name, value in entries.items() if base[section].get(name) != value}
            for section, entries in values.items()}


def _load_overrides(cfg: Config) -> None:
    path = DataDir(cfg.data_dir).settings_overrides
    data = read_overrides(cfg.data_dir)
    if not data:
        return
    level = data.get("capture", {}).get("max_led_level") if isinstance(data.get("capture"), dict) else None
    if isinstance(level, (int, float)) and level > cfg.led_safety_cap:
        # the configuration file's cap was lowered after this was set: the cap wins
        log.warning("%s: max_led_level %.2f is above the configuration file's cap %.2f; the cap applies",
                    path, level, cfg.led_safety_cap)
        data["capture"] = {k: v for k, v in data["capture"].items() if k != "max_led_level"}
    try:
        clean = check_overrides(cfg, data)
    except SettingsError as exc:
        raise ValueError(f"{path}: {exc}; change it on the kiosk's settings page or delete the file") from None
    for section, entries in clean.items():
        for name, value in entries.items():
            setattr(getattr(cfg, section), name, value)


def _number(raw, *, whole: bool) -> float | int:
    if isinstance(raw, bool):
        raise ValueError("must be a number")
    if isinstance(raw, str):
        text = raw.strip().replace(",", ".")
        if not text:
            raise ValueError(EMPTY)
        try:
            raw = int(text) if whole else float(text)
        except ValueError:
            raise ValueError(NOT_WHOLE if whole else NOT_A_NUMBER) from None
    if whole:
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if not isinstance(raw, int):
            raise ValueError(NOT_WHOLE)
        return raw
    if not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise ValueError(NOT_A_NUMBER)
    return float(raw)


def _toml_number(value: float | int) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _apply(obj, data: dict, where: str) -> None:
    names = {f.name: f for f in fields(obj) if not f.name.startswith("_")}
    for key, value in data.items():
        if key not in names:
            raise ValueError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if hasattr(current, "__dataclass_fields__"):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: [{key}] must be a table")
            _apply(current, value, f"{where} [{key}]")
        elif isinstance(current, Path):
            setattr(obj, key, Path(value))
        elif isinstance(current, list):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{where}: {key} must be a list of names, such as [\"kiosk.clinic.example\"]")
            setattr(obj, key, list(value))
        else:
            setattr(obj, key, type(current)(value))
