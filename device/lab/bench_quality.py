"""`python -m device.lab.bench_quality`: how fast the quality gate runs and how well it sorts photos.

* speed: frames/s on 640x480 preview frames on one thread, the capture loop's budget on a unit;
* real photos: the share of every photo in the shared data the gate passes, per camera (REFUGE,
  Drishti-GS1, and other-cameras' DRIVE, STARE and DRIONS-DB, all judged gradable by their curators),
  with the reasons it gives for the rest (some real photos are poor; graders kept them anyway);
* spoiled copies: each gradable real photo spoiled one way at a time (`spoil`). Rejecting is the
  gate's job, so a spoiled copy is a positive: recall per defect is the share that fails for that
  defect's own reason; precision is the share of everything rejected (real photos included) that
  was spoiled;
* synthetic frames: the generator's clean renders must pass and each of its defects must fail
  for its own reason.

The spoiling functions live here so the tests and this benchmark measure the same defects.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from device.screening.quality import QualityGate

# Spoiled copy -> the first reason the gate must give for it.
SPOILED_REASONS: dict[str, tuple[str, ...]] = {
    "blur": ("out_of_focus",),
    "dark": ("too_dark",),
    "bright": ("too_bright",),
    "shift": ("field_too_small", "no_fundus"),
    "glare": ("glare",),
}
# The synthetic generator's defects -> the first reason the gate must give.
SYNTHETIC_REASONS: dict[str, tuple[str, ...]] = {
    "defocus": ("out_of_focus",),
    "underexposed": ("too_dark",),
    "overexposed": ("too_bright",),
    "glare": ("glare",),
    "off_centre": ("disc_off_centre", "no_disc"),  # judged on disc-centred eyes, with require_disc_centred
    "eyelid": ("uneven_light", "too_dark"),
}
PREVIEW = (480, 640)
DATASETS = ("refuge-val", "drishti-gs1", "other-cameras")
MIXED = "other-cameras"  # gradable research photos of three more cameras, reported per source


def spoil(rgb: np.ndarray, field: tuple[float, float, float], defect: str, rng: np.random.Generator) -> np.ndarray:
    """A copy of a gradable photo with one defect, sized to its fundus field (cx, cy, r) so every camera gets the same.

    blur: Gaussian blur of 1% of the field's diameter; dark: 35% of the light; bright: gain that puts
    the median of the field past the sensor's limit; shift: the eye moved so the field mostly leaves
    the frame; glare: a white-blue corneal reflex of a fifth of the field's radius near its middle.
    """
    h, w = rgb.shape[:2]
    cx, cy, r = field
    if defect == "blur":
        return _blur(rgb, 0.02 * r)
    if defect == "dark":
        return (rgb.astype(np.float32) * 0.35).astype(np.uint8)
    if defect == "bright":
        inside = np.zeros((h, w), np.uint8)
        cv2.circle(inside, (round(cx), round(cy)), round(0.9 * r), 255, -1)
        r_, g_, b_ = cv2.split(rgb)
        median = float(np.median(cv2.max(cv2.max(r_, g_), b_)[inside > 0]))
        return cv2.convertScaleAbs(rgb, alpha=1.3 * 255.0 / max(median, 1.0))
    if defect == "shift":
        return cv2.warpAffine(rgb, np.array([[1, 0, 0.65 * w], [0, 1, 0]], np.float32), (w, h))
    if defect == "glare":
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.4) * r
        gx, gy, sigma = cx + dist * math.cos(angle), cy + dist * math.sin(angle), 0.22 * r
        # Only where the reflex adds a visible amount (within 4 sigma), drawn coarse: it is smooth.
        x0, x1 = max(0, int(gx - 4 * sigma)), min(w, int(gx + 4 * sigma) + 1)
        y0, y1 = max(0, int(gy - 4 * sigma)), min(h, int(gy + 4 * sigma) + 1)
        step = max(1, int(sigma / 8))
        ys, xs = np.ogrid[y0:y1:step, x0:x1:step]
        blob: np.ndarray = np.exp(-((xs - gx) ** 2 + (ys - gy) ** 2) / (2 * sigma * sigma)).astype(np.float32)
        blob = cv2.resize(blob, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        out = rgb.copy()
        for c, tint in enumerate((0.85, 0.95, 1.0)):  # white with a touch of blue, like light off the cornea
            plane = out[y0:y1, x0:x1, c]
            plane[:] = cv2.convertScaleAbs(cv2.scaleAdd(blob, 330.0 * tint, plane.astype(np.float32)))
        return out
    raise ValueError(f"unknown defect {defect!r}; known: {', '.join(SPOILED_REASONS)}")


def _blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur done on a shrunk copy when it is wide (the same result, far faster on 2048-pixel photos)."""
    f = max(1, int(sigma / 3))
    if f == 1:
        return cv2.GaussianBlur(rgb, (0, 0), sigma)
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (w // f, h // f), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), math.sqrt(max(sigma ** 2 - (0.5 * f) ** 2, 0.25)) / f)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def first_code(report) -> str:
    return report.reasons[0].code if report.reasons else "pass"


def disc_centred(eye):
    """The same eye photographed disc-centred, the view the off-centre defect is judged on."""
    return replace(eye, view="disc", disc_position=None)


def bench_speed(frames: int = 300, eyes: int = 5) -> dict:
    """Frames/s of the gate on 640x480 synthetic preview frames, on one thread."""
    from models import synthetic

    cv2.setNumThreads(1)
    gate = QualityGate()
    shots = [synthetic.render(synthetic.random_eye(i), PREVIEW, seed=i).image for i in range(eyes)]
    for shot in shots:
        gate.assess(shot)
    times = []
    for k in range(frames):
        t0 = time.perf_counter()
        gate.assess(shots[k % eyes])
        times.append(time.perf_counter() - t0)
    a = np.asarray(times) * 1000
    return {"frame": f"{PREVIEW[1]}x{PREVIEW[0]}", "threads": 1, "frames": frames,
            "frames_per_s": round(1000.0 / float(a.mean()), 1), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2)}


def bench_real(data: Path, seed: int = 0) -> dict:
    """Pass rate on every real photo, and recall per defect on spoiled copies of the gradable ones."""
    from models.datasets import read_dataset
    from models.runtime.images import read_rgb

    gate = QualityGate()
    rng = np.random.default_rng(seed)
    out: dict = {}
    hits: Counter = Counter()  # defect -> spoiled copies refused for their own reason, every camera
    spoiled_rejected = 0
    clean_passed = 0
    for name in DATASETS:
        records = read_dataset(data / name)
        # other-cameras holds three cameras: each is a row of its own, never pooled into one figure.
        groups: dict[str, list] = {}
        for rec in records:
            groups.setdefault(f"{name}/{rec.source}" if name == MIXED else name, []).append(rec)
        for group, members in groups.items():
            reasons: Counter = Counter()
            group_hits: Counter = Counter()
            passed = 0  # each gradable photo is spoiled once per defect
            for rec in members:
                rgb = read_rgb(rec.image_path)
                report = gate.assess(rgb)
                if not report.gradable:
                    reasons[first_code(report)] += 1
                    continue
                passed += 1
                assert report.field is not None  # a gradable report always locates the field
                for defect, expected in SPOILED_REASONS.items():
                    spoiled = gate.assess(spoil(rgb, report.field, defect, rng))
                    group_hits[defect] += first_code(spoiled) in expected
                    spoiled_rejected += not spoiled.gradable
            clean_passed += passed
            hits.update(group_hits)
            out[group] = {"photos": len(members), "passed": passed, "pass_rate": round(passed / max(1, len(members)), 4),
                          "rejected_by_first_reason": dict(reasons.most_common()),
                          "spoiled_recall": {d: round(group_hits[d] / max(1, passed), 4) for d in SPOILED_REASONS}}
    total = sum(v["photos"] for v in out.values())
    out["all"] = {"photos": total, "passed": clean_passed, "pass_rate": round(clean_passed / max(1, total), 4)}
    out["spoiled_recall"] = {d: round(hits[d] / max(1, clean_passed), 4) for d in SPOILED_REASONS}
    out["spoiled_copies"] = {d: clean_passed for d in SPOILED_REASONS}
    out["recall_any_reason"] = round(spoiled_rejected / max(1, clean_passed * len(SPOILED_REASONS)), 4)
    out["precision"] = round(spoiled_rejected / max(1, spoiled_rejected + total - clean_passed), 4)
    return out


def bench_synthetic(eyes: int = 40, size: tuple[int, int] = PREVIEW) -> dict:
    """Clean renders' pass rate and per-defect recall on the generator's defective renders."""
    from models import synthetic

    gate, centred_gate = QualityGate(), QualityGate(require_disc_centred=True)
    passed = 0
    hits: Counter = Counter()
    for i in range(eyes):
        eye = synthetic.random_eye(i)
        passed += gate.assess(synthetic.render(eye, size, seed=i).image).gradable
        for defect, expected in SYNTHETIC_REASONS.items():
            judge, subject = (centred_gate, disc_centred(eye)) if defect == "off_centre" else (gate, eye)
            shot = synthetic.render(subject, size, defects=(defect,), seed=i).image
            hits[defect] += first_code(judge.assess(shot)) in expected
    return {"eyes": eyes, "size": f"{size[1]}x{size[0]}", "clean_pass_rate": round(passed / eyes, 4),
            "recall": {d: round(hits[d] / eyes, 4) for d in SYNTHETIC_REASONS}}


def default_data() -> Path:
    return Path(os.environ.get("GLAUCOSCREEN_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device.lab.bench_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=default_data(), help="folder holding refuge-val/, drishti-gs1/ and other-cameras/")
    p.add_argument("--synthetic-eyes", type=int, default=40, help="synthetic eyes per defect")
    p.add_argument("--json-out", type=Path, help="also write the figures to this JSON file")
    a = p.parse_args(argv)
    missing = [n for n in DATASETS if not (a.data / n / "labels.csv").exists()]
    if missing:
        p.error(f"{a.data} lacks {', '.join(missing)} (labels.csv); point --data at the shared fundus data")
    result = {"speed": bench_speed()}
    print(f"speed: {result['speed']['frames_per_s']} frames/s at {result['speed']['frame']} on one thread "
          f"(p50 {result['speed']['p50_ms']} ms, p95 {result['speed']['p95_ms']} ms)", flush=True)
    result["real"] = real = bench_real(a.data)
    for name, r in real.items():
        if not (isinstance(r, dict) and "photos" in r):
            continue
        print(f"{name}: {r['passed']}/{r['photos']} pass ({100 * r['pass_rate']:.1f}%)"
              + (f"; rejected: {r['rejected_by_first_reason']}" if "rejected_by_first_reason" in r else "")
              + (f"; spoiled copies caught for the right reason: {r['spoiled_recall']}" if "spoiled_recall" in r else ""))
    print(f"spoiled copies: recall for the right reason {real['spoiled_recall']}; "
          f"recall (any reason) {real['recall_any_reason']}, precision {real['precision']}")
    result["synthetic"] = synth = bench_synthetic(a.synthetic_eyes)
    print(f"synthetic ({synth['eyes']} eyes, {synth['size']}): clean pass rate {synth['clean_pass_rate']}; "
          f"recall {synth['recall']}")
    if a.json_out:
        a.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
