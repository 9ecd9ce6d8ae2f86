"""Aligning an eye's earlier disc photo with today's, so that disc and cup are measured in one frame.

Two visits' photos of one eye differ by where the disc sat in the field, the camera's distance and a
small turn of the head: a similarity (shift, scale, rotation), near enough. The vessels are the
landmarks: they cross the disc edge and fan out over the retina, and glaucoma does not move them
where they leave the disc. So the green channel, where vessels have the most contrast, is matched
twice: ORB corners matched and fitted by RANSAC to a similarity (robust to large moves and to changes
of exposure), then ECC on a map of the vessels refines it to an affine (sub-pixel; a camera seen a
little from the side stretches the disc a little). Why this way and not ECC alone: on GRAPE crops with
a known similarity applied, ECC from the identity lost its way on a third or more of them (mean
corner error over 3 px), ORB + RANSAC + ECC on none (median 0.06 px at 384 px); on 80 real visit pairs its vessel
correlation was at least 0.49, on 60 pairs of unrelated eyes at most 0.29, and the matched points
were 45 or more against at most 9 (`glaucoscreen fit-progression` measures this again on every
GRAPE pair, under "registration").

A registration that fails says so in words (`Registration.refusal`): too few matching points, an
implausible scale or turn, too little overlap, or vessels that do not line up afterwards. Nothing is
then measured as change: a reader compares the photos.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from device.screening.wording import N_
from models.runtime.preprocess import Box, whole_image_box

WORKING_SIZE = 384  # each region is matched at this many pixels square: vessels a few pixels wide
MIN_MATCHES = 25  # RANSAC inliers; real GRAPE visit pairs had 45 or more, unrelated eyes 9 at most
MIN_CORRELATION = 0.40  # vessel maps after alignment; real pairs 0.49 or more, unrelated eyes 0.29 at most
MIN_OVERLAP = 0.5  # share of today's region the earlier photo covers after alignment
SCALE_RANGE = (0.67, 1.5)  # a disc twice or half as large is another camera setting or another eye
MAX_TURN_DEG = 30.0  # a head turned further is a photo taken on its side
MAX_STRETCH = 1.15  # ECC's affine may stretch one axis against the other this much, or its similarity is kept
RATIO_TEST = 0.8
RANSAC_PX = 4.0

# why a registration was refused, recorded in English; the kiosk says it in the reader's language
TOO_FEW_MATCHES = N_("too few points of the two photos match ({matches}; {needed} needed): they may not show the same eye, "
                     "or one of them is blurred or badly lit")
IMPLAUSIBLE_MOVE = N_("the photos would need a scale of {scale} and a turn of {turn} degrees to line up, more than between "
                      "two photos of one eye with one camera")
TOO_LITTLE_OVERLAP = N_("the earlier photo covers only {share} of today's disc region once lined up ({needed} needed)")
VESSELS_APART = N_("the vessels do not line up (correlation {correlation}; {needed} needed): the photos may not show "
                   "the same eye")
REFUSAL_FIGURES = {TOO_FEW_MATCHES: {"matches": "number", "needed": "number"},
                   IMPLAUSIBLE_MOVE: {"scale": "number", "turn": "number"},
                   TOO_LITTLE_OVERLAP: {"share": "percent", "needed": "percent"},
                   VESSELS_APART: {"correlation": "number", "needed": "number"}}


@dataclass(frozen=True)
class Registration:
    """Where the earlier photo lies in today's: `matrix` (2 x 3) maps a pixel of the earlier photo to
    today's photo; None when the registration was refused, with `refusal` saying why."""

    matrix: np.ndarray | None
    matches: int
    correlation: float | None  # of the two vessel maps after alignment, over their overlap
    overlap: float  # share of today's region the earlier photo covers
    refusal: str | None = None

    @property
    def aligned(self) -> bool:
        return self.matrix is not None and self.refusal is None

    @property
    def scale(self) -> float | None:
        return None if self.matrix is None else float(math.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    @property
    def turn_deg(self) -> float | None:
        """Anticlockwise as the photo is seen (the sense of OpenCV's getRotationMatrix2D)."""
        return None if self.matrix is None else _turn_deg(self.matrix)

    def to_dict(self) -> dict:
        """What the visit log keeps and the reading centre reads: the quality figures, not the matrix."""
        return {"aligned": self.aligned, "matches": self.matches,
                "correlation": None if self.correlation is None else round(self.correlation, 3),
                "overlap": round(self.overlap, 3),
                "scale": None if self.scale is None else round(self.scale, 4),
                "turn_deg": None if self.turn_deg is None else round(self.turn_deg, 2),
                "refusal": self.refusal}


def _cut(rgb: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """The green channel of `box` at WORKING_SIZE, and where it holds photo (not padding)."""
    s = WORKING_SIZE / box.side
    m = np.array([[s, 0, -box.x0 * s], [0, s, -box.y0 * s]])
    green = rgb[..., 1] if rgb.ndim == 3 else rgb
    f = max(1, int(1 / s))
    if f > 1:  # warpAffine has no area filter: shrink most of the way first, as preprocess.warp does
        green = cv2.resize(green, (max(1, green.shape[1] // f), max(1, green.shape[0] // f)), interpolation=cv2.INTER_AREA)
        m[:, :2] *= f
    size = (WORKING_SIZE, WORKING_SIZE)
    out = cv2.warpAffine(green, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside = cv2.warpAffine(np.full(green.shape, 255, np.uint8), m, size, flags=cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # a black field outside the fundus is no more photo than padding is
    inside = np.where(out > 8, inside, 0).astype(np.uint8)
    inside = cv2.erode(inside, np.ones((9, 9), np.uint8))
    return out, inside


def vessel_map(green: np.ndarray) -> np.ndarray:
    """Dark thin lines brighter than the rest: a black-hat of the contrast-equalised green channel, smoothed
    and standardised, so two visits' exposures compare."""
    eq = cv2.createCLAHE(2.0, (8, 8)).apply(green)
    v = cv2.morphologyEx(eq, cv2.MORPH_BLACKHAT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15)))
    v = cv2.GaussianBlur(v.astype(np.float32), (0, 0), 1.5)
    return (v - v.mean()) / (v.std() + 1e-6)


def _matched_similarity(a: np.ndarray, a_in: np.ndarray, b: np.ndarray, b_in: np.ndarray) -> tuple[np.ndarray | None, int]:
    """ORB corners of each region matched (ratio test), then a similarity by RANSAC: (a -> b, inliers)."""
    orb = cv2.ORB.create(nfeatures=3000, fastThreshold=5)
    clahe = cv2.createCLAHE(2.0, (8, 8))
    ka, da = orb.detectAndCompute(clahe.apply(a), a_in)
    kb, db = orb.detectAndCompute(clahe.apply(b), b_in)
    if da is None or db is None or len(ka) < 2 or len(kb) < 2:
        return None, 0
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(da, db, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO_TEST * p[1].distance]
    if len(good) < 3:
        return None, len(good)
    pa = np.array([ka[g.queryIdx].pt for g in good], np.float32)
    pb = np.array([kb[g.trainIdx].pt for g in good], np.float32)
    m, inliers = cv2.estimateAffinePartial2D(pa, pb, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX,
                                             maxIters=5000, confidence=0.999, refineIters=20)
    if m is None:
        return None, 0
    return m, int(inliers.sum())


def _ecc_refined(va: np.ndarray, a_in: np.ndarray, vb: np.ndarray, start: np.ndarray) -> np.ndarray | None:
    """ECC (affine) from the similarity, coarse to fine; None where it does not converge."""
    # findTransformECC(template, input, W) finds W with input(W x) ~ template(x): with a as the template,
    # W maps a's pixels to b's, as `start` does
    w = start.astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)
    for level in (1, 0):
        s = 2 ** level
        size = (WORKING_SIZE // s, WORKING_SIZE // s)
        ta, tb = cv2.resize(va, size, interpolation=cv2.INTER_AREA), cv2.resize(vb, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(a_in, size, interpolation=cv2.INTER_NEAREST)
        w[:, 2] /= s
        try:
            _, found = cv2.findTransformECC(ta, tb, w, cv2.MOTION_AFFINE, criteria, mask, 3)
        except cv2.error:
            return None
        w = np.asarray(found, np.float32)
        w[:, 2] *= s
    return w.astype(np.float64)


def _turn_deg(m: np.ndarray) -> float:
    return float(math.degrees(math.atan2(m[0, 1] - m[1, 0], m[0, 0] + m[1, 1])))


def _stretch(m: np.ndarray) -> float:
    s = np.linalg.svd(m[:, :2], compute_uv=False)
    return float(s[0] / max(s[1], 1e-9))


def _correlation(va: np.ndarray, a_in: np.ndarray, vb: np.ndarray, b_in: np.ndarray, m: np.ndarray) -> tuple[float, float]:
    """Vessel maps' correlation where both hold photo after warping a onto b, and the share of b covered."""
    size = (WORKING_SIZE, WORKING_SIZE)
    warped = cv2.warpAffine(va, m, size, flags=cv2.INTER_LINEAR, borderValue=0)
    covered = cv2.warpAffine(a_in, m, size, flags=cv2.INTER_NEAREST, borderValue=0) > 0
    both = covered & (b_in > 0)
    overlap = float(both.sum()) / max(1.0, float((b_in > 0).sum()))
    if both.sum() < 100:
        return 0.0, overlap
    x, y = warped[both] - warped[both].mean(), vb[both] - vb[both].mean()
    return float((x * y).sum() / math.sqrt(float((x * x).sum() * (y * y).sum()) + 1e-12)), overlap


def register(earlier: np.ndarray, current: np.ndarray, earlier_region: Box | None = None,
             current_region: Box | None = None) -> Registration:
    """Align the earlier photo with the current one. `*_region`: the square of each photo to match (around
    its disc; default the whole photo)."""
    ra = earlier_region or whole_image_box(earlier.shape)
    rb = current_region or whole_image_box(current.shape)
    a, a_in = _cut(earlier, ra)
    b, b_in = _cut(current, rb)
    m, matches = _matched_similarity(a, a_in, b, b_in)
    if m is None or matches < MIN_MATCHES:
        return Registration(None, matches, None, 0.0, TOO_FEW_MATCHES.format(matches=matches, needed=MIN_MATCHES))
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    turn = _turn_deg(m)
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1] or abs(turn) > MAX_TURN_DEG:
        return Registration(None, matches, None, 0.0, IMPLAUSIBLE_MOVE.format(scale=f"{scale:.2f}", turn=f"{turn:.0f}"))
    va, vb = vessel_map(a), vessel_map(b)
    corr, overlap = _correlation(va, a_in, vb, b_in, m)
    refined = _ecc_refined(va, a_in, vb, m)
    if refined is not None and _stretch(refined) <= MAX_STRETCH:
        corr2, overlap2 = _correlation(va, a_in, vb, b_in, refined)
        if corr2 >= corr:
            m, corr, overlap = refined, corr2, overlap2
    matrix = _to_photo(m, ra, rb)
    if overlap < MIN_OVERLAP:
        return Registration(None, matches, corr, overlap,
                            TOO_LITTLE_OVERLAP.format(share=f"{overlap:.0%}", needed=f"{MIN_OVERLAP:.0%}"))
    if corr < MIN_CORRELATION:
        return Registration(None, matches, corr, overlap,
                            VESSELS_APART.format(correlation=f"{corr:.2f}", needed=f"{MIN_CORRELATION:.2f}"))
    return Registration(matrix, matches, corr, overlap)


def _to_photo(m: np.ndarray, ra: Box, rb: Box) -> np.ndarray:
    """A working-grid transform (region a -> region b) as one from the earlier photo's pixels to today's."""
    def grid(box: Box) -> np.ndarray:  # photo pixel -> working pixel, 3 x 3
        s = WORKING_SIZE / box.side
        return np.array([[s, 0, -box.x0 * s], [0, s, -box.y0 * s], [0, 0, 1]])

    full = np.linalg.inv(grid(rb)) @ np.vstack([m, [0, 0, 1]]) @ grid(ra)
    return full[:2]


def earlier_in_region(earlier: np.ndarray, registration: Registration, region: Box, size: int) -> np.ndarray:
    """The earlier photo as it lies under `region` of today's photo, resampled to size x size: what today's
    segmentation input would have shown had the earlier photo been taken today."""
    if registration.matrix is None:
        raise ValueError(f"the photos were not aligned: {registration.refusal}")
    s = size / region.side
    to_grid = np.array([[s, 0, -region.x0 * s], [0, s, -region.y0 * s], [0, 0, 1]])
    m = (to_grid @ np.vstack([registration.matrix, [0, 0, 1]]))[:2]
    f = max(1, int(1 / math.sqrt(abs(np.linalg.det(m[:, :2])))))
    img = earlier
    if f > 1:  # shrink most of the way with an area filter first, so a 12 MP photo does not alias
        img = cv2.resize(earlier, (max(1, earlier.shape[1] // f), max(1, earlier.shape[0] // f)), interpolation=cv2.INTER_AREA)
        m = m.copy()
        m[:, :2] *= f
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def region_around_disc(cx: float, cy: float, disc_diameter: float, shape: tuple[int, ...],
                       disc_diameters: float = 4.0) -> Box:
    """The square matched for registration: the disc with the vessels leaving it, about four disc diameters
    wide (on a disc crop, the whole crop)."""
    h, w = shape[:2]
    side = float(min(disc_diameters * disc_diameter, max(h, w)))
    return Box(cx - side / 2.0, cy - side / 2.0, side)
