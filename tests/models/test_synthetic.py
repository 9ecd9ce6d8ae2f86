"""The synthetic fundus generator: its photos must carry true labels and look the way their names say."""
from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from models import synthetic as syn
from models.runtime.images import read_rgb

REPO = Path(__file__).resolve().parents[2]
SIZE = (256, 256)


def rows(binary: np.ndarray) -> int:
    r = np.flatnonzero(binary.any(axis=1))
    return int(r[-1] - r[0] + 1) if r.size else 0


def mask_vcdr(mask: np.ndarray) -> float:
    return rows(mask == 0) / rows(mask < 255)


def centroid(binary: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(binary)
    return np.array([xs.mean(), ys.mean()])


def luminance(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def field(shape: tuple[int, int], shrink: float = 1.0) -> np.ndarray:
    (cx, cy), r = syn.field_geometry(shape)
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    return np.hypot(xs - cx, ys - cy) < r * shrink


def rim_widths(mask: np.ndarray, laterality: str) -> dict[str, int]:
    """Rim width (pixels) at the four poles of the cup: inferior, superior, nasal, temporal."""
    disc, cup = mask < 255, mask == 0
    cx, cy = np.round(centroid(cup)).astype(int)
    col_d, col_c = np.flatnonzero(disc[:, cx]), np.flatnonzero(cup[:, cx])
    row_d, row_c = np.flatnonzero(disc[cy]), np.flatnonzero(cup[cy])
    left, right = row_c[0] - row_d[0], row_d[-1] - row_c[-1]
    temporal, nasal = (left, right) if laterality == "right" else (right, left)  # right eye: fovea on the left
    return {"I": col_d[-1] - col_c[-1], "S": col_c[0] - col_d[0], "N": nasal, "T": temporal}


@pytest.fixture(scope="module")
def eye() -> syn.EyeParams:
    return syn.random_eye(11, glaucoma=False, laterality="right")


@pytest.fixture(scope="module")
def photo(eye) -> syn.Sample:
    return syn.render(eye, SIZE, seed=4)


def test_same_seeds_give_the_same_photos_and_other_seeds_do_not(eye, photo):
    assert syn.random_eye(11, glaucoma=False, laterality="right") == eye
    again = syn.render(eye, SIZE, seed=4)
    assert np.array_equal(again.image, photo.image) and np.array_equal(again.mask, photo.mask)
    assert not np.array_equal(syn.render(eye, SIZE, seed=5).image, photo.image)
    assert not np.array_equal(syn.render(syn.random_eye(12), SIZE, seed=4).image, photo.image)
    a, b = list(syn.samples(2, seed=3, size=SIZE)), list(syn.samples(2, seed=3, size=SIZE))
    assert all(np.array_equal(x.image, y.image) and x.eye == y.eye for x, y in zip(a, b))
    assert a[0].eye != a[1].eye


@pytest.mark.parametrize("seed,glaucoma,size", [(1, False, SIZE), (2, True, SIZE), (3, True, (512, 512)),
                                                (4, False, (480, 640)), (5, True, (175, 205))])
def test_mask_uses_refuge_coding_and_its_vcdr_is_the_eyes(seed, glaucoma, size):
    eye = syn.random_eye(seed, glaucoma=glaucoma)
    s = syn.render(eye, size, seed=seed)
    assert s.mask.shape == size and s.mask.dtype == np.uint8 and s.image.shape == (*size, 3)
    assert set(np.unique(s.mask)) == {0, 128, 255}
    assert abs(mask_vcdr(s.mask) - eye.vcdr) <= 0.03
    assert s.vcdr == eye.vcdr and s.glaucoma == int(glaucoma) and s.laterality == eye.laterality


def test_glaucomatous_eyes_have_big_cups_that_thin_the_poles_of_the_rim():
    for seed in range(8):
        sick, healthy = syn.random_eye(seed, glaucoma=True), syn.random_eye(seed, glaucoma=False)
        assert 0.6 <= sick.vcdr <= 0.85 and 0.25 <= healthy.vcdr <= 0.55
        rim = rim_widths(syn.render_reflectance(sick, SIZE).mask, sick.laterality)
        assert min(rim["I"], rim["S"]) < rim["N"], rim  # ISNT violated
        rim = rim_widths(syn.render_reflectance(healthy, SIZE).mask, healthy.laterality)
        assert rim["I"] >= rim["N"] and rim["I"] > rim["T"], rim  # the inferior rim is the widest


@pytest.mark.parametrize("laterality", ["right", "left"])
def test_disc_is_bright_and_on_the_nasal_side_of_the_fovea(laterality):
    for seed in (21, 22):
        eye = syn.random_eye(seed, laterality=laterality)
        s = syn.render(eye, (320, 320), seed=seed)
        disc = s.mask < 255
        dx = centroid(disc)[0] - s.fovea[0]
        assert (dx > 0) if laterality == "right" else (dx < 0)
        assert abs(dx) > 2 * rows(disc)  # the fovea lies about 2.5 disc diameters away
        ys, xs = np.mgrid[0:320, 0:320]
        c = centroid(disc)
        d = np.hypot(xs - c[0], ys - c[1]) / (rows(disc) / 2)
        around = (d > 1.5) & (d < 3.0) & field((320, 320), 0.95)
        lum = luminance(s.image)
        assert lum[disc].mean() > 1.15 * lum[around].mean()
        fovea = np.hypot(xs - s.fovea[0], ys - s.fovea[1]) < rows(disc) / 4
        assert lum[fovea].mean() < lum[around].mean()  # the macula is darker than the retina by the disc


@pytest.mark.parametrize("laterality,view", [("right", "macula"), ("left", "macula"), ("left", "disc")])
def test_an_eye_built_by_hand_gets_its_disc_where_its_laterality_says(laterality, view):
    eye = syn.EyeParams(seed=3, laterality=laterality, glaucoma=False, vcdr=0.4, disc_radius=0.14, view=view)
    scene = syn.render_reflectance(eye, (128, 128))
    side = np.sign(scene.disc_center[0] - scene.fovea[0])
    assert side == (1 if laterality == "right" else -1)
    assert np.hypot(*np.subtract(scene.disc_center, scene.field_center)) < 0.7 * scene.field_radius
    assert np.hypot(*np.subtract(scene.fovea, scene.field_center)) < 0.8 * scene.field_radius


@pytest.mark.parametrize("size", [(256, 256), (220, 260)])
def test_outside_the_circular_field_is_black(size):
    s = syn.render(syn.random_eye(7), size, seed=1)
    (cx, cy), r = syn.field_geometry(size)
    ys, xs = np.mgrid[0:size[0], 0:size[1]]
    outside = np.hypot(xs - cx, ys - cy) > r + 1.0
    assert outside.any() and s.image[outside].max() == 0
    assert (s.image[field(size, 0.95)].max(axis=1) > 20).mean() > 0.99
    if size[1] > size[0]:  # a wide photo crops the circle top and bottom, as Drishti-GS1 does
        assert s.image[0, size[1] // 2].max() > 0 and s.image[-1, size[1] // 2].max() > 0


def test_progress_grows_the_cup_inside_the_same_disc():
    eye = syn.random_eye(31, glaucoma=True)
    later = syn.progress(eye, 5.0)
    assert later.vcdr == pytest.approx(eye.vcdr + 5 * 0.02)
    assert dataclasses.replace(later, vcdr=eye.vcdr) == eye
    healthy = syn.random_eye(31, glaucoma=False)
    assert syn.progress(healthy, 5.0).vcdr == pytest.approx(healthy.vcdr + 5 * 0.002)
    assert syn.progress(healthy, 5.0, rate=0.03).vcdr == pytest.approx(healthy.vcdr + 0.15)
    assert syn.progress(eye, 100.0).vcdr == syn.VCDR_MAX
    before, after = syn.render_reflectance(eye, SIZE).mask, syn.render_reflectance(later, SIZE).mask
    assert np.array_equal(before < 255, after < 255)
    assert (after == 0).sum() > (before == 0).sum() and np.all(after[before == 0] == 0)
    assert mask_vcdr(after) - mask_vcdr(before) == pytest.approx(0.1, abs=0.05)
    with pytest.raises(ValueError, match="later visit"):
        syn.progress(eye, -1.0)


def test_longitudinal_visits_show_one_eye_with_a_growing_cup():
    eye = syn.random_eye(32, glaucoma=True)
    visits = syn.longitudinal(eye, [0.0, 3.0, 6.0], SIZE, seed=2)
    ratios = [mask_vcdr(v.mask) for v in visits]
    assert ratios[0] < ratios[1] < ratios[2]
    assert [v.vcdr for v in visits] == [syn.progress(eye, t).vcdr for t in (0.0, 3.0, 6.0)]
    discs = [centroid(v.mask < 255) for v in visits]
    assert max(np.hypot(*(d - discs[0])) for d in discs) < 0.1 * syn.field_geometry(SIZE)[1]  # pose moves a little
    assert not np.array_equal(visits[0].image, visits[1].image)


def laplacian_variance(image: np.ndarray, inside: np.ndarray) -> float:
    """Focus measure as a quality gate takes it: a light blur first, so sensor grain does not count as detail."""
    grey = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1.0)
    lap = cv2.Laplacian(grey, cv2.CV_32F)
    return float(lap[inside].var())


def test_each_defect_spoils_the_photo_the_way_its_name_says(eye, photo):
    inner = field(SIZE, 0.85)
    spoilt = {d: syn.render(eye, SIZE, defects=(d,), seed=4) for d in syn.DEFECTS}
    for d, s in spoilt.items():
        assert s.defects == (d,)

    assert laplacian_variance(spoilt["defocus"].image, inner) < 0.2 * laplacian_variance(photo.image, inner)
    lum = luminance(photo.image)[inner].mean()
    assert luminance(spoilt["underexposed"].image)[inner].mean() < 0.55 * lum

    def clipped(img):
        return (img[inner] == 255).any(axis=1).mean()

    assert clipped(photo.image) < 0.05 and clipped(spoilt["overexposed"].image) > 0.4

    def glaring(img):
        return (img[inner].min(axis=1) > 200).mean()

    assert glaring(photo.image) < 0.01 and glaring(spoilt["glare"].image) > 0.05
    assert spoilt["glare"].image[inner][:, 2].mean() > 1.3 * photo.image[inner][:, 2].mean()  # a bluish-white veil

    (cx, cy), r = syn.field_geometry(SIZE)
    ys, xs = np.mgrid[0:SIZE[0], 0:SIZE[1]]
    top, bottom = inner & (ys < cy - 0.35 * r), inner & (ys > cy + 0.35 * r)
    lid = luminance(spoilt["eyelid"].image)
    assert lid[top].mean() < 0.3 * luminance(photo.image)[top].mean()
    assert lid[bottom].mean() == pytest.approx(luminance(photo.image)[bottom].mean(), rel=0.25)

    moved, scene = spoilt["off_centre"], syn.render_reflectance(eye, SIZE)
    before = np.hypot(*(centroid(photo.mask < 255) - (cx, cy)))
    disc = np.add(scene.disc_center, np.subtract(moved.fovea, scene.fovea))  # where the shift took the disc
    after = np.hypot(*(disc - (cx, cy)))
    assert after > 0.85 * r and after > before + 0.2 * r
    # The annotation moved with the photo, and nothing outside the field is annotated.
    dx, dy = np.round(np.subtract(moved.fovea, scene.fovea)).astype(int)
    expected = np.full(SIZE, 255, np.uint8)
    h, w = SIZE
    expected[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        scene.mask[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    expected[np.hypot(xs - cx, ys - cy) >= r + 0.5] = 255  # the field stop's edge
    assert (moved.mask < 255).any() and np.array_equal(moved.mask, expected)


def test_unknown_defect_is_refused_with_the_known_ones_listed(eye):
    with pytest.raises(ValueError, match="blurry.*defocus.*eyelid"):
        syn.render(eye, SIZE, defects=("blurry",))


def test_more_light_gives_a_brighter_photo_until_it_clips():
    scene = syn.render_reflectance(syn.random_eye(41), (240, 320))
    inner = field((240, 320), 0.9)
    means = [syn.apply_optics(scene, light=x, rng=np.random.default_rng(0))[inner].mean()
             for x in (0.1, 0.2, 0.5, 1.0, 2.0, 3.0)]
    assert all(a < b for a, b in zip(means, means[1:])), means
    assert syn.apply_optics(scene, light=0.0, noise=0.0)[inner].max() == 0


def test_apply_optics_moves_the_retina_behind_a_fixed_field():
    scene = syn.render_reflectance(syn.random_eye(42), (240, 320))
    still = syn.apply_optics(scene, noise=0.0)
    moved = syn.apply_optics(scene, noise=0.0, shift=(30.0, 0.0))
    (cx, cy), r = scene.field_center, scene.field_radius
    ys, xs = np.mgrid[0:240, 0:320]
    outside = np.hypot(xs - cx, ys - cy) > r + 1
    assert moved[outside].max() == 0  # the field stop stays where it was
    lum_still, lum_moved = luminance(still), luminance(moved)
    c_still = centroid(lum_still > np.percentile(lum_still, 99.5))  # the disc is the brightest thing in view
    c_moved = centroid(lum_moved > np.percentile(lum_moved, 99.5))
    assert c_moved[0] - c_still[0] == pytest.approx(30, abs=6)


def test_samples_honour_the_requested_mix():
    batch = list(syn.samples(12, seed=9, size=(128, 128), glaucoma_fraction=0.5, defect_fraction=1.0))
    assert all(s.defects and set(s.defects) <= set(syn.DEFECTS) for s in batch)
    assert 2 <= sum(s.glaucoma for s in batch) <= 10
    assert not any(s.defects for s in syn.samples(3, seed=9, size=(128, 128)))


def test_bad_input_gets_a_clear_message(eye):
    with pytest.raises(ValueError, match="laterality"):
        dataclasses.replace(eye, laterality="both")
    with pytest.raises(ValueError, match="too small"):
        syn.render(eye, (32, 32))
    with pytest.raises(ValueError, match="between 0 and 1"):
        syn.apply_optics(syn.render_reflectance(eye, (96, 96)), glare=2.0)


def test_command_line_writes_a_dataset_the_project_can_read(tmp_path, shared_data):
    out = tmp_path / "synthetic"
    done = subprocess.run([sys.executable, "-m", "models.synthetic", "--out", str(out), "--n", "3", "--seed", "5",
                           "--size", "240x200", "--defect-fraction", "0.4"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with open(out / "labels.csv", newline="") as f:
        labels = list(csv.DictReader(f))
    with open(shared_data / "refuge-val" / "labels.csv", newline="") as f:
        assert list(labels[0]) == next(csv.reader(f))  # the same columns as the real datasets
    assert len(labels) == 3
    with open(out / "details.csv", newline="") as f:
        details = {row["id"]: row for row in csv.DictReader(f)}
    for row in labels:
        image = read_rgb(out / "images" / f"{row['id']}.png")
        mask = cv2.imread(str(out / "masks" / f"{row['id']}.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape == (200, 240, 3) and mask.shape == (200, 240)
        assert set(np.unique(mask)) <= {0, 128, 255}
        if "off_centre" not in details[row["id"]]["defects"]:
            assert abs(mask_vcdr(mask) - float(row["vcdr"])) <= 0.04
        assert row["glaucoma"] in ("0", "1") and row["source"] == "synthetic"
    bad = subprocess.run([sys.executable, "-m", "models.synthetic", "--out", str(out), "--n", "1", "--size", "tiny"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "WIDTHxHEIGHT" in bad.stderr
