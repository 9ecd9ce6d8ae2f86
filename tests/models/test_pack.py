"""The compact training copy keeps every photo's labels, mask levels and disc geometry."""
from __future__ import annotations

import cv2
import numpy as np

from models.datasets import decode_mask, read_dataset, vcdr_from_masks
from models.pack import pack_dataset, pack_grape


def test_packed_drishti_keeps_ids_labels_and_vcdr(shared_data, tmp_path):
    src = shared_data / "drishti-gs1"
    n = pack_dataset(src, tmp_path / "drishti-gs1", max_side=1024, splits={"val"})
    packed = {r.id: r for r in read_dataset(tmp_path / "drishti-gs1")}
    original = {r.id: r for r in read_dataset(src)}
    assert n == len(packed) == 10  # Drishti-GS1's val split in artifacts/splits.csv
    for rid, r in packed.items():
        image = cv2.imread(str(r.image_path))
        assert max(image.shape[:2]) == 1024
        mask = cv2.imread(str(r.mask_path), 0)
        assert set(np.unique(mask)) <= {0, 128, 255}
        assert (r.glaucoma, r.vcdr) == (original[rid].glaucoma, original[rid].vcdr)
        before = vcdr_from_masks(*decode_mask(cv2.imread(str(original[rid].mask_path), 0)))
        assert abs(vcdr_from_masks(*decode_mask(mask)) - before) < 0.01


def test_packed_grape_keeps_every_crop(shared_data, tmp_path):
    n = pack_grape(shared_data / "grape", tmp_path / "grape", side=192)
    assert n == len(list((shared_data / "grape" / "rois").glob("*.jpg")))
    assert (tmp_path / "grape" / "eyes.csv").read_bytes() == (shared_data / "grape" / "eyes.csv").read_bytes()
    assert max(cv2.imread(str(next((tmp_path / "grape" / "rois").glob("*.jpg")))).shape[:2]) == 192
