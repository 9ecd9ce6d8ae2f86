"""The quality gate: is this frame a gradable fundus photo, and if not, what should the health worker do?

It runs on every preview frame (the capture loop waits for it) and once on the captured still. The
field is found on a copy shrunk to `WORK_WIDTH` pixels; every other measure is taken on the field
itself, cut out and resampled to `FIELD_PX` across. So a 400 px phone photo, a 640x480 preview, a
3504 px clinic photo and a field that fills a third of its frame all show a vessel, a disc and a
blur of a given share of the retina at one pixel scale, and one set of thresholds serves them all.

How each measure is made, and why that way:

* field: the camera's field stop shows the retina as a bright circle on a dark surround, often cut
  off at the top and bottom of the frame. The circle most of the lit area's edge lies on (found by
  sampling, so an eyelid's ragged shadow, a notch in the stop or a date stamp does not pull it)
  gives the field's centre and radius; everything else is measured inside it, away from its edge
  where every camera's light falls off. The surround must be dark against the field, not black (a
  scanned slide's film base, a grey mask). No such circle, or no red inside it, is "no_fundus":
  rooms, paper, noise and black frames.
* brightness: mean luminance inside the field, what the illumination controller steers on. "Too
  dark" is decided on the brightest channel instead (the red, in a fundus): its mean (exposure) and
  its 99th percentile (highlight, usually the disc). A deeply pigmented fundus reflects little green,
  so its luminance is low while its disc is well exposed; an under-exposed frame is dim everywhere.
* focus: how much the strongest edges lose when smoothed a little more. Edge strength at smoothing
  1 px against 2 px is independent of contrast and exposure; a sharp edge loses half, an already
  blurred one almost nothing. Rescaled to 0 (blurred) .. 1 (sharp). Read twice, on the whole field
  and on the vessels without the disc (whose rim is a soft slope that dominates film and pale-disc
  photos), and the sharper reading counts: a blur softens both.
* over-exposure: lost detail. Many cameras run the red channel to its limit over a well-exposed
  retina; a frame is too bright when the retina is, or when beside a clipped channel the green has
  run out too where the disc is palest, the part a glaucoma grader needs.
* uniformity: the darker half of the field against the opposite half, over eight directions: an
  eyelid, lashes or a misaligned pupil shade one side, while the camera's own falloff is symmetric.
* glare: the corneal reflex adds white light, so it is white-blue, a colour the red retina only
  has on a pale disc, which is a small part of the field. Over-exposure is judged on the rest of the
  retina, so a reflex is reported as a reflex and a bright retina as too bright.
* disc: the brightest blob of about a disc's size (difference of two local means inside the field),
  looked for away from the field's rim first, where lens reflexes and haze gather.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import cv2
import numpy as np

from device.screening.wording import N_
from models.runtime.preprocess import Shrinks

WORK_WIDTH = 320  # width of the copy the field is found on (its height, for a portrait frame)
FIELD_PX = 256  # the field's diameter in the view every other measure is taken on
WORK_SPARE = 1.5  # the working copy is resampled from a halving at least this many times its size
FIELD_VIEW_SPARE = 3  # the field's view is resampled from a halving at least this many times its size
MIN_FIELD_VISIBLE = 0.6  # share of the field's circle inside the frame below which the frame cuts it: real >= 0.80; moved out <= 0.37
MAX_GREY_COLOURFULNESS = 0.02  # channel spread / brightness at or below which a photo is black-and-white
MIN_FIELD_DIAMETER_PX = 200  # a field fewer pixels across than this shows too little of a disc to grade
INNER = 0.9  # measures are taken inside this fraction of the field radius
CLIP_LEVEL = 250  # a channel at or above this has run out of range
FIELD_EDGE_LEVELS = (0.06, 0.25)  # of the way from black to the frame's bright end: where the field's edge is looked for
OUTSIDE_LEVEL = 0.4  # of the field's median above black: brighter than this beyond the field stop is a scene
DISC_GUARD = 0.2  # field radii around the disc left out of the focus measure (a disc is ~0.1 across)
DISC_REACH = 0.85  # field radii: a disc centred further out is cut by the field's edge (real discs lie within 0.8)

# Most important first: the first reason is the one instruction the worker sees. Recorded in English, shown in the
# worker's language (device/screening/wording.py).
CODES = ("no_fundus", "grey_photo", "field_too_small", "too_dark", "too_bright", "glare", "uneven_light", "out_of_focus",
         "no_disc", "disc_off_centre")
MESSAGES = {
    "no_fundus": N_("No retina in view - bring the camera close to the eye and aim at the pupil"),
    "grey_photo": N_("Black-and-white (red-free) photo - set the camera to colour; the screening needs a colour photo"),
    "field_too_small": N_("Only part of the retina is in view - move the camera closer and centre it on the pupil"),
    "too_dark": N_("Too dark - the light is being turned up; keep the eye open"),
    "too_bright": N_("Too bright - the light is being turned down; hold steady"),
    "uneven_light": N_("Shaded on one side - ask the patient to open the eye wide, then centre the camera on the pupil"),
    "glare": N_("Bright reflection - move the camera slightly back or sideways until the white spot goes"),
    "out_of_focus": N_("Blurred - hold still while the focus settles; ask the patient not to move"),
    "no_disc": N_("Optic disc not seen - ask the patient to look at the fixation light"),
    "disc_off_centre": N_("Optic disc not in the middle - ask the patient to look at the fixation light, then re-centre"),
}


@dataclass(frozen=True)
class Reason:
    code: str
    message: str

    @classmethod
    def of(cls, code: str) -> "Reason":
        return cls(code, MESSAGES[code])


# what is said of a threshold out of its range, after the setting's name (the kiosk's settings page shows it in the
# administrator's language, device/kiosk/wording.py)
SETTING_RANGE = N_("must lie between {low} and {high}, not {value}")
SETTING_RADII = N_("is in field radii, between {low} and {high}, not {value}")


@dataclass
class QualitySettings:
    """Every threshold of the gate, in one place (the unit's config can override each by name).

    Tuned on all 666 real photos in the shared data, five cameras (REFUGE's Canon CR-2, Drishti-GS1,
    and other-cameras' DRIVE, STARE and DRIONS-DB scanned slides), and on copies of them spoiled one
    way each: the comments give the range the real photos span ("real") and where the spoiled copies
    land. Fractions are of the field's area unless said otherwise.
    """

    min_field_fraction: float = 0.35  # of the frame covered by the field: real 0.72..0.87; moved mostly out <= 0.29
    min_focus: float = 0.31  # edge sharpness 0..1: real >= 0.33 on every camera but two (0.26, 0.28); blur of 1% of the field's width <= 0.30
    min_exposure: float = 0.18  # mean of the brightest channel 0..1: real >= 0.19 (one photo 0.15)
    min_highlight: float = 0.5  # its 99th percentile 0..1: real >= 0.55 (the same photo 0.42); 35% light <= 0.35
    max_brightness: float = 0.75  # mean luminance of the retina 0..1: real <= 0.58
    # A channel at its limit over this much of the retina: REFUGE/Drishti <= 0.05, DRIVE's red up to 0.89; over-exposed >= 0.19
    max_clipped_fraction: float = 0.12
    # ... and the green too (the disc washed out), over the whole field: real <= 0.0031 (one 0.0066); over-exposed >= 0.0053
    max_green_clipped_fraction: float = 0.005
    max_dark_fraction: float = 0.3  # luminance below `dark_level` (lid, lashes, pupil shadow): real <= 0.17
    dark_level: float = 0.06  # luminance 0..1 below which a pixel shows nothing
    min_uniformity: float = 0.45  # darker half of the field / opposite half: real >= 0.48; lid over half <= 0.36
    max_glare_fraction: float = 0.05  # white-blue pixels: real <= 0.046 (a large pale disc); a reflex >= 0.08
    glare_level: float = 0.6  # blue channel 0..1 a reflex reaches; the retina's blue stays well below
    min_disc_contrast: float = 0.18  # disc over its surroundings / field brightness: real >= 0.27; no disc <= 0.14
    max_disc_offset: float = 0.25  # disc from the field centre, field radii, for disc-centred photos
    min_red_ratio: float = 1.12  # red / green in the field: real >= 1.31; paper, walls and grey images ~1

    def validate(self) -> None:
        """Refuse nonsense from a config file before it silently passes or fails every frame."""
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"quality setting {f.name} must be a number, not {value!r}")
            if f.name == "min_red_ratio":
                if not 0.5 <= value <= 3.0:
                    raise ValueError(f"quality setting {f.name} " + SETTING_RANGE.format(low="0.5", high="3", value=value))
            elif f.name == "max_disc_offset":
                if not 0.0 < value <= 1.0:
                    raise ValueError(f"quality setting {f.name} " + SETTING_RADII.format(low="0", high="1", value=value))
            elif not 0.0 <= value <= 1.0:
                raise ValueError(f"quality setting {f.name} " + SETTING_RANGE.format(low="0", high="1", value=value))


@dataclass
class QualityReport:
    gradable: bool
    reasons: list[Reason]
    metrics: dict[str, float]
    field: tuple[float, float, float] | None  # (cx, cy, r) in the original frame's pixels

    def to_dict(self) -> dict:
        """JSON-friendly: NaN (not measured) becomes None."""
        return {
            "gradable": self.gradable,
            "reasons": [asdict(r) for r in self.reasons],
            "metrics": {k: (None if not math.isfinite(v) else round(float(v), 4)) for k, v in self.metrics.items()},
            "field": None if self.field is None else [round(float(v), 2) for v in self.field],
        }


METRICS = ("field_fraction", "field_visible", "field_diameter_px", "focus", "brightness", "exposure", "highlight", "clipped_fraction", "dark_fraction",
           "uniformity", "glare_fraction", "retina_brightness", "retina_clipped_fraction", "green_clipped_fraction", "colourfulness", "red_ratio", "disc_x",
           "disc_y", "disc_contrast", "disc_offset")


@dataclass
class _Field:
    cx: float  # work-image pixels
    cy: float
    r: float


class QualityGate:
    """Judges frames; one gate serves one capture loop (it keeps no state between frames)."""

    def __init__(self, settings: QualitySettings | None = None, require_disc_centred: bool = False):
        self.settings = settings or QualitySettings()
        self.settings.validate()
        self.require_disc_centred = require_disc_centred

    def assess(self, rgb: np.ndarray, *, shrinks: Shrinks | None = None) -> QualityReport:
        """`shrinks`: the photo's halvings where the caller makes them anyway (the screening's pass 1
        reads them too), so a large photo is read in full once."""
        _check_frame(rgb)
        photo = shrinks if shrinks is not None and shrinks.photo is rgb else Shrinks(rgb)
        s = self.settings
        h, w = rgb.shape[:2]
        scale = WORK_WIDTH / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = photo.resized(size, spare=WORK_SPARE)
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        r_, g_, b_ = cv2.split(small)
        brightest = cv2.max(cv2.max(r_, g_), b_)
        m: dict[str, float] = {k: math.nan for k in METRICS}

        found = _find_field(brightest)
        if found is None:
            m["field_fraction"] = 0.0
            m["brightness"] = float(grey.mean()) / 255.0  # still something for the light to steer on
            return QualityReport(False, [Reason.of("no_fundus")], m, None)

        fx = (found.cx + 0.5) / scale - 0.5, (found.cy + 0.5) / scale - 0.5, found.r / scale
        frame_field = np.zeros(grey.shape, np.uint8)
        cv2.circle(frame_field, _pt(found.cx, found.cy), round(found.r), 255, -1)
        m["field_fraction"] = cv2.countNonZero(frame_field) / frame_field.size
        m["field_visible"] = cv2.countNonZero(frame_field) / max(1.0, math.pi * found.r * found.r)
        m["field_diameter_px"] = 2.0 * fx[2]

        # Every other measure is taken on the field itself, brought to one size: a 400 px phone photo,
        # a 640x480 preview and a 3504 px clinic photo (or a field that fills a third of its frame)
        # then show a vessel, a disc and a blur of a given share of the retina at the same pixel scale.
        view, found, (x0, y0, vscale) = _field_view(photo, fx)
        grey = cv2.cvtColor(view, cv2.COLOR_RGB2GRAY)
        r_, g_, b_ = cv2.split(view)
        brightest = cv2.max(cv2.max(r_, g_), b_)
        field_mask = np.zeros(grey.shape, np.uint8)
        cv2.circle(field_mask, _pt(found.cx, found.cy), round(found.r), 255, -1)
        inner = np.zeros(grey.shape, np.uint8)
        cv2.circle(inner, _pt(found.cx, found.cy), round(found.r * INNER), 255, -1)
        n_inner = max(1, cv2.countNonZero(inner))

        m["brightness"] = cv2.mean(grey, inner)[0] / 255.0
        m["exposure"] = cv2.mean(brightest, inner)[0] / 255.0
        clipped = cv2.bitwise_and(cv2.compare(brightest, CLIP_LEVEL, cv2.CMP_GE), inner)  # type: ignore[call-overload]  # cv2 stubs omit scalar src2
        m["clipped_fraction"] = cv2.countNonZero(clipped) / n_inner
        # Over-exposure is lost detail, and a fundus's detail (vessels, the disc's rim and cup) is in the
        # green: many cameras run the red to its limit over a well-exposed retina and lose nothing, but
        # once the green is white too the palest part, the disc and its cup, has gone first.
        washed = cv2.bitwise_and(cv2.compare(g_, CLIP_LEVEL, cv2.CMP_GE), inner)  # type: ignore[call-overload]  # cv2 stubs omit scalar src2
        dark = cv2.bitwise_and(cv2.compare(grey, s.dark_level * 255.0, cv2.CMP_LT), inner)  # type: ignore[call-overload]  # cv2 stubs omit scalar src2
        m["dark_fraction"] = cv2.countNonZero(dark) / n_inner
        # White-blue: blue high in itself and against red, which only added white light does to a red retina.
        reflex = cv2.compare(b_, s.glare_level * 255.0, cv2.CMP_GE) & cv2.compare(  # type: ignore[call-overload]  # cv2 stubs omit scalar src2
            b_, cv2.convertScaleAbs(r_, alpha=0.7), cv2.CMP_GE)
        glare = cv2.bitwise_and(reflex, inner)
        m["glare_fraction"] = cv2.countNonZero(glare) / n_inner
        # Over-exposure is judged on the retina the reflex leaves visible, so a reflex is called a reflex.
        rest = cv2.bitwise_and(inner, cv2.bitwise_not(glare))
        n_rest = cv2.countNonZero(rest)
        if n_rest > 0.1 * n_inner:
            m["retina_brightness"] = cv2.mean(grey, rest)[0] / 255.0
            m["retina_clipped_fraction"] = cv2.countNonZero(cv2.bitwise_and(clipped, rest)) / n_rest
        else:  # white nearly everywhere: over-exposure, not a reflex
            m["retina_brightness"], m["retina_clipped_fraction"] = m["brightness"], m["clipped_fraction"]
        # Counted over the whole field: white from over-exposure looks like a reflex, pixel by pixel.
        m["green_clipped_fraction"] = cv2.countNonZero(washed) / n_inner
        levels = np.cumsum(cv2.calcHist([brightest], [0], rest, [256], [0, 256]).ravel())
        m["highlight"] = float(np.searchsorted(levels, 0.99 * levels[-1])) / 255.0 if levels[-1] else math.nan
        unclipped = cv2.bitwise_and(rest, cv2.bitwise_not(clipped))
        # A red-free or black-and-white photo has the same value in every channel: a fundus, but not
        # one the models (trained on colour) can read. Told apart from paper and walls, which are pale
        # but never exactly grey once a camera's white balance has touched them.
        spread = cv2.absdiff(r_, g_).astype(np.float32) + cv2.absdiff(g_, b_).astype(np.float32)
        m["colourfulness"] = cv2.mean(spread, inner)[0] / max(1.0, cv2.mean(grey, inner)[0])
        if cv2.countNonZero(unclipped) > 0.2 * n_inner:  # colour means nothing where a channel has run out
            red, green = cv2.mean(r_, unclipped)[0], cv2.mean(g_, unclipped)[0]
            m["red_ratio"] = (red + 1.0) / (green + 1.0)
        m["uniformity"] = _uniformity(grey, inner, found)
        disc = _find_disc(grey, field_mask, found, s.min_disc_contrast)
        # Focus is the sharper of two readings: the whole field, and the vessels without the disc. A
        # disc's rim is a soft slope, and where the disc stands out strongly (film, a pale disc) it is
        # most of the strongest edges, so the whole field reads soft; on a disc-centred photo with few
        # vessels the disc is the best edge there is. A blur softens both.
        edges = _edges(g_)
        m["focus"] = _focus(edges, inner)
        if disc is not None:
            vessels = inner.copy()
            cv2.circle(vessels, _pt(disc[0], disc[1]), round(DISC_GUARD * found.r), 0, -1)
            m["focus"] = max(m["focus"], _vessel_focus(edges, vessels))
            dx, dy, contrast = disc
            m["disc_contrast"] = contrast
            m["disc_x"] = (x0 + (dx + 0.5) / vscale - 0.5) / w
            m["disc_y"] = (y0 + (dy + 0.5) / vscale - 0.5) / h
            m["disc_offset"] = math.hypot(dx - found.cx, dy - found.cy) / found.r

        gradable, reasons = self._judge(m)
        if reasons and reasons[0].code == "no_fundus":
            return QualityReport(False, reasons, m, None)  # a round lit shape, but not a retina
        return QualityReport(gradable, reasons, m, fx)

    def _judge(self, m: dict[str, float]) -> tuple[bool, list[Reason]]:
        s = self.settings
        if m["colourfulness"] < MAX_GREY_COLOURFULNESS:
            return False, [Reason.of("grey_photo")]
        if m["red_ratio"] < s.min_red_ratio:
            return False, [Reason.of("no_fundus")]
        codes = set()
        # Small in the frame is only a fault when the frame also cuts the field (the eye moved away
        # from the axis): a whole field small in a large frame (a phone adapter, a wide sensor) is a
        # whole retina, and is refused only when it has too few pixels to judge.
        cut = m["field_visible"] < MIN_FIELD_VISIBLE
        if (m["field_fraction"] < s.min_field_fraction and cut) or m["field_diameter_px"] < MIN_FIELD_DIAMETER_PX:
            codes.add("field_too_small")
        if m["exposure"] < s.min_exposure or m["highlight"] < s.min_highlight:
            codes.add("too_dark")
        elif m["retina_brightness"] > s.max_brightness or (m["retina_clipped_fraction"] > s.max_clipped_fraction
                                                           and m["green_clipped_fraction"] > s.max_green_clipped_fraction):
            codes.add("too_bright")
        exposed = not codes & {"too_dark", "too_bright"}
        if m["uniformity"] < s.min_uniformity or (exposed and m["dark_fraction"] > s.max_dark_fraction):
            codes.add("uneven_light")
        if exposed and m["glare_fraction"] > s.max_glare_fraction:
            codes.add("glare")
        if exposed:  # focus and the disc cannot be judged on a frame without usable light
            if m["focus"] < s.min_focus:
                codes.add("out_of_focus")
            if not m["disc_contrast"] >= s.min_disc_contrast:  # NaN: no disc candidate at all
                codes.add("no_disc")
            elif m["disc_offset"] > DISC_REACH or (self.require_disc_centred and m["disc_offset"] > s.max_disc_offset):
                codes.add("disc_off_centre")
        reasons = [Reason.of(c) for c in CODES if c in codes]
        return not reasons, reasons


def _check_frame(rgb: object) -> None:
    if not isinstance(rgb, np.ndarray):
        raise ValueError(f"the quality gate needs an image array, not {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"the quality gate needs a colour frame (height x width x 3 RGB), not shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"the quality gate needs 8-bit pixels (uint8), not {rgb.dtype}")
    if min(rgb.shape[:2]) < 32:
        raise ValueError(f"a {rgb.shape[1]}x{rgb.shape[0]} frame is too small to judge")


@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of an h x w array (read-only, shared by every frame of that size)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ys.setflags(write=False)
    xs.setflags(write=False)
    return ys, xs


def _pt(x: float, y: float) -> tuple[int, int]:
    return round(x), round(y)


def _field_view(photo: Shrinks, field: tuple[float, float, float]) -> tuple[np.ndarray, _Field, tuple[int, int, float]]:
    """The field's square (cut where the frame cuts it) resampled so the field is `FIELD_PX` across.

    Returns the view, the field in the view's pixels, and (x0, y0, scale) to map a view pixel back
    to the frame: x_frame = x0 + (x + 0.5) / scale - 0.5.
    """
    h, w = photo.shape[:2]
    cx, cy, r = field
    vscale = FIELD_PX / (2.0 * r)
    # from a halving at least four times the view's size: the focus measure reads the finest edges, and an
    # area filter over fewer source pixels than that softens them measurably (drishti-gs1: 0.50 -> 0.40)
    f = photo.grain(vscale, FIELD_VIEW_SPARE)  # the square is cut on whole pixels of that halving
    x0, y0 = max(0, math.floor((cx - r) / f) * f), max(0, math.floor((cy - r) / f) * f)
    x1, y1 = min(w // f * f, math.ceil((cx + r + 1) / f) * f), min(h // f * f, math.ceil((cy + r + 1) / f) * f)
    size = (max(1, round((x1 - x0) * vscale)), max(1, round((y1 - y0) * vscale)))
    view = photo.resized(size, (x0, y0, x1, y1), FIELD_VIEW_SPARE)
    sx, sy = size[0] / (x1 - x0), size[1] / (y1 - y0)  # rounding: the scale each axis really got
    vscale = 0.5 * (sx + sy)
    return view, _Field((cx - x0 + 0.5) * sx - 0.5, (cy - y0 + 0.5) * sy - 0.5, r * vscale), (x0, y0, vscale)


def _find_field(brightest: np.ndarray) -> _Field | None:
    """The circle of the field stop, from the edge of the lit area; None when there is no such circle.

    The edge is first looked for just above black, which keeps a vignetted field's dim rim inside
    it; when that finds no circle it is looked for again higher up, because a camera's surround is
    not always black (a grey mask, a slide's green-grey film base) and then merges with the field.
    """
    h, w = brightest.shape
    brightest = cv2.blur(brightest, (5, 5))
    hist = np.cumsum(cv2.calcHist([brightest], [0], None, [256], [0, 256]).ravel())
    black, p95 = (int(np.searchsorted(hist, q * hist[-1])) for q in (0.02, 0.95))
    for share in FIELD_EDGE_LEVELS:
        found = _field_at(brightest, black, black + max(6.0, share * (p95 - black)))
        if found is not None:
            return found
    return None


def _field_at(brightest: np.ndarray, black: int, level: float) -> _Field | None:
    """The field stop's circle on the edge of what is brighter than `level`, or None."""
    h, w = brightest.shape
    lit = cv2.compare(brightest, level, cv2.CMP_GT)  # type: ignore[call-overload]  # cv2 stubs omit scalar src2
    contours, _ = cv2.findContours(lit, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    edge = max(contours, key=cv2.contourArea)
    if cv2.contourArea(edge) < 0.03 * h * w:
        return None
    pts = edge.reshape(-1, 2).astype(np.float64)
    pts = pts[(pts[:, 0] > 1) & (pts[:, 0] < w - 2) & (pts[:, 1] > 1) & (pts[:, 1] < h - 2)]
    if len(pts) < 20:
        return None  # lit to the frame's edges all round: a scene, not a field stop
    circle = _ransac_circle(pts, (0.1 * min(h, w), 1.5 * max(h, w)))
    if circle is None:
        return None
    cx, cy, r = circle
    # Beyond the circle the frame must be dark against the field: a field stop, not a bright scene with
    # a round edge in it. Dark relative to the field's own brightness, because a scanned slide's mount
    # or a camera's grey surround is not black, and a date stamp is a few bright digits.
    ring = np.zeros((h, w), np.uint8)
    cv2.circle(ring, _pt(cx, cy), round(1.06 * r), 255, -1)
    outside = cv2.bitwise_not(ring)
    n_out = cv2.countNonZero(outside)
    if n_out > 0.02 * h * w:
        inside = np.zeros((h, w), np.uint8)
        cv2.circle(inside, _pt(cx, cy), round(0.8 * r), 255, -1)
        field_level = float(np.median(brightest[inside > 0]))
        bright = cv2.compare(brightest, black + OUTSIDE_LEVEL * max(field_level - black, 1.0), cv2.CMP_GT)  # type: ignore[call-overload]  # cv2 stubs omit scalar src2
        if cv2.countNonZero(cv2.bitwise_and(bright, outside)) > 0.1 * n_out:
            return None
    return _Field(cx, cy, r)


def _ransac_circle(pts: np.ndarray, radii: tuple[float, float], tries: int = 96) -> tuple[float, float, float] | None:
    """The circle most of the edge lies on, ignoring the rest (a lid's ragged shadow, a notch, a lash).

    Seeded, so a frame always gets the same answer. None unless a long enough arc fits it closely.
    """
    rng = np.random.default_rng(0)
    probe = pts[:: max(1, len(pts) // 200)]
    a, b, c = (probe[rng.integers(0, len(probe), tries)] for _ in range(3))
    # Circumcentre of each triple.
    d = 2 * (a[:, 0] * (b[:, 1] - c[:, 1]) + b[:, 0] * (c[:, 1] - a[:, 1]) + c[:, 0] * (a[:, 1] - b[:, 1]))
    ok = np.abs(d) > 1e-6
    a, b, c, d = a[ok], b[ok], c[ok], d[ok]
    sa, sb, sc = (p[:, 0] ** 2 + p[:, 1] ** 2 for p in (a, b, c))
    ux = (sa * (b[:, 1] - c[:, 1]) + sb * (c[:, 1] - a[:, 1]) + sc * (a[:, 1] - b[:, 1])) / d
    uy = (sa * (c[:, 0] - b[:, 0]) + sb * (a[:, 0] - c[:, 0]) + sc * (b[:, 0] - a[:, 0])) / d
    ur = np.hypot(a[:, 0] - ux, a[:, 1] - uy)
    plausible = (ur >= radii[0]) & (ur <= radii[1])
    if not plausible.any():
        return None
    ux, uy, ur = ux[plausible], uy[plausible], ur[plausible]
    tol = np.maximum(1.5, 0.01 * ur)
    resid = np.abs(np.hypot(probe[None, :, 0] - ux[:, None], probe[None, :, 1] - uy[:, None]) - ur[:, None])
    best = int(np.argmax((resid < tol[:, None]).sum(axis=1)))
    cx, cy, r = ux[best], uy[best], ur[best]
    for _ in range(2):  # refine on every edge point near the winner
        near = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r) < max(1.5, 0.01 * r)
        if near.sum() < 20:
            return None
        cx, cy, r = _fit_circle(pts[near])
    near = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r) < max(1.5, 0.01 * r)
    if not radii[0] <= r <= radii[1] or near.sum() < 0.12 * 2 * np.pi * r:
        return None
    return cx, cy, r


def _fit_circle(pts: np.ndarray) -> tuple[float, float, float]:
    """Least-squares (Kasa) circle through points, centred first for a well-conditioned solve."""
    mx, my = pts.mean(axis=0)
    x, y = pts[:, 0] - mx, pts[:, 1] - my
    a = np.column_stack([x, y, np.ones_like(x)])
    sol, *_ = np.linalg.lstsq(a, x * x + y * y, rcond=None)
    cx, cy = sol[0] / 2, sol[1] / 2
    return float(cx + mx), float(cy + my), float(math.sqrt(max(sol[2] + cx * cx + cy * cy, 0.0)))


def _edges(green: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient magnitude of the green at smoothing 1 px and 2 px, made once for both focus readings."""
    g = green.astype(np.float32)
    return _gradient(cv2.GaussianBlur(g, (0, 0), 1.0)), _gradient(cv2.GaussianBlur(g, (0, 0), 2.0))


def _focus(edges: tuple[np.ndarray, np.ndarray], inner: np.ndarray) -> float:
    """Edge sharpness 0..1: how much the strongest edges keep when smoothing goes from 1 to 2 pixels."""
    sel = inner > 0
    fine, coarse = (_strongest(e[sel]) for e in edges)
    if coarse <= 1e-3:
        return 0.0  # no edges at all
    return float(np.clip(fine / coarse - 1.0, 0.0, 1.0))  # a perfect step edge keeps exactly half


def _vessel_focus(edges: tuple[np.ndarray, np.ndarray], vessels: np.ndarray) -> float:
    """The same ratio on the edges that are strongest after the wider smoothing: away from the disc the
    strongest fine gradients of a blurred photo are sensor noise or film grain, gone at 2 pixels."""
    sel = vessels > 0
    fine, coarse = edges[0][sel], edges[1][sel]
    if coarse.size == 0:
        return 0.0
    strongest = coarse >= _strongest(coarse)
    c = float(coarse[strongest].mean())
    if c <= 1e-3:
        return 0.0
    return float(np.clip(float(fine[strongest].mean()) / c - 1.0, 0.0, 1.0))


def _gradient(img: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=1)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=1)
    return cv2.magnitude(gx, gy)


def _strongest(values: np.ndarray) -> float:
    """The 99.5th percentile: the strongest edges, not one hot pixel."""
    if values.size == 0:
        return 0.0
    k = int(0.995 * (values.size - 1))
    return float(np.partition(values, k)[k])


def _uniformity(grey: np.ndarray, inner: np.ndarray, f: _Field) -> float:
    """Worst ratio of a half of the field to the opposite half, over eight directions (1 = even)."""
    cell = 8
    h, w = grey.shape
    cw, ch = max(1, w // cell), max(1, h // cell)
    lum = cv2.resize(grey, (cw, ch), interpolation=cv2.INTER_AREA).astype(np.float32)
    cover = cv2.resize(inner, (cw, ch), interpolation=cv2.INTER_AREA)
    ys, xs = _grid(ch, cw)
    dx = (xs + 0.5) * (w / cw) - 0.5 - f.cx
    dy = (ys + 0.5) * (h / ch) - 0.5 - f.cy
    rho = np.hypot(dx, dy) / f.r
    use = (cover >= 250) & (rho >= 0.25)
    if use.sum() < 16:
        return math.nan
    ang = np.arctan2(dy[use], dx[use])
    v = lum[use]
    sector = ((ang + np.pi) / (np.pi / 4)).astype(int) % 8
    sums = np.bincount(sector, weights=v, minlength=8)
    counts = np.bincount(sector, minlength=8)
    worst = 1.0
    for k in range(4):
        half_a = [(k + j) % 8 for j in range(4)]
        half_b = [(k + 4 + j) % 8 for j in range(4)]
        na, nb = counts[half_a].sum(), counts[half_b].sum()
        if na < 4 or nb < 4:
            continue
        a, b = sums[half_a].sum() / na, sums[half_b].sum() / nb
        worst = min(worst, (min(a, b) + 1.0) / (max(a, b) + 1.0))
    return float(worst)


def _find_disc(grey: np.ndarray, field_mask: np.ndarray, f: _Field,
               min_contrast: float) -> tuple[float, float, float] | None:
    """The brightest disc-sized blob in the field: (x, y) in work pixels and its contrast, or None.

    The field's rim is where lens reflexes and haze gather, so the disc is looked for inside
    `DISC_REACH` first; only when nothing there stands out is a blob on the rim taken (a disc the
    eye has turned to the edge). Taken at a quarter of the work size (a disc is still ~10 pixels
    across there), where the wide blurs it needs cost nothing.
    """
    k = 4
    size = (max(1, grey.shape[1] // k), max(1, grey.shape[0] // k))
    lum = cv2.resize(grey, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    wts = cv2.resize(field_mask, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    lum *= wts
    mean = float(lum.sum() / max(wts.sum(), 1.0))
    if mean < 1.0:
        return None
    r = f.r / k
    score = (_masked_blur(lum, wts, 0.04 * r) - _masked_blur(lum, wts, 0.15 * r)) / mean
    ys, xs = _grid(size[1], size[0])
    reach = np.hypot(xs + 0.5 - (f.cx + 0.5) / k, ys + 0.5 - (f.cy + 0.5) / k) / r
    margin = 0.1 * r  # nor at the frame's edge, where a cut-off field shows the same reflexes
    inside = (xs >= margin) & (xs < size[0] - margin) & (ys >= margin) & (ys < size[1] - margin)
    score[(reach > 0.95) | (wts < 0.99) | ~inside] = -np.inf
    central = np.where(reach <= DISC_REACH, score, -np.inf)
    i = int(np.argmax(central))
    if not central.flat[i] >= min_contrast:
        i = int(np.argmax(score))
    best = float(score.flat[i])
    if not math.isfinite(best):
        return None
    y, x = divmod(i, size[0])
    return (x + 0.5) * k - 0.5, (y + 0.5) * k - 0.5, best


def _masked_blur(values: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Local mean of the field only (normalized convolution): the black beyond its edge does not leak in."""
    num = cv2.GaussianBlur(values, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    den = cv2.GaussianBlur(weights, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    return num / np.maximum(den, 1e-3)
