"""The synthetic eye and its photograph: a numpy/OpenCV fundus renderer, for the simulated camera and
for the synthetic dataset generator (`models.synthetic`) alike.

It stands apart from the generator because the simulated camera runs on the appliance's own path
(`glaucoscreen run --simulate`, the kiosk's tests), and a unit carries no training code: nothing here
may import torch or the training side (`models.datasets`, `models.train`, `models.synthetic`).

Rendering is split in two steps, so the camera can photograph one eye frame by frame:

* `render_reflectance` builds the retina once per eye (texture, macula, disc, cup, vessels): slow,
  cached by the caller in the returned `Scene`;
* `apply_optics` photographs it (pose, focus, exposure, glare, eyelid, vignetting, sensor noise,
  display gamma): a few milliseconds per frame.

Geometry is expressed in field radii so a photo looks the same at any resolution. The camera's
circular field has a diameter of 96% of the frame's width, or of its height / 0.85 if that is
smaller: a square frame shows the whole circle on black (like REFUGE's Canon CR-2), a wide frame
crops the circle top and bottom (like Drishti-GS1).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

GAMMA = 2.0  # display gamma (Rec. 709's curve is close to a square root), applied as a fast sqrt
DEFAULT_GLAUCOMA_PREVALENCE = 0.3
# The mask's grey levels: REFUGE's coding, as `models.runtime.images.encode_mask` writes it
CUP = 0
RIM = 128
BACKGROUND = 255


@dataclass(frozen=True)
class EyeParams:
    """One eye of one synthetic patient; every later visit of it derives from these numbers.

    Positions are in field radii from the field centre (x to the viewer's right, y down); disc-relative
    sizes are fractions of the disc or of the rim left free around the cup, so a growing cup stays inside
    its disc and the vessels, texture and disc outline never move between visits.
    """

    seed: int
    laterality: str
    glaucoma: bool
    vcdr: float
    disc_radius: float
    view: str = "macula"  # "macula": posterior-pole photo (disc and fovea); "disc": disc-centred photo
    disc_position: tuple[float, float] | None = None  # None: where this view puts a disc of this laterality
    disc_ellipticity: float = 1.08  # vertical / horizontal disc radius
    disc_tilt: float = 0.0  # degrees
    fovea_distance: float = 2.5  # disc diameters, temporal to the disc centre
    fovea_drop: float = 0.2  # disc diameters below the disc centre
    cup_width: float = 1.0  # horizontal CDR / vertical CDR
    cup_shift: tuple[float, float] = (0.3, -0.2)  # fraction of the free rim: (temporal, inferior)
    notch: float = 0.0  # depth of a focal rim notch, as a fraction of the cup radius (0 = none)
    notch_angle: float = 270.0  # degrees around the cup: 90 superior, 270 inferior
    fundus_colour: tuple[float, float, float] = (0.5, 0.22, 0.13)  # linear RGB reflectance
    choroid: float = 0.3  # how visible the choroidal vessels are (tigroid fundus)
    sheen: float = 0.3  # nerve-fibre-layer reflex along the arcades, strong in young eyes
    macula_ring: float = 0.3  # annular macular reflex
    peripapillary_atrophy: float = 0.0  # size of the pale temporal crescent beside the disc

    def __post_init__(self) -> None:
        if self.laterality not in ("right", "left"):
            raise ValueError(f"laterality must be 'right' or 'left', not {self.laterality!r}")
        if self.view not in ("macula", "disc"):
            raise ValueError(f"view must be 'macula' or 'disc', not {self.view!r}")
        if not 0.05 <= self.vcdr <= 0.95:
            raise ValueError(f"vcdr must lie between 0.05 and 0.95, not {self.vcdr}")
        if not 0.03 <= self.disc_radius <= 0.4:
            raise ValueError(f"disc_radius must lie between 0.03 and 0.4 field radii, not {self.disc_radius}")
        if self.disc_position is None:
            reach = self.fovea_distance * 2 * self.disc_radius
            usual = (-self.temporal * 0.56 * reach, -self.fovea_drop * self.disc_radius) if self.view == "macula" \
                else (0.0, 0.0)
            object.__setattr__(self, "disc_position", usual)

    @property
    def temporal(self) -> float:
        """+1 where the fovea lies to the viewer's right of the disc (a left eye), -1 for a right eye."""
        return 1.0 if self.laterality == "left" else -1.0


def random_eye(seed: int, glaucoma: bool | None = None, laterality: str | None = None) -> EyeParams:
    """A plausible eye: glaucomatous ones have a large, vertically elongated cup eating the poles of the rim."""
    rng = np.random.default_rng([int(seed), 0xE7E])
    u = rng.uniform
    draw_glaucoma = bool(rng.random() < DEFAULT_GLAUCOMA_PREVALENCE)
    draw_laterality = "right" if rng.random() < 0.5 else "left"
    glaucoma = draw_glaucoma if glaucoma is None else bool(glaucoma)
    laterality = draw_laterality if laterality is None else laterality
    view = "disc" if rng.random() < 0.2 else "macula"
    disc_radius = u(0.13, 0.21) if view == "disc" else u(0.11, 0.17)
    ellipticity = u(1.03, 1.16)
    fovea_distance = u(2.2, 2.8)
    fovea_drop = u(0.0, 0.4)
    sign = -1.0 if laterality == "left" else 1.0  # the disc's side of the field
    reach = fovea_distance * 2 * disc_radius  # disc-fovea distance in field radii
    if view == "macula":
        disc_position = (sign * reach * u(0.5, 0.62), u(-0.06, 0.03) - 0.5 * fovea_drop * 2 * disc_radius)
    else:
        disc_position = (sign * u(-0.04, 0.1), u(-0.08, 0.08))
    if glaucoma:
        vcdr = u(0.6, 0.85)
        cup_width = u(0.72, 0.92)
        cup_shift = (u(-0.15, 0.25), u(-0.1, 0.6))
        has_notch = rng.random() < 0.5
        notch = u(0.08, 0.22) if has_notch else 0.0
        notch_angle = (270.0 if rng.random() < 0.7 else 90.0) + u(-25, 25)
        atrophy = u(0.2, 0.8) if rng.random() < 0.6 else 0.0
    else:
        vcdr = u(0.25, 0.55)
        cup_width = u(1.15, 1.4)  # a normal cup is horizontally oval in a vertically oval disc
        cup_shift = (u(0.05, 0.3), u(-0.3, -0.05))
        notch = 0.0
        notch_angle = 270.0 + u(-25, 25)
        atrophy = u(0.1, 0.5) if rng.random() < 0.25 else 0.0
    red = u(0.38, 0.62)
    colour = (red, red * u(0.34, 0.56), red * u(0.17, 0.36))
    return EyeParams(
        seed=int(seed), laterality=laterality, glaucoma=glaucoma, vcdr=float(vcdr), disc_radius=float(disc_radius),
        view=view, disc_position=(float(disc_position[0]), float(disc_position[1])),
        disc_ellipticity=float(ellipticity), disc_tilt=float(u(-10, 10)), fovea_distance=float(fovea_distance),
        fovea_drop=float(fovea_drop), cup_width=float(cup_width),
        cup_shift=(float(cup_shift[0]), float(cup_shift[1])), notch=float(notch), notch_angle=float(notch_angle),
        fundus_colour=(float(colour[0]), float(colour[1]), float(colour[2])), choroid=float(u(0.0, 1.0) ** 3), sheen=float(u(0.0, 1.0)),
        macula_ring=float(u(0.0, 1.0)), peripapillary_atrophy=float(atrophy),
    )


@dataclass
class Scene:
    """The retina as a perfect camera would see it, before pose, exposure and optics.

    `reflectance` covers the whole frame (also outside the field), so a shifted eye still shows
    retina; `mask` is the anatomy, not cut by the field. Arrays are read-only: one Scene serves many frames.
    """

    reflectance: np.ndarray
    mask: np.ndarray
    fovea: tuple[float, float]
    disc_center: tuple[float, float]
    field_center: tuple[float, float]
    field_radius: float
    eye: EyeParams


def field_geometry(size: tuple[int, int]) -> tuple[tuple[float, float], float]:
    """Centre and radius (pixels) of the camera's circular field in a frame of `size` = (height, width)."""
    h, w = _check_size(size)
    radius = 0.48 * min(w, h / 0.85)
    return ((w - 1) / 2.0, (h - 1) / 2.0), float(radius)


# ---------------------------------------------------------------- the retina


def render_reflectance(eye: EyeParams, size: tuple[int, int] = (512, 512)) -> Scene:
    """Build the eye's retina once (the expensive part); photograph it with `apply_optics`."""
    h, w = _check_size(size)
    (cx, cy), radius = field_geometry((h, w))
    anatomy = _Anatomy(eye, (cx, cy), radius)
    streams = np.random.SeedSequence([eye.seed, 0x5EED]).spawn(4)
    texture_rng = np.random.default_rng(streams[0])
    disc_rng = np.random.default_rng(streams[1])
    vessel_rnd = random.Random(int(streams[2].generate_state(1)[0]))

    refl = _background(eye, (h, w), radius, texture_rng)
    _darken_macula(refl, eye, anatomy)
    _nerve_fibres(refl, eye, anatomy, texture_rng)
    disc_poly = _disc_outline(eye, anatomy, disc_rng)
    cup_poly = _cup_outline(eye, anatomy, disc_poly, disc_rng, (h, w))
    mask = _mask(disc_poly, cup_poly, (h, w))
    _paint_disc(refl, eye, anatomy, disc_poly, cup_poly, disc_rng)
    vessels = _grow_vessels(vessel_rnd, anatomy, (h, w))
    _paint_vessels(refl, eye, vessels, anatomy, mask, texture_rng)
    np.clip(refl, 0.0, 1.0, out=refl)
    refl.setflags(write=False)
    mask.setflags(write=False)
    return Scene(reflectance=refl, mask=mask, fovea=anatomy.fovea_px, disc_center=anatomy.disc_px,
                 field_center=(float(cx), float(cy)), field_radius=radius, eye=eye)


class _Anatomy:
    """Where the disc and fovea lie in pixels, and the disc-fovea frame the vessels grow in."""

    def __init__(self, eye: EyeParams, center: tuple[float, float], radius: float) -> None:
        self.center = center
        self.radius = radius
        self.dd = 2.0 * eye.disc_radius  # disc diameter, field radii
        assert eye.disc_position is not None  # EyeParams.__post_init__ fills it in
        self.disc: tuple[float, float] = eye.disc_position
        self.fovea = (self.disc[0] + eye.temporal * eye.fovea_distance * self.dd,
                      self.disc[1] + eye.fovea_drop * self.dd)
        ax, ay = self.fovea[0] - self.disc[0], self.fovea[1] - self.disc[1]
        n = math.hypot(ax, ay)
        self.axis = (ax / n, ay / n)  # temporal direction along the disc-fovea line
        self.superior = (ay / n, -ax / n) if -ax / n < 0 else (-ay / n, ax / n)  # perpendicular, pointing up
        self.rv = eye.disc_radius * radius  # vertical disc radius, pixels
        self.rh = self.rv / eye.disc_ellipticity

    def px(self, x: float, y: float) -> tuple[float, float]:
        return self.center[0] + x * self.radius, self.center[1] + y * self.radius

    @property
    def disc_px(self) -> tuple[float, float]:
        x, y = self.px(*self.disc)
        return float(x), float(y)

    @property
    def fovea_px(self) -> tuple[float, float]:
        x, y = self.px(*self.fovea)
        return float(x), float(y)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-deviation noise with correlation length `sigma` pixels (made small, then enlarged)."""
    h, w = shape
    f = max(1, int(sigma / 2.5))
    small: np.ndarray = rng.standard_normal((h // f + 3, w // f + 3)).astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), max(sigma / f, 0.3))
    field: np.ndarray = cv2.resize(small, (w + 3 * f, h + 3 * f), interpolation=cv2.INTER_LINEAR)[f:f + h, f:f + w]
    field -= field.mean()
    field /= field.std() + 1e-6
    return field


def _background(eye: EyeParams, shape: tuple[int, int], radius: float, rng: np.random.Generator) -> np.ndarray:
    """Orange-red fundus: pigment drifting over the retina, choroidal vessels between pigment, fine grain."""
    h, w = shape
    colour = np.array(eye.fundus_colour, np.float32)
    broad = _smooth_noise(rng, shape, 0.25 * radius)
    tint = _smooth_noise(rng, shape, 0.3 * radius)
    # Zero crossings of a band-limited field form meandering ribbons: the choroidal vessels.
    ribbons = np.exp(-(_smooth_noise(rng, shape, 0.03 * radius) / 0.6) ** 2)
    grain = _smooth_noise(rng, shape, max(0.6, 0.002 * radius))
    refl = np.empty((h, w, 3), np.float32)
    shade = np.exp(0.14 * broad + 0.03 * grain) * (1.0 - 0.15 * eye.choroid * (1.0 - ribbons))
    refl[..., 0] = colour[0] * shade * (1.0 + 0.08 * eye.choroid * ribbons)
    refl[..., 1] = colour[1] * shade * np.exp(0.08 * tint)
    refl[..., 2] = colour[2] * shade * np.exp(0.06 * tint)
    return refl


def _grid(shape: tuple[int, int], at: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets from `at` over the whole frame."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    return xs - at[0], ys - at[1]


def _darken_macula(refl: np.ndarray, eye: EyeParams, anatomy: _Anatomy) -> None:
    """Darker, browner macula (pigment, xanthophyll eats blue) with a dark, reflex-free foveal centre."""
    dd_px = anatomy.dd * anatomy.radius
    dx, dy = _grid(refl.shape[:2], anatomy.fovea_px)
    r2 = (dx * dx + dy * dy) / (dd_px * dd_px)
    macula = np.exp(-r2 / (2 * 0.6 ** 2))
    centre = np.exp(-r2 / (2 * 0.14 ** 2))
    ring = np.exp(-((np.sqrt(r2) - 0.85) / 0.07) ** 2) * eye.macula_ring
    for c, (m, f) in enumerate(((0.30, 0.25), (0.45, 0.35), (0.50, 0.35))):
        refl[..., c] *= (1.0 - m * macula) * (1.0 - f * centre)
        refl[..., c] += 0.025 * ring * (1.0 - macula * 0.3)


def _nerve_fibres(refl: np.ndarray, eye: EyeParams, anatomy: _Anatomy, rng: np.random.Generator) -> None:
    """Fine bright streaks radiating from the disc: the nerve-fibre layer, most visible near the disc."""
    h, w = refl.shape[:2]
    reach = 4.0 * anatomy.dd * anatomy.radius
    n_r, n_a, wrap = 256, 1024, 8
    noise = rng.standard_normal((n_a, n_r)).astype(np.float32)  # rows: angle around the disc, columns: radius
    noise = np.concatenate([noise[-wrap:], noise, noise[:wrap]])  # the angle wraps round
    polar: np.ndarray = cv2.GaussianBlur(noise, (0, 0), sigmaX=6.0, sigmaY=0.8)[wrap - 1:wrap + n_a + 1]
    polar /= polar.std() + 1e-6
    dx, dy = _grid((h, w), anatomy.disc_px)
    dist, angle = cv2.cartToPolar(dx, dy)
    map_x = np.minimum(dist * (n_r / reach), n_r - 1).astype(np.float32)
    map_y = (angle * (n_a / (2 * np.pi)) + 1.0).astype(np.float32)
    streaks = cv2.remap(polar, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    near = np.exp(-dist / (0.35 * reach))
    refl *= (1.0 + (0.04 + 0.06 * eye.sheen) * streaks * near)[..., None]


def _ellipse_points(rx: float, ry: float, n: int = 360) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    r = 1.0 / np.sqrt((np.cos(t) / rx) ** 2 + (np.sin(t) / ry) ** 2)
    return t, r


def _wobble(rng: np.random.Generator, t: np.ndarray, amount: float) -> np.ndarray:
    """A gently irregular outline: the low harmonics a real disc or cup margin has."""
    out = np.ones_like(t)
    for k in (2, 3, 4, 5):
        out += amount / k * rng.normal() * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    return out


def _to_image(anatomy: _Anatomy, eye: EyeParams, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Disc-local (x temporal, y superior, pixels) -> image pixels, turned by the disc's tilt."""
    ix, iy = eye.temporal * x, -y
    a = math.radians(eye.disc_tilt)
    cx, cy = anatomy.disc_px
    return np.stack([cx + ix * math.cos(a) - iy * math.sin(a), cy + ix * math.sin(a) + iy * math.cos(a)], axis=1)


def _disc_outline(eye: EyeParams, anatomy: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    t, r = _ellipse_points(anatomy.rh, anatomy.rv)
    r = r * _wobble(rng, t, 0.03)
    return _to_image(anatomy, eye, r * np.cos(t), r * np.sin(t))


def _cup_outline(eye: EyeParams, anatomy: _Anatomy, disc_poly: np.ndarray, rng: np.random.Generator,
                 shape: tuple[int, int]) -> np.ndarray:
    """The cup's outline, scaled so the mask's vertical cup/disc extent equals `eye.vcdr` to the pixel.

    The shape (width, notch, offsets) is fixed by the eye; only its size follows vcdr, so a
    progressing cup grows in place.
    """
    hcdr = min(eye.vcdr * eye.cup_width, 0.92)
    t, r = _ellipse_points(hcdr * anatomy.rh, eye.vcdr * anatomy.rv)
    r = r * _wobble(rng, t, 0.04)
    d = np.angle(np.exp(1j * (t - math.radians(eye.notch_angle))))
    r = r * (1.0 + eye.notch * np.exp(-(d / 0.35) ** 2))
    x, y = r * np.cos(t), r * np.sin(t)
    # Exact extents first, then place the cup in the rim left free around it.
    x = x * (hcdr * anatomy.rh) / (0.5 * np.ptp(x))
    y = y * (eye.vcdr * anatomy.rv) / (0.5 * np.ptp(y))
    x -= 0.5 * (x.max() + x.min())
    y -= 0.5 * (y.max() + y.min())
    x += eye.cup_shift[0] * 0.8 * (1.0 - hcdr) * anatomy.rh
    y -= eye.cup_shift[1] * 0.8 * (1.0 - eye.vcdr) * anatomy.rv
    centre = (0.5 * (x.max() + x.min()), 0.5 * (y.max() + y.min()))
    # Rasterising moves extents by up to a pixel; rescale the cup until the mask's rows agree.
    disc = _fill(disc_poly, shape)
    want = round(eye.vcdr * _rows(disc))
    lo, hi = 0.6, 1.5
    for _ in range(18):
        mid = 0.5 * (lo + hi)
        if _rows(_fill(_scaled(anatomy, eye, x, y, centre, mid), shape) & disc) < want:
            lo = mid
        else:
            hi = mid
    return _scaled(anatomy, eye, x, y, centre, hi)


def _scaled(anatomy: _Anatomy, eye: EyeParams, x: np.ndarray, y: np.ndarray, centre: tuple[float, float],
            s: float) -> np.ndarray:
    return _to_image(anatomy, eye, centre[0] + s * (x - centre[0]), centre[1] + s * (y - centre[1]))


def _fill(poly: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    cv2.fillPoly(out, [np.round(poly * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return out


def _rows(binary: np.ndarray) -> int:
    """Vertical extent in rows, the way vCDR is read off a mask."""
    rows = np.flatnonzero(binary.any(axis=1))
    return int(rows[-1] - rows[0] + 1) if rows.size else 0


def _mask(disc_poly: np.ndarray, cup_poly: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    disc = _fill(disc_poly, shape).astype(bool)
    cup = _fill(cup_poly, shape).astype(bool) & disc
    mask = np.full(shape, BACKGROUND, np.uint8)
    mask[disc] = RIM
    mask[cup] = CUP
    return mask


def _coverage(poly: np.ndarray, box: tuple[int, int, int, int], soften: float) -> np.ndarray:
    """Anti-aliased 0..1 coverage of a polygon inside box (x0, y0, x1, y1), softened by `soften` px."""
    x0, y0, x1, y1 = box
    ss = 4
    big = np.zeros(((y1 - y0) * ss, (x1 - x0) * ss), np.uint8)
    pts = np.round((poly - [x0 - 0.5 + 0.5 / ss, y0 - 0.5 + 0.5 / ss]) * ss * 16).astype(np.int32)
    cv2.fillPoly(big, [pts], 255, lineType=cv2.LINE_8, shift=4)
    cov = cv2.resize(big, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return cv2.GaussianBlur(cov, (0, 0), soften) if soften > 0.3 else cov


def _paint_disc(refl: np.ndarray, eye: EyeParams, anatomy: _Anatomy, disc_poly: np.ndarray, cup_poly: np.ndarray,
                rng: np.random.Generator) -> None:
    """Yellow-pink rim, pale cup with lamina pores, a bright halo, and a temporal atrophy crescent."""
    h, w = refl.shape[:2]
    rv = anatomy.rv
    pad = int(rv * 1.2) + 4
    cx, cy = anatomy.disc_px
    x0, y0 = max(0, int(cx - pad * 1.6)), max(0, int(cy - pad * 1.6))
    x1, y1 = min(w, int(cx + pad * 1.6) + 1), min(h, int(cy + pad * 1.6) + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    box = (x0, y0, x1, y1)
    disc = _coverage(disc_poly, box, 0.5 + 0.02 * rv)
    cup = _coverage(cup_poly, box, 0.07 * rv) * disc
    pallor = cv2.GaussianBlur(cup, (0, 0), 0.25 * rv)
    roi = refl[y0:y1, x0:x1]
    shape = roi.shape[:2]

    if eye.peripapillary_atrophy > 0:
        d = anatomy.disc_px
        crescent = _coverage((disc_poly - d) * (1.0 + 0.2 * eye.peripapillary_atrophy) + d
                             + [eye.temporal * 0.4 * eye.peripapillary_atrophy * anatomy.rh, 0], box, 0.08 * rv)
        crescent *= 1.0 - disc
        mottle = np.clip(0.9 + 0.12 * _smooth_noise(rng, shape, max(0.6, 0.06 * rv)), 0.6, 1.1)[..., None]
        pale = np.array([0.62, 0.40, 0.26], np.float32) * mottle
        roi += (pale - roi) * (0.8 * crescent[..., None])

    # Light scattered from the bright disc into the tissue around it.
    halo = cv2.GaussianBlur(disc, (0, 0), 0.35 * rv)
    roi *= (1.0 + 0.2 * halo * (1.0 - disc))[..., None]

    speckle = _smooth_noise(rng, shape, max(0.6, 0.05 * rv))
    rim = np.array([0.95, rng.uniform(0.34, 0.46), rng.uniform(0.15, 0.24)], np.float32) * rng.uniform(0.9, 1.05)
    rim_colour = rim * (1.0 + 0.05 * speckle)[..., None]
    rim_colour += (np.array([0.95, 0.62, 0.38], np.float32) - rim) * (0.25 * pallor)[..., None]
    pores = np.clip(_smooth_noise(rng, shape, max(0.8, 0.04 * rv)) - 0.8, 0, 1)
    cup_colour = np.array([1.0, rng.uniform(0.85, 0.97), rng.uniform(0.62, 0.8)], np.float32) * rng.uniform(0.95, 1.05)
    cup_colour = cup_colour * (1.0 - 0.08 * pores)[..., None]
    roi += (rim_colour - roi) * disc[..., None]
    roi += (cup_colour - roi) * cup[..., None]


# ---------------------------------------------------------------- vessels

_STEP = 0.01  # growth step, field radii
_MIN_WIDTH = 0.003  # thinnest vessel drawn, field radii
Vessel = tuple[str, np.ndarray, np.ndarray]  # kind, Nx2 points and N widths, in field radii from the field centre


def _grow_vessels(rnd: random.Random, anatomy: _Anatomy, shape: tuple[int, int]) -> list[Vessel]:
    """Arteries and veins leave the cup, arc above and below the macula and branch as they thin.

    Vessels grow in the disc-fovea frame (u toward the fovea, v superior, field radii from the disc).
    Temporal trunks follow parabolas v^2 = p u opening from the disc (the arcades); branches drift
    onto the same family of parabolas, so they fan out around the fovea and stop short of its
    avascular zone; nasal vessels run radially.
    """
    (dx0, dy0), (ax, ay), (nx, ny) = anatomy.disc, anatomy.axis, anatomy.superior
    dd = anatomy.dd
    reach = math.hypot(anatomy.fovea[0] - dx0, anatomy.fovea[1] - dy0)
    limit2 = (math.hypot(shape[1] / 2, shape[0] / 2) / anatomy.radius + 0.05) ** 2
    faz2 = (0.3 * dd) ** 2
    exit_u = -0.075 * dd  # the vessels leave the cup a little nasal of the disc centre
    vertex = -0.2 * dd  # where the arcades' parabolas open from
    taper = math.exp(-_STEP / 1.6)
    grown: list[tuple[str, list[float], list[float], list[float]]] = []
    stack: list[tuple] = []

    def grow(u: float, v: float, ang: float, width: float, kind: str, follow: float,
             arcade: tuple[float, float] | None) -> None:
        us, vs, widths = [u], [v], [width]
        turn, travelled = 0.0, 0.0
        next_branch = rnd.uniform(0.7, 1.4) * (0.07 + 4.0 * width)  # bigger vessels branch less often
        wiggle = 0.055 if kind == "vein" else 0.038
        for _ in range(int(3.0 / _STEP)):
            if arcade is not None:
                p, side = arcade
                uu = max(u - vertex, 1e-4)
                pull = max(-1.0, min(1.0, (side * math.sqrt(p * uu) - v) * 8.0))
                target = math.atan2(side * 0.5 * math.sqrt(p / uu) + pull, 1.0)
            else:
                target = math.atan2(v, 2.0 * u if u > 0 else u)
            ang += follow * math.remainder(target - ang, 2 * math.pi)
            turn = 0.8 * turn + wiggle * (rnd.random() - 0.5)
            ang += turn
            u += _STEP * math.cos(ang)
            v += _STEP * math.sin(ang)
            width *= taper
            travelled += _STEP
            us.append(u)
            vs.append(v)
            widths.append(width)
            x, y = dx0 + u * ax + v * nx, dy0 + u * ay + v * ny
            if x * x + y * y > limit2 or (u - reach) ** 2 + v * v < faz2 or width < _MIN_WIDTH:
                break
            if travelled >= next_branch:
                child = width * rnd.uniform(0.4, 0.68)
                if child >= 1.3 * _MIN_WIDTH:
                    side = 1.0 if rnd.random() < 0.5 else -1.0
                    branch_angle = ang + side * rnd.uniform(0.55, 1.25)
                    stack.append((u, v, branch_angle, child, kind, rnd.uniform(0.02, 0.05), None))
                    ang -= side * rnd.uniform(0.05, 0.2)
                    width *= rnd.uniform(0.85, 0.95)
                    widths[-1] = width
                next_branch = travelled + rnd.uniform(0.7, 1.4) * (0.07 + 4.0 * width)
        grown.append((kind, us, vs, widths))

    for side in (1.0, -1.0):
        # Temporal arcade: at the fovea it runs about two disc diameters above (below) the raphe.
        p_vein = (rnd.uniform(1.5, 2.2) * dd) ** 2 / reach
        for kind, width, p in (("vein", 0.027, p_vein), ("artery", 0.019, p_vein * rnd.uniform(0.7, 1.35))):
            stack.append((exit_u, 0.0, side * math.radians(rnd.uniform(78, 92)), width * rnd.uniform(0.9, 1.1),
                          kind, 0.25, (p, side)))
        for kind, width in (("vein", 0.021), ("artery", 0.015)):
            stack.append((exit_u, 0.0, side * math.radians(rnd.uniform(115, 150)), width * rnd.uniform(0.85, 1.1),
                          kind, 0.06, None))
    for _ in range(rnd.randint(1, 3)):  # nasal and papillomacular twigs
        kind = "artery" if rnd.random() < 0.5 else "vein"
        phi = math.radians(rnd.uniform(160, 200) if rnd.random() < 0.5 else rnd.uniform(-30, 30))
        stack.append((exit_u, 0.0, phi, rnd.uniform(0.006, 0.01), kind, 0.03, None))
    while stack:
        grow(*stack.pop())

    vessels: list[Vessel] = []
    for kind, us, vs, widths in grown:
        u, v = np.asarray(us), np.asarray(vs)
        vessels.append((kind, np.stack([dx0 + u * ax + v * nx, dy0 + u * ay + v * ny], axis=1), np.asarray(widths)))
    return vessels


def _paint_vessels(refl: np.ndarray, eye: EyeParams, vessels: list[Vessel], anatomy: _Anatomy, mask: np.ndarray,
                   rng: np.random.Generator) -> None:
    """Draw vessels as absorbing tubes (haemoglobin eats green and blue); arteries lighter, with a central reflex."""
    h, w = shape = refl.shape[:2]
    radius = anatomy.radius
    ss = 2 if max(h, w) <= 1400 else 1  # supersample for sub-pixel widths, then average down
    maps = {k: np.zeros((h * ss, w * ss), np.uint8) for k in ("artery", "vein", "reflex")}
    for kind, pts, widths in sorted(vessels, key=lambda v: v[2][0]):
        # Supersampled pixel centres, with 2 fractional bits for polylines' sub-pixel precision.
        px = np.round(((np.asarray(anatomy.center) + pts * radius + 0.5) * ss - 0.5) * 4).astype(np.int32)
        wpx = widths * radius * ss
        thick = np.maximum(1, np.round(wpx)).astype(int)
        contrast = np.clip(0.45 + 0.55 * widths / 0.015, 0.45, 1.0)
        cuts = [0, *(np.flatnonzero(np.diff(thick)) + 1), len(px)]
        for a, b in zip(cuts[:-1], cuts[1:]):
            seg = px[max(0, a - 1):b]
            if len(seg) < 2:
                continue
            cv2.polylines(maps[kind], [seg], False, int(255 * contrast[a]), int(thick[a]), cv2.LINE_AA, shift=2)
            if widths[a] > 0.009:
                cv2.polylines(maps["reflex"], [seg], False, 255 if kind == "artery" else 110,
                              max(1, int(round(0.28 * wpx[a]))), cv2.LINE_AA, shift=2)
    cover = {}
    for k, m in maps.items():
        small = cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA) if ss > 1 else m
        cover[k] = cv2.GaussianBlur(small.astype(np.float32) / 255.0, (0, 0), 0.5)

    # Nerve-fibre sheen: a whitish haze along the big arcades, off the disc.
    along: np.ndarray = cv2.GaussianBlur(cover["vein"] + cover["artery"], (0, 0), 0.05 * radius)
    along /= along.max() + 1e-6
    streak = np.clip(0.5 + 0.5 * _smooth_noise(rng, shape, 0.02 * radius), 0, 1)
    refl += (0.05 * eye.sheen * along * streak * (mask == BACKGROUND))[..., None]

    t_vein = np.array([0.50, 0.20, 0.33], np.float32)
    t_art = np.array([0.80, 0.50, 0.62], np.float32)
    refl *= 1.0 - cover["vein"][..., None] * (1.0 - t_vein)
    refl *= 1.0 - cover["artery"][..., None] * (1.0 - t_art)
    refl *= (1.0 + 0.30 * cover["reflex"])[..., None]


# ---------------------------------------------------------------- the camera


@dataclass(frozen=True)
class _Camera:
    vignette: np.ndarray  # HxWx3 float32 illumination falloff, 0 outside the field
    aperture: np.ndarray  # HxWx3 uint8, 255 inside the field
    xs: np.ndarray  # coarse grid of pixel-block centres, in field radii from the field centre: lid and glare
    ys: np.ndarray  # are smooth, so they are computed on it and enlarged


_COARSE = 4  # pixels per coarse-grid block
# The reference camera's light falloff across its field: 1 - FALLOFF * r ** FALLOFF_POWER (r in field radii).
# Real fundus cameras fall off like this; the quality gate's thresholds and the networks were tuned on such
# photos, so a unit's calibration gives every optic module this falloff (calibration/optical.py).
FALLOFF = 0.75
FALLOFF_POWER = 2.2


@lru_cache(maxsize=8)
def _camera(h: int, w: int, cx: float, cy: float, radius: float) -> _Camera:
    """What stays fixed in the camera whatever the eye does: the field stop and the illumination falloff."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot(xs - cx, ys - cy) / radius
    edge = np.clip((1.0 - r) * radius + 0.5, 0.0, 1.0)  # one-pixel soft field stop
    vig = ((1.0 - FALLOFF * np.minimum(r, 1.0) ** FALLOFF_POWER) * edge).astype(np.float32)
    vignette = cv2.merge([vig, vig, vig])
    aperture = cv2.merge([((edge > 0) * 255).astype(np.uint8)] * 3)
    hs, ws = -(-h // _COARSE), -(-w // _COARSE)
    cys, cxs = np.mgrid[0:hs, 0:ws].astype(np.float32)
    coarse_x = ((cxs + 0.5) * (w / ws) - 0.5 - cx) / radius  # where cv2.resize puts each coarse sample
    coarse_y = ((cys + 0.5) * (h / hs) - 0.5 - cy) / radius
    for a in (vignette, aperture, coarse_x, coarse_y):
        a.setflags(write=False)
    return _Camera(vignette, aperture, coarse_x, coarse_y)


def apply_optics(scene: Scene, *, light: float = 1.0, defocus_px: float = 0.0,
                 shift: tuple[float, float] = (0.0, 0.0), glare: float = 0.0, eyelid: float = 0.0,
                 noise: float = 0.01, rng: np.random.Generator | None = None, illumination: np.ndarray | None = None,
                 dark: tuple[float, float, float] | None = None) -> np.ndarray:
    """Photograph the scene: HxWx3 uint8 RGB. Without `rng` the noise is that of seed 0 (reproducible).

    Order follows the light path: the eye moves (shift) behind a fixed field stop, the retina is
    imaged out of focus, lit with the camera's falloff and exposure, the lid shades it, the cornea
    adds its reflex, the sensor adds noise and its black level (`dark`, linear, per channel) and
    clips, and the display gamma is applied. `illumination` (HxWx3 float32, 0 outside the field)
    stands for the reference camera's falloff: one optic module's own vignetting and colour.
    """
    if light < 0:
        raise ValueError(f"light must be zero or more, not {light}")
    if defocus_px < 0:
        raise ValueError(f"defocus_px is a blur radius and cannot be negative, not {defocus_px}")
    if not 0.0 <= glare <= 1.0 or not 0.0 <= eyelid <= 1.0:
        raise ValueError(f"glare and eyelid are fractions between 0 and 1, not {glare} and {eyelid}")
    if noise < 0:
        raise ValueError(f"noise is a standard deviation and cannot be negative, not {noise}")
    rng = np.random.default_rng(0) if rng is None else rng
    h, w = scene.reflectance.shape[:2]
    cam = _camera(h, w, float(scene.field_center[0]), float(scene.field_center[1]), float(scene.field_radius))

    img = scene.reflectance
    if shift[0] or shift[1]:
        m = np.array([[1, 0, shift[0]], [0, 1, shift[1]]], np.float32)
        img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if defocus_px > 0:
        img = _defocus(img, defocus_px)
    img = cv2.multiply(img, cam.vignette if illumination is None else illumination, scale=float(light))
    if eyelid > 0:
        lid = cv2.resize(_lid_shadow(cam, eyelid), (w, h), interpolation=cv2.INTER_LINEAR)
        cv2.multiply(img, cv2.merge([lid, lid, lid]), dst=img)
    if glare > 0:
        flare = cv2.resize(_corneal_reflex(cam, glare, rng), (w, h), interpolation=cv2.INTER_LINEAR)
        cv2.scaleAdd(flare, float(light), img, dst=img)
    if noise > 0:
        bank = _noise_bank(h, w)
        oy, ox = (int(v) for v in rng.integers(0, _NOISE_PAD, 2))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        cv2.scaleAdd(bank[oy:oy + h, ox:ox + w], sign * float(noise), img, dst=img)
    if dark is not None:
        img = cv2.add(img, (float(dark[0]), float(dark[1]), float(dark[2]), 0.0))
    cv2.max(img, 0.0, dst=img)
    cv2.sqrt(img, dst=img)  # the display gamma
    photo = cv2.convertScaleAbs(img, alpha=255.0)
    return cv2.bitwise_and(photo, cam.aperture)


_NOISE_PAD = 64


@lru_cache(maxsize=2)
def _noise_bank(h: int, w: int) -> np.ndarray:
    """White Gaussian sensor noise, drawn once per frame size; each frame reads it at a random offset and sign.

    Drawing 3 x H x W normals per frame would cost more than the rest of the photo; windows of one
    larger field at different offsets are uncorrelated with each other, which is what frames need.
    """
    bank = np.random.default_rng(0x401).standard_normal((h + _NOISE_PAD, w + _NOISE_PAD, 3), dtype=np.float32)
    bank.setflags(write=False)
    return bank


def _defocus(img: np.ndarray, radius_px: float) -> np.ndarray:
    """Blur of an out-of-focus disc PSF of `radius_px`, approximated by a Gaussian (sigma = r/2), fast at any r."""
    sigma = radius_px / 2.0
    if sigma < 0.3:
        return img
    f = int(sigma / 1.5)
    if f < 2:
        return cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), math.sqrt(max(sigma ** 2 - (0.5 * f) ** 2, 0.25)) / f,
                             borderType=cv2.BORDER_REFLECT_101)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _lid_shadow(cam: _Camera, eyelid: float) -> np.ndarray:
    """Multiplier under an upper lid covering `eyelid` of the field's height; its margin sags in the middle."""
    margin = -1.0 + 2.0 * eyelid + 0.12 * eyelid * (1.0 - np.minimum(cam.xs ** 2, 1.0))
    t = np.clip((cam.ys - margin) / 0.3 + 0.5, 0.0, 1.0)  # the lid is far out of focus: a soft edge
    return (0.03 + 0.97 * t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _corneal_reflex(cam: _Camera, glare: float, rng: np.random.Generator) -> np.ndarray:
    """Light the cornea throws back: a whitish-blue blob somewhere near the middle plus a veil over the field."""
    angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.45)
    gx, gy = dist * math.cos(angle), dist * math.sin(angle)
    sigma = 0.12 + 0.16 * glare
    blob = np.exp(((cam.xs - gx) ** 2 + (cam.ys - gy) ** 2) * (-0.5 / sigma ** 2))
    veil = np.exp((cam.xs ** 2 + cam.ys ** 2) * (-0.5 / 0.8 ** 2))
    flare = (2.2 * blob + 0.18 * veil) * glare
    return (flare[..., None] * np.array([0.85, 0.95, 1.0])).astype(np.float32)


def photo_mask(scene: Scene, shift: tuple[float, float]) -> np.ndarray:
    """The annotation a grader would draw on the photo: the moved anatomy, nothing outside the field."""
    h, w = scene.mask.shape
    m = np.array([[1, 0, shift[0]], [0, 1, shift[1]]], np.float32)
    mask = cv2.warpAffine(scene.mask, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=BACKGROUND)
    cam = _camera(h, w, float(scene.field_center[0]), float(scene.field_center[1]), float(scene.field_radius))
    mask[cam.aperture[..., 0] == 0] = BACKGROUND
    return mask


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width) in pixels, not {size!r}") from None
    if h < 64 or w < 64:
        raise ValueError(f"size {h}x{w} is too small for a fundus photo (64x64 at least)")
    return h, w
