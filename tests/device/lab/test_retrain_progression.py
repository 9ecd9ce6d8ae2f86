"""`glaucoscreen retrain-progression`: the registered pairs it builds from real GRAPE photos, the network trained on
them and measured on validation and test patients, and the ship rule, which leaves the shipped network alone
unless the validation interval lies above chance."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device.lab.retrain_progression import earns_its_place
from device.screening.registration import vessel_map
from models.progression_net import SIZE, centre, read_pairs
from tests.device.lab.test_fit_progression import _small_grape

REPO = Path(__file__).resolve().parents[3]


def test_only_a_validation_interval_wholly_above_chance_ships():
    assert earns_its_place({"auc": 0.8, "auc_low": 0.62, "auc_high": 0.93})[0]
    kept, why = earns_its_place({"auc": 0.66, "auc_low": 0.41, "auc_high": 0.88})
    assert not kept and "0.41 - 0.88" in why and "chance" in why
    assert not earns_its_place({"auc": 0.7, "auc_low": 0.5, "auc_high": 0.9})[0]  # touching chance is not above it
    kept, why = earns_its_place({"auc": None, "auc_low": None, "auc_high": None, "eyes": 2, "progressing_eyes": 0})
    assert not kept and "no interval" in why


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    va, vb = (vessel_map(np.ascontiguousarray(centre(x)[..., 1])) for x in (a, b))
    inner = slice(SIZE // 8, SIZE - SIZE // 8)  # the padding of a crop near the photo's edge is no vessel
    return float(np.corrcoef(va[inner, inner].ravel(), vb[inner, inner].ravel())[0, 1])


@pytest.mark.slow
def test_retraining_builds_registered_pairs_measures_the_network_and_keeps_the_shipped_one(shared_data, tmp_path):
    grape = tmp_path / "grape"
    _small_grape(shared_data / "grape", grape)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    for name in ("progression.onnx", "manifest.json"):
        shutil.copy(REPO / "models" / "artifacts" / name, artifacts / name)
    config = tmp_path / "progression.json"
    config.write_text(json.dumps({**json.loads((REPO / "models" / "configs" / "progression.json").read_text()),
                                  "epochs": 1, "batch_size": 8}))
    work = tmp_path / "work"
    done = subprocess.run([sys.executable, "-m", "device.cli", "retrain-progression", "--grape", str(grape), "--work", str(work),
                           "--config", str(config), "--artifacts", str(artifacts)], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stderr

    pairs = read_pairs(work / "pairs.npz")
    assert set(pairs.split) == {"train", "val", "test"} and len(set(pairs.eye)) >= 12
    assert pairs.first.sum() >= 12 and all(pairs.years > 0)
    assert [str(n) for n in pairs.change_names] == ["z_vcdr", "z_cup_area", "z_rim_superior", "z_rim_inferior", "z_rim_nasal",
                                                     "z_rim_temporal"]
    # the earlier photo lies where today's does: its vessels fall on today's, and not on another eye's
    same = [_correlation(pairs.earlier[k], pairs.current[k]) for k in range(len(pairs))]
    other = [_correlation(pairs.earlier[k], pairs.current[j]) for k in range(len(pairs)) for j in range(len(pairs))
             if pairs.eye[k] != pairs.eye[j]][:60]
    assert min(same) > 0.3 and np.median(same) > 0.5 and max(other) < np.median(same) - 0.3, (same, max(other))

    report = json.loads((work / "figures.json").read_text())
    for part in ("val", "test"):
        assert {"auc", "auc_low", "auc_high", "sensitivity", "specificity", "eyes", "progressing_eyes"} <= set(report[part])
        assert report[part]["eyes"] == int((pairs.first & (pairs.split == part)).sum()) >= 3
        assert "vcdr_change_alone" in report[part]
    assert report["train"]["pairs"] == int((pairs.split == "train").sum())
    candidate = json.loads((work / "candidate-manifest.json").read_text())["progression"]
    assert set(candidate["inputs"]) == {"earlier", "current", "years", "change"} and candidate["inputs"]["change"]["shape"] == ["N", 4]
    assert (work / "progression-candidate.onnx").exists()
    # four validation eyes cannot put an interval above chance: the shipped network stays, and the report says why
    assert report["shipped"] is False and report["why"].startswith("not shipped: ")
    for name in ("progression.onnx", "manifest.json"):
        assert (artifacts / name).read_bytes() == (REPO / "models" / "artifacts" / name).read_bytes()


def test_retraining_says_plainly_when_the_folder_is_not_grape(tmp_path):
    done = subprocess.run([sys.executable, "-m", "device.cli", "retrain-progression", "--grape", str(tmp_path),
                           "--work", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "is not a GRAPE folder" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "work").exists()
