"""GRAPE's reader and patient split, the progression and disc-classifier networks, their export."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.classifier import DiscClassifier, build_classifier
from models.grape import patient_split, read_grape
from models.net import parameter_count
from models.onnx_export import main as export_main
from models.progression_net import ProgressionNet, build_progression_net, load_config, train


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


def test_progression_training_runs_and_exports_an_engine_that_matches_torch(shared_data, tmp_path):
    config = load_config(None, {"epochs": 1, "synthetic_eyes": 2, "limit_eyes": 4, "batch_size": 8, "device": "cpu"})
    log = train(config, tmp_path / "run", shared_data)
    assert len(log) == 1 and log[0]["loss"] > 0 and (tmp_path / "run" / "best.pt").exists()

    onnx_path = tmp_path / "artifacts" / "progression.onnx"
    export_main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--out", str(onnx_path), "--name", "progression"])
    entry = json.loads((onnx_path.parent / "manifest.json").read_text())["progression"]
    assert entry["version"].startswith("progression-") and set(entry["inputs"]) == {"earlier", "current", "years"}
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(3, 3, 160, 160)).astype(np.float32) for _ in range(2))
    years = np.array([[1.0], [2.5], [4.0]], np.float32)
    got = session.run(["progression"], {"earlier": a, "current": b, "years": years})[0]
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    net = ProgressionNet()
    net.load_state_dict(state["model"])
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(years)).numpy()
    assert got.shape == (3, 1) and np.abs(got - expected).max() < 1e-4


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
