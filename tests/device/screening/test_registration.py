"""Registration of an eye's visits on real GRAPE disc crops: a known move is found again, a pair of unrelated
eyes is refused in words, and the earlier photo cut through today's window shows what today's photo shows."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from device.screening.registration import MIN_CORRELATION, MIN_MATCHES, earlier_in_region, register
from models.runtime import preprocess
from models.runtime.images import read_rgb

TOLERANCE_PX = 1.0  # mean error over a 5 x 5 grid of the crop's central half, in the crop's own pixels


@pytest.fixture(scope="module")
def grape(shared_data):
    return shared_data / "grape" / "rois"


def _similarity(shape, turn_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    h, w = shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), turn_deg, scale)
    m[:, 2] += shift
    return m


def _grid(shape) -> np.ndarray:
    h, w = shape[:2]
    return np.array([[x, y, 1.0] for x in np.linspace(0.25, 0.75, 5) * w for y in np.linspace(0.25, 0.75, 5) * h]).T


@pytest.mark.parametrize("name, turn, scale, shift", [
    ("1_OD_1.jpg", 8.0, 1.12, (25.0, -18.0)),
    ("5_OS_1.jpg", -11.0, 0.88, (-30.0, 12.0)),
])
def test_a_known_similarity_is_found_again_on_a_real_crop(grape, name, turn, scale, shift):
    """The crop moved, turned and zoomed as a later visit's photo might be, and lit differently."""
    earlier = read_rgb(grape / name)
    truth = _similarity(earlier.shape, turn, scale, shift)
    moved = cv2.warpAffine(earlier, truth, earlier.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
    later = np.clip(moved.astype(np.float32) * 0.8 + 12, 0, 255).astype(np.uint8)  # a dimmer flash, another black level
    reg = register(earlier, later)
    assert reg.aligned and reg.refusal is None
    grid = _grid(earlier.shape)
    error = np.linalg.norm(reg.matrix @ grid - truth @ grid, axis=0).mean()
    assert error < TOLERANCE_PX
    assert reg.scale == pytest.approx(scale, abs=0.01) and reg.turn_deg == pytest.approx(turn, abs=0.5)
    assert reg.matches >= MIN_MATCHES and reg.correlation > 0.8
    # cut through one window of today's photo, the aligned earlier photo shows what today's shows there
    box = preprocess.Box(earlier.shape[1] * 0.3, earlier.shape[0] * 0.3, earlier.shape[1] * 0.4)
    then = earlier_in_region(earlier, reg, box, 128).astype(np.float32)
    now = preprocess.warp(moved, box, 128).astype(np.float32)
    assert np.corrcoef(then[..., 1].ravel(), now[..., 1].ravel())[0, 1] > 0.95


def test_two_visits_of_one_real_eye_line_up(grape):
    """Two years apart, the later crop 566 px against 453 and the disc framed larger still."""
    reg = register(read_rgb(grape / "1_OD_1.jpg"), read_rgb(grape / "1_OD_3.jpg"))
    assert reg.aligned and reg.correlation >= MIN_CORRELATION and reg.overlap > 0.9
    assert 566 / 453 < reg.scale < 1.5


def test_unrelated_eyes_are_refused_in_words(grape):
    reg = register(read_rgb(grape / "1_OD_1.jpg"), read_rgb(grape / "5_OS_3.jpg"))
    assert not reg.aligned and reg.matrix is None
    assert "may not show the same eye" in reg.refusal
    said = reg.to_dict()
    assert said["aligned"] is False and said["refusal"] == reg.refusal
    with pytest.raises(ValueError, match="not aligned"):
        earlier_in_region(read_rgb(grape / "1_OD_1.jpg"), reg, preprocess.Box(0, 0, 100), 64)


def test_a_blank_photo_is_refused_not_crashed_on():
    rgb = np.full((400, 400, 3), 90, np.uint8)
    reg = register(rgb, rgb)
    assert not reg.aligned and "too few points" in reg.refusal
