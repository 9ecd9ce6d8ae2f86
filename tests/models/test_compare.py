"""The STL / MTL / MTL-IO comparison: every arm trains from one config and lands in one table."""
from __future__ import annotations

import json

import torch

from models.compare import ARMS, evaluate_runs, markdown, slim, train_arms


def test_six_arms_train_evaluate_and_fill_the_table(shared_data, tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({
        "name": "tiny", "epochs": 1, "batch_size": 4, "input_size": 64, "warmup_steps": 1,
        "sources": [{"folder": "refuge-val", "splits": ["train"], "limit": 2},
                    {"folder": "drishti-gs1", "splits": ["train"], "limit": 2}],
        "val_sources": [{"folder": "drishti-gs1", "splits": ["val"], "limit": 3}],
        "synthetic": {"count": 2, "seed": 7}, "val_synthetic": {"count": 2, "seed": 99}}))
    runs = tmp_path / "runs"
    train_arms(base, runs, shared_data, jobs=2, arms=list(ARMS))
    for arm, spec in ARMS.items():
        config = json.loads((runs / arm / "config.json").read_text())
        assert (config["mode"], config["tasks"]) == (spec["mode"], spec["tasks"]), arm
        log = json.loads((runs / arm / "log.json").read_text())
        assert set(log[0]["train_loss"]) == {*spec["tasks"], "total"}  # only its own tasks learned

    slim(runs, tmp_path / "slim")
    half = torch.load(tmp_path / "slim" / "mtl-io.pt", weights_only=False)
    assert half["model"]["encoder._conv_stem.weight"].dtype == torch.float16

    result = evaluate_runs(tmp_path / "slim", shared_data, limit=4)
    rows = {r["method"]: r for r in result["table"]}
    assert rows["STL"]["parameters"] == 4 * rows["MTL"]["parameters"] == 4 * rows["MTL-IO"]["parameters"]
    stl = rows["STL"]["all real"]
    assert stl["disc_dice"] == result["arms"]["stl-disc"]["test"]["all real"]["disc_dice"]  # each task from its own net
    assert stl["glaucoma_auc"] == result["arms"]["stl-glaucoma"]["test"]["all real"]["glaucoma_auc"]
    assert rows["MTL-IO"]["seconds_per_step"] > 0 and rows["MTL"]["seconds_per_step"] > 0
    # that an MTL-IO step is four passes and an MTL step one is counted in tests/models/test_train.py, not timed here
    assert stl["vcdr_mae"] == result["stl_vcdr_mae"]["all real"] != result["arms"]["stl-cup"]["test"]["all real"]["vcdr_mae"]
    assert rows["MTL-IO"]["all real"]["fovea_error_dd"] is not None  # measured on synthetic photos
    table = markdown(result)
    assert table.count("| STL |") == 3 and "Drishti-GS1 official test" in table
