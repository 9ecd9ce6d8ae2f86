"""Model updates: pack a release into a signed bundle, install one on the unit, roll back, list what is there.

An install is the same from every door (`glaucoscreen models install`, a USB stick, the kiosk's Models
page, the sync service's release check):
1. the bundle's signature against the keys in [models] trusted_keys, and its version against the active
   one (older or the same is refused unless a downgrade is asked for);
2. every file unpacked and hashed against the signed list (models.runtime.installed, in the data folder);
3. the checks with the bundle's own photos: compatible inputs, the INT8 accuracy gate, a smoke screening
   (device.screening.model_checks);
4. the switch, in one rename of the pointer; the versions before stay, for `models rollback`.
Any refusal leaves the running models as they were and says why. A running kiosk sees the new pointer
before its next screening and reloads its models then (device.unit).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from device.config import Config
from device.screening.model_checks import CheckFailed, make_check_photos, run_checks
from device.visits.datadir import DataDir
from models.runtime import bundle as bundles
from models.runtime import registry
from models.runtime.engine import EngineError
from models.runtime.installed import ModelStore, shipped_release

# An install must leave the visit log room to record visits (VisitLog refuses new ones below its 200 MB).
KEEP_FREE_BYTES = 200 * 2**20


class UpdateRefused(ValueError):
    """Models that were not installed (or a rollback that could not be done); the message says why in words."""


def store(cfg: Config) -> ModelStore:
    return ModelStore(DataDir(cfg.data_dir).models)


def trusted_keys(cfg: Config) -> dict:
    """The release keys this unit trusts, by key id, from [models] trusted_keys."""
    keys = {}
    for path in cfg.models.trusted_keys:
        key = bundles.load_public_key(Path(path).expanduser())
        keys[bundles.key_id(key)] = key
    return keys


def install(cfg: Config, bundle: Path, *, allow_downgrade: bool = False,
            step: Callable[[str], None] | None = None) -> dict:
    """Check and install the bundle, then switch to it. Raises UpdateRefused with the reason; the models the
    unit runs are then untouched."""
    bundle = Path(bundle)
    models = store(cfg)
    try:
        keys = trusted_keys(cfg)
        models.root.mkdir(parents=True, exist_ok=True)
        needed = bundle.stat().st_size if bundle.is_file() else 0
        free = shutil.disk_usage(models.root).free
        if free - needed < KEEP_FREE_BYTES:
            raise UpdateRefused(f"{bundle.name} was not installed: it needs {needed / 2**20:.0f} MB and the unit has "
                                f"{free / 2**20:.0f} MB free, which must keep {KEEP_FREE_BYTES / 2**20:.0f} MB for visits")
        with models.locked():
            staged = models.stage(bundle, keys, allow_downgrade=allow_downgrade, step=step)
            if step is not None:
                step("unpacked")
            try:
                checks = run_checks(staged.models, staged.checks)
            except BaseException:
                shutil.rmtree(staged.folder.parent, ignore_errors=True)
                raise
            if step is not None:
                step("checked")
            switched = models.commit(staged, step=step)
    except (bundles.BundleError, CheckFailed, EngineError) as exc:
        raise UpdateRefused(f"{bundle.name} was not installed: {exc}") from None
    return {"installed": switched["version"], "previous": switched["previous"], "signed_by": staged.bundle.signed_by,
            "sha256": staged.bundle.listing_sha256, "models": staged.bundle.listing.get("models", {}), "checks": checks}


def rollback(cfg: Config) -> dict:
    """Back to the models active before the current ones."""
    models = store(cfg)
    try:
        with models.locked():
            return models.rollback()
    except (bundles.BundleError, EngineError) as exc:
        raise UpdateRefused(f"nothing was rolled back: {exc}") from None


def listing(cfg: Config) -> list[dict]:
    return store(cfg).listing()


def pack(out: Path, key: Path, *, source: Path | None = None, version: str | None = None, check_photos: int = 4) -> dict:
    """Pack the models of `source` (default: the shipped ones) with freshly made check photos into a bundle
    signed with `key`; `version` defaults to the software's own (that of the shipped models)."""
    source = Path(source or registry.ARTIFACTS)
    version = version or shipped_release()
    bundles.parse_version(version)
    private = bundles.load_private_key(key)
    files = {f"{bundles.MODELS}/{name}": path for name, path in bundles.model_files(source).items()}
    for name, entry in registry.manifest(source).items():  # a manifest that does not match its files is no release
        if isinstance(entry, dict) and "file" in entry:
            for precision in ["fp32"] + [p for p in ("int8",) if isinstance(entry.get(p), dict)]:
                registry.model_file(name, precision, source)
    with tempfile.TemporaryDirectory(prefix="glaucoscreen-pack-") as tmp:
        made = make_check_photos(Path(tmp) / bundles.CHECKS, source, count=check_photos)
        files |= {f"{bundles.CHECKS}/{p.name}": p for p in made}
        listing = bundles.write_bundle(out, files, version=version, key=private,
                                       about={"models": registry.versions(source)})
    return {"bundle": str(out), "version": listing["version"], "signed_by": listing["signed_by"],
            "files": len(listing["files"]), "bytes": Path(out).stat().st_size, "models": listing["models"]}
