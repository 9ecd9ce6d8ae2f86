"""Seeded augmentation of a training view: one affine warp for geometry, then colour.

Why one warp: the crop jitter the screening pipeline will meet (a disc centre found on a small
whole-image pass is a few pixels off, its diameter a little wrong), rotation, scale, flip and
translation compose into a single 2x3 matrix, so image, masks and fovea move together and the photo
is resampled once. Colour changes stand in for other cameras, white balance and exposure; the
optic module's own LEDs and sensors will differ from REFUGE's Canon.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models.runtime.preprocess import Box


@dataclass(frozen=True)
class Geometry:
    """Ranges of the random geometry; `shift` is a fraction of the box side."""

    shift: float = 0.05
    side: tuple[float, float] = (0.9, 1.1)
    rotation_deg: float = 15.0
    flip: bool = True


@dataclass(frozen=True)
class Colour:
    brightness: float = 0.15      # multiplicative, +-
    contrast: float = 0.2         # +-
    white_balance: float = 0.1    # per-channel gain, +-
    saturation: float = 0.2       # +-
    gamma: tuple[float, float] = (0.75, 1.35)
    blur_probability: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    noise_sigma: float = 3.0      # grey levels


def sample_affine(rng: np.random.Generator, box: Box, size: int, geometry: Geometry) -> np.ndarray:
    """A 2x3 matrix from the cached image's pixels to a size x size view around a jittered `box`."""
    cx = box.x0 + box.side / 2 + rng.uniform(-1, 1) * geometry.shift * box.side
    cy = box.y0 + box.side / 2 + rng.uniform(-1, 1) * geometry.shift * box.side
    side = box.side * np.exp(rng.uniform(np.log(geometry.side[0]), np.log(geometry.side[1])))
    angle = np.deg2rad(rng.uniform(-geometry.rotation_deg, geometry.rotation_deg))
    flip = -1.0 if geometry.flip and rng.random() < 0.5 else 1.0
    s = size / side
    c, si = np.cos(angle) * s, np.sin(angle) * s
    linear = np.array([[c * flip, -si], [si * flip, c]])
    # Mirror the x axis first (flip), then rotate and scale around the jittered centre.
    offset = np.array([size / 2.0, size / 2.0]) - linear @ np.array([cx, cy])
    return np.hstack([linear, offset[:, None]])


def box_affine(box: Box, size: int) -> np.ndarray:
    """The matrix of `preprocess.warp` for a box, without randomness (validation views)."""
    s = size / box.side
    return np.array([[s, 0, -box.x0 * s], [0, s, -box.y0 * s]], dtype=np.float64)


def apply_affine(image: np.ndarray, mask: np.ndarray | None, fovea: tuple[float, float] | None,
                 matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float] | None]:
    """Warp image (black border), REFUGE-coded mask (background border) and fovea point alike."""
    out = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)
    out_mask = None
    if mask is not None:
        out_mask = cv2.warpAffine(mask, matrix, (size, size), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=255)
    out_fovea = None
    if fovea is not None:
        x, y = matrix @ np.array([fovea[0], fovea[1], 1.0])
        out_fovea = (float(x), float(y))
    return out, out_mask, out_fovea


def recolour(rng: np.random.Generator, rgb: np.ndarray, colour: Colour) -> np.ndarray:
    """Exposure, gamma, white balance, contrast, saturation, blur and sensor noise; uint8 in and out."""
    x = rgb.astype(np.float32) / 255.0
    x = x * (1.0 + rng.uniform(-colour.brightness, colour.brightness))
    x = x * (1.0 + rng.uniform(-colour.white_balance, colour.white_balance, size=3)).astype(np.float32)
    x = np.clip(x, 0.0, 1.0) ** rng.uniform(*colour.gamma)
    mean = x.mean(axis=(0, 1), keepdims=True)
    x = mean + (x - mean) * (1.0 + rng.uniform(-colour.contrast, colour.contrast))
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * (1.0 + rng.uniform(-colour.saturation, colour.saturation))
    if rng.random() < colour.blur_probability:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(*colour.blur_sigma))
    x = x * 255.0 + rng.normal(0.0, colour.noise_sigma, size=x.shape).astype(np.float32)
    return np.clip(x, 0, 255).astype(np.uint8)
