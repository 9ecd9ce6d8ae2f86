"""Reading fundus photos from disk into RGB arrays, with messages a person understands.

Every entry point (CLI, evaluation, dataset readers, the replay camera) reads photos through
`read_rgb`, so a corrupt or truncated file fails the same way everywhere.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


class ImageError(ValueError):
    """A photo that cannot be used; the message is meant for the health worker or the operator."""


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode a JPEG/PNG/TIFF photo into an HxWx3 uint8 RGB array."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"file not found: {path}")
    if path.is_dir():
        raise ImageError(f"is a folder, not a photo: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise ImageError(f"file is empty: {path.name}")
    return decode_rgb(data.tobytes(), name=path.name)


def decode_rgb(data: bytes, name: str = "photo") -> np.ndarray:
    """Decode encoded image bytes; truncated JPEGs are refused rather than half-grey."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if _looks_truncated(data):
        raise ImageError(f"{name} is truncated (the file ends before the image does); take or copy it again")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(f"{name} is not a readable image (JPEG, PNG or TIFF expected)")
    if img.shape[0] < 64 or img.shape[1] < 64:
        raise ImageError(f"{name} is too small ({img.shape[1]}x{img.shape[0]} pixels) to be a fundus photo")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def encode_jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError("could not encode the photo as JPEG")
    return buf.tobytes()


def encode_png(img: np.ndarray) -> bytes:
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ImageError("could not encode the image as PNG")
    return buf.tobytes()


# The disc/cup mask coding (REFUGE's grey levels: 0 cup, 128 disc rim, 255 background). The unit stores
# and sends its segmentations in it as training reads its labels in it, so both ends share this one codec;
# it lives here rather than with the dataset readers because a unit carries no training code.
# Thresholds halfway between the levels absorb JPEG-ish noise and resampling.
CUP_BELOW = 64
DISC_BELOW = 192


def decode_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if mask.ndim == 3:
        mask = mask[..., 0]
    return mask < DISC_BELOW, mask < CUP_BELOW


def encode_mask(disc: np.ndarray, cup: np.ndarray) -> np.ndarray:
    """The cup counts only inside the disc: a cup pixel outside it is a segmentation slip, not a cup."""
    mask = np.full(disc.shape, 255, np.uint8)
    mask[disc] = 128
    mask[cup & disc] = 0
    return mask


def _looks_truncated(data: bytes) -> bool:
    # OpenCV decodes a JPEG cut short without complaint (grey bottom), so check the end marker.
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data[-1024:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-64:]
    return False
