"""Reading fundus photos from disk into RGB arrays, with messages a person understands.

Every entry point (CLI, evaluation, dataset readers, the replay camera) reads photos through
`read_rgb` / `read_photo`, so a corrupt, truncated, oversized or odd file fails the same way everywhere.

A photo is taken in once, at the door, and what comes out is what the rest of the unit uses:
- only a regular file is opened (a folder, a named pipe, a device or a socket is named as such and
  never read, so a FIFO cannot hang the command and /dev/zero is not "an empty file");
- the header is read first (Pillow's lazy `Image.open`: size and colour model, no pixels) and a
  photo over `max_pixels` is refused before a byte of it is decoded;
- the pixels are decoded once by OpenCV into upright (EXIF orientation applied), 8-bit, 3-channel
  RGB, whatever the file held (CMYK JPEG, 16-bit or greyscale PNG, RGBA, a palette...);
- `archived_jpeg` gives what the visit log stores: the file's own JPEG byte for byte where it shows
  exactly those pixels (8-bit greyscale or colour, upright: `Photo.original`), else those pixels
  encoded as a JPEG. So what is stored is what was screened, and every stored photo can become DICOM.
"""
from __future__ import annotations

import io
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

# The most pixels a photo may have, by default: four 12 MP phone photos' worth, twice the largest fundus
# camera's sensor (~24 MP). A 50 MP photo decodes to 150 MB of RGB; the unit's config may set its own
# bound (`max_photo_pixels`).
MAX_PIXELS = 50_000_000
# An uncompressed 16-bit RGBA photo takes 8 bytes a pixel; metadata (EXIF, ICC profiles, thumbnails) the rest.
_BYTES_PER_PIXEL_AT_MOST = 8
_METADATA_SLACK = 64 * 2**20
_ORIENTATION = 0x0112  # EXIF tag: 1 upright, 2..8 mirrored and/or turned


class ImageError(ValueError):
    """A photo that cannot be used; the message is meant for the health worker or the operator."""


@dataclass(frozen=True, eq=False)
class Photo:
    """A photo as the unit uses it: `rgb` is upright HxWx3 uint8; `original` is the file's own bytes where
    they are a JPEG that decodes to exactly `rgb` (8-bit, greyscale or colour, upright), else None."""

    rgb: np.ndarray
    original: bytes | None = None


@dataclass(frozen=True)
class _Header:
    format: str
    mode: str
    width: int
    height: int
    bits: int | None
    orientation: int | None


def read_rgb(path: str | Path, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decode a JPEG/PNG/TIFF photo into an HxWx3 uint8 RGB array."""
    return read_photo(path, max_pixels=max_pixels).rgb


def read_photo(path: str | Path, *, max_pixels: int | None = MAX_PIXELS) -> Photo:
    """Read a photo file once: regular files only, the header checked before anything is decoded."""
    path = Path(path)
    with _open_regular_file(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ImageError(f"file is empty: {path.name}")
        head = f.read(8)
        f.seek(max(0, size - 1024))
        if _looks_truncated(head, f.read(1024)):
            raise ImageError(_truncated(path.name))
        f.seek(0)
        header = _read_header(f, path.name, max_pixels)  # reads the header only: no pixels yet
        limit = _max_file_bytes(max_pixels)
        if limit is not None and size > limit:
            raise ImageError(f"{path.name} is too large to be a photo ({size / 2**20:.0f} MB for "
                             f"{header.width}x{header.height} pixels)")
        f.seek(0)
        data = f.read() if limit is None else f.read(limit + 1)
    return _decode(data, path.name, header)


def decode_rgb(data: bytes, name: str = "photo", *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes; truncated JPEGs are refused rather than half-grey."""
    return decode_photo(data, name, max_pixels=max_pixels).rgb


def decode_photo(data: bytes, name: str = "photo", *, max_pixels: int | None = MAX_PIXELS) -> Photo:
    """`read_photo` for bytes already in memory."""
    data = bytes(data)
    if not data:
        raise ImageError(f"{name} is empty")
    if _looks_truncated(data[:8], data[-1024:]):
        raise ImageError(_truncated(name))
    return _decode(data, name, _read_header(io.BytesIO(data), name, max_pixels))


def archived_jpeg(rgb: np.ndarray, original: bytes | None = None) -> bytes:
    """`original` where it is a JPEG that shows exactly `rgb` (8-bit greyscale or colour, upright, the
    same size), else `rgb` as a fine JPEG: what the visit log stores for a screened photo."""
    if original is not None:
        try:
            header = _read_header(io.BytesIO(original), "photo", None)
        except ImageError:
            header = None
        if header is not None and _keeps_as_is(header, rgb):
            return bytes(original)
    return encode_jpeg(rgb, quality=95)


def _decode(data: bytes, name: str, header: _Header) -> Photo:
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)  # upright, 8-bit, BGR
    if img is None:
        raise ImageError(f"{name} is not a readable image (JPEG, PNG or TIFF expected)")
    if img.shape[0] < 64 or img.shape[1] < 64:
        raise ImageError(f"{name} is too small ({img.shape[1]}x{img.shape[0]} pixels) to be a fundus photo")
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return Photo(rgb, data if _keeps_as_is(header, rgb) else None)


def _keeps_as_is(header: _Header, rgb: np.ndarray) -> bool:
    """A JPEG the DICOM photo can carry as it is and that decodes to `rgb` itself: 8-bit, one or three
    channels (not CMYK), upright (no EXIF turn, which a PACS would not apply), the same size."""
    return (header.format == "JPEG" and header.mode in ("L", "RGB") and header.bits == 8
            and header.orientation in (None, 0, 1) and (header.height, header.width) == rgb.shape[:2])


def _read_header(fp, name: str, max_pixels: int | None) -> _Header:
    """Format, colour model and size from the header alone (Pillow decodes no pixels in `open`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the bound is checked below
            with Image.open(fp) as im:
                width, height = im.size
                header = _Header(str(im.format), im.mode, width, height, getattr(im, "bits", None),
                                 _orientation(im))
    except Image.DecompressionBombError as exc:
        # Pillow's own bound (179 million pixels) is far above any photo's; its message gives the count
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageError(_too_large(name, None, int(found.group(1)) if found else None, max_pixels)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name} is not a readable image (JPEG, PNG or TIFF expected)") from exc
    if width <= 0 or height <= 0:
        raise ImageError(f"{name} is not a readable image (its header gives no size)")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(_too_large(name, (width, height), width * height, max_pixels))
    return header


def _orientation(im: Image.Image) -> int | None:
    if im.format != "JPEG":
        return None
    try:
        value = im.getexif().get(_ORIENTATION)
    except (OSError, ValueError, SyntaxError):  # damaged EXIF: OpenCV ignores it too
        return None
    return value if isinstance(value, int) else None


def _too_large(name: str, size: tuple[int, int] | None, pixels: int | None, max_pixels: int | None) -> str:
    what = f"{size[0]}x{size[1]} pixels, " if size else ""
    what += f"{pixels / 1e6:.0f} megapixels" if pixels else "far more pixels than a photo has"
    limit = f"; at most {max_pixels / 1e6:g} megapixels are read" if max_pixels else ""
    return f"{name} is too large to screen ({what}{limit}). Use the camera's own photo size, or shrink the photo first"


def _max_file_bytes(max_pixels: int | None) -> int | None:
    return None if max_pixels is None else max_pixels * _BYTES_PER_PIXEL_AT_MOST + _METADATA_SLACK


def _truncated(name: str) -> str:
    return f"{name} is truncated (the file ends before the image does); take or copy it again"


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device (a disk)"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str | None:
    """What a path that is not a regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((words for test, words in _KINDS if test(mode)), "not a regular file")


def _not_a_photo(path: Path, kind: str) -> ImageError:
    if kind == "a folder":
        return ImageError(f"is a folder, not a photo: {path}")
    if path.is_symlink():
        return ImageError(f"{path} leads to {os.path.realpath(path)}, {kind}, not a photo file")
    return ImageError(f"{path} is {kind}, not a photo file")


def _open_regular_file(path: Path) -> io.BufferedReader:
    """The file opened for reading, if it is a regular file (a link to one is fine). Checked before it is
    opened (opening a FIFO waits for a writer; a device may do anything) and again on what was opened."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(f"file not found: {path}") from None
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None
    kind = _kind(st.st_mode)
    if kind is not None:
        raise _not_a_photo(path, kind)
    try:
        # O_NONBLOCK: should the path have become a FIFO since, opening it does not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageError(f"file not found: {path}") from None
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None
    f = os.fdopen(fd, "rb")
    kind = _kind(os.fstat(fd).st_mode)
    if kind is not None:
        f.close()
        raise _not_a_photo(path, kind)
    return f


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


def _looks_truncated(head: bytes, tail: bytes) -> bool:
    """From a file's first 8 and last 1024 bytes. OpenCV decodes a JPEG cut short without complaint
    (grey bottom), so check the end marker."""
    if head[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in tail
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in tail[-64:]
    return False
