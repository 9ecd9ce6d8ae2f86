"""The one definition of how a photo becomes network input, shared by training, INT8 calibration
and the screening pipeline. If these drift apart, INT8 calibration and accuracy silently degrade.

Geometry: the segmentation network was trained on square `INPUT_SIZE` images. Pass 1 sees the whole
photo (letterboxed to a square) to find the disc; pass 2 sees a square crop centred on the disc whose
side is `CROP_DISC_RATIO` disc diameters, so the cup is segmented at a useful resolution whatever the
camera's resolution. The network is fully convolutional, so where the engine allows it (`PassSizes`)
pass 1 runs only on the band of the letterbox the photo fills (not on its black bars) and pass 2 on
the middle of the disc crop: the disc at the very scale training showed it, with a narrower margin.

A large photo is shrunk once (`Shrinks`) for everyone who needs it small: the quality gate's working
copies and pass 1's letterbox.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

INPUT_SIZE = 256
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # ImageNet, as the pretrained encoder expects
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CROP_DISC_RATIO = 3.0
FOVEA_SIGMA = 7.0  # heatmap sigma in INPUT_SIZE pixels (MTL-IO)


@dataclass(frozen=True)
class Box:
    """A square window in source-image pixels (may extend past the border; padding fills it)."""

    x0: float
    y0: float
    side: float

    def to_input(self, x: float, y: float, size: int = INPUT_SIZE) -> tuple[float, float]:
        s = size / self.side
        return (x - self.x0) * s, (y - self.y0) * s

    def to_source(self, x: float, y: float, size: int = INPUT_SIZE) -> tuple[float, float]:
        s = self.side / size
        return self.x0 + x * s, self.y0 + y * s


@dataclass(frozen=True)
class PassSizes:
    """The side in pixels of what each pass sees. `crop` is the middle of the `INPUT_SIZE` disc crop:
    the same pixels at the same scale, a narrower margin around the disc."""

    whole: int = INPUT_SIZE
    crop: int = INPUT_SIZE
    trim_letterbox: bool = False  # pass 1 on the photo's own band of its letterbox only (`photo_band`)


# Chosen on the val split (model card, "Speed"): pass 2 on the middle 224 px of the crop keeps every
# figure within 0.005 of the 256 px crop for a quarter less arithmetic. Pass 1 stays at 256: smaller
# letterboxes move the disc pass 1 finds enough to change the crop, and the glaucoma AUC on val moved
# by more than 0.005 at 192 px with INT8 (at 128 px the disc's size is lost on a few photos outright).
SMALL_PASSES = PassSizes(whole=INPUT_SIZE, crop=224, trim_letterbox=True)
STRIDE = 32  # the encoder's: a view's sides are multiples of it
FULL_PASSES = PassSizes()


def whole_image_box(shape: tuple[int, ...]) -> Box:
    """Square box covering the whole photo, centred (letterbox)."""
    h, w = shape[:2]
    side = float(max(h, w))
    return Box((w - side) / 2.0, (h - side) / 2.0, side)


def photo_band(shape: tuple[int, ...], size: int = INPUT_SIZE) -> tuple[int, int, int, int]:
    """(left, top, width, height) of the part of a photo's `size` px letterbox view the photo fills, widened
    to multiples of STRIDE: a 4:3 photo's 256 px view is a 256 x 192 band between two black bars, which
    the network need not be run on (it is fully convolutional)."""
    h, w = shape[:2]
    side = max(h, w)
    band_w = min(size, STRIDE * math.ceil(size * w / side / STRIDE))
    band_h = min(size, STRIDE * math.ceil(size * h / side / STRIDE))
    return (size - band_w) // 2, (size - band_h) // 2, band_w, band_h


def disc_crop_box(cx: float, cy: float, disc_diameter: float, shape: tuple[int, ...]) -> Box:
    """Square box centred on the disc, `CROP_DISC_RATIO` disc diameters wide, kept to a sane size."""
    h, w = shape[:2]
    short = float(min(h, w))
    side = float(np.clip(CROP_DISC_RATIO * disc_diameter, 0.12 * short, 0.8 * short))
    return Box(cx - side / 2.0, cy - side / 2.0, side)


def central_box(box: Box, size: int, of: int = INPUT_SIZE) -> Box:
    """The middle `size` x `size` pixels of `box` seen at `of` pixels, as a box of its own: its view at
    `size` pixels is exactly the middle of the larger view (same scale, same pixel grid)."""
    side = box.side * size / of
    margin = (box.side - side) / 2
    return Box(box.x0 + margin, box.y0 + margin, side)


class Shrinks:
    """A photo and its halvings (each pixel the mean of 2x2), made on demand and kept for the photo's
    screening. OpenCV's area filter at an arbitrary factor reads the whole photo each time and is
    slow (tens of milliseconds for 3 MP); a halving is the cheapest resampling there is. So the gate's
    working copies and pass 1's letterbox each start from the smallest halving still at least twice
    their size, and a 12 MP photo is read in full once."""

    def __init__(self, rgb: np.ndarray):
        self.photo = rgb
        self.shape = rgb.shape
        self._levels = [rgb]

    def level(self, scale: float, spare: float = 2) -> tuple[np.ndarray, int]:
        """The smallest halving at least `spare` times `scale` times the photo's size, and its factor (1, 2,
        4...): the area filter still has `spare` x `spare` of its pixels to average for each pixel it makes."""
        k = 0
        while scale * spare * 2 ** (k + 1) <= 1.0 and min(self._levels[k].shape[:2]) >= 4:
            if k + 1 == len(self._levels):
                img = self._levels[k]
                h, w = img.shape[0] // 2, img.shape[1] // 2
                self._levels.append(cv2.resize(img[:2 * h, :2 * w], (w, h), interpolation=cv2.INTER_AREA))
            k += 1
        return self._levels[k], 2 ** k

    def grain(self, scale: float, spare: float = 2) -> int:
        """The factor of the halving `resized` starts from for `scale`: a region cut on multiples of it
        is resampled exactly."""
        return self.level(scale, spare)[1] if scale < 1 else 1

    def resized(self, size: tuple[int, int], region: tuple[int, int, int, int] | None = None,
                spare: float = 2) -> np.ndarray:
        """`region` (x0, y0, x1, y1 in photo pixels; the whole photo by default) at `size` (width, height),
        by the area filter when it shrinks (from a halving `spare` times larger at least)."""
        x0, y0, x1, y1 = region or (0, 0, self.shape[1], self.shape[0])
        scale = min(size[0] / (x1 - x0), size[1] / (y1 - y0))
        f = self.grain(scale, spare)
        img = self._levels[f.bit_length() - 1]
        part = img[y0 // f:max(y0 // f + 1, y1 // f), x0 // f:max(x0 // f + 1, x1 // f)]
        return cv2.resize(part, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def warp(img: np.ndarray | Shrinks, box: Box, size: int = INPUT_SIZE, interp: int | None = None,
         border: int = 0) -> np.ndarray:
    """Resample `box` of `img` to size x size (area filter when shrinking, so no aliasing). From
    `Shrinks`, the resampling starts at the smallest halving that keeps the area filter's work."""
    if isinstance(img, Shrinks):
        img, f = img.level(size / box.side)
        if f > 1:  # halving pixel i covers photo pixels f*i .. f*i + f - 1: its centre is f*i + (f - 1) / 2
            box = Box((box.x0 - (f - 1) / 2) / f, (box.y0 - (f - 1) / 2) / f, box.side / f)
    s = size / box.side
    m = np.array([[s, 0, -box.x0 * s], [0, s, -box.y0 * s]], dtype=np.float64)
    if interp is None:
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    if interp == cv2.INTER_AREA:
        # warpAffine has no area filter: pre-shrink with resize, then warp the rest. Only the part of the
        # photo the box covers, cut on multiples of f, so the pre-shrink is an exact f x f mean (OpenCV's
        # fast path) and a disc crop does not shrink the whole photo.
        f = max(1, int(1 / s))
        if f > 1:
            h, w = img.shape[:2]
            xa, ya = max(0, math.floor(box.x0 / f) - 1) * f, max(0, math.floor(box.y0 / f) - 1) * f
            xb = min(w // f * f, (math.ceil((box.x0 + box.side) / f) + 1) * f)
            yb = min(h // f * f, (math.ceil((box.y0 + box.side) / f) + 1) * f)
            if xb <= xa or yb <= ya:  # the box lies wholly outside the photo: nothing but border
                return np.full((size, size) + img.shape[2:], border, img.dtype)
            img = cv2.resize(img[ya:yb, xa:xb], ((xb - xa) // f, (yb - ya) // f), interpolation=cv2.INTER_AREA)
            m = np.array([[s * f, 0, (xa - box.x0) * s], [0, s * f, (ya - box.y0) * s]], dtype=np.float64)
        interp = cv2.INTER_LINEAR
    return cv2.warpAffine(img, m, (size, size), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def unwarp(prob: np.ndarray, box: Box, shape: tuple[int, ...]) -> np.ndarray:
    """Map a probability map on `box`'s grid (of any size) back onto the source photo's pixel grid."""
    h, w = shape[:2]
    size = prob.shape[0]
    s = size / box.side
    m = np.array([[s, 0, -box.x0 * s], [0, s, -box.y0 * s]], dtype=np.float64)
    return cv2.warpAffine(prob.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


# Every uint8 value of each channel, normalized by the very float32 arithmetic `normalize` defines: a table
# lookup gives the same numbers bit for bit, four times faster than computing them per pixel.
_NORMALIZED = np.ascontiguousarray(((np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0) - MEAN) / STD)
                                   .astype(np.float32).reshape(256, 1, 3))


def normalize(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 1x3xHxW, ImageNet-normalized: (x / 255 - MEAN) / STD."""
    x: np.ndarray
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        x = (rgb.astype(np.float32) / 255.0 - MEAN) / STD
    else:
        x = cv2.LUT(np.ascontiguousarray(rgb), _NORMALIZED)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def to_input(rgb: np.ndarray | Shrinks, box: Box, size: int = INPUT_SIZE) -> np.ndarray:
    """Photo + box -> network input tensor."""
    return normalize(warp(rgb, box, size))


def heatmap_peak(heat: np.ndarray) -> tuple[float, float]:
    """Centre of mass of a heatmap's peak region (at least half its maximum), in its own pixel frame;
    the centre of the map if it is empty. Training's validation and the pipeline read the fovea alike."""
    w = np.where(heat >= 0.5 * heat.max(), heat, 0.0)
    if w.sum() <= 0:
        return heat.shape[1] / 2.0, heat.shape[0] / 2.0
    ys, xs = np.mgrid[0:heat.shape[0], 0:heat.shape[1]]
    return float((xs * w).sum() / w.sum()) + 0.5, float((ys * w).sum() / w.sum()) + 0.5


def fovea_heatmap(x: float, y: float, size: int = INPUT_SIZE, sigma: float = FOVEA_SIGMA) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2)).astype(np.float32)
