"""The quality gate: real photos of five cameras pass, copies of them spoiled one way each fail for that
reason, the synthetic generator's defects fail for theirs, and things that are not a fundus never pass."""
from __future__ import annotations

import functools
import json
import math

import cv2
import numpy as np
import pytest

from device.lab.bench_quality import SPOILED_REASONS, SYNTHETIC_REASONS, disc_centred, first_code, spoil
from device.screening.quality import CODES, MESSAGES, QualityGate, QualitySettings
from models import synthetic
from models.datasets import disc_geometry, load_mask, read_dataset
from models.runtime.images import read_rgb

REFUGE_SAMPLE = 30
DRISHTI_SAMPLE = 15
PREVIEW = (480, 640)
REQUIRED_METRICS = ("field_fraction", "focus", "brightness", "clipped_fraction", "dark_fraction", "uniformity",
                    "glare_fraction", "disc_x", "disc_y", "disc_contrast")


@pytest.fixture(scope="module")
def gate() -> QualityGate:
    return QualityGate()


@pytest.fixture(scope="module")
def real(shared_data) -> list[tuple]:
    """(dataset, record, photo, report) for photos spread evenly over REFUGE (Canon CR-2) and Drishti-GS1."""
    out = []
    for name, n in (("refuge-val", REFUGE_SAMPLE), ("drishti-gs1", DRISHTI_SAMPLE)):
        records = read_dataset(shared_data / name)
        for i in range(n):
            rec = records[i * len(records) // n]
            rgb = read_rgb(rec.image_path)
            out.append((name, rec, rgb, QualityGate().assess(rgb)))
    return out


@pytest.fixture(scope="module")
def gradable(real) -> list[tuple]:
    return [r for r in real if r[3].gradable]


def describe(failed) -> str:
    return "; ".join(f"{rec.id}: {[r.code for r in report.reasons]} {report.to_dict()['metrics']}"
                     for _, rec, _, report in failed)


# ------------------------------------------------------------------ real photos


def test_real_photos_of_both_cameras_pass(real):
    for name, minimum in (("refuge-val", 0.95), ("drishti-gs1", 0.85)):
        photos = [r for r in real if r[0] == name]
        failed = [r for r in photos if not r[3].gradable]
        assert len(photos) - len(failed) >= minimum * len(photos), f"{name}: {describe(failed)}"
        for *_, report in failed:  # the few real photos that fail say why, in words
            assert report.reasons and all(r.code in CODES and r.message == MESSAGES[r.code] for r in report.reasons)
    for *_, report in real:
        assert set(REQUIRED_METRICS) <= set(report.metrics)
        if report.gradable:
            assert report.reasons == [] and report.field is not None


@pytest.mark.parametrize("defect", list(SPOILED_REASONS))
def test_spoiled_real_photo_fails_for_its_own_reason(gate, gradable, defect):
    rng = np.random.default_rng(7)
    wrong = []
    for _, rec, rgb, report in gradable:
        spoiled = gate.assess(spoil(rgb, report.field, defect, rng))
        if spoiled.gradable or first_code(spoiled) not in SPOILED_REASONS[defect]:
            wrong.append(f"{rec.id}: {[r.code for r in spoiled.reasons]}")
    assert len(gradable) >= 35
    assert not wrong, f"{defect} copies should fail with {SPOILED_REASONS[defect]}: {wrong}"


def test_field_circle_separates_retina_from_the_black_surround(real):
    """Just outside the circle the frame is black; just inside it, brighter, all round, on both cameras' frames."""
    for _, rec, rgb, report in real:
        if report.field is None:
            continue
        cx, cy, r = report.field
        h, w = rgb.shape[:2]
        level = cv2.blur(cv2.max(cv2.max(rgb[..., 0], rgb[..., 1]), rgb[..., 2]), (5, 5))
        t = np.linspace(0, 2 * np.pi, 720, endpoint=False)
        ring = {}
        for scale in (0.94, 1.06):
            ring[scale] = (np.round(cx + scale * r * np.cos(t)).astype(int),
                           np.round(cy + scale * r * np.sin(t)).astype(int))
        keep = np.ones_like(t, bool)
        for xs, ys in ring.values():
            keep &= (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        inside, outside = (level[ys[keep], xs[keep]].astype(int) for xs, ys in ring.values())
        assert keep.sum() > 100, rec.id
        assert np.mean(outside < 12) > 0.95, f"{rec.id}: the field's circle is too small"
        assert np.mean(inside > outside + 4) > 0.95, f"{rec.id}: the field's circle is too large"


def test_disc_found_on_the_graders_disc(real):
    for _, rec, rgb, report in real:
        disc, _ = load_mask(rec.mask_path)
        x, y, diameter = disc_geometry(disc)
        h, w = rgb.shape[:2]
        found = report.metrics["disc_x"] * w, report.metrics["disc_y"] * h
        assert math.hypot(found[0] - x, found[1] - y) < 0.5 * diameter, f"{rec.id}: at {found}, graders' {(x, y)}"


def test_disc_centred_photos_pass_only_when_the_disc_is_central(real):
    """Drishti-GS1 photographs the disc in the middle; REFUGE photographs the macula, the disc off to one side."""
    centred = QualityGate(require_disc_centred=True)
    drishti = [centred.assess(rgb) for name, _, rgb, report in real if name == "drishti-gs1" and report.gradable]
    refuge = [centred.assess(rgb) for name, _, rgb, report in real if name == "refuge-val" and report.gradable]
    assert sum(r.gradable for r in drishti) >= 0.8 * len(drishti)
    assert sum(first_code(r) == "disc_off_centre" for r in refuge) >= 0.9 * len(refuge)


def test_brightness_follows_the_light_and_is_the_mean_inside_the_field(gate, refuge_photo):
    rgb = read_rgb(refuge_photo)
    gains = (0.3, 0.5, 0.7, 0.9, 1.1, 1.3)
    levels = [gate.assess(cv2.convertScaleAbs(rgb, alpha=g)).metrics["brightness"] for g in gains]
    assert all(b > a + 0.02 for a, b in zip(levels, levels[1:])), levels
    report = gate.assess(rgb)
    cx, cy, r = report.field
    inside = np.zeros(rgb.shape[:2], np.uint8)
    cv2.circle(inside, (round(cx), round(cy)), round(0.9 * r), 1, -1)
    luminance = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[inside > 0].mean() / 255.0
    assert report.metrics["brightness"] == pytest.approx(luminance, abs=0.01)


def test_focus_falls_with_blur_and_reads_the_same_at_any_photo_size(gate, real):
    _, _, rgb, report = next(r for r in real if r[0] == "drishti-gs1" and r[3].gradable)
    r = report.field[2]
    blurs = (0, 0.004, 0.008, 0.016)  # Gaussian sigma, field radii
    focus = [gate.assess(cv2.GaussianBlur(rgb, (0, 0), s * r) if s else rgb).metrics["focus"] for s in blurs]
    assert all(b < a for a, b in zip(focus, focus[1:])), focus
    h, w = rgb.shape[:2]
    for width in (1024, 640):
        resized = cv2.resize(rgb, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)
        assert gate.assess(resized).metrics["focus"] == pytest.approx(focus[0], abs=0.1)
    _, _, small, small_report = next(r for r in real if r[0] == "refuge-val" and r[3].gradable)
    enlarged = cv2.resize(small, (1634, 1634), interpolation=cv2.INTER_CUBIC)  # REFUGE's own resolution
    assert gate.assess(enlarged).metrics["focus"] == pytest.approx(small_report.metrics["focus"], abs=0.1)


def test_a_field_that_fills_a_third_of_a_large_frame_reads_as_the_full_photo_does(gate, real):
    """A phone adapter or a wide sensor shows the field small in a big frame: the same retina, the same verdict."""
    _, _, rgb, report = next(r for r in real if r[0] == "refuge-val" and r[3].gradable)
    h, w = rgb.shape[:2]
    canvas = np.zeros((3 * h, 3 * w, 3), np.uint8)
    canvas[h:2 * h, w:2 * w] = rgb
    framed = gate.assess(canvas)
    assert framed.gradable, framed.reasons
    assert framed.metrics["focus"] == pytest.approx(report.metrics["focus"], abs=0.1)
    assert framed.metrics["field_fraction"] < 0.15  # it did see how small the field is in the frame


@pytest.fixture(scope="module")
def other_cameras(shared_data) -> dict[str, list]:
    """Every photo of other-cameras/ (DRIVE, STARE, DRIONS-DB), judged gradable by its curators, by source."""
    out: dict[str, list] = {}
    for rec in read_dataset(shared_data / "other-cameras"):
        out.setdefault(rec.source, []).append((rec.id, QualityGate().assess(read_rgb(rec.image_path))))
    return out


def test_gradable_photos_of_other_cameras_pass(other_cameras):
    """Cameras we never tuned on: a grey surround (STARE), scanned slides with a date stamp and grain
    (DRIONS-DB), a red channel run to its limit (DRIVE). The README names a few truly poor photos
    (the disc at the edge or hard to see, in STARE), so at most 5% of all may be refused."""
    rejected = {src: [(i, r.reasons[0].code) for i, r in reports if not r.gradable] for src, reports in other_cameras.items()}
    total = sum(len(v) for v in other_cameras.values())
    assert total == 165
    assert sum(len(v) for v in rejected.values()) <= 0.05 * total, rejected
    assert not rejected["DRIONS-DB"] and len(rejected["DRIVE"]) <= 1, rejected


def test_the_disc_found_on_scanned_slides_is_the_graders_disc(other_cameras, shared_data):
    """DRIONS-DB's experts outlined the disc: the gate finds it on film on every photo, inside the outline
    or on its rim (film's grain and the slide's pale spots move the brightest blob a little)."""
    reports = dict(other_cameras["DRIONS-DB"])
    for rec in read_dataset(shared_data / "other-cameras"):
        if rec.source != "DRIONS-DB":
            continue
        disc, _ = load_mask(rec.mask_path)
        x, y, diameter = disc_geometry(disc)
        h, w = disc.shape[:2]
        m = reports[rec.id].metrics
        found = m["disc_x"] * w, m["disc_y"] * h
        assert math.hypot(found[0] - x, found[1] - y) < 0.6 * diameter, f"{rec.id}: at {found}, graders' {(x, y)}"


# ------------------------------------------------------------------ synthetic frames


@pytest.fixture(scope="module")
def render():
    """models.synthetic.render with each eye's retina built once (it is read-only; only the optics vary)."""
    cached = functools.lru_cache(maxsize=16)(synthetic.render_reflectance)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synthetic, "render_reflectance", cached)
        yield synthetic.render


EYES = (0, 1, 2)


def test_synthetic_clean_renders_pass_at_preview_and_photo_sizes(gate, render):
    for seed in EYES:
        for size in (PREVIEW, (512, 512)):
            shot = render(synthetic.random_eye(seed), size, seed=seed)
            report = gate.assess(shot.image)
            assert report.gradable, f"eye {seed} at {size}: {[r.code for r in report.reasons]}"
            (cx, cy), radius = synthetic.field_geometry(size)
            assert report.field == pytest.approx((cx, cy, radius), abs=0.015 * radius)


@pytest.mark.parametrize("defect", synthetic.DEFECTS)
def test_synthetic_defect_fails_for_its_own_reason(gate, render, defect):
    expected = SYNTHETIC_REASONS[defect]
    judge = QualityGate(require_disc_centred=True) if defect == "off_centre" else gate
    for seed in EYES:
        eye = synthetic.random_eye(seed)
        if defect == "off_centre":
            eye = disc_centred(eye)
            assert judge.assess(render(eye, PREVIEW, seed=seed).image).gradable  # centred, it passes
        report = judge.assess(render(eye, PREVIEW, defects=(defect,), seed=seed).image)
        assert first_code(report) in expected, f"eye {seed} with {defect}: {[r.code for r in report.reasons]}"


def test_disc_position_matches_the_synthetic_anatomy(gate, render):
    for seed in EYES:
        eye = synthetic.random_eye(seed)
        shot = render(eye, PREVIEW, seed=seed)
        scene = synthetic.render_reflectance(eye, PREVIEW)
        report = gate.assess(shot.image)
        x, y = report.metrics["disc_x"] * PREVIEW[1], report.metrics["disc_y"] * PREVIEW[0]
        assert math.hypot(x - scene.disc_center[0], y - scene.disc_center[1]) < eye.disc_radius * scene.field_radius


def test_brightness_rises_with_the_simulated_light(gate, render):
    scene = synthetic.render_reflectance(synthetic.random_eye(0), PREVIEW)
    lights = (0.1, 0.3, 0.6, 1.0, 1.6)
    levels = [gate.assess(synthetic.apply_optics(scene, light=light)).metrics["brightness"] for light in lights]
    assert all(b > a for a, b in zip(levels, levels[1:])), levels


# ------------------------------------------------------------------ not a fundus


def _room(rng: np.random.Generator) -> np.ndarray:
    h, w = PREVIEW
    img = np.empty((h, w, 3), np.float32)
    img[:] = np.array([180, 170, 150], np.float32) * (0.6 + 0.4 * np.arange(w, dtype=np.float32) / w)[None, :, None]
    img[330:] = (110, 80, 60)  # floor
    img[60:250, 380:560] = (235, 240, 250)  # window
    cv2.rectangle(img, (60, 200), (260, 360), (90, 60, 40), -1)  # table
    cv2.circle(img, (160, 120), 45, (255, 220, 150), -1)  # lamp shade
    cv2.rectangle(img, (290, 110), (350, 330), (150, 40, 40), -1)  # red door
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def _document() -> np.ndarray:
    page = np.full((*PREVIEW, 3), 245, np.uint8)
    for k, y in enumerate(range(40, PREVIEW[0] - 20, 28)):
        cv2.putText(page, f"Consent form, line {k}: the patient agrees to screening", (30, y),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6, (20, 20, 20), 1, cv2.LINE_AA)
    return page


def test_things_that_are_not_a_fundus_never_pass(gate, refuge_photo):
    rng = np.random.default_rng(3)
    grey = cv2.cvtColor(cv2.cvtColor(read_rgb(refuge_photo), cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    frames = {
        "room": _room(rng), "document": _document(), "white sheet": np.full((*PREVIEW, 3), 250, np.uint8),
        "black frame": np.zeros((*PREVIEW, 3), np.uint8), "noise": rng.integers(0, 256, (*PREVIEW, 3), dtype=np.uint8),
    }
    for what, frame in frames.items():
        report = gate.assess(frame)
        assert not report.gradable and first_code(report) == "no_fundus" and report.field is None, what
    # A black-and-white or red-free photo of a fundus is a fundus, but not one to screen: it says so.
    red_free = read_rgb(refuge_photo)
    red_free[..., 0] = red_free[..., 2] = red_free[..., 1]
    for what, frame in {"grey photo of a fundus": grey, "red-free photo": red_free}.items():
        report = gate.assess(frame)
        assert not report.gradable and first_code(report) == "grey_photo", what
    # Round, red and lit like a fundus, but no retina in it: it still fails, and says why.
    blank = np.zeros((*PREVIEW, 3), np.uint8)
    cv2.circle(blank, (320, 240), 260, (200, 110, 70), -1)
    report = gate.assess(blank)
    assert not report.gradable and {"out_of_focus", "no_disc"} <= {r.code for r in report.reasons}


def test_no_fundus_report_still_gives_the_light_something_to_steer_on(gate):
    report = gate.assess(np.full((*PREVIEW, 3), 200, np.uint8))
    assert report.metrics["brightness"] == pytest.approx(200 / 255, abs=0.01)
    assert report.metrics["field_fraction"] == 0.0
    assert math.isnan(report.metrics["focus"])


# ------------------------------------------------------------------ reasons, report, settings, input


def test_the_root_cause_comes_first(gate, refuge_photo):
    rgb = read_rgb(refuge_photo)
    field = gate.assess(rgb).field
    rng = np.random.default_rng(0)
    dark_and_blurred = spoil(spoil(rgb, field, "blur", rng), field, "dark", rng)
    report = gate.assess(dark_and_blurred)
    assert first_code(report) == "too_dark"
    codes = [r.code for r in report.reasons]
    assert codes == sorted(codes, key=CODES.index)


def test_report_is_json_friendly(gate, refuge_photo):
    for frame in (read_rgb(refuge_photo), np.zeros((*PREVIEW, 3), np.uint8)):
        d = gate.assess(frame).to_dict()
        text = json.dumps(d, allow_nan=False)  # NaN would break the visit log's JSON
        back = json.loads(text)
        assert set(REQUIRED_METRICS) <= set(back["metrics"])
        assert all(set(r) == {"code", "message"} for r in back["reasons"])
    black = gate.assess(np.zeros((*PREVIEW, 3), np.uint8)).to_dict()
    assert black["metrics"]["disc_x"] is None and black["field"] is None and black["reasons"][0]["code"] == "no_fundus"


def test_settings_decide_and_nonsense_is_refused(refuge_photo):
    rgb = read_rgb(refuge_photo)
    assert QualityGate().assess(rgb).gradable
    strict = QualityGate(QualitySettings(min_focus=0.99)).assess(rgb)
    assert [r.code for r in strict.reasons] == ["out_of_focus"]
    for bad in (dict(min_focus=1.5), dict(max_glare_fraction=-0.1), dict(min_red_ratio=float("nan")),
                dict(max_disc_offset=0.0), dict(min_exposure="dark")):
        with pytest.raises(ValueError, match="quality setting"):
            QualityGate(QualitySettings(**bad))


@pytest.mark.parametrize("frame, words", [
    ([[1, 2, 3]], "image array"),
    (np.zeros((480, 640), np.uint8), "colour frame"),
    (np.zeros((480, 640, 3), np.float32), "8-bit"),
    (np.zeros((16, 16, 3), np.uint8), "too small"),
])
def test_bad_frames_are_refused_in_words(gate, frame, words):
    with pytest.raises(ValueError, match=words):
        gate.assess(frame)
