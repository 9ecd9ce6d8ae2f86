"""Dataset readers (shared, REFUGE index.json, ORIGA, PAPILA, G1020 layouts), mask codings, vCDR and the fixed split."""
from __future__ import annotations

import csv
import json
import shutil

import cv2
import numpy as np
import pytest

from models.datasets import DatasetError, decode_mask, encode_mask, load_mask, read_dataset, read_mat_mask, vcdr_from_masks
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


# ---------------------------------------------------------------- the public datasets' own layouts
# Each fixture is a tiny folder in the release's real layout: photos, outlines drawn with OpenCV in the
# release's own coding, and its label file, so the test sees what a researcher's download looks like.

def _photo(path, size=(120, 160), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    cv2.imwrite(str(path), rgb)


def _labels_mask(size=(120, 160), centre=(80, 60), disc=(30, 36), cup=(12, 18)) -> np.ndarray:
    """0 background, 1 disc rim, 2 cup, as G1020 and ORIGA write them."""
    mask = np.zeros(size, np.uint8)
    cv2.ellipse(mask, centre, disc, 0, 0, 360, 1, -1)
    if cup is not None:
        cv2.ellipse(mask, centre, cup, 0, 0, 360, 2, -1)
    return mask


def _write_mat(path, name: str, array: np.ndarray, compress: bool, stored_as=None) -> None:
    """A MATLAB level 5 MAT-file as MATLAB writes one: a double array of small integers is stored as
    uint8, a name of 4 bytes or less packs into its tag, and -v7 compresses each variable."""
    import struct
    import zlib

    def element(kind, payload: bytes) -> bytes:
        if len(payload) <= 4:
            return struct.pack("<HH", kind, len(payload)) + payload.ljust(4, b"\0")
        return struct.pack("<II", kind, len(payload)) + payload + b"\0" * (-len(payload) % 8)

    array = np.asarray(array)
    mat_class = {np.dtype("float64"): 6, np.dtype("uint8"): 9}[array.dtype]
    stored = np.asarray(array, stored_as or array.dtype)
    data_type = {np.dtype("uint8"): 2, np.dtype("float64"): 9, np.dtype("int16"): 3}[stored.dtype]
    body = (element(6, struct.pack("<II", mat_class, 0)) + element(5, struct.pack(f"<{array.ndim}i", *array.shape))
            + element(1, name.encode()) + element(data_type, stored.tobytes(order="F")))
    matrix = struct.pack("<II", 14, len(body)) + body
    if compress:
        packed = zlib.compress(matrix)
        matrix = struct.pack("<II", 15, len(packed)) + packed
    header = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, written for a test".ljust(116) + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + matrix)


def test_mat_files_are_read_compressed_or_not(tmp_path):
    labels = _labels_mask()
    for compress in (False, True):
        for dtype, stored in ((np.float64, np.uint8), (np.uint8, None), (np.float64, np.int16)):
            path = tmp_path / f"m{compress}{np.dtype(dtype).name}{stored}.mat"
            _write_mat(path, "mask", labels.astype(dtype), compress, stored)
            got = read_mat_mask(path)
            assert got.shape == labels.shape and (got == labels).all()
    _write_mat(tmp_path / "other.mat", "segmentation", labels.astype(np.float64), True, np.uint8)
    assert (read_mat_mask(tmp_path / "other.mat") == labels).all()  # the only 2-D variable, whatever its name
    (tmp_path / "v73.mat").write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00".ljust(512, b"\0"))
    with pytest.raises(DatasetError, match="v7.3"):
        read_mat_mask(tmp_path / "v73.mat")


def test_origa_layout(tmp_path):
    root = tmp_path / "ORIGA"
    for i, name in enumerate(("001", "002", "003")):
        _photo(root / "Images" / f"{name}.jpg", seed=i)
    (root / "Masks").mkdir()
    cv2.imwrite(str(root / "Masks" / "001.png"), _labels_mask())
    _write_mat(root / "Masks" / "002.mat", "mask", _labels_mask(cup=(8, 24)).astype(np.float64), True, np.uint8)
    (root / "OrigaList.csv").write_text("Eye,Filename,ExpCDR,Set,Glaucoma\n"
                                        "OD,001.jpg,0.5,A,0\nOS,002.jpg,0.7654,B,1\nOD,003.jpg,0.4,A,0\n")
    records = {r.id: r for r in read_dataset(root)}
    assert set(records) == {"001", "002", "003"}
    r1, r2 = records["001"], records["002"]
    assert (r1.source, r1.glaucoma, r1.vcdr, r1.split, r1.eye) == ("ORIGA", 0, 0.5, "train", "right")
    assert (r2.glaucoma, r2.vcdr, r2.split, r2.eye) == (1, 0.7654, "test", "left")
    assert r1.patient is None and r1.mask_path is None  # not REFUGE-coded: only load_mask reads it
    disc, cup = r1.load_mask()
    expected = _labels_mask()
    assert (disc == (expected >= 1)).all() and (cup == (expected == 2)).all()
    assert vcdr_from_masks(disc, cup) == pytest.approx(37 / 73)
    disc, cup = r2.load_mask()
    assert vcdr_from_masks(disc, cup) == pytest.approx(49 / 73)
    assert not records["003"].has_mask


def test_papila_layout_reads_contours_and_the_csv_export_of_its_clinical_sheets(tmp_path):
    root = tmp_path / "PapilaDB-PAPILA"
    contours = root / "ExpertsSegmentations" / "Contours"
    contours.mkdir(parents=True)
    for i, stem in enumerate(("RET002OD", "RET002OS", "RET015OD")):
        _photo(root / "FundusImages" / f"{stem}.jpg", size=(200, 240), seed=i)
    t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    disc_pts = np.c_[120 + 40 * np.cos(t), 100 + 50 * np.sin(t)]
    cup_pts = np.c_[118 + 15 * np.cos(t), 100 + 25 * np.sin(t)]
    np.savetxt(contours / "RET002OD_disc_exp1.txt", disc_pts, fmt="%.3f")
    np.savetxt(contours / "RET002OD_cup_exp1.txt", cup_pts, fmt="%.3f")
    np.savetxt(contours / "RET002OS_disc_exp1.txt", disc_pts, fmt="%.3f")
    np.savetxt(contours / "RET002OS_cup_e_exp2.txt", cup_pts, fmt="%.3f")  # expert 2's cup, with the release's odd name
    clinical = root / "ClinicalData"
    clinical.mkdir()
    # as a spreadsheet program saves the sheets: grouped headings above the column names
    grouped = ",Age,Gender,Diagnosis,Refractive_Defect,,,Phakic/Pseudophakic,IOP,,Pachymetry,Axial_Length,VF_MD\n"
    (clinical / "patient_data_od.csv").write_text(
        grouped + "ID,,,,dioptre_1,dioptre_2,astigmatism,,Pneumatic,Perkins,,,\n"
        "#002,39,0,1,-1,0,0,0,15,14,550,23.5,-2.1\n#015,60,1,2,0,0,0,0,18,17,540,24,-0.5\n")
    (clinical / "patient_data_os.csv").write_text(  # or saved with a single row of column names
        "ID,Age,Gender,Diagnosis,dioptre_1,dioptre_2,astigmatism,Phakic/Pseudophakic,Pneumatic,Perkins,Pachymetry,"
        "Axial_Length,VF_MD\n#002,39,0,0,-1,0,0,0,16,15,548,23.4,-1.0\n")
    records = {r.id: r for r in read_dataset(root)}
    od, os_, suspect = records["RET002OD"], records["RET002OS"], records["RET015OD"]
    assert (od.source, od.patient, od.eye, od.glaucoma) == ("PAPILA", "002", "right", 1)
    assert (os_.patient, os_.eye, os_.glaucoma) == ("002", "left", 0)
    assert (suspect.patient, suspect.glaucoma, suspect.has_mask) == ("015", None, False)  # suspects carry no label
    disc, cup = od.load_mask()  # reads the photo's size itself
    expected = np.zeros((200, 240), np.uint8)
    cv2.fillPoly(expected, [np.round(disc_pts * 16).astype(np.int32)], 1, shift=4)
    assert disc.shape == (200, 240) and (disc == expected.astype(bool)).all()
    assert vcdr_from_masks(disc, cup) == pytest.approx(51 / 101, abs=0.02)
    assert os_.load_mask((200, 240))[1].sum() == cup.sum()
    (clinical / "patient_data_od.csv").unlink()
    (clinical / "patient_data_od.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(DatasetError, match="patient_data_od.csv"):
        read_dataset(root)


def test_g1020_layout_with_label_masks_and_patients(tmp_path):
    root = tmp_path / "G1020"
    (root / "Masks").mkdir(parents=True)
    for i in range(3):
        _photo(root / "Images" / f"image_{i}.jpg", seed=i)
    cv2.imwrite(str(root / "Masks" / "image_0.png"), _labels_mask())
    cv2.imwrite(str(root / "Masks" / "image_1.png"), _labels_mask(cup=None))  # cup not outlined
    (root / "G1020.csv").write_text("imageID,patientID,binaryLabels\nimage_0.jpg,7,1\nimage_1.jpg,7,0\nimage_2.jpg,9,0\n")
    records = read_dataset(root)
    assert [(r.id, r.patient, r.glaucoma, r.has_mask) for r in records] == [
        ("image_0", "7", 1, True), ("image_1", "7", 0, True), ("image_2", "9", 0, False)]
    disc, cup = records[0].load_mask()
    assert disc.sum() == (_labels_mask() >= 1).sum() and cup.sum() == (_labels_mask() == 2).sum()
    assert not records[1].load_mask()[1].any()
    cv2.imwrite(str(root / "Masks" / "image_0.png"), encode_mask(disc, cup))  # REFUGE grey levels: not this coding
    with pytest.raises(DatasetError, match="0/1/2"):
        records[0].load_mask()


def test_layout_is_found_one_folder_down_and_mixtures_are_refused(tmp_path):
    root = tmp_path / "download" / "G1020"
    (root / "Images").mkdir(parents=True)
    _photo(root / "Images" / "image_0.jpg")
    (root / "G1020.csv").write_text("imageID,binaryLabels\nimage_0.jpg,0\n")
    assert [r.id for r in read_dataset(tmp_path / "download")] == ["image_0"]
    (tmp_path / "download" / "ORIGA").mkdir()
    (tmp_path / "download" / "ORIGA" / "OrigaList.csv").write_text("Eye,Filename,ExpCDR,Set,Glaucoma\n")
    with pytest.raises(DatasetError, match="several datasets.*G1020 in G1020/.*ORIGA in ORIGA/"):
        read_dataset(tmp_path / "download")


def test_unknown_layout_error_names_every_known_layout(tmp_path, shared_data):
    (tmp_path / "photos").mkdir()
    with pytest.raises(DatasetError) as caught:
        read_dataset(tmp_path)
    for name in ("labels.csv", "index.json", "OrigaList.csv", "G1020.csv", "FundusImages", "ExpertsSegmentations"):
        assert name in str(caught.value)
    with pytest.raises(DatasetError, match="models.grape"):
        read_dataset(shared_data / "grape")


def test_shared_layout_takes_fovea_and_eye_from_details_csv(tmp_path):
    _photo(tmp_path / "images" / "syn_0.png")
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "masks" / "syn_0.png"), encode_mask(_labels_mask() >= 1, _labels_mask() == 2))
    (tmp_path / "labels.csv").write_text("id,glaucoma,vcdr,split,source,camera\nsyn_0,1,0.5,test,synthetic,sim\n")
    (tmp_path / "details.csv").write_text("id,laterality,fovea_x,fovea_y,defects\nsyn_0,left,130.5,64.0,\n")
    (record,) = read_dataset(tmp_path)
    assert record.fovea == (130.5, 64.0) and record.eye == "left" and record.mask_path is not None
    disc, cup = record.load_mask()
    assert vcdr_from_masks(disc, cup) == pytest.approx(37 / 73)
