"""The one definition of how a photo becomes network input, shared by training, INT8 calibration
and the screening pipeline. If these drift apart, INT8 calibration and accuracy silently degrade.

Geometry: the segmentation network sees a square `INPUT_SIZE` image. Pass 1 sees the whole photo
(letterboxed to a square) to find the disc; pass 2 sees a square crop centred on the disc whose side
is `CROP_DISC_RATIO` disc diameters, so the cup is segmented at a useful resolution whatever the
camera's resolution.
"""
from __future__ import annotations

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


def whole_image_box(shape: tuple[int, ...]) -> Box:
    """Square box covering the whole photo, centred (letterbox)."""
    h, w = shape[:2]
    side = float(max(h, w))
    return Box((w - side) / 2.0, (h - side) / 2.0, side)


def disc_crop_box(cx: float, cy: float, disc_diameter: float, shape: tuple[int, ...]) -> Box:
    """Square box centred on the disc, `CROP_DISC_RATIO` disc diameters wide, kept to a sane size."""
    h, w = shape[:2]
    short = float(min(h, w))
    side = float(np.clip(CROP_DISC_RATIO * disc_diameter, 0.12 * short, 0.8 * short))
    return Box(cx - side / 2.0, cy - side / 2.0, side)


def warp(img: np.ndarray, box: Box, size: int = INPUT_SIZE, interp: int | None = None, border: int = 0) -> np.ndarray:
    """Resample `box` of `img` to size x size (area filter when shrinking, so no aliasing)."""
    s = size / box.side
    m = np.array([[s, 0, -box.x0 * s], [0, s, -box.y0 * s]], dtype=np.float64)
    if interp is None:
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    if interp == cv2.INTER_AREA:
        # warpAffine has no area filter: pre-shrink with resize, then warp the rest.
        f = max(1, int(1 / s))
        if f > 1:
            small = cv2.resize(img, (max(1, img.shape[1] // f), max(1, img.shape[0] // f)), interpolation=cv2.INTER_AREA)
            m = m.copy()
            m[:, :2] *= f
            img = small
        interp = cv2.INTER_LINEAR
    return cv2.warpAffine(img, m, (size, size), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def unwarp(prob: np.ndarray, box: Box, shape: tuple[int, ...]) -> np.ndarray:
    """Map an INPUT_SIZE probability map back onto the source photo's pixel grid."""
    h, w = shape[:2]
    size = prob.shape[0]
    s = size / box.side
    m = np.array([[s, 0, -box.x0 * s], [0, s, -box.y0 * s]], dtype=np.float64)
    return cv2.warpAffine(prob.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def normalize(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 1x3xHxW, ImageNet-normalized."""
    x = (rgb.astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def to_input(rgb: np.ndarray, box: Box, size: int = INPUT_SIZE) -> np.ndarray:
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
