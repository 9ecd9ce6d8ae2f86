import cv2
import numpy as np
import pytest

from device.screening.measurements import clean_masks, measure, region
from models.metrics import dice


def ellipse_mask(shape, centre, axes):
    m = np.zeros(shape, np.uint8)
    cv2.ellipse(m, centre, axes, 0, 0, 360, 1, -1)
    return m.astype(bool)


def test_vcdr_of_drawn_disc_and_cup():
    disc = ellipse_mask((200, 200), (100, 100), (40, 50))   # 101 px tall
    cup = ellipse_mask((200, 200), (100, 100), (20, 30))    # 61 px tall
    m = measure(disc, cup)
    assert m.disc.vertical_diameter == pytest.approx(101, abs=1)
    assert m.vcdr == pytest.approx(61 / 101, abs=0.02)
    assert m.hcdr == pytest.approx(41 / 81, abs=0.02)
    assert (m.disc.cx, m.disc.cy) == pytest.approx((100.5, 100.5), abs=0.5)


def test_scale_and_offset_map_to_photo_pixels():
    disc = ellipse_mask((100, 100), (50, 50), (20, 25))
    m1 = measure(disc, np.zeros_like(disc))
    m2 = measure(disc, np.zeros_like(disc), scale=4.0, offset=(1000, 500))
    assert m2.disc.vertical_diameter == pytest.approx(4 * m1.disc.vertical_diameter)
    assert m2.disc.cx == pytest.approx(1000 + 4 * m1.disc.cx)
    assert m2.vcdr == 0.0


def test_clean_masks_keeps_largest_disc_and_cup_inside_it():
    disc_p = np.zeros((120, 120), np.float32)
    disc_p[20:80, 20:80] = 0.9
    disc_p[100:104, 100:104] = 0.9          # a speck elsewhere
    cup_p = np.zeros_like(disc_p)
    cup_p[40:60, 40:60] = 0.8
    cup_p[5:10, 5:10] = 0.8                 # "cup" outside the disc
    disc, cup = clean_masks(disc_p, cup_p)
    assert disc.sum() == 60 * 60
    assert cup.sum() == 20 * 20
    assert not (cup & ~disc).any()


def test_isnt_rims_follow_the_fovea_side():
    disc = ellipse_mask((200, 200), (100, 100), (40, 40))
    cup = ellipse_mask((200, 200), (110, 100), (15, 15))     # cup shifted toward x+
    m = measure(disc, cup, fovea=(190, 100))                  # fovea on the right: temporal = right
    assert m.rim["temporal"] < m.rim["nasal"]
    m = measure(disc, cup, fovea=(10, 100))
    assert m.rim["temporal"] > m.rim["nasal"]


def test_empty_disc_gives_no_measurement_and_dice_edges():
    empty = np.zeros((10, 10), bool)
    assert measure(empty, empty) is None
    assert region(empty) is None
    a = np.zeros((10, 10), bool)
    a[:5] = True
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
