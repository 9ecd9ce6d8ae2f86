"""GRAPE's reader and patient split, the progression and disc-classifier networks, their export."""
from __future__ import annotations

import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.classifier import DiscClassifier, build_classifier
from models.grape import patient_split, read_grape
from models.net import parameter_count
from models.onnx_export import main as export_main
from models.progression_net import (
    PAIR_SIDE,
    SIZE,
    ProgressionNet,
    augment_pair,
    build_progression_net,
    load_config,
    read_pairs,
    train,
    write_pairs,
)


def test_grape_eyes_progress_by_any_flag_and_patients_never_straddle_splits(shared_data):
    eyes = read_grape(shared_data / "grape")
    assert len(eyes) == 263 and sum(e.progressed for e in eyes) == 54
    assert all(e.visits == sorted(e.visits, key=lambda v: v.number) and e.visits[0].years == 0.0 for e in eyes
               if e.visits[0].number == 1)
    split = patient_split(eyes)
    assert set(split.values()) == {"train", "val", "test"}
    by_patient = {}
    for e in eyes:
        by_patient.setdefault(e.patient, set()).add(split[e.patient])
    assert all(len(s) == 1 for s in by_patient.values())
    test = [e for e in eyes if split[e.patient] == "test"]
    assert 0.1 < sum(e.progressed for e in test) / len(test) < 0.35  # stratified: about GRAPE's 21%
    assert patient_split(eyes) == split  # seeded


def test_all_engines_together_stay_under_five_million_parameters():
    from models.net import SegmentationNet

    total = parameter_count(SegmentationNet()) + parameter_count(DiscClassifier()) + parameter_count(ProgressionNet())
    assert total < 5_000_000


def test_pretrained_stems_load_imagenet_weights():
    plain, loaded = DiscClassifier(), build_classifier(pretrained=True)
    key = "encoder._blocks.3._depthwise_conv.weight"
    assert not torch.equal(plain.state_dict()[key], loaded.state_dict()[key])
    assert build_progression_net(pretrained=True).encoder.out_channels == 80


def _pairs(path, rng, eyes=6):
    """A small registered-pairs file: per eye two pairs (the first against the last, and a later one), half the
    eyes progressing, in every split."""
    rows = []
    for k in range(eyes):
        for first in (True, False):
            crop = rng.integers(0, 255, (PAIR_SIDE, PAIR_SIDE, 3), dtype=np.uint8)
            rows.append({"earlier": crop, "current": crop, "years": 2.0 if first else 1.0, "change": list(rng.normal(size=3)),
                         "progressed": k % 2, "patient": str(k // 2), "eye": f"{k}_OD", "split": ("train", "val", "test")[k // 2],
                         "first": first, "correlation": 0.9})
    return write_pairs(path, rows, ["z_vcdr", "z_cup_area", "z_rim_inferior"])


def test_progression_training_runs_on_registered_pairs_and_exports_an_engine_that_matches_torch(tmp_path):
    pairs = _pairs(tmp_path / "pairs.npz", np.random.default_rng(0))
    assert len(read_pairs(tmp_path / "pairs.npz")) == len(pairs) == 12
    config = load_config(None, {"epochs": 1, "batch_size": 4, "device": "cpu", "pretrained": False,
                                "change_features": ["z_vcdr", "z_rim_inferior"]})
    log = train(config, tmp_path / "run", tmp_path / "pairs.npz")
    assert len(log) == 1 and log[0]["loss"] > 0 and (tmp_path / "run" / "best.pt").exists()

    onnx_path = tmp_path / "artifacts" / "progression.onnx"
    export_main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--out", str(onnx_path), "--name", "progression"])
    entry = json.loads((onnx_path.parent / "manifest.json").read_text())["progression"]
    assert entry["version"].startswith("progression-") and set(entry["inputs"]) == {"earlier", "current", "years", "change"}
    assert entry["inputs"]["change"]["shape"] == ["N", 2] and "registered" in entry["inputs"]["earlier"]["preprocess"]
    assert entry["training"]["change_features"] == ["z_vcdr", "z_rim_inferior"] and entry["training"]["best_epoch"] == 1
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(3, 3, 160, 160)).astype(np.float32) for _ in range(2))
    years = np.array([[1.0], [2.5], [4.0]], np.float32)
    change = rng.normal(size=(3, 2)).astype(np.float32)
    got = session.run(["progression"], {"earlier": a, "current": b, "years": years, "change": change})[0]
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    net = ProgressionNet(change_features=2)
    net.load_state_dict(state["model"])
    with torch.no_grad():
        expected = net.eval()(*(torch.from_numpy(x) for x in (a, b, years, change))).numpy()
    assert got.shape == (3, 1) and np.abs(got - expected).max() < 1e-4
    moved = change.copy()
    moved[:, 0] += 3.0
    assert not np.allclose(session.run(["progression"], {"earlier": a, "current": b, "years": years, "change": moved})[0], got)


def test_a_change_measure_the_pairs_do_not_hold_is_refused_not_zeroed(tmp_path):
    pairs = _pairs(tmp_path / "pairs.npz", np.random.default_rng(1))
    with pytest.raises(ValueError, match="no change measure \\['z_rim_nasal'\\]"):
        pairs.features(["z_vcdr", "z_rim_nasal"])
    with pytest.raises(FileNotFoundError, match="retrain-progression"):
        read_pairs(tmp_path / "none.npz")


def test_training_turns_and_zooms_both_photos_of_a_pair_alike_so_they_stay_lined_up():
    """The pair is registered: a geometric augmentation drawn for each photo on its own would undo that. A bright
    spot off centre must land on the same pixel of both augmented views, whatever their colours."""
    yy, xx = np.mgrid[0:PAIR_SIDE, 0:PAIR_SIDE]
    spot = np.exp(-((xx - 130) ** 2 + (yy - 60) ** 2) / (2 * 6.0 ** 2))
    crop = np.repeat((40 + 200 * spot)[..., None], 3, axis=2).astype(np.uint8)
    for seed in range(20):
        a, b = augment_pair(np.random.default_rng(seed), crop, crop.copy())
        assert a.shape == b.shape == (SIZE, SIZE, 3)
        peaks = [np.array(np.unravel_index(np.argmax(cv2.GaussianBlur(v[..., 1].astype(np.float32), (0, 0), 3)), v.shape[:2]))
                 for v in (a, b)]
        assert np.abs(peaks[0] - peaks[1]).max() <= 1, (seed, peaks)


def test_the_disc_classifier_trains_from_disc_views_only(shared_data, tmp_path):
    from models.train import ConfigError
    from models.train import load_config as train_config
    from models.train import train as train_net

    with pytest.raises(ConfigError, match="disc classifier"):
        train_config(overrides={"network": "disc_classifier", "tasks": ["glaucoma"]})  # whole views too
    config = train_config(overrides={
        "network": "disc_classifier", "tasks": ["glaucoma"], "views": {"disc": 1}, "epochs": 1, "batch_size": 4,
        "input_size": 64, "warmup_steps": 1, "loss_weights": {"glaucoma": 1.0},
        "sources": [{"folder": "drishti-gs1", "splits": ["train"], "limit": 4}],
        "val_sources": [{"folder": "refuge-val", "splits": ["val"], "limit": 3},
                        {"folder": "drishti-gs1", "splits": ["val"], "limit": 3}]})
    log = train_net(config, tmp_path / "run", shared_data, progress=False)
    assert log[0]["val"]["glaucoma_auc"] is not None and log[0]["val"]["disc_dice"] is None
    assert set(log[0]["train_loss"]) == {"glaucoma", "total"}
