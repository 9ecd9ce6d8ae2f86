"""The unit's configuration: one TOML file (/etc/glaucoscreen/glaucoscreen.toml on a unit), overridden
by GLAUCOSCREEN_* environment variables and command-line flags, in that order.

Credentials for the central server live here (or in files it names), never in code.
"""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from device.quality import QualitySettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6's Ubuntu 22.04)
    import tomli as tomllib

DEFAULT_CONFIG = Path("/etc/glaucoscreen/glaucoscreen.toml")


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


@dataclass
class CaptureConfig:
    consecutive_gradable: int = 4     # frames that must pass the gate in a row before auto-capture
    burst: int = 3                    # full-resolution stills taken; the sharpest is kept
    target_brightness: float = 0.42   # mean luminance inside the field the illumination aims for
    max_led_level: float = 0.8        # light safety: never drive the white ring above this
    max_flash_s: float = 0.5          # light safety: longest white flash per still
    timeout_s: float = 60.0


@dataclass
class SyncConfig:
    url: str = ""                     # DICOMweb root, e.g. https://pacs.example.org/dicom-web
    token_file: str = ""              # bearer token, read from this file
    username: str = ""
    password_file: str = ""
    ca_file: str = ""                 # CA bundle for a private TLS certificate
    timeout_s: float = 30.0
    interval_s: float = 300.0


@dataclass
class Config:
    data_dir: Path = field(default_factory=default_data_dir)
    device_id: str = field(default_factory=socket.gethostname)
    board: str = "auto"               # auto | pi5 | jetson-orin-nano | workstation
    simulate: bool = False
    precision: str = "auto"           # auto | fp32 | int8
    kiosk: KioskConfig = field(default_factory=KioskConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    quality: QualitySettings = field(default_factory=QualitySettings)
    sync: SyncConfig = field(default_factory=SyncConfig)

    @classmethod
    def load(cls, path: Path | None = None, **overrides) -> "Config":
        cfg = cls()
        path = path or Path(os.environ.get("GLAUCOSCREEN_CONFIG", DEFAULT_CONFIG))
        if path and Path(path).exists():
            with open(path, "rb") as f:
                _apply(cfg, tomllib.load(f), str(path))
        env = os.environ.get("GLAUCOSCREEN_DATA_DIR")
        if env:
            cfg.data_dir = Path(env)
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        cfg.data_dir = Path(cfg.data_dir).expanduser()
        return cfg


def _apply(obj, data: dict, where: str) -> None:
    names = {f.name: f for f in fields(obj)}
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
        else:
            setattr(obj, key, type(current)(value))
