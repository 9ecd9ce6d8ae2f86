import struct

import cv2
import numpy as np
import pytest

from models.runtime import preprocess
from models.runtime.images import ImageError, decode_rgb, encode_jpeg, read_rgb


def test_boxes_round_trip_between_photo_and_input():
    box = preprocess.disc_crop_box(1000, 800, 300, (3000, 4000))
    x, y = box.to_input(1000, 800)
    assert (x, y) == pytest.approx((128, 128))
    assert box.to_source(*box.to_input(1234, 567)) == pytest.approx((1234, 567))
    assert box.side == pytest.approx(900)
    whole = preprocess.whole_image_box((1750, 2048))
    assert whole.side == 2048 and whole.y0 < 0


def test_warp_and_unwarp_keep_a_shape_in_place():
    img = np.zeros((600, 800), np.float32)
    cv2.circle(img, (500, 260), 60, 1.0, -1)
    box = preprocess.disc_crop_box(500, 260, 120, img.shape)
    small = preprocess.warp(img, box)
    assert small.shape == (256, 256)
    ys, xs = np.nonzero(small > 0.5)
    assert (xs.mean(), ys.mean()) == pytest.approx((128, 128), abs=2)
    back = preprocess.unwarp(small, box, img.shape) > 0.5
    inter = (back & (img > 0.5)).sum() / (img > 0.5).sum()
    assert inter > 0.95


def test_normalize_shape_and_statistics():
    x = preprocess.normalize(np.full((256, 256, 3), 255, np.uint8))
    assert x.shape == (1, 3, 256, 256) and x.dtype == np.float32
    assert x[0, :, 0, 0] == pytest.approx((1 - preprocess.MEAN) / preprocess.STD)


def test_bad_files_give_messages_a_person_understands(tmp_path, refuge_photo):
    with pytest.raises(ImageError, match="not found"):
        read_rgb(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        read_rgb(tmp_path / "empty.jpg")
    (tmp_path / "text.jpg").write_text("hello, not a photo")
    with pytest.raises(ImageError, match="not a readable image"):
        read_rgb(tmp_path / "text.jpg")
    data = refuge_photo.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        read_rgb(tmp_path / "cut.jpg")
    rgb = read_rgb(refuge_photo)
    assert rgb.shape == (512, 512, 3)
    assert rgb[..., 0].mean() > rgb[..., 2].mean()   # fundus photos are red, so the channel order is RGB
    assert decode_rgb(encode_jpeg(rgb)).shape == rgb.shape


def test_a_phone_photo_stored_on_its_side_with_an_exif_orientation_is_read_upright():
    """Phones store the sensor's pixels and a note to turn them (EXIF orientation 6: turn a quarter
    clockwise); a reader that ignores the note hands the screening a photo on its side."""


    from models.runtime.images import decode_rgb

    stored = np.zeros((80, 120, 3), np.uint8)
    stored[:, :60] = 255  # white on the left, as the sensor has it
    ok, jpeg = cv2.imencode(".jpg", stored)
    assert ok
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + b"\0\0\0\0"
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\0\0" + tiff
    data = jpeg.tobytes()
    rgb = decode_rgb(data[:2] + app1 + data[2:])
    assert rgb.shape[:2] == (120, 80)  # turned upright: portrait
    assert rgb[:60].mean() > 200 and rgb[60:].mean() < 50  # the sensor's left is now the top
