"""The model versions installed on a unit, which one is active, and the switch between them.

Under the unit's data folder (`<data dir>/installed-models/`):

    versions/<version>/   one unpacked bundle each: models/ (what the registry loads), checks/, bundle.json, bundle.sig
    incoming/             a bundle being unpacked and checked; anything here at start is a cut-short install
    active.json           which version is active, the ones before it (for rollback), those a rollback left, the
                          shipped release then
    install.lock          held by the one install or rollback under way

The models shipped with the software (`models/artifacts/`) count as the first installed version, under
the software's release number, and are never copied.

Why a power cut at any moment leaves the old models or the new ones whole, never a mix: a bundle is
unpacked and checked in incoming/, every file made durable; then renamed into versions/ in one step;
only then is active.json replaced (temporary file, fsync, rename). Until that rename the old pointer
stands and names whole files; after it the new one does. Leftovers of a cut (a folder in incoming/, a
version no pointer names) are removed by `recover`, which every install, rollback and the kiosk's start
runs first.

A rollback only moves the pointer: the version it leaves stays whole in versions/ (listed, with its hashes, by
`models list`), so an IT person can see what was taken out of use and a later install of it is a plain install.

A software update brings its own models: when the shipped release differs from the one recorded at the
last switch, the shipped models are active again (an older installed bundle never outlives an update).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from models.runtime import bundle as bundles
from models.runtime.durable import fsync_dir, write_whole
from models.runtime.engine import EngineError
from models.runtime.registry import ARTIFACTS, sha256_file

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

VERSIONS, INCOMING, POINTER, LOCK = "versions", "incoming", "active.json", "install.lock"
KEEP_PREVIOUS = 3  # installed versions kept besides the active one and the shipped: a rollback's first, then those it left


def shipped_release() -> str:
    """The release number of the models shipped with the software: the software's own version."""
    from importlib import metadata

    try:
        return metadata.version("glaucoscreen")
    except metadata.PackageNotFoundError:  # a checkout run without installing: nothing to compare but this
        return "0"


@dataclass(frozen=True)
class Staged:
    """A bundle unpacked and verified in incoming/, not yet active."""

    bundle: bundles.Bundle
    folder: Path

    @property
    def models(self) -> Path:
        return self.folder / bundles.MODELS

    @property
    def checks(self) -> Path:
        return self.folder / bundles.CHECKS


class ModelStore:
    def __init__(self, root: Path, shipped: Path = ARTIFACTS, shipped_version: str | None = None):
        self.root = Path(root)
        self.shipped = Path(shipped)
        self.shipped_version = shipped_version or shipped_release()

    # -- reading -------------------------------------------------------------------------------
    def _state(self) -> dict:
        try:
            state = json.loads((self.root / POINTER).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise EngineError(f"{self.root / POINTER} cannot be read ({exc}); `glaucoscreen models rollback` "
                              "goes back to the shipped models") from None
        return state if isinstance(state, dict) else {}

    def _current(self, state: dict) -> str | None:
        """The installed version the pointer makes active, or None for the shipped models."""
        version = state.get("version")
        if not version or version == self.shipped_version:
            return None
        if state.get("shipped") != self.shipped_version and not bundles.is_newer(version, self.shipped_version):
            return None  # the software was updated since, and its models are newer than the installed ones
        return str(version)

    def active_version(self) -> str:
        return self._current(self._state()) or self.shipped_version

    def version_folder(self, version: str) -> Path:
        return self.root / VERSIONS / version

    def active_dir(self) -> Path:
        """The folder the registry loads from: the active version's models, or the shipped ones."""
        return self.active()[0]

    def active(self) -> tuple[Path, str, str | None]:
        """The active models' folder, their version, and the switch that made them active (a new one at every
        install and rollback: a version installed again after a rollback is another switch to the same folder)."""
        state = self._state()
        version = self._current(state)
        if version is None:
            return self.shipped, self.shipped_version, state.get("switch")
        folder = self.version_folder(version) / bundles.MODELS
        if not folder.is_dir():
            raise EngineError(f"the active models (version {version}) are missing from {folder.parent}; "
                              "`glaucoscreen models rollback` goes back to the version before it")
        return folder, version, state.get("switch")

    def listing(self, verify: bool = True) -> list[dict]:
        """Every version the unit holds, the shipped one first, then the installed ones by version, each with its
        files' sha256 and whether the files still match; the active one marked, and those a rollback left."""
        state = self._state()
        active = self._current(state) or self.shipped_version
        left = set(state.get("rolled_back", []))
        out = [self._describe_shipped(verify) | {"active": active == self.shipped_version, "rolled_back": False}]
        for version in sorted(_kept(state) - {self.shipped_version}, key=bundles.parse_version):
            out.append(self._describe(version, verify) | {"active": version == active, "rolled_back": version in left})
        return out

    def _describe_shipped(self, verify: bool) -> dict:
        files = {f"{bundles.MODELS}/{name}": sha256_file(path) for name, path in bundles.model_files(self.shipped).items()}
        return {"version": self.shipped_version, "shipped": True, "path": str(self.shipped), "files": files,
                "verified": True if verify else None}

    def _describe(self, version: str, verify: bool) -> dict:
        folder = self.version_folder(version)
        try:
            listing = json.loads((folder / bundles.SIGNED_LIST).read_text())
        except (OSError, ValueError):
            return {"version": version, "shipped": False, "path": str(folder), "files": {}, "verified": False,
                    "error": "its signed list is missing: the folder was damaged"}
        files = {name: entry["sha256"] for name, entry in listing.get("files", {}).items()}
        return {"version": version, "shipped": False, "path": str(folder), "signed_by": listing.get("signed_by"),
                "created": listing.get("created"), "installed_at": _installed_at(folder), "files": files,
                "verified": (not bundles.verify_unpacked(folder)) if verify else None}

    # -- changing --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One install or rollback at a time on this unit (the kiosk, the sync service and the command are
        separate processes); the kernel drops the lock with a killed process. Leftovers are cleared first."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                self.recover()
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def recover_if_idle(self) -> list[str]:
        """`recover`, unless an install or rollback is under way in another process (which clears its own)."""
        if not self.root.is_dir():
            return []
        with open(self.root / LOCK, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []
            try:
                return self.recover()
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def recover(self) -> list[str]:
        """Remove what a cut-short install left: folders in incoming/ and versions no pointer names."""
        removed = []
        incoming = self.root / INCOMING
        if incoming.is_dir():
            for entry in incoming.iterdir():
                _remove(entry)
                removed.append(str(entry))
        keep = _kept(self._state())
        versions = self.root / VERSIONS
        if versions.is_dir():
            for entry in versions.iterdir():
                if entry.name not in keep:
                    _remove(entry)
                    removed.append(str(entry))
        return removed

    def incoming(self) -> Path:
        """A fresh folder in incoming/ (on the same file system as versions/, so the switch is a rename)."""
        (self.root / INCOMING).mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.root / INCOMING, prefix="bundle-"))

    def refuse_version(self, version: str, allow_downgrade: bool) -> None:
        """Raise BundleError when `version` must not replace the active one."""
        active = self.active_version()
        if bundles.parse_version(version) == bundles.parse_version(active):
            raise bundles.BundleError(f"version {version} is the active version already: nothing to install")
        if not allow_downgrade and not bundles.is_newer(version, active):
            raise bundles.BundleError(f"version {version} is older than the active version {active}: refused "
                                      "(--allow-downgrade installs it anyway)")

    def stage(self, path: Path, trusted: dict[str, Ed25519PublicKey], *, allow_downgrade: bool = False,
              step: Callable[[str], None] | None = None) -> Staged:
        """Check the bundle's signature and version, then unpack it into incoming/, every file hashed."""
        signed = bundles.read_signed(path, trusted)
        self.refuse_version(signed.version, allow_downgrade)
        folder = self.incoming()
        try:
            unpacked = bundles.unpack(path, trusted, folder / "bundle", step=step)
        except BaseException:
            _remove(folder)
            raise
        return Staged(unpacked, folder / "bundle")

    def commit(self, staged: Staged, step: Callable[[str], None] | None = None) -> dict:
        """Make the staged version the active one: rename it into versions/, then replace the pointer."""
        version = staged.bundle.version
        state = self._state()
        before = self.active_version()
        target = self.version_folder(version)
        (self.root / VERSIONS).mkdir(parents=True, exist_ok=True)
        if target.exists():  # held already (a rollback left it, or a downgrade installs it again): moved out in one rename
            os.rename(target, staged.folder.parent / "replaced")
        os.rename(staged.folder, target)
        fsync_dir(target.parent)
        if step is not None:
            step("renamed")
        previous = [v for v in state.get("previous", []) if v not in (version, before)] if self._current(state) else []
        left = [v for v in state.get("rolled_back", []) if v not in (version, before)]
        self._point(version, previous + [before], left)
        if step is not None:
            step("switched")
        _remove(staged.folder.parent)
        self.recover()  # versions beyond KEEP_PREVIOUS go
        return {"version": version, "previous": before}

    def rollback(self) -> dict:
        """Back to the version active before this one; from the first installed version, the shipped models."""
        state = self._state()
        current = self._current(state)
        if current is None:
            raise bundles.BundleError(f"the shipped models (version {self.shipped_version}) are active: there is "
                                      "nothing older to roll back to")
        previous = list(state.get("previous", []))
        while previous:
            target = previous.pop()
            if target == self.shipped_version or (self.version_folder(target) / bundles.MODELS).is_dir():
                break
        else:
            target = self.shipped_version
        left = [v for v in state.get("rolled_back", []) if v not in (current, target)] + [current]
        self._point(target, previous, left)
        self.recover()
        return {"version": target, "previous": current}

    def _point(self, version: str, previous: list[str], rolled_back: list[str]) -> None:
        """Replace the pointer. At most KEEP_PREVIOUS installed versions stay besides the active one: those a
        rollback left go first (oldest first), then the oldest a rollback would reach."""
        def installed(versions: list[str]) -> list[str]:
            return [v for v in versions if v != self.shipped_version]

        while len(installed(previous)) + len(rolled_back) > KEEP_PREVIOUS:
            if rolled_back:
                rolled_back = rolled_back[1:]
            else:
                previous = previous[previous.index(installed(previous)[0]) + 1:]
        state = {"version": version, "previous": previous, "rolled_back": rolled_back, "shipped": self.shipped_version,
                 "switched_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "switch": uuid.uuid4().hex}
        data = (json.dumps(state, indent=1) + "\n").encode("utf-8")
        write_whole(self.root / POINTER, data)


def _kept(state: dict) -> set[str]:
    """The versions the pointer names: the active one, those a rollback reaches, those a rollback left."""
    return {v for v in [state.get("version"), *state.get("previous", []), *state.get("rolled_back", [])] if v}


def _installed_at(folder: Path) -> str | None:
    try:
        return dt.datetime.fromtimestamp(folder.stat().st_mtime, dt.timezone.utc).isoformat(timespec="seconds")
    except OSError:
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def active_artifacts(models_root: Path | None) -> Path:
    """The folder the unit's models load from: the active installed version under `models_root` (the data
    folder's installed-models/) when one is installed, else the shipped artifacts. Callers resolve it once
    and load every model and policy from it, so a switch never mixes two versions."""
    if models_root is None:
        return ARTIFACTS
    return ModelStore(models_root).active_dir()
