"""The model bundle's format (models/runtime/bundle.py): a key made by openssl signs it, the unit's trusted key
checks it, and every way of changing it after signing is refused with its reason, before a byte is written
where it should not be."""
from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from models.runtime import bundle as bundles


def pem_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """An Ed25519 key pair as PEM files, as `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` write them."""
    key = ed25519.Ed25519PrivateKey.generate()
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def trusted(*public: Path) -> dict:
    keys = [bundles.load_public_key(p) for p in public]
    return {bundles.key_id(k): k for k in keys}


@pytest.fixture
def files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "manifest.json").write_text('{"segmentation": {"file": "seg.onnx", "sha256": "x"}}\n')
    (src / "seg.onnx").write_bytes(bytes(range(256)) * 40)
    (src / "checks.json").write_text('{"photos": []}\n')
    return {"models/manifest.json": src / "manifest.json", "models/seg.onnx": src / "seg.onnx",
            "checks/checks.json": src / "checks.json"}


@pytest.fixture
def keys(tmp_path):
    return pem_keys(tmp_path, "release"), pem_keys(tmp_path, "stranger")


def test_a_key_openssl_made_signs_and_its_public_half_verifies(tmp_path, files):
    key, public = tmp_path / "openssl.pem", tmp_path / "openssl.pub.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(public)], check=True)
    out = tmp_path / "b.tar"
    listing = bundles.write_bundle(out, files, version="1.2.0", key=bundles.load_private_key(key))
    unpacked = bundles.unpack(out, trusted(public), tmp_path / "into")
    assert unpacked.version == "1.2.0" and unpacked.signed_by == listing["signed_by"]
    for name, path in files.items():
        assert (tmp_path / "into" / name).read_bytes() == path.read_bytes()
    assert bundles.verify_unpacked(tmp_path / "into") == []
    (tmp_path / "into" / "models" / "seg.onnx").write_bytes(b"damaged since")
    assert bundles.verify_unpacked(tmp_path / "into") == ["models/seg.onnx"]


def test_keys_that_are_not_ed25519_pem_are_refused_in_words(tmp_path):
    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(bundles.BundleError, match="not an Ed25519 private key"):
        bundles.load_private_key(rsa_key)
    (tmp_path / "junk.pem").write_text("not a key\n")
    with pytest.raises(bundles.BundleError, match="not an unencrypted PEM private key"):
        bundles.load_private_key(tmp_path / "junk.pem")
    with pytest.raises(bundles.BundleError, match="not a PEM public key"):
        bundles.load_public_key(tmp_path / "junk.pem")
    with pytest.raises(bundles.BundleError, match="cannot be read"):
        bundles.load_public_key(tmp_path / "missing.pem")


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _rewrite(path: Path, members: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)


@pytest.fixture
def signed(tmp_path, files, keys):
    (key, public), _ = keys
    out = tmp_path / "signed.tar"
    bundles.write_bundle(out, files, version="1.2.0", key=bundles.load_private_key(key))
    return out, trusted(public)


def refused(path: Path, keys: dict, tmp_path: Path, written: list | None = None) -> str:
    """Why unpacking `path` is refused; what it wrote before refusing goes into `written`."""
    into = tmp_path / "refused-into"
    with pytest.raises(bundles.BundleError) as caught:
        bundles.unpack(path, keys, into)
    if written is not None:
        written += [p for p in into.rglob("*") if p.is_file()] if into.exists() else []
    assert not list(tmp_path.parent.rglob("escaped*")), "a bundle wrote outside the folder it was unpacked into"
    return str(caught.value)


def test_unsigned_wrong_key_and_changed_after_signing_are_refused_with_the_reason(tmp_path, signed, keys):
    path, keys_ok = signed
    members = _members(path)

    unsigned = tmp_path / "unsigned.tar"
    _rewrite(unsigned, {k: v for k, v in members.items() if k != bundles.SIGNATURE})
    assert "is not signed" in refused(unsigned, keys_ok, tmp_path)

    _, (other_key, other_public) = keys
    stranger = tmp_path / "stranger.tar"
    bundles.write_bundle(stranger, {n: p for n, p in _files_of(tmp_path, members).items()}, version="1.2.0",
                         key=bundles.load_private_key(other_key))
    assert "a key this unit does not trust" in refused(stranger, keys_ok, tmp_path)
    assert "trusts no release key" in refused(path, {}, tmp_path)

    tampered = tmp_path / "tampered.tar"
    changed = dict(members)
    changed["models/seg.onnx"] = b"\xff" + members["models/seg.onnx"][1:]  # one byte, the same size
    _rewrite(tampered, changed)
    assert "does not match its signed hash" in refused(tampered, keys_ok, tmp_path)

    relisted = tmp_path / "relisted.tar"
    listing = json.loads(members[bundles.SIGNED_LIST])
    listing["version"] = "9.9.9"
    _rewrite(relisted, members | {bundles.SIGNED_LIST: json.dumps(listing).encode()})
    assert "signature does not match its list of files" in refused(relisted, keys_ok, tmp_path)

    added = tmp_path / "added.tar"
    _rewrite(added, members | {"models/extra.onnx": b"slipped in"})
    assert "files its signed list does not name (models/extra.onnx)" in refused(added, keys_ok, tmp_path)

    missing = tmp_path / "missing.tar"
    _rewrite(missing, {k: v for k, v in members.items() if k != "models/seg.onnx"})
    assert "lacks files its signed list names (models/seg.onnx)" in refused(missing, keys_ok, tmp_path)


def _files_of(tmp_path: Path, members: dict[str, bytes]) -> dict[str, Path]:
    out = {}
    for name, data in members.items():
        if name.startswith(("models/", "checks/")):
            path = tmp_path / "copy" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            out[name] = path
    return out


@pytest.mark.parametrize("name, kind", [("../escaped.onnx", tarfile.REGTYPE), ("/tmp/escaped.onnx", tarfile.REGTYPE),
                                        ("models/../../escaped.onnx", tarfile.REGTYPE), ("models/link.onnx", tarfile.SYMTYPE),
                                        ("models/hard.onnx", tarfile.LNKTYPE), ("models/sub/deep.onnx", tarfile.REGTYPE)])
def test_a_member_that_could_write_elsewhere_is_refused_before_anything_is_written(tmp_path, signed, name, kind):
    path, keys_ok = signed
    members = _members(path)
    crafted = tmp_path / "crafted.tar"
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "../../escaped-target"
    _rewrite(crafted, members, extra=[info])
    written: list = []
    assert "which no model bundle holds" in refused(crafted, keys_ok, tmp_path, written)
    assert written == []


def test_not_a_bundle_and_a_cut_short_one_say_so(tmp_path, signed):
    path, keys_ok = signed
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a tar")
    assert "is not a model bundle" in refused(tmp_path / "photo.jpg", keys_ok, tmp_path)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    why = refused(cut, keys_ok, tmp_path)
    assert "cut short or damaged" in why or "does not match its signed hash" in why or "lacks files" in why


def test_versions_are_numbers_and_compare_as_numbers():
    assert bundles.is_newer("1.10.0", "1.9.3") and not bundles.is_newer("1.2", "1.2.0")
    assert bundles.parse_version("0.2.0") == (0, 2)
    for bad in ("1.2.0-beta", "v1.2", "", "1..2"):
        with pytest.raises(bundles.BundleError, match="numbers with dots"):
            bundles.parse_version(bad)


def test_the_written_bundle_is_whole_or_absent(tmp_path, files, keys):
    (key, _), _ = keys
    out = tmp_path / "b.tar"
    with pytest.raises(bundles.BundleError, match="cannot go in a bundle"):
        bundles.write_bundle(out, {"elsewhere/x": files["models/seg.onnx"]}, version="1.0", key=bundles.load_private_key(key))
    assert not out.exists() and not list(tmp_path.glob(".b.tar.*"))
