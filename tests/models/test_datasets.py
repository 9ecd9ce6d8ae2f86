"""Dataset readers (shared layout and REFUGE index.json), mask decoding, vCDR and the fixed split."""
from __future__ import annotations

import csv
import json
import shutil

import cv2
import numpy as np
import pytest

from models.datasets import DatasetError, decode_mask, encode_mask, load_mask, read_dataset, vcdr_from_masks
from models.splits import SPLITS_CSV, load_splits, make_splits


def test_shared_layout_reads_labels_and_masks(shared_data):
    refuge = read_dataset(shared_data / "refuge-val")
    assert len(refuge) == 400
    assert sum(r.glaucoma for r in refuge) == 40
    assert all(r.mask_path is not None and r.mask_path.exists() for r in refuge)
    drishti = {r.id: r for r in read_dataset(shared_data / "drishti-gs1")}
    assert len(drishti) == 101
    assert sum(r.split == "train" for r in drishti.values()) == 50
    assert drishti["drishtiGS_002"].vcdr == pytest.approx(0.768)
    assert drishti["drishtiGS_002"].source == "Drishti-GS1"


def test_refuge_index_layout(shared_data, tmp_path):
    source = read_dataset(shared_data / "refuge-val")[:3]
    (tmp_path / "Images").mkdir()
    (tmp_path / "gts").mkdir()
    index = {}
    for i, r in enumerate(source):
        shutil.copy(r.image_path, tmp_path / "Images" / f"{r.id}.jpg")
        cv2.imwrite(str(tmp_path / "gts" / f"{r.id}.bmp"), cv2.imread(str(r.mask_path), 0))
        index[str(i)] = {"ImgName": f"{r.id}.jpg", "Fovea_X": 300.5 + i, "Fovea_Y": 250.0, "Size_X": 512,
                         "Size_Y": 512, "Label": i % 2}
    (tmp_path / "index.json").write_text(json.dumps(index))
    records = read_dataset(tmp_path)
    assert [r.id for r in records] == [r.id for r in source]
    assert [r.glaucoma for r in records] == [0, 1, 0]
    assert records[1].fovea == (301.5, 250.0)
    disc, cup = load_mask(records[0].mask_path)
    disc_ref, cup_ref = load_mask(source[0].mask_path)
    assert (disc == disc_ref).all() and (cup == cup_ref).all()


def test_unknown_layout_is_refused_with_a_reason(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(DatasetError, match="labels.csv"):
        read_dataset(tmp_path)


def test_mask_decoding_tolerates_noise_and_vcdr_is_vertical_extent():
    disc = np.zeros((200, 200), bool)
    cup = np.zeros((200, 200), bool)
    cv2.ellipse(disc.view(np.uint8), (100, 100), (40, 50), 0, 0, 360, 1, -1)  # 101 px tall
    cv2.ellipse(cup.view(np.uint8), (95, 100), (15, 30), 0, 0, 360, 1, -1)    # 61 px tall, narrow
    mask = encode_mask(disc, cup).astype(np.int16)
    noisy = np.clip(mask + np.random.default_rng(0).integers(-40, 41, mask.shape), 0, 255).astype(np.uint8)
    got_disc, got_cup = decode_mask(noisy)
    assert (got_disc == disc).all() and (got_cup == cup).all()
    assert vcdr_from_masks(got_disc, got_cup) == pytest.approx(61 / 101)
    with pytest.raises(ValueError, match="no disc"):
        vcdr_from_masks(np.zeros_like(disc), cup)


def test_splits_are_disjoint_stratified_and_stable(shared_data):
    with open(SPLITS_CSV, newline="") as f:
        rows = [(r["source"], r["id"], r["split"]) for r in csv.DictReader(f)]
    assert len({(s, i) for s, i, _ in rows}) == len(rows) == 501  # one split per photo
    assert rows == make_splits(shared_data)  # regenerating gives the same file
    splits = load_splits()
    labels = {r.id: r.glaucoma for r in read_dataset(shared_data / "refuge-val")}
    for split, n, n_glaucoma in (("train", 240, 24), ("val", 80, 8), ("test", 80, 8)):
        ids = [i for (s, i), p in splits.items() if s == "refuge-val" and p == split]
        assert len(ids) == n and sum(labels[i] for i in ids) == n_glaucoma
    drishti = {r.id: r.split for r in read_dataset(shared_data / "drishti-gs1")}
    ours = {i: p for (s, i), p in splits.items() if s == "drishti-gs1"}
    assert all(ours[i] == "test" for i, official in drishti.items() if official == "test")
    assert sorted(p for i, p in ours.items() if drishti[i] == "train").count("val") == 10
