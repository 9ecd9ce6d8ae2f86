"""Seeded augmentation of a training view: one affine warp for geometry, then colour, then optionally
another camera's look.

Why one warp: the crop jitter the screening pipeline will meet (a disc centre found on a small
whole-image pass is a few pixels off, its diameter a little wrong), rotation, scale, flip and
translation compose into a single 2x3 matrix, so image, masks and fovea move together and the photo
is resampled once. Colour changes stand in for other cameras, white balance and exposure; the
optic module's own LEDs and sensors will differ from REFUGE's Canon.

Why a camera model (`Camera`, `camera_look`): the shipped networks saw only REFUGE's Canon CR-2 and
Drishti-GS1, and do not hold on other cameras. What differs between cameras is physical, so each
effect is the physical thing, applied where it happens when a photo is taken:
- optics, in linear light: defocus (the pupil's disc-shaped blur), vignetting (light falling off
  toward the field's edge), glare (a lens reflex ring and the corneal reflex);
- the sensor: its pixel grid (a 400 px phone adapter samples the retina far more coarsely than a
  4000 px camera), white balance, Poisson-Gaussian noise, or the grain of a scanned film slide;
- the camera's pipeline: in-camera sharpening, JPEG, then the screening pipeline's own resize.
The resolution effect is split for that reason: the photo is brought to the camera's pixel grid
before the sensor's noise and the JPEG blocks are made (both live on that grid), and resized back to
the network's input last. These effects are photometric: masks and fovea never change. The field of
view (30 to 60 degrees: the disc larger or smaller in the frame) and a disc near the field's edge are
geometry, so they live in the affine (`Geometry.side`, `disc_offset`, `field_stop`).

Each effect draws from its own generator, seeded from the caller's, so one photo's look is fixed by
the seed and switching one effect on or off does not change what the others draw.
"""
from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import cv2
import numpy as np

from models.runtime.preprocess import Box


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie between 0 and 1, not {value}")


def _check_range(name: str, span: tuple[float, float], low: float = 0.0) -> None:
    if len(span) != 2 or not low <= span[0] <= span[1]:
        raise ValueError(f"{name} must be [low, high] with {low} <= low <= high, not {list(span)}")


@dataclass(frozen=True)
class Geometry:
    """Ranges of the random geometry; `shift` is a fraction of the box side.

    `side` is the view's side over the nominal box's: below 1 the disc looks larger, as through a
    narrower field (30 degrees against REFUGE's 45), above 1 smaller, as through a wider one.
    `disc_offset` (with `disc_offset_probability`) moves the view so that the disc lands up to that
    many field radii (view half-sides) from the centre, as in a photo centred on the macula or aimed
    badly. `field_stop` keeps the round field of the nominal view after the zoom and the move, so a
    moved disc sits near the field's edge rather than near a cut of the frame, as in a real photo."""

    shift: float = 0.05
    side: tuple[float, float] = (0.9, 1.1)
    rotation_deg: float = 15.0
    flip: bool = True
    disc_offset: float = 0.0
    disc_offset_probability: float = 0.0
    field_stop: bool = False

    def __post_init__(self) -> None:
        _check_range("side", self.side, low=1e-3)
        _check_probability("disc_offset_probability", self.disc_offset_probability)
        if not 0.0 <= self.disc_offset <= 1.0:
            raise ValueError(f"disc_offset must lie between 0 and 1 field radii, not {self.disc_offset}")


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


def sample_affine(rng: np.random.Generator, box: Box, size: int, geometry: Geometry,
                  disc: tuple[float, float] | None = None) -> np.ndarray:
    """A 2x3 matrix from the cached image's pixels to a size x size view around a jittered `box`.

    `disc` (its centre in the cached image's pixels) is needed only for `geometry.disc_offset`; the
    draws for it come after all others, so a geometry without it draws exactly as before."""
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
    matrix = np.hstack([linear, offset[:, None]])
    if disc is not None and geometry.disc_offset_probability > 0 and rng.random() < geometry.disc_offset_probability:
        matrix = move_disc(rng, matrix, disc, size, geometry.disc_offset)
    return matrix


def move_disc(rng: np.random.Generator, matrix: np.ndarray, disc: tuple[float, float], size: int,
              reach: float) -> np.ndarray:
    """Translate the view so the disc lands up to `reach` field radii from its centre.

    A macula-centred photo has the disc about half a field radius out; a badly aimed handheld camera
    puts it near the edge. The disc goes out roughly along its own direction (within 30 degrees), which
    moves the view least and so brings the least of what lies beyond the photo into it."""
    centre = np.array([size / 2.0, size / 2.0])
    now = matrix @ np.array([disc[0], disc[1], 1.0])
    away = now - centre
    any_heading = rng.uniform(-math.pi, math.pi)
    heading = math.atan2(away[1], away[0]) if math.hypot(*away) > 1e-3 else any_heading
    heading += rng.uniform(-math.pi / 6, math.pi / 6)
    distance = rng.uniform(0.0, reach) * size / 2.0
    target = centre + distance * np.array([math.cos(heading), math.sin(heading)])
    moved = matrix.copy()
    moved[:, 2] += target - now
    return moved


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


def field_of_view(cached: np.ndarray, nominal: np.ndarray, size: int, threshold: int = 10) -> np.ndarray:
    """The photo's round field (and the frame's cut of it) where the pipeline's nominal view puts it.

    Fundus photos are black outside the field stop. The field is convex (a circle, maybe cut by the
    frame), so each row is filled between its first and last bright pixel: dark vessels, pigment or a
    dim periphery inside the field stay in it."""
    brightest = cv2.warpAffine(np.ascontiguousarray(cached.max(axis=2)), nominal, (size, size), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    bright = np.asarray(brightest > threshold)
    cols = np.arange(size)
    first = bright.argmax(axis=1)
    last = size - 1 - bright[:, ::-1].argmax(axis=1)
    rows: np.ndarray = np.any(bright, axis=1)
    return rows[:, None] & (cols >= first[:, None]) & (cols <= last[:, None])


def apply_field_stop(image: np.ndarray, mask: np.ndarray | None, fovea: tuple[float, float] | None,
                     field: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float] | None]:
    """Black outside the field, background in the mask there, and no fovea where it cannot be seen.

    Applied after a zoom or a move of the content, this is the photo another camera would take: its
    field stop stays where it is in the frame while the retina behind it is magnified or aimed
    elsewhere."""
    out = image * field[..., None].astype(image.dtype)
    out_mask = np.where(field, mask, np.uint8(255)).astype(mask.dtype) if mask is not None else None
    out_fovea = fovea
    if fovea is not None:
        x, y = int(round(fovea[0])), int(round(fovea[1]))
        inside = 0 <= y < field.shape[0] and 0 <= x < field.shape[1] and bool(field[y, x])
        out_fovea = fovea if inside else None
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


# ---------------------------------------------------------------- another camera's look

Frame = tuple[float, float, float]
"""Where the photo lies in a view: its centre (x, y) and its width, in the view's pixels. The field's
radius is taken as half the photo's width (REFUGE's square photos: the round field fills the frame)."""

EFFECTS = ("defocus", "vignetting", "glare", "reflex", "resolution", "white_balance", "noise", "film", "jpeg")
TOE = 0.04  # encoded level below which gamma 2 is taken as linear, as sRGB's toe is: noise near black stays finite


@dataclass(frozen=True)
class Camera:
    """Ranges of another camera's look. Every effect is off (probability 0) unless a config turns it on,
    so `Camera()` leaves a photo as it is. Lengths are fractions of the photo's width or of the field's
    radius, not view pixels, so one camera looks the same on the whole view and on the disc crop."""

    # optics
    defocus_probability: float = 0.0
    defocus_radius: tuple[float, float] = (0.003, 0.012)     # blur disc radius, photo widths
    vignetting_probability: float = 0.0
    vignetting_strength: tuple[float, float] = (0.15, 0.7)   # share of light lost at the field's edge
    vignetting_decentre: float = 0.15                        # falloff centre off the field's, field radii
    glare_probability: float = 0.0
    glare_strength: tuple[float, float] = (0.003, 0.02)      # peak light the lens ring adds, linear full scale
    glare_radius: tuple[float, float] = (0.5, 0.95)          # ring radius, field radii
    glare_width: tuple[float, float] = (0.02, 0.08)         # ring's half width (1 sigma), field radii
    glare_arc_deg: tuple[float, float] = (60.0, 360.0)       # how much of the ring shows
    reflex_probability: float = 0.0
    reflex_strength: tuple[float, float] = (0.1, 0.8)        # peak light of the corneal reflex, linear
    reflex_radius: tuple[float, float] = (0.01, 0.04)        # spot size (1 sigma), field radii
    reflex_reach: float = 0.35                               # farthest from the field's centre, field radii
    # sensor
    white_balance_probability: float = 0.0
    white_balance_temperature: float = 0.4                   # +- ln(red gain / blue gain), linear light
    white_balance_tint: float = 0.15                         # +- ln(green gain over red's and blue's mean)
    noise_probability: float = 0.0
    noise_shot: tuple[float, float] = (1e-4, 4e-3)           # Poisson variance per unit linear intensity
    noise_read: tuple[float, float] = (2e-4, 2e-3)           # Gaussian read noise, std in linear full scale
    film_probability: float = 0.0
    film_grain: tuple[float, float] = (0.02, 0.08)           # grain std, relative to the linear intensity
    film_grain_size: tuple[float, float] = (0.002, 0.005)    # grain clump size (1 sigma), photo widths
    # pipeline
    resolution_probability: float = 0.0
    resolution_width: tuple[float, float] = (400.0, 4000.0)  # the photo's width in pixels, log-uniform
    aliasing_probability: float = 0.5                        # a coarse photo resized without a low-pass
    sharpening: tuple[float, float] = (0.2, 1.0)             # unsharp-mask amount of a photo finer than the view
    jpeg_probability: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 95)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_probability"):
                _check_probability(f.name, value)
            elif isinstance(value, tuple):
                _check_range(f.name, value, low=1e-6 if f.name in ("noise_shot", "noise_read", "resolution_width") else 0.0)
            elif value < 0:
                raise ValueError(f"{f.name} must not be negative, not {value}")
        if self.vignetting_strength[1] >= 1.0:
            raise ValueError(f"vignetting_strength must stay below 1 (all light lost), not {list(self.vignetting_strength)}")
        if not (1 <= self.jpeg_quality[0] and self.jpeg_quality[1] <= 100):
            raise ValueError(f"jpeg_quality must lie within 1..100, not {list(self.jpeg_quality)}")


_Section = TypeVar("_Section", Geometry, Camera)


def from_config(base: _Section, section: Mapping[str, Any], what: str) -> _Section:
    """`base` with a config section's values (lists become ranges); an unknown name is refused, since a
    typo would otherwise train silently without the effect."""
    if not isinstance(section, Mapping):
        raise ValueError(f"{what} must be an object of {type(base).__name__} fields, not {section!r}")
    known = {f.name for f in fields(base)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
    return replace(base, **values)


def camera_look(rng: np.random.Generator, rgb: np.ndarray, camera: Camera, frame: Frame | None = None) -> np.ndarray:
    """The view as `camera` would have photographed it; uint8 RGB in and out, same shape.

    Order of a photo's making: optics (defocus, vignetting, glare) on the light, the sensor's pixel grid
    (resolution), the sensor (white balance, noise or film grain), the camera's pipeline (sharpening,
    JPEG), then the screening pipeline's resize back to the view. `frame` says where the photo lies in
    the view (default: the view is the whole photo)."""
    h, w = rgb.shape[:2]
    cx, cy, width = frame if frame is not None else (w / 2.0, h / 2.0, float(w))
    radius = width / 2.0
    seeds = dict(zip(EFFECTS, (int(s) for s in rng.integers(0, 2**63 - 1, size=len(EFFECTS)))))

    def fires(effect: str, probability: float) -> np.random.Generator | None:
        """The effect's own generator when it happens to this photo, else None."""
        if probability <= 0.0:
            return None
        g = np.random.default_rng(seeds[effect])
        return g if g.random() < probability else None

    x = rgb.astype(np.float32) * np.float32(1.0 / 255.0)  # encoded intensity; linear light is about its square
    if g := fires("defocus", camera.defocus_probability):
        x = defocus(x, _uniform(g, camera.defocus_radius) * width)
    if g := fires("vignetting", camera.vignetting_probability):
        centre = _scatter(g, (cx, cy), camera.vignetting_decentre * radius)
        x *= vignetting(x.shape, centre, radius, _uniform(g, camera.vignetting_strength))
    stray: list[np.ndarray] = []  # linear light reflected into the camera, added to the retina's
    if g := fires("glare", camera.glare_probability):
        stray.append(lens_ring(x.shape, (cx, cy), _uniform(g, camera.glare_radius) * radius,
                               _uniform(g, camera.glare_width) * radius, g.uniform(-math.pi, math.pi),
                               math.radians(_uniform(g, camera.glare_arc_deg)) / 2.0, _uniform(g, camera.glare_strength)))
    if g := fires("reflex", camera.reflex_probability):
        stray.append(corneal_reflex(x.shape, _scatter(g, (cx, cy), camera.reflex_reach * radius),
                                    _uniform(g, camera.reflex_radius) * radius, _uniform(g, camera.reflex_strength)))
    if stray:
        x = np.sqrt(x * x + np.sum(stray, axis=0)[..., None])

    grid_width, sharpen_by = width, 0.0  # the photo's width in the pixels being worked on
    if g := fires("resolution", camera.resolution_probability):
        photo_width = _log_uniform(g, camera.resolution_width)
        if photo_width < width:
            x = sensor_grid(x, photo_width / width, aliased=g.random() < camera.aliasing_probability)
            grid_width = photo_width
        else:
            sharpen_by = _uniform(g, camera.sharpening)
    if g := fires("white_balance", camera.white_balance_probability):
        x = white_balance(x, g.uniform(-1, 1) * camera.white_balance_temperature,
                          g.uniform(-1, 1) * camera.white_balance_tint)
    if g := fires("noise", camera.noise_probability):
        x = sensor_noise(g, x, _log_uniform(g, camera.noise_shot), _log_uniform(g, camera.noise_read))
    if g := fires("film", camera.film_probability):
        x = film_grain(g, x, _uniform(g, camera.film_grain), _uniform(g, camera.film_grain_size) * grid_width)
    if sharpen_by > 0.0:
        x = sharpen(x, sharpen_by)
    out = np.rint(np.clip(x, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)
    if g := fires("jpeg", camera.jpeg_probability):
        out = jpeg(out, int(g.integers(camera.jpeg_quality[0], camera.jpeg_quality[1] + 1)))
    if out.shape[:2] != (h, w):
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)  # as `preprocess.warp` enlarges a small photo
    return out


def _uniform(g: np.random.Generator, span: tuple[float, float]) -> float:
    return float(g.uniform(span[0], span[1]))


def _log_uniform(g: np.random.Generator, span: tuple[float, float]) -> float:
    return float(math.exp(g.uniform(math.log(span[0]), math.log(span[1]))))


def _scatter(g: np.random.Generator, centre: tuple[float, float], reach: float) -> tuple[float, float]:
    """A point uniformly within `reach` of `centre` (by area)."""
    distance, heading = reach * math.sqrt(g.random()), g.uniform(-math.pi, math.pi)
    return centre[0] + distance * math.cos(heading), centre[1] + distance * math.sin(heading)


def _offsets(shape: tuple[int, ...], centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every pixel from `centre`, as a row and a column (they broadcast to the image)."""
    dx = np.arange(shape[1], dtype=np.float32) - np.float32(centre[0])
    dy = np.arange(shape[0], dtype=np.float32) - np.float32(centre[1])
    return dx[None, :], dy[:, None]


def pillbox(radius: float) -> np.ndarray:
    """A disc of `radius` pixels with an anti-aliased rim, summing to 1: the image of a point when the
    retina is out of focus is the camera's (round) aperture, not a Gaussian."""
    half = int(math.ceil(radius))
    d = np.arange(-half, half + 1, dtype=np.float32)
    kernel = np.clip(np.float32(radius + 0.5) - np.sqrt(d[None, :] ** 2 + d[:, None] ** 2), 0.0, 1.0)
    return kernel / kernel.sum()


def defocus(x: np.ndarray, radius: float, finest: float = 4.0) -> np.ndarray:
    """An eye out of the camera's focus (ametropia, a phone adapter hunting): blur by the aperture's disc.

    In linear light, so a bright reflex spreads as a bright disc. A blur wider than `finest` pixels is
    done on a grid shrunk by the same factor (it has no detail left to lose), which keeps it fast."""
    if radius < 0.5:
        return x
    linear = x * x
    h, w = x.shape[:2]
    step = max(1, int(math.ceil(radius / finest)))  # kernels past 11 px go through a DFT, 10x slower
    if step > 1:
        small = cv2.resize(linear, (max(1, w // step), max(1, h // step)), interpolation=cv2.INTER_AREA)
        small = cv2.filter2D(small, -1, pillbox(radius / step), borderType=cv2.BORDER_REFLECT)
        blurred = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        blurred = cv2.filter2D(linear, -1, pillbox(radius), borderType=cv2.BORDER_REFLECT)
    return np.sqrt(np.maximum(blurred, 0.0))


def vignetting(shape: tuple[int, ...], centre: tuple[float, float], field_radius: float, strength: float) -> np.ndarray:
    """Gain of the falloff toward the field's edge (small pupils, phone adapters, cheap optics).

    The cos^4 law of an off-axis ray, 1 / (1 + (r/f)^2)^2 in linear light, with f set so the field's
    edge keeps 1 - `strength` of its light; returned as the gain on encoded (gamma 2) values, its root."""
    f2 = field_radius ** 2 / ((1.0 - strength) ** -0.5 - 1.0) if strength > 0 else math.inf
    dx, dy = _offsets(shape, centre)
    return (1.0 / (1.0 + (dx * dx + dy * dy) / np.float32(f2)))[..., None]


def lens_ring(shape: tuple[int, ...], centre: tuple[float, float], ring_radius: float, width: float, heading: float,
              half_arc: float, peak: float) -> np.ndarray:
    """Linear light of a faint bright ring or arc: a reflection off a lens surface of the camera, centred
    on the optical axis, often showing as part of a ring only."""
    dx, dy = _offsets(shape, centre)
    r = np.sqrt(dx * dx + dy * dy)
    light = np.float32(peak) * np.exp(np.float32(-0.5) * ((r - np.float32(ring_radius)) / np.float32(max(width, 1e-3))) ** 2)
    if half_arc < math.pi:
        toward = (dx * np.float32(math.cos(heading)) + dy * np.float32(math.sin(heading))) / np.maximum(r, np.float32(1e-3))
        edge = math.cos(half_arc)
        light *= np.clip((toward - np.float32(edge)) / np.float32(1.0 - edge), 0.0, 1.0)
    return light


def corneal_reflex(shape: tuple[int, ...], centre: tuple[float, float], radius: float, peak: float) -> np.ndarray:
    """Linear light of the small bright spot the flash leaves when it reflects off the cornea (a camera
    slightly off the pupil's axis)."""
    dx, dy = _offsets(shape, centre)
    return np.float32(peak) * np.exp((dx * dx + dy * dy) * np.float32(-0.5 / max(radius, 0.5) ** 2))


def sensor_grid(x: np.ndarray, scale: float, aliased: bool) -> np.ndarray:
    """The view on the pixel grid of a camera coarser than the view (a 400 px phone adapter): averaged
    like a sensor with an anti-aliasing filter, or point-sampled (aliasing) like one without it or a
    pipeline that shrinks without a low-pass."""
    h, w = x.shape[:2]
    size = (max(8, int(round(w * scale))), max(8, int(round(h * scale))))
    return cv2.resize(x, size, interpolation=cv2.INTER_LINEAR if aliased else cv2.INTER_AREA)


def white_balance(x: np.ndarray, temperature: float, tint: float) -> np.ndarray:
    """Another illuminant or the camera's white balance: per-channel gains in linear light along the
    blue-amber axis (`temperature` = ln red/blue gain) and the green-magenta axis (`tint`), their
    geometric mean 1 so the exposure stays."""
    log_gain = np.array([temperature / 2.0, tint, -temperature / 2.0])
    log_gain -= log_gain.mean()
    return x * np.exp(log_gain / 2.0).astype(np.float32)  # encoded values scale by the root of a linear gain


@functools.cache
def _normal_quantiles() -> np.ndarray:
    inv = statistics.NormalDist().inv_cdf
    return np.array([inv((i + 0.5) / 65536) for i in range(65536)], np.float32)


def standard_normal(g: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Normal deviates as the normal quantiles of 16-bit uniforms: within 1/65536 of a normal in
    probability, and a third of the ziggurat's time, which is most of what noise costs."""
    return np.take(_normal_quantiles(), g.integers(0, 65536, size=shape, dtype=np.uint16))


def sensor_noise(g: np.random.Generator, x: np.ndarray, shot: float, read: float) -> np.ndarray:
    """Poisson-Gaussian sensor noise: variance `shot` x intensity + `read`^2 in linear light (photon and
    read noise of a small or high-gain sensor), carried to encoded values by the curve's slope."""
    std = x * x
    std *= np.float32(shot)
    std += np.float32(read * read)
    np.sqrt(std, out=std)
    std /= np.maximum(x, np.float32(TOE))
    std *= np.float32(0.5)  # slope of the encoding, 1 / (2 sqrt(linear)), held below black's toe
    noise: np.ndarray = standard_normal(g, x.shape)
    noise *= std
    noise += x
    return noise


# the three dye layers' grain: each its own plus half of the other two's, so they correlate about 0.8
_LAYERS = (0.5 * np.eye(3) + 0.5 * np.ones((3, 3))) / math.sqrt(0.25 + 0.5 + 0.75)


def film_grain(g: np.random.Generator, x: np.ndarray, strength: float, grain_px: float) -> np.ndarray:
    """The grain of a scanned film slide: multiplicative in linear light, in clumps of about `grain_px`
    (1 sigma), mostly shared by the three dye layers, and fading toward the highlights, where a slide
    is clear film with little dye to be grainy."""
    grain: np.ndarray = standard_normal(g, x.shape)
    spread = 1.0
    if grain_px >= 0.3:
        kernel = cv2.getGaussianKernel(2 * int(math.ceil(3 * grain_px)) + 1, grain_px, cv2.CV_32F)
        grain = cv2.sepFilter2D(grain, -1, kernel, kernel, borderType=cv2.BORDER_REFLECT)
        spread = float((kernel.astype(np.float64) ** 2).sum())  # the blurred white noise's std, exactly
    layered = cv2.transform(grain, (_LAYERS * (strength / spread)).astype(np.float32))
    layered *= np.float32(1.0) - x * x  # the dye's share
    return x * np.sqrt(np.maximum(layered + np.float32(1.0), np.float32(0.0)))


def sharpen(x: np.ndarray, amount: float) -> np.ndarray:
    """The in-camera unsharp mask of a fine (high-resolution, often phone) photo: crisp edges with a
    slight halo, and its fine noise lifted with them."""
    return x + np.float32(amount) * (x - cv2.GaussianBlur(x, (0, 0), 1.0))


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """The camera's or the clinic system's JPEG at `quality`: 8x8 blocks, ringing and chroma subsampling."""
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR) if ok else None
    if decoded is None:
        raise RuntimeError(f"JPEG at quality {quality} did not encode and decode")
    return np.ascontiguousarray(decoded[..., ::-1])
