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


def test_the_smaller_crop_is_the_middle_of_the_full_crop_pixel_for_pixel(refuge_photo):
    """Pass 2 on ONNX Runtime sees the middle 224 px of the 256 px disc crop: the disc at the scale training
    showed it, and the disc classifier's 256 px input comes from the same resampling."""
    rgb = read_rgb(refuge_photo)
    box = preprocess.disc_crop_box(300, 260, 70, rgb.shape)
    inner = preprocess.central_box(box, 224)
    assert inner.side == pytest.approx(box.side * 224 / 256)
    assert inner.to_source(112, 112, 224) == pytest.approx(box.to_source(128, 128))  # the same centre
    np.testing.assert_array_equal(preprocess.warp(rgb, inner, 224), preprocess.warp(rgb, box)[16:240, 16:240])


def test_a_disc_crop_of_a_large_photo_is_the_same_as_when_the_whole_photo_was_shrunk_first():
    """The area filter's pre-shrink now covers only the crop's part of the photo; where the old whole-photo
    shrink was exact (sides divisible by the factor) the crop is the same to the last bit."""
    rng = np.random.default_rng(3)
    photo = cv2.GaussianBlur(rng.integers(0, 256, (1536, 2048, 3), dtype=np.uint8), (0, 0), 2)
    box = preprocess.disc_crop_box(1200, 700, 250, photo.shape)  # side 750: shrunk by 2, then warped
    s = 256 / box.side
    f = int(1 / s)
    whole = cv2.resize(photo, (2048 // f, 1536 // f), interpolation=cv2.INTER_AREA)
    m = np.array([[s * f, 0, -box.x0 * s], [0, s * f, -box.y0 * s]])
    before = cv2.warpAffine(whole, m, (256, 256), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    np.testing.assert_array_equal(preprocess.warp(photo, box), before)
    outside = preprocess.Box(5000, 5000, 750)  # nothing of the photo in it: border only
    assert not preprocess.warp(photo, outside).any()


def test_halvings_are_made_once_and_serve_every_smaller_view():
    rng = np.random.default_rng(4)
    photo = cv2.GaussianBlur(rng.integers(0, 256, (1537, 2049, 3), dtype=np.uint8), (0, 0), 3)
    shrinks = preprocess.Shrinks(photo)
    level, f = shrinks.level(160 / 2049)
    assert f == 4 and level.shape == (384, 512, 3)  # at least twice the view's size, odd edges cut off
    assert shrinks.level(160 / 2049)[0] is level  # kept, not made again
    # each pixel the mean of 4 x 4 photo pixels (two halvings, each rounded)
    np.testing.assert_allclose(level[10, 20], photo[40:44, 80:84].reshape(-1, 3).mean(axis=0), atol=1)
    same, f = shrinks.level(0.9)
    assert same is photo and f == 1
    # pass 1's letterbox from the halvings is the one from the photo, up to rounding of the area filters
    box = preprocess.whole_image_box(photo.shape)
    direct, shared = preprocess.warp(photo, box, 160), preprocess.warp(shrinks, box, 160)
    assert np.abs(direct.astype(int) - shared.astype(int)).mean() < 1.0
    work = shrinks.resized((320, 240))
    assert work.shape == (240, 320, 3)
    assert np.abs(work.astype(int) - cv2.resize(photo, (320, 240), interpolation=cv2.INTER_AREA).astype(int)).mean() < 1.0


def test_normalize_gives_the_arithmetic_of_its_definition_bit_for_bit():
    """Normalizing by a table of the 256 values must not change a single input bit: training, INT8 calibration
    and the unit share this one definition."""
    rng = np.random.default_rng(5)
    for shape in [(256, 256, 3), (192, 256, 3), (5, 7, 3)]:
        rgb = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = ((rgb.astype(np.float32) / 255.0 - preprocess.MEAN) / preprocess.STD).transpose(2, 0, 1)[None]
        got = preprocess.normalize(rgb)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected)
    part = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)[10:234, 20:244]  # a view, as pass 2's middle crop is
    np.testing.assert_array_equal(preprocess.normalize(part),
                                  ((part.astype(np.float32) / 255.0 - preprocess.MEAN) / preprocess.STD).transpose(2, 0, 1)[None])


def test_the_photo_band_of_a_letterbox_leaves_out_the_black_bars_only():
    assert preprocess.photo_band((1536, 2048)) == (0, 32, 256, 192)  # 4:3: two bars of 32 px
    assert preprocess.photo_band((1760, 2048)) == (0, 16, 256, 224)  # 220 px of photo, widened to the stride
    assert preprocess.photo_band((2048, 1536)) == (32, 0, 192, 256)  # portrait
    assert preprocess.photo_band((512, 512)) == (0, 0, 256, 256)
