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


def _looks_truncated(data: bytes) -> bool:
    # OpenCV decodes a JPEG cut short without complaint (grey bottom), so check the end marker.
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data[-1024:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-64:]
    return False
