"""The unit's data directory, named in one place.

Everything the unit writes at run time lives under one folder (/var/lib/glaucoscreen on a unit, see
`device.config.default_data_dir`), so that a backup, a restore or a wiped SD card is one folder:

    <data dir>/
        visits.db                 the visit log (SQLite, WAL: visits.db-wal and visits.db-shm beside it)
        images/                   the content-addressed image store (images/ab/abcdef...)
        accounts.db               the kiosk's user accounts (PINs), a file of their own
        settings-overrides.toml   what an administrator changed on the kiosk's settings page
        engines/                  TensorRT engines built for this GPU, and the precision the pipeline measured
        sync.lock                 held by the one sync that is sending
        installed-models/         model versions installed from signed bundles, and which one is active
        calibration.json          the unit's own optical calibration, where it has one (the health report carries it)
        calibration/              its flat-field maps and every earlier version (calibration/optical.py names them
                                  from calibration.json's path), and the serial number of the module last seen

The kiosk, the sync service and the command are separate processes that meet only in these files;
naming them here keeps a renamed file from splitting them without anyone noticing. Only the paths
are named: each owner (VisitLog, Accounts, the config, sync) still creates and opens its own.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["DataDir"]


class DataDir:
    __slots__ = ("root",)

    VISITS_DB = "visits.db"
    IMAGES = "images"
    ACCOUNTS_DB = "accounts.db"
    SETTINGS_OVERRIDES = "settings-overrides.toml"
    ENGINES = "engines"
    SYNC_LOCK = "sync.lock"
    MODELS = "installed-models"
    CALIBRATION = "calibration.json"

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"DataDir({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataDir) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    @property
    def visits_db(self) -> Path:
        return self.root / self.VISITS_DB

    def visits_db_files(self) -> list[Path]:
        """The visit log with its write-ahead log and shared-memory files: all of them are the visit
        log's size on disk, and a copy without the WAL may miss the latest committed visits."""
        return sorted(p for p in self.root.glob(self.VISITS_DB + "*") if p.is_file())

    @property
    def images(self) -> Path:
        return self.root / self.IMAGES

    @property
    def accounts_db(self) -> Path:
        return self.root / self.ACCOUNTS_DB

    @property
    def settings_overrides(self) -> Path:
        return self.root / self.SETTINGS_OVERRIDES

    @property
    def engines(self) -> Path:
        return self.root / self.ENGINES

    @property
    def sync_lock(self) -> Path:
        return self.root / self.SYNC_LOCK

    @property
    def models(self) -> Path:
        return self.root / self.MODELS

    @property
    def calibration(self) -> Path:
        return self.root / self.CALIBRATION

    @classmethod
    def names(cls) -> dict[str, str]:
        """Each entry's name directly under the root, by property: the whole layout, for the storage page
        and for the test that keeps it the only place the names are spelled out."""
        return {"visits_db": cls.VISITS_DB, "images": cls.IMAGES, "accounts_db": cls.ACCOUNTS_DB,
                "settings_overrides": cls.SETTINGS_OVERRIDES, "engines": cls.ENGINES, "sync_lock": cls.SYNC_LOCK,
                "models": cls.MODELS, "calibration": cls.CALIBRATION}
