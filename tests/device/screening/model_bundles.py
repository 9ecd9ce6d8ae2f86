"""Real model bundles for the tests of installing, rolling back and fetching models: the shipped ONNX files
under new release versions, signed with keys made here, with check photos made once per test session.

`newer` is the shipped models with their manifest's version names and the referral policy's source changed,
so its files' hashes differ from the shipped ones while the networks stay the real ones."""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx
import pytest
from onnx import TensorProto, helper

from device.config import Config, ModelsConfig
from device.screening.model_checks import make_check_photos
from device.visits.datadir import DataDir
from models.runtime import bundle as bundles
from models.runtime import registry
from models.runtime.installed import ModelStore
from tests.models.runtime.test_bundle import pem_keys


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file a models folder's screening reads (what `models list --json` lists as models/...)."""
    return {name: registry.sha256_file(path) for name, path in bundles.model_files(folder).items()}


def copy_models(source: Path, out: Path, edit: Callable[[dict], None] | None = None, policy_note: str | None = None) -> Path:
    out.mkdir(parents=True)
    for name, path in bundles.model_files(source).items():
        shutil.copy2(path, out / name)
    if edit is not None:
        manifest = json.loads((out / "manifest.json").read_text())
        edit(manifest)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if policy_note is not None:
        policy = json.loads((out / "screening.json").read_text())
        policy["source"] = policy_note
        (out / "screening.json").write_text(json.dumps(policy, indent=1) + "\n")
    return out


def renamed_versions(tag: str) -> Callable[[dict], None]:
    def edit(manifest: dict) -> None:
        for name, entry in manifest.items():
            if isinstance(entry, dict) and "version" in entry:
                entry["version"] = f"{name}-{tag}"
    return edit


def small_segmentation(path: Path, size: int) -> str:
    """A loadable ONNX model with the segmentation network's outputs that takes `size` x `size` photos."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("disc", "cup", "fovea", "glaucoma")]
    nodes = [helper.make_node("ReduceMean", ["image"], [n], axes=[1], keepdims=1) for n in ("disc", "cup", "fovea")]
    nodes.append(helper.make_node("ReduceMean", ["image"], ["glaucoma"], axes=[1, 2, 3], keepdims=0))
    model = helper.make_model(helper.make_graph(nodes, "small", [image], outputs), opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Release:
    key: Path
    public: Path
    stranger_key: Path
    newer: Path
    checks: Path
    work: Path

    def bundle(self, name: str, version: str, *, key: Path | None = None, models: Path | None = None,
               checks: Path | None = None) -> Path:
        """A bundle of `models` (default `newer`) and `checks` (default the session's check photos)."""
        out = self.work / name
        models, checks = models or self.newer, checks or self.checks
        files = {f"models/{n}": p for n, p in bundles.model_files(models).items()}
        files |= {f"checks/{p.name}": p for p in checks.iterdir()}
        bundles.write_bundle(out, files, version=version, key=bundles.load_private_key(key or self.key),
                             about={"models": registry.versions(models)})
        return out

    def checks_with(self, name: str, edit: Callable[[dict], None]) -> Path:
        """A copy of the check photos whose checks.json `edit` changed."""
        out = self.work / name
        shutil.copytree(self.checks, out)
        listed = json.loads((out / "checks.json").read_text())
        edit(listed)
        (out / "checks.json").write_text(json.dumps(listed, indent=1) + "\n")
        return out

    def config(self, data_dir: Path, **extra) -> Config:
        return Config(data_dir=data_dir, device_id="test-unit", models=ModelsConfig(trusted_keys=[str(self.public)]), **extra)


@pytest.fixture(scope="session")
def release(tmp_path_factory) -> Release:
    work = tmp_path_factory.mktemp("release")
    (key, public), (stranger_key, _) = pem_keys(work, "release"), pem_keys(work, "stranger")
    newer = copy_models(registry.ARTIFACTS, work / "newer", renamed_versions("0.2.0-test"),
                        policy_note="referral of the shipped models, released again for the tests")
    make_check_photos(work / "checks", newer, count=2)
    return Release(key, public, stranger_key, newer, work / "checks", work)


def state_of(data_dir: Path) -> dict:
    """What the unit runs and holds: the active version, its files' hashes, and every file under installed-models/."""
    store = ModelStore(DataDir(data_dir).models)
    folder, version, switch = store.active()
    root = store.root
    held = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "install.lock") if root.exists() else []
    return {"version": version, "switch": switch, "hashes": file_hashes(folder), "held": held}
