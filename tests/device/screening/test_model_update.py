"""Installing signed model bundles on a unit (device/screening/model_update.py) with the real shipped networks:
every refusal says why and leaves the running models exactly as they were; install then rollback gives back
the exact files; and an install SIGKILLed at seeded points (a power cut) leaves the old models or the new
ones whole, never a mix."""
from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device.cli import main
from device.screening import model_update
from device.visits.datadir import DataDir
from models.runtime import bundle as bundles
from models.runtime import registry
from models.runtime.installed import KEEP_PREVIOUS, ModelStore, active_artifacts
from tests.device.screening.model_bundles import (  # noqa: F401 - release is a fixture
    copy_models,
    file_hashes,
    release,
    renamed_versions,
    small_segmentation,
    state_of,
)

REPO = Path(__file__).resolve().parents[3]
SHIPPED = file_hashes(registry.ARTIFACTS)


def refused(cfg, bundle: Path, *, allow_downgrade: bool = False) -> str:
    """Why installing `bundle` is refused; the unit's models and files must be as they were."""
    before = state_of(cfg.data_dir)
    with pytest.raises(model_update.UpdateRefused) as caught:
        model_update.install(cfg, bundle, allow_downgrade=allow_downgrade)
    assert state_of(cfg.data_dir) == before, "a refused bundle changed what the unit runs or holds"
    assert not list((DataDir(cfg.data_dir).models / "incoming").glob("*")), "a refused bundle left files behind"
    return str(caught.value)


def test_unsigned_wrong_key_tampered_and_older_bundles_are_refused_with_the_reason(release, tmp_path):
    cfg = release.config(tmp_path / "unit")
    good = release.bundle("good-0.2.0.tar", "0.2.0")

    unsigned = tmp_path / "unsigned.tar"
    _copy_without(good, unsigned, bundles.SIGNATURE)
    assert "is not signed" in refused(cfg, unsigned)

    assert "a key this unit does not trust" in refused(cfg, release.bundle("stranger.tar", "0.2.0", key=release.stranger_key))

    tampered = tmp_path / "tampered.tar"
    tampered.write_bytes(good.read_bytes())
    _flip_a_byte_of(tampered, "models/segmentation.onnx")
    assert "models/segmentation.onnx in tampered.tar does not match its signed hash" in refused(cfg, tampered)

    older = release.bundle("older-0.0.9.tar", "0.0.9")
    assert "version 0.0.9 is older than the active version 0.1.0" in refused(cfg, older)
    assert "is the active version already" in refused(cfg, release.bundle("same-0.1.0.tar", "0.1.0"))

    untrusting = release.config(tmp_path / "unit")
    untrusting.models.trusted_keys = []
    assert "trusts no release key" in refused(untrusting, good)
    assert "is not a file" in refused(cfg, tmp_path / "no-such-bundle.tar")


def test_models_for_another_input_size_are_refused_as_incompatible(release, tmp_path):
    cfg = release.config(tmp_path / "unit")
    models = copy_models(release.newer, tmp_path / "small")

    def smaller(manifest: dict) -> None:
        manifest["segmentation"]["sha256"] = small_segmentation(models / "segmentation.onnx", 128)
        del manifest["segmentation"]["int8"]
        manifest["segmentation"]["shipped_precision"] = "fp32"

    manifest = json.loads((models / "manifest.json").read_text())
    smaller(manifest)
    (models / "manifest.json").write_text(json.dumps(manifest))
    (models / "segmentation.int8.onnx").unlink()
    why = refused(cfg, release.bundle("small.tar", "0.2.0", models=models))
    assert "do not fit this software" in why
    assert "segmentation.onnx (segmentation) takes image as [N, 3, 128, 128]; the screening feeds it [N, 3, 256, 256]" in why


def test_checks_on_the_bundles_own_photos_refuse_what_screens_differently_or_fails_the_int8_gate(release, tmp_path):
    cfg = release.config(tmp_path / "unit")

    def other_referral(listed: dict) -> None:
        first = listed["photos"][0]["expected"]
        first["referral"] = "refer" if first["referral"] != "refer" else "normal"

    smoke = release.bundle("smoke.tar", "0.2.0", checks=release.checks_with("checks-smoke", other_referral))
    why = refused(cfg, smoke)
    assert "the smoke screening of the bundle's check photos came out differently" in why and "check-1.png: referral" in why

    def tighter_gate(manifest: dict) -> None:  # a verdict whose limits no INT8 build meets: the gate must measure
        for check in manifest["segmentation"]["int8"]["gate"]["checks"].values():
            check["limit"] = -0.5

    strict = copy_models(release.newer, tmp_path / "strict", tighter_gate)
    why = refused(cfg, release.bundle("strict.tar", "0.2.0", models=strict))
    assert "the INT8 build does worse than FP32 on the check photos beyond the accuracy gate's limits" in why
    assert "disc_dice worse by" in why and "(limit -0.5)" in why

    def no_verdict(manifest: dict) -> None:
        del manifest["segmentation"]["int8"]["gate"]

    ungated = copy_models(release.newer, tmp_path / "ungated", no_verdict)
    assert "carries no passed accuracy gate" in refused(cfg, release.bundle("ungated.tar", "0.2.0", models=ungated))


def test_install_then_rollback_gives_back_the_exact_files_through_the_command(release, tmp_path, capsys):
    data = tmp_path / "unit"
    config = tmp_path / "glaucoscreen.toml"
    config.write_text(f'[models]\ntrusted_keys = ["{release.public}"]\n')
    run = ["--config", str(config), "--data-dir", str(data), "models"]

    def listed() -> list[dict]:
        capsys.readouterr()
        assert main([*run, "list", "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    assert [(v["version"], v["shipped"], v["active"]) for v in listed()] == [("0.1.0", True, True)]
    assert listed()[0]["files"] == {f"models/{n}": h for n, h in SHIPPED.items()}

    assert main([*run, "install", str(release.bundle("b-0.2.0.tar", "0.2.0"))]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["installed"] == "0.2.0" and report["previous"] == "0.1.0"
    assert report["checks"]["smoke"]["passed"] and report["checks"]["int8_gate"]["passed"]
    newer = file_hashes(release.newer)
    assert newer != SHIPPED
    assert file_hashes(active_artifacts(DataDir(data).models)) == newer
    versions = listed()
    assert [(v["version"], v["active"]) for v in versions] == [("0.1.0", False), ("0.2.0", True)]
    assert {n: h for n, h in versions[1]["files"].items() if n.startswith("models/")} == {f"models/{n}": h for n, h in newer.items()}
    assert versions[1]["verified"] is True and versions[1]["signed_by"] == report["signed_by"]
    capsys.readouterr()
    assert main(["--config", str(config), "--data-dir", str(data), "screen", str(release.checks / "check-1.png")]) == 0
    screened = json.loads(capsys.readouterr().out)["model_versions"]  # the command screens with the active models too
    assert {k: screened[k] for k in registry.versions(release.newer)} == registry.versions(release.newer)
    assert screened["models_release"] == "0.2.0"

    # a newer one on top, then two rollbacks: each gives back exactly the files that ran before
    third = copy_models(release.newer, tmp_path / "third", renamed_versions("0.3.0-test"))
    assert main([*run, "install", str(release.bundle("b-0.3.0.tar", "0.3.0", models=third))]) == 0
    assert file_hashes(active_artifacts(DataDir(data).models)) == file_hashes(third)
    capsys.readouterr()
    assert main([*run, "install", str(release.bundle("b-0.2.0.tar", "0.2.0"))]) == 1
    assert "version 0.2.0 is older than the active version 0.3.0" in capsys.readouterr().err
    assert main([*run, "rollback"]) == 0
    assert file_hashes(active_artifacts(DataDir(data).models)) == newer
    assert main([*run, "rollback"]) == 0
    assert file_hashes(active_artifacts(DataDir(data).models)) == SHIPPED
    assert active_artifacts(DataDir(data).models) == registry.ARTIFACTS
    capsys.readouterr()
    assert main([*run, "rollback"]) == 1
    assert "the shipped models (version 0.1.0) are active: there is nothing older" in capsys.readouterr().err
    assert [(v["version"], v["active"]) for v in listed()] == [("0.1.0", True), ("0.2.0", False), ("0.3.0", False)]

    # an older release goes in only when asked for
    cfg = release.config(data)
    assert "older than the active" in refused(cfg, release.bundle("b-0.0.9.tar", "0.0.9"))
    assert model_update.install(cfg, release.bundle("b-0.0.9.tar", "0.0.9"), allow_downgrade=True)["installed"] == "0.0.9"
    assert file_hashes(active_artifacts(DataDir(data).models)) == newer


def test_a_rollback_keeps_the_version_it_leaves_listed_and_whole(release, tmp_path, capsys):
    data = tmp_path / "unit"
    config = tmp_path / "glaucoscreen.toml"
    config.write_text(f'[models]\ntrusted_keys = ["{release.public}"]\n')
    run = ["--config", str(config), "--data-dir", str(data), "models"]

    def listed() -> list[tuple[str, bool, bool]]:
        capsys.readouterr()
        assert main([*run, "list", "--json"]) == 0
        versions = json.loads(capsys.readouterr().out)
        assert [v["active"] for v in versions].count(True) == 1, versions
        return [(v["version"], v["active"], v["verified"]) for v in versions]

    third = copy_models(release.newer, tmp_path / "third", renamed_versions("0.3.0-test"))
    assert main([*run, "install", str(release.bundle("k-0.2.0.tar", "0.2.0"))]) == 0
    assert main([*run, "install", str(release.bundle("k-0.3.0.tar", "0.3.0", models=third))]) == 0
    assert main([*run, "rollback"]) == 0
    assert file_hashes(active_artifacts(DataDir(data).models)) == file_hashes(release.newer)
    assert listed() == [("0.1.0", False, True), ("0.2.0", True, True), ("0.3.0", False, True)]
    kept = DataDir(data).models / "versions" / "0.3.0" / "models"
    assert file_hashes(kept) == file_hashes(third), "the version a rollback left is kept whole"

    assert main([*run, "rollback"]) == 0  # back to the shipped models: both installed versions stay
    assert listed() == [("0.1.0", True, True), ("0.2.0", False, True), ("0.3.0", False, True)]
    capsys.readouterr()
    assert main([*run, "list", "--json"]) == 0
    assert [(v["version"], v["rolled_back"]) for v in json.loads(capsys.readouterr().out)] == [
        ("0.1.0", False), ("0.2.0", True), ("0.3.0", True)]
    assert main([*run, "list"]) == 0
    lines = {line[2:].split()[0]: line for line in capsys.readouterr().out.splitlines() if line[:1] in ("*", " ")}
    assert lines["0.3.0"].endswith("taken out of use by a rollback") and lines["0.1.0"].startswith("* ")
    assert "rollback" not in lines["0.1.0"]

    # a later install still sees them, and installs over the one a rollback left
    fourth = copy_models(release.newer, tmp_path / "fourth", renamed_versions("0.4.0-test"))
    assert main([*run, "install", str(release.bundle("k-0.4.0.tar", "0.4.0", models=fourth))]) == 0
    assert listed() == [("0.1.0", False, True), ("0.2.0", False, True), ("0.3.0", False, True), ("0.4.0", True, True)]
    assert main([*run, "rollback"]) == 0
    assert file_hashes(active_artifacts(DataDir(data).models)) == SHIPPED  # 0.4.0 was installed over them
    assert main([*run, "install", str(release.bundle("k-0.3.0.tar", "0.3.0", models=third))]) == 0
    assert file_hashes(active_artifacts(DataDir(data).models)) == file_hashes(third)
    assert listed() == [("0.1.0", False, True), ("0.2.0", False, True), ("0.3.0", True, True), ("0.4.0", False, True)]


def test_the_versions_kept_are_bounded_and_one_a_rollback_left_goes_first(release, tmp_path):
    cfg = release.config(tmp_path / "unit")
    folders = DataDir(cfg.data_dir).models / "versions"

    def install(version: str) -> None:
        assert model_update.install(cfg, release.bundle(f"n-{version}.tar", version))["installed"] == version

    install("0.2.0")
    install("0.3.0")
    assert model_update.rollback(cfg)["version"] == "0.2.0"
    for version in ("0.4.0", "0.5.0"):
        install(version)
    assert sorted(p.name for p in folders.iterdir()) == ["0.2.0", "0.3.0", "0.4.0", "0.5.0"]
    install("0.6.0")  # one more than KEEP_PREVIOUS besides the active: the one a rollback left goes
    assert KEEP_PREVIOUS == 3
    assert [(v["version"], v["active"]) for v in model_update.listing(cfg)] == [
        ("0.1.0", False), ("0.2.0", False), ("0.4.0", False), ("0.5.0", False), ("0.6.0", True)]
    assert sorted(p.name for p in folders.iterdir()) == ["0.2.0", "0.4.0", "0.5.0", "0.6.0"]
    for back_to in ("0.5.0", "0.4.0", "0.2.0", "0.1.0"):  # the rollback chain is whole
        assert model_update.rollback(cfg)["version"] == back_to


def test_pack_signs_the_shipped_models_with_check_photos_the_unit_installs(release, tmp_path, capsys):
    out = tmp_path / "shipped-0.2.0.tar"
    assert main(["models", "pack", "--out", str(out), "--key", str(release.key), "--version", "0.2.0",
                 "--check-photos", "1"]) == 0
    packed = json.loads(capsys.readouterr().out)
    assert packed["version"] == "0.2.0" and packed["models"] == registry.versions()
    signed = bundles.read_signed(out, {packed["signed_by"]: bundles.load_public_key(release.public)})
    assert sorted(n for n in signed.files if n.startswith("models/")) == sorted(f"models/{n}" for n in SHIPPED)
    assert {"checks/checks.json", "checks/check-1.png", "checks/check-1.mask.png"} <= set(signed.files)
    capsys.readouterr()
    assert main(["models", "pack", "--out", str(tmp_path / "x.tar"), "--key", str(release.public)]) == 1
    assert "is not an unencrypted PEM private key" in capsys.readouterr().err
    assert not (tmp_path / "x.tar").exists()


# -- power cuts ---------------------------------------------------------------------------------------
_CHILD = """
import sys
from pathlib import Path
from device.config import Config, ModelsConfig
from device.screening import model_update
data, bundle, public = sys.argv[1:4]
cfg = Config(data_dir=Path(data), models=ModelsConfig(trusted_keys=[public]))
print("start", flush=True)
model_update.install(cfg, Path(bundle), step=lambda s: print(s, flush=True))
print("done", flush=True)
"""


def _install_in_a_child(data: Path, bundle: Path, public: Path, kill_after: int | None, delay_s: float,
                        timeout_s: float = 120.0) -> list[str]:
    """An installer process; SIGKILLed `delay_s` after its `kill_after`-th line (None: left to finish)."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(data), str(bundle), str(public)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    end = time.monotonic() + timeout_s
    try:
        while True:
            ready, _, _ = select.select([child.stdout], [], [], max(0.0, end - time.monotonic()))
            assert ready, f"the installer said nothing for {timeout_s} s after {lines[-1:]}"
            line = child.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if kill_after is not None and len(lines) > kill_after:
                time.sleep(delay_s)
                os.kill(child.pid, signal.SIGKILL)
                break
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if kill_after is None:
        assert child.returncode == 0, child.stderr.read()
    child.stdout.close()
    child.stderr.close()
    return lines


def _whole(data: Path, old: dict, new: dict) -> str:
    """After a cut: the unit's start-up clean-up, then the active models are exactly the old or the new ones,
    every file matching the manifest, and nothing half-written is kept. Returns which."""
    store = ModelStore(DataDir(data).models)
    store.recover_if_idle()
    folder = store.active_dir()
    hashes = file_hashes(folder)
    assert hashes in (old, new), "the active models are a mix of two versions"
    for name, entry in registry.manifest(folder).items():
        if isinstance(entry, dict) and "file" in entry:
            for precision in ["fp32"] + [p for p in ("int8",) if isinstance(entry.get(p), dict)]:
                registry.model_file(name, precision, folder)  # raises on a damaged file
    assert not list((store.root / "incoming").glob("*")), "a cut-short install left files behind"
    pointer = store.root / "active.json"
    state = json.loads(pointer.read_text()) if pointer.exists() else {}
    kept = {state.get("version"), *state.get("previous", []), *state.get("rolled_back", [])}
    assert {p.name for p in (store.root / "versions").glob("*")} <= kept, "a version no pointer names was kept"
    return "new" if hashes == new and new != old else "old"


def test_installs_killed_at_seeded_points_leave_the_old_or_the_new_models_whole(release, tmp_path):
    bundle = release.bundle("power-cut-0.2.0.tar", "0.2.0")
    new = file_hashes(release.newer)
    rng = random.Random(20250611)
    steps = _install_in_a_child(tmp_path / "whole", bundle, release.public, None, 0.0)
    assert steps[0] == "start" and steps[-1] == "done" and "renamed" in steps and "switched" in steps
    assert _whole(tmp_path / "whole", SHIPPED, new) == "new"
    # kills anywhere (while unpacking, while checking), and just after the rename and the switch
    points = rng.sample(range(1, steps.index("renamed")), 3) + [steps.index("renamed"), steps.index("switched")]
    outcomes = {}
    for trial, point in enumerate(points):
        data = tmp_path / f"trial-{trial}"
        said = _install_in_a_child(data, bundle, release.public, point, rng.uniform(0.0, 0.02))
        outcomes[said[-1]] = _whole(data, SHIPPED, new)
    # before the rename the old models stand, after the pointer's rename the new ones; between the two, either
    assert [outcomes[steps[p]] for p in points[:3]] == ["old"] * 3 and outcomes["switched"] == "new", outcomes
    # after a cut, the same bundle installs whole
    cut = tmp_path / f"trial-{points.index(min(points))}"
    cfg = release.config(cut)
    assert model_update.install(cfg, bundle)["installed"] == "0.2.0"
    assert _whole(cut, SHIPPED, new) == "new"


def _copy_without(source: Path, out: Path, leave_out: str) -> None:
    import tarfile

    with tarfile.open(source) as tar, tarfile.open(out, "w") as copy:
        for member in tar.getmembers():
            if member.name != leave_out:
                copy.addfile(member, tar.extractfile(member))


def _flip_a_byte_of(path: Path, member_name: str) -> None:
    import tarfile

    with tarfile.open(path) as tar:
        member = tar.getmember(member_name)
        at = member.offset_data + member.size // 2
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
