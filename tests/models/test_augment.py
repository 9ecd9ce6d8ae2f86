"""Another camera's look (`models.augment.Camera`): off it changes nothing, on each effect does what its
camera does, one seed gives one look, and masks and fovea never move. Also the geometry of other
cameras' fields, and that configs without the new sections augment exactly as the shipped networks were."""
from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from models import train
from models.augment import (
    Camera,
    Colour,
    apply_affine,
    apply_field_stop,
    box_affine,
    camera_look,
    field_of_view,
    recolour,
    sample_affine,
)
from models.synthetic import samples

REPO = Path(__file__).resolve().parents[2]
SIZE = 256
PROBABILITIES = [f.name for f in fields(Camera) if f.name.endswith("_probability") and f.name != "aliasing_probability"]
EVERY_EFFECT = Camera(**{name: 1.0 for name in PROBABILITIES})


@pytest.fixture(scope="module")
def views() -> list[train.View]:
    """The whole and disc training views of one synthetic photo (it has a disc, a cup and a fovea)."""
    s = next(iter(samples(1, 3, size=(384, 384))))
    return train.photo_views(("synthetic", "0"), s.image, s.mask, s.fovea, int(s.glaucoma), ["whole", "disc"], SIZE,
                             for_training=True)


@pytest.fixture(scope="module")
def photo(views) -> np.ndarray:
    """A fundus-like view as `camera_look` gets it: vessels, a disc, the field's edge."""
    return train.augmented(views[0], np.random.default_rng(0), SIZE)[0]


def only(effect: str, **ranges) -> Camera:
    return Camera(**{f"{effect}_probability": 1.0}, **ranges)


def look(rgb: np.ndarray, camera: Camera, seed: int = 0) -> np.ndarray:
    return camera_look(np.random.default_rng(seed), rgb, camera)


def grey(level: int, shape=(SIZE, SIZE)) -> np.ndarray:
    return np.full((*shape, 3), level, np.uint8)


def gradient_energy(rgb: np.ndarray) -> float:
    g = rgb.astype(np.float64).mean(axis=2)
    return float((np.diff(g, axis=0) ** 2).mean() + (np.diff(g, axis=1) ** 2).mean())


def blockiness(rgb: np.ndarray) -> float:
    """Mean step across the 8x8 JPEG block borders over the mean step elsewhere (1 for a photo without blocks)."""
    g = rgb.astype(np.float64).mean(axis=2)
    at, within = 0.0, 0.0
    for a in (g, g.T):
        d = np.abs(np.diff(a, axis=1))
        at += d[:, 7::8].mean()
        within += np.delete(d, np.s_[7::8], axis=1).mean()
    return at / within


def linear(rgb: np.ndarray) -> np.ndarray:
    """Linear light as the camera model takes it (gamma 2)."""
    return (rgb.astype(np.float64) / 255.0) ** 2


# ---------------------------------------------------------------- the camera as a whole

def test_every_effect_off_leaves_the_photo_as_it_is(photo):
    wide_but_off = replace(EVERY_EFFECT, **{name: 0.0 for name in PROBABILITIES})
    for camera in (Camera(), wide_but_off):
        for seed in range(3):
            out = look(photo, camera, seed)
            assert out.dtype == np.uint8 and np.array_equal(out, photo)


def test_one_seed_one_look_and_another_seed_another(photo):
    first, again, other = look(photo, EVERY_EFFECT, 5), look(photo, EVERY_EFFECT, 5), look(photo, EVERY_EFFECT, 6)
    assert np.array_equal(first, again)
    assert np.abs(first.astype(int) - other).mean() > 1.0
    assert np.abs(first.astype(int) - photo).mean() > 1.0


def test_switching_one_effect_on_does_not_change_what_the_others_draw(photo):
    """Each effect has its own generator: the noise is the same whether or not JPEG comes after it."""
    noise = only("noise")
    both = replace(noise, white_balance_probability=1.0, white_balance_temperature=0.0, white_balance_tint=0.0)
    assert np.array_equal(look(photo, noise, 3), look(photo, both, 3))


def test_an_effect_comes_to_about_its_probability_of_photos():
    small = grey(120, (32, 32))
    camera = only("white_balance", white_balance_temperature=0.4)
    camera = replace(camera, white_balance_probability=0.3)
    changed = np.mean([not np.array_equal(look(small, camera, seed), small) for seed in range(300)])
    assert 0.2 < changed < 0.4


@pytest.mark.parametrize("shape", [(SIZE, SIZE), (200, 300), (512, 512)])
def test_the_look_keeps_shape_and_dtype(photo, shape):
    rgb = np.ascontiguousarray(np.resize(photo, (*shape, 3)))
    coarse = replace(EVERY_EFFECT, resolution_width=(100.0, 100.0))  # through a grid coarser than the view
    for camera in (EVERY_EFFECT, coarse):
        out = look(rgb, camera)
        assert out.shape == rgb.shape and out.dtype == np.uint8


def test_the_camera_leaves_masks_and_fovea_where_they_were(views):
    """Only the pixels change: the same seed with and without a camera gives the same mask and fovea."""
    with_camera = train.Augmentation(camera=EVERY_EFFECT)
    for view in views:
        for seed in range(3):
            plain = train.augmented(view, np.random.default_rng(seed), SIZE)
            looked = train.augmented(view, np.random.default_rng(seed), SIZE, with_camera)
            assert np.array_equal(plain[1], looked[1]) and plain[2] == looked[2] and plain[3] == looked[3]
            assert looked[0].shape == plain[0].shape and looked[0].dtype == np.uint8
            assert np.abs(looked[0].astype(int) - plain[0]).mean() > 1.0


# ---------------------------------------------------------------- each effect

def test_vignetting_darkens_the_corners_more_than_the_centre():
    out = look(grey(180), only("vignetting", vignetting_strength=(0.5, 0.5), vignetting_decentre=0.0)).astype(float)
    centre, corners = out[120:136, 120:136].mean(), np.mean([out[:16, :16].mean(), out[-16:, -16:].mean()])
    assert centre > 178
    assert corners < 0.75 * centre
    # the field's edge (half the width out, beside the centre) keeps half its linear light
    edge = out[120:136, :2].mean()
    assert linear(np.array([edge]))[0] == pytest.approx(0.5 * linear(np.array([centre]))[0], rel=0.05)


def test_jpeg_at_quality_30_leaves_8x8_blocks_that_95_does_not(photo):
    low = blockiness(look(photo, only("jpeg", jpeg_quality=(30, 30))))
    high = blockiness(look(photo, only("jpeg", jpeg_quality=(95, 95))))
    assert blockiness(photo) < 1.05
    assert high < 1.1
    assert low > 1.3 * high


def test_defocus_lowers_the_gradient_energy_the_more_the_wider(photo):
    energy = gradient_energy(photo)
    slight = gradient_energy(look(photo, only("defocus", defocus_radius=(0.004, 0.004))))
    strong = gradient_energy(look(photo, only("defocus", defocus_radius=(0.012, 0.012))))
    wide = gradient_energy(look(photo, only("defocus", defocus_radius=(0.03, 0.03))))  # blurred on a coarser grid
    assert slight < 0.8 * energy
    assert strong < 0.5 * slight
    assert wide < 0.5 * strong


def test_defocus_is_a_disc_not_a_gaussian():
    """A point out of focus becomes a flat disc of the blur's radius (0.015 x 256 px = 3.84 px)."""
    point = grey(0, (65, 65))
    point[32, 32] = 255
    out = linear(camera_look(np.random.default_rng(0), point, only("defocus", defocus_radius=(0.015, 0.015)),
                             frame=(32.0, 32.0, 256.0)))[..., 0]
    assert out[32, 32] > 0 and out[32, 35] == pytest.approx(out[32, 32], rel=0.1)  # flat inside
    assert out[32, 37] == 0 and out[37, 32] == 0 and out[36, 36] == 0  # nothing beyond the rim


def test_white_balance_moves_channel_ratios_within_the_configured_range():
    temperature, tint = 0.3, 0.1
    camera = only("white_balance", white_balance_temperature=temperature, white_balance_tint=tint)
    warm, green = [], []
    for seed in range(60):
        r, g, b = linear(look(grey(128), camera, seed)[0, 0])
        warm.append(np.log(r / b))
        green.append(np.log(g / np.sqrt(r * b)))
    slack = 0.03  # 8-bit rounding
    assert max(np.abs(warm)) <= temperature + slack and max(np.abs(green)) <= tint + slack
    assert min(warm) < -temperature / 2 and max(warm) > temperature / 2  # both ways, most of the range
    assert min(green) < -tint / 2 and max(green) > tint / 2


def test_noise_raises_the_residual_variance_and_more_so_in_bright_light():
    """Poisson-Gaussian: in linear light the variance grows with the intensity (photon noise)."""
    camera = only("noise", noise_shot=(4e-3, 4e-3), noise_read=(2e-4, 2e-4))
    image = np.concatenate([grey(80, (128, SIZE)), grey(200, (128, SIZE))])
    out = look(image, camera)
    assert np.var(out.astype(float) - image) > 4.0
    dark, bright = linear(out[:128]), linear(out[128:])
    assert np.var(bright) > 3.0 * np.var(dark)
    assert np.var(look(image, Camera()).astype(float) - image) == 0


def test_film_grain_is_clumped_where_sensor_noise_is_not(photo):
    def neighbour_correlation(camera: Camera) -> float:
        residual = (look(photo, camera).astype(float) - photo).mean(axis=2)
        return float(np.corrcoef(residual[:, :-1].ravel(), residual[:, 1:].ravel())[0, 1])

    assert neighbour_correlation(only("film", film_grain=(0.08, 0.08), film_grain_size=(0.005, 0.005))) > 0.5
    assert abs(neighbour_correlation(only("noise"))) < 0.2


def test_a_coarse_camera_blurs_and_a_fine_one_sharpens(photo):
    energy = gradient_energy(photo)
    assert gradient_energy(look(photo, only("resolution", resolution_width=(120.0, 120.0)))) < 0.6 * energy
    assert gradient_energy(look(photo, only("resolution", resolution_width=(4000.0, 4000.0),
                                            sharpening=(1.0, 1.0)))) > 1.2 * energy


def test_a_photo_finer_than_the_view_is_not_blurred_by_its_resolution():
    """A 400 px photo letterboxed into a 256 px view has nothing left to lose; on a disc crop (the photo
    about 2.5 views wide) the same camera does blur."""
    rng = np.random.default_rng(1)
    texture = rng.integers(60, 200, (SIZE, SIZE, 3), dtype=np.uint8)
    coarse = only("resolution", resolution_width=(400.0, 400.0), sharpening=(0.0, 0.0))
    whole = camera_look(np.random.default_rng(0), texture, coarse)
    crop = camera_look(np.random.default_rng(0), texture, coarse, frame=(128.0, 128.0, 640.0))
    assert np.array_equal(whole, texture)
    assert gradient_energy(crop) < 0.5 * gradient_energy(texture)


def test_glare_brightens_a_ring_and_the_reflex_a_spot():
    dark = grey(40)
    ring = look(dark, only("glare", glare_radius=(0.8, 0.8), glare_width=(0.03, 0.03), glare_arc_deg=(360.0, 360.0),
                           glare_strength=(0.02, 0.02)))
    on_ring, centre = ring[128, 128 + 102].mean(), ring[128, 128].mean()
    assert on_ring > 45 and centre == 40
    spot = look(dark, only("reflex", reflex_reach=0.0, reflex_radius=(0.03, 0.03), reflex_strength=(0.5, 0.5)))
    assert spot[128, 128].mean() > 150 and spot[128, 40].mean() == 40


# ---------------------------------------------------------------- geometry of other cameras' fields

def test_a_moved_disc_lands_within_reach_inside_the_field(views):
    whole = views[0]
    geometry = replace(train.GEOMETRY["whole"], disc_offset=0.8, disc_offset_probability=1.0, field_stop=True,
                       side=(0.65, 1.5))
    augmentation = train.Augmentation(geometry={**train.GEOMETRY, "whole": geometry})
    distances = []
    for seed in range(40):
        image, mask, fovea, _ = train.augmented(whole, np.random.default_rng(seed), SIZE, augmentation)
        ys, xs = np.nonzero(mask < 255)
        if xs.size:
            distances.append(np.hypot(xs.mean() - SIZE / 2, ys.mean() - SIZE / 2) / (SIZE / 2))
        if fovea is not None:  # a fovea kept is one the photo shows
            x, y = int(round(fovea[0])), int(round(fovea[1]))
            assert 0 <= x < SIZE and 0 <= y < SIZE and image[y, x].max() > 0
    assert len(distances) > 30
    assert max(distances) <= 0.8 + 0.05 and max(distances) > 0.6


def test_the_field_stop_blackens_and_unlabels_what_lies_outside_the_field(views):
    whole = views[0]
    field = field_of_view(whole.image, box_affine(whole.box, SIZE), SIZE)
    assert 0.5 < field.mean() < 0.95 and field[SIZE // 2, SIZE // 2] and not field[0, 0]
    image = grey(200)
    mask = np.full((SIZE, SIZE), 128, np.uint8)  # disc everywhere
    out, out_mask, fovea = apply_field_stop(image, mask, (2.0, 2.0), field)
    assert out_mask is not None
    assert (out[~field] == 0).all() and (out[field] == 200).all()
    assert (out_mask[~field] == 255).all() and (out_mask[field] == 128).all()
    assert fovea is None  # in the black corner: not visible, so not a target
    assert apply_field_stop(image, mask, (128.0, 128.0), field)[2] == (128.0, 128.0)


# ---------------------------------------------------------------- configs

def test_configs_without_the_new_sections_augment_exactly_as_before(views):
    """The shipped networks' configs must reproduce their training: the same draws, the same pixels."""
    def before(view, rng):
        matrix = sample_affine(rng, view.box, SIZE, train.GEOMETRY[view.kind])
        image, mask, fovea = apply_affine(view.image, view.mask, view.fovea, matrix, SIZE)
        return recolour(rng, image, Colour()), mask, fovea, view.glaucoma

    for name in ("segmentation", "classifier"):
        augmentation = train.augmentation_from_config(train.load_config(REPO / "models" / "configs" / f"{name}.json"))
        assert augmentation.camera is None
        for view in views:
            for seed in range(4):
                want = before(view, np.random.default_rng(seed))
                got = train.augmented(view, np.random.default_rng(seed), SIZE, augmentation)
                assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2:] == got[2:]


@pytest.mark.parametrize("name", ["segmentation", "classifier"])
def test_the_camera_configs_are_the_shipped_ones_plus_augmentation(name):
    configs = REPO / "models" / "configs"
    shipped = json.loads((configs / f"{name}.json").read_text())
    cameras = json.loads((configs / f"{name}_cameras.json").read_text())
    added = set(cameras) - set(shipped)
    assert added <= {"camera", "geometry"} and "camera" in added
    assert {k: v for k, v in cameras.items() if k not in added | {"name"}} == {k: v for k, v in shipped.items() if k != "name"}
    augmentation = train.augmentation_from_config(train.load_config(configs / f"{name}_cameras.json"))
    assert augmentation.camera is not None
    assert sum(getattr(augmentation.camera, p) > 0 for p in PROBABILITIES) == len(PROBABILITIES)


@pytest.mark.parametrize("section", [
    {"camera": {"defocus_probabilty": 0.2}},
    {"camera": {"jpeg_probability": 1.5}},
    {"camera": {"vignetting_strength": [0.5, 0.2]}},
    {"geometry": {"whole": {"disc_offset": 2.0}}},
    {"geometry": {"fovea": {"side": [0.9, 1.1]}}},
    {"camera": [0.2]},
])
def test_a_wrong_augmentation_section_is_refused(section):
    with pytest.raises(train.ConfigError):
        train.load_config(overrides=section)
