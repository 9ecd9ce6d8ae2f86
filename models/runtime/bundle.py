"""Model bundles: the models of one release in one signed file, so a unit knows who released them.

A bundle is a plain tar file:

    bundle.json      the signed list: format, release version, when, which key, and every file's sha256 and size
    bundle.sig       the Ed25519 signature of bundle.json's bytes (base64)
    models/...       what the registry loads: manifest.json, the ONNX files it names, the policies, the model card
    checks/...       the bundle's own check photos, screened on the unit before it switches (device.screening.model_checks)

The signature covers only bundle.json, and bundle.json covers every other file by its hash, so one
signature check and one hash per file prove the whole bundle is what the key's holder released. A unit
trusts the PEM public keys its configuration lists (`[models] trusted_keys`); the release key is an
Ed25519 private key in PEM, as `openssl genpkey -algorithm ed25519` writes it.

Reading a bundle never trusts its tar headers: only regular files with plain names, each named once in
the signed list and matching its hash, are written out, so a crafted bundle cannot write outside the
folder it is unpacked into (no links, no "..", no absolute names).
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, cast

from models.runtime.durable import fsync_dir
from models.runtime.registry import sha256_file

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = 1
SIGNED_LIST = "bundle.json"
SIGNATURE = "bundle.sig"
MODELS, CHECKS = "models", "checks"
# The registry's own files beside the ONNX files the manifest names: what a unit's screening reads.
POLICIES = ("screening.json", "progression.json")
MODEL_CARD = "MODEL_CARD.md"
MANIFEST = "manifest.json"
MAX_FILE_BYTES = 2 * 2**30  # a bundle file bigger than this is not a model of this unit's size
_NAME = re.compile(rf"^(?:{MODELS}|{CHECKS})/[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION = re.compile(r"^\d+(?:\.\d+){0,3}$")
_CHUNK = 1 << 20


class BundleError(ValueError):
    """A bundle that cannot be packed or will not be installed; the message says why, in words."""


# -- versions ------------------------------------------------------------------------------------
def parse_version(text: str) -> tuple[int, ...]:
    """A release version as numbers ("1.2.0" -> (1, 2, 0)); a release is compared, so nothing else will do."""
    if not isinstance(text, str) or not _VERSION.match(text.strip()):
        raise BundleError(f"the release version must be numbers with dots, such as 1.2.0, not {text!r}")
    parts = [int(p) for p in text.strip().split(".")]
    while len(parts) > 1 and parts[-1] == 0:  # 1.2 and 1.2.0 are the same release
        parts.pop()
    return tuple(parts)


def is_newer(version: str, than: str) -> bool:
    return parse_version(version) > parse_version(than)


# -- keys ----------------------------------------------------------------------------------------
def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # the unit's venv lacks it: say what to install, not a traceback
        raise BundleError("checking model bundles needs the Python package 'cryptography'; install it in the "
                          f"unit's environment (pip install cryptography): {exc}") from None
    return serialization, ed25519, InvalidSignature


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The release key: an Ed25519 private key in PEM, unencrypted (`openssl genpkey -algorithm ed25519`)."""
    serialization, ed25519, _ = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise BundleError(f"the signing key {path} cannot be read: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{path} is not an unencrypted PEM private key ({exc}); make one with "
                          "`openssl genpkey -algorithm ed25519 -out KEY.pem`") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BundleError(f"{path} is a {type(key).__name__.replace('_', '')}, not an Ed25519 private key; make one with "
                          "`openssl genpkey -algorithm ed25519 -out KEY.pem`")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A key the unit trusts: an Ed25519 public key in PEM (`openssl pkey -in KEY.pem -pubout`)."""
    serialization, ed25519, _ = _crypto()
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise BundleError(f"the trusted key {path} cannot be read: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise BundleError(f"the trusted key {path} is not a PEM public key ({exc}); write it with "
                          "`openssl pkey -in KEY.pem -pubout -out KEY.pub.pem`") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BundleError(f"the trusted key {path} is not an Ed25519 public key")
    return key


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """A short name for a key: the start of the sha256 of its raw public bytes (what `models list` shows)."""
    serialization, ed25519, _ = _crypto()
    public = cast("Ed25519PublicKey", key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else key)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# -- what a models folder holds --------------------------------------------------------------------
def model_files(folder: Path) -> dict[str, Path]:
    """The files of a models folder that a unit's screening reads, by name: the manifest, each ONNX file it
    names (every precision), the policies and the model card where present. Anything else (training
    records, notes) stays out of a bundle."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{folder} holds no {MANIFEST}: not a models folder") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{manifest_path} cannot be read: {exc}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path} is not a list of models")
    names = [MANIFEST]
    for entry in manifest.values():
        if not isinstance(entry, dict) or "file" not in entry:
            continue
        names.append(entry["file"])
        names += [build["file"] for build in entry.values() if isinstance(build, dict) and "file" in build]
    names += [n for n in (*POLICIES, MODEL_CARD) if (folder / n).is_file()]
    out = {}
    for name in names:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", str(name)):
            raise BundleError(f"{manifest_path} names the file {name!r}: a model file is a plain name in the same folder")
        if not (folder / name).is_file():
            raise BundleError(f"{manifest_path} names {name}, which is not in {folder}")
        out[name] = folder / name
    return out


# -- packing -------------------------------------------------------------------------------------
def write_bundle(out: Path, files: dict[str, Path], *, version: str, key: Ed25519PrivateKey,
                 about: dict | None = None) -> dict:
    """Write the bundle `out`: `files` maps each name in the bundle ("models/x.onnx", "checks/y.png") to the file
    to pack. Written under a temporary name and renamed, so `out` is a whole bundle or absent. Returns the
    signed list."""
    parse_version(version)
    for name in files:
        if not _NAME.match(name):
            raise BundleError(f"{name!r} cannot go in a bundle: names are {MODELS}/FILE or {CHECKS}/FILE")
    listing = {"format": FORMAT, "version": version.strip(),
               "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "signed_by": key_id(key), **(about or {}),
               "files": {name: {"sha256": sha256_file(path), "bytes": Path(path).stat().st_size}
                         for name, path in sorted(files.items())}}
    signed = json.dumps(listing, indent=1, sort_keys=True).encode("utf-8") + b"\n"
    signature = base64.b64encode(key.sign(signed)) + b"\n"
    out = Path(out)
    fd, temp = tempfile.mkstemp(dir=out.parent if str(out.parent) else ".", prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with tarfile.open(temp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in ((SIGNED_LIST, signed), (SIGNATURE, signature)):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, int(dt.datetime.now().timestamp())
                tar.addfile(info, io.BytesIO(data))
            for name, path in sorted(files.items()):
                info = tar.gettarinfo(str(path), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)
        os.replace(temp, out)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return listing


# -- reading and checking -------------------------------------------------------------------------
@dataclass(frozen=True)
class Bundle:
    """What a bundle's signed list says, once its signature checked out."""

    version: str
    listing: dict
    signed_by: str
    listing_sha256: str  # the release's identity: one hash over every file's hash

    @property
    def files(self) -> dict[str, dict]:
        return self.listing["files"]


def read_signed(path: Path, trusted: dict[str, Ed25519PublicKey]) -> Bundle:
    """Check a bundle's signed list against the trusted keys (by `key_id`) and the tar's members against the
    list, without writing anything. Raises BundleError saying why the bundle is refused."""
    with _open_tar(path) as tar:
        members = _members(tar, path)
        return _verified(tar, members, path, trusted)


def unpack(path: Path, trusted: dict[str, Ed25519PublicKey], into: Path,
           step: Callable[[str], None] | None = None) -> Bundle:
    """Check the bundle and write its files under the empty folder `into`, each hashed as it is written and
    made durable (fsync) before the next; the folders too. Raises BundleError at the first file whose bytes
    are not those the list was signed over (what was written stays in `into`, for the caller to remove)."""
    into = Path(into)
    with _open_tar(path) as tar:
        members = _members(tar, path)
        bundle = _verified(tar, members, path, trusted)
        folders = {into}
        for name, expected in bundle.files.items():
            target = into / name
            if target.parent not in folders:
                target.parent.mkdir(parents=True, exist_ok=True)
                folders.add(target.parent)
            digest, size = _copy_out(tar, members[name], target)
            if digest != expected["sha256"] or size != expected["bytes"]:
                raise BundleError(f"{name} in {Path(path).name} does not match its signed hash: the bundle was "
                                  "changed after it was signed, or damaged on its way; ask for it again")
            if step is not None:
                step(f"unpacked {name}")
        for name, data in ((SIGNED_LIST, _read_member(tar, members[SIGNED_LIST])),
                           (SIGNATURE, _read_member(tar, members[SIGNATURE]))):
            _write_synced(into / name, data)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(folder)
    return bundle


def verify_unpacked(folder: Path) -> list[str]:
    """Files of an unpacked bundle that no longer match its signed list (damaged since, or missing)."""
    folder = Path(folder)
    try:
        listing = json.loads((folder / SIGNED_LIST).read_text())
    except (OSError, ValueError):
        return [SIGNED_LIST]
    bad = []
    for name, expected in listing.get("files", {}).items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != expected.get("sha256"):
            bad.append(name)
    return bad


def _open_tar(path: Path) -> tarfile.TarFile:
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path} is not a file")
    try:
        return tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{path.name} is not a model bundle (a tar file written by `glaucoscreen models pack`): {exc}") from None


def _members(tar: tarfile.TarFile, path: Path) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    try:
        listed = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{Path(path).name} is cut short or damaged ({exc}); copy it again") from None
    for m in listed:
        if m.isdir():
            continue
        if not m.isfile() or not (m.name in (SIGNED_LIST, SIGNATURE) or _NAME.match(m.name)):
            raise BundleError(f"{Path(path).name} holds {m.name!r}, which no model bundle holds (a link, a folder "
                              "outside models/ and checks/, or an odd name): refused")
        if m.name in members:
            raise BundleError(f"{Path(path).name} holds {m.name} twice: refused")
        if m.size > MAX_FILE_BYTES:
            raise BundleError(f"{m.name} in {Path(path).name} is {m.size:,} bytes, more than any model file: refused")
        members[m.name] = m
    return members


def _verified(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], path: Path,
              trusted: dict[str, Ed25519PublicKey]) -> Bundle:
    name = Path(path).name
    if SIGNED_LIST not in members:
        raise BundleError(f"{name} has no {SIGNED_LIST}: it is not a model bundle")
    if SIGNATURE not in members:
        raise BundleError(f"{name} is not signed (no {SIGNATURE}): only bundles signed with a trusted release key "
                          "are installed")
    signed = _read_member(tar, members[SIGNED_LIST], limit=1 << 20)
    try:
        signature = base64.b64decode(_read_member(tar, members[SIGNATURE], limit=4096).strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"{name}'s signature is not readable: the bundle is damaged") from None
    try:
        listing = json.loads(signed)
    except ValueError:
        raise BundleError(f"{name}'s {SIGNED_LIST} is not JSON: the bundle is damaged") from None
    if not isinstance(listing, dict):
        raise BundleError(f"{name}'s {SIGNED_LIST} is not a signed list of files")
    if not trusted:
        raise BundleError("this unit trusts no release key: list the PEM public keys in [models] trusted_keys of "
                          "the unit's configuration")
    _, _, invalid_signature = _crypto()
    claimed = listing.get("signed_by")
    keys = [trusted[claimed]] if claimed in trusted else list(trusted.values())
    for key in keys:
        try:
            key.verify(signature, signed)
            break
        except invalid_signature:
            continue
    else:
        if claimed in trusted:
            raise BundleError(f"{name}'s signature does not match its list of files: the list was changed after it was "
                              "signed, or damaged; refused")
        raise BundleError(f"{name} is signed with a key this unit does not trust (key {claimed or 'not named'}; "
                          f"trusted: {', '.join(sorted(trusted))}): refused")
    if listing.get("format") != FORMAT:
        raise BundleError(f"{name} is in bundle format {listing.get('format')!r}; this software reads format {FORMAT}: "
                          "update the unit's software first")
    version = listing.get("version")
    parse_version(str(version))
    files = listing.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{name} lists no files")
    for file_name, expected in files.items():
        if not _NAME.match(file_name) or not isinstance(expected, dict) or "sha256" not in expected:
            raise BundleError(f"{name}'s list names {file_name!r}, which no bundle holds")
    present = set(members) - {SIGNED_LIST, SIGNATURE}
    if present - set(files):
        raise BundleError(f"{name} holds files its signed list does not name ({', '.join(sorted(present - set(files)))}): "
                          "someone added them after signing; refused")
    if set(files) - present:
        raise BundleError(f"{name} lacks files its signed list names ({', '.join(sorted(set(files) - present))}): "
                          "the bundle is incomplete; refused")
    return Bundle(version=str(version).strip(), listing=listing, signed_by=str(claimed),
                  listing_sha256=hashlib.sha256(signed).hexdigest())


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int | None = None) -> bytes:
    if limit is not None and member.size > limit:
        raise BundleError(f"{member.name} is {member.size:,} bytes: too big for what it should hold")
    f = tar.extractfile(member)
    if f is None:
        raise BundleError(f"{member.name} cannot be read from the bundle")
    try:
        return f.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{member.name} cannot be read from the bundle ({exc}): it is cut short or damaged") from None


def _copy_out(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> tuple[str, int]:
    source = tar.extractfile(member)
    if source is None:
        raise BundleError(f"{member.name} cannot be read from the bundle")
    h, size = hashlib.sha256(), 0
    try:
        with open(target, "xb") as out:
            for chunk in iter(lambda: source.read(_CHUNK), b""):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{member.name} cannot be read from the bundle ({exc}): it is cut short or damaged") from None
    return h.hexdigest(), size


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
