"""The screening of one fundus photo: quality -> disc localisation -> disc/cup segmentation ->
measurements -> glaucoma probability -> referral, and, given the eye's earlier visits, progression.

The segmentation network runs twice: on the whole photo (downscaled) to find the disc, then on a
disc-centred crop so that the cup, a few dozen pixels tall on a small photo and hundreds on a
phone photo, is always segmented at the same scale. The disc-crop glaucoma classifier, where it is
installed, reads the very same crop tensor. `Engine` hides whether ONNX Runtime or TensorRT does
the work.

Pass 2 also runs on the crop mirrored left to right, in the same batch, and the disc and cup maps
are the mean of the two: a disc outline should not depend on which side the network's receptive
fields happen to favour, and on the 80 REFUGE validation photos the mean outlines the disc and cup
better (on 10 Drishti-GS1 ones it is a wash; model card). The glaucoma logits stay those of the crop as taken, the inputs the referral fusion
was fitted on.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from device.screening.measurements import largest_component, measure
from device.screening.progression import EyeHistory, ProgressionAssessor
from device.screening.quality import QualityGate, QualityReport
from device.screening.referral import RESCREEN, ReferralPolicy, sigmoid
from device.screening.result import DiscSegmentation, ScreeningResult
from models.runtime import preprocess, registry
from models.runtime.engine import Engine
from models.runtime.images import MAX_PIXELS, ImageError, Photo, read_photo

SCREENING_POLICY = registry.ARTIFACTS / "screening.json"
MIN_DISC_FRACTION = 0.0004  # disc area / input area below which pass 1 "found" only a speck
TURNED_ANGLE_DEG = 60  # fovea further than this from the disc's horizontal: the photo is on its side (upright ~6)
TURNED_MESSAGE = ("The photo is turned on its side (the macula is above or below the optic disc): "
                  "hold the camera upright and take the photo again.")
WRONG_SIDE_MESSAGE = ("The macula is on the wrong side of the optic disc for a {eye} eye: the photo is upside down, "
                      "or this is the other eye. Check which eye is in front of the camera and take the photo again.")
# The fovea lies about 2.5 disc diameters from the disc centre in adults; a heatmap peak much nearer or
# farther is something else (a disc-centred photo whose macula is at or past the edge of the field).
FOVEA_DISC_DIAMETERS = (1.8, 3.5)
MIRROR_PASS_2 = True  # average pass 2's disc and cup maps with those of the mirrored crop


class ScreeningPipeline:
    def __init__(self, engine: Engine, policy: ReferralPolicy, gate: QualityGate | None = None,
                 model_versions: dict[str, str] | None = None, classifier: Engine | None = None,
                 mirror: bool = MIRROR_PASS_2):
        self.engine = engine
        self.mirror = mirror
        self.classifier = classifier
        self.policy = policy
        self.gate = gate or QualityGate()
        self.model_versions = dict(model_versions or {})
        self.model_versions.setdefault("referral", policy.source)

    @classmethod
    def from_artifacts(cls, precision: str = "auto", gate: QualityGate | None = None, threads: int | None = None,
                       engine_cache: Path | None = None) -> "ScreeningPipeline":
        """The shipped models; `auto` takes INT8 where the accuracy gate allows it and this CPU runs it faster."""
        if precision == "auto":
            precision = registry.preferred_precision("segmentation", measure_in=engine_cache, threads=threads)
        engine = registry.load_engine("segmentation", precision, threads=threads, engine_cache=engine_cache)
        classifier = None
        if "glaucoma" in registry.manifest():
            classifier_precision = registry.preferred_precision("glaucoma") if precision == "int8" else "fp32"
            classifier = registry.load_engine("glaucoma", classifier_precision, threads=threads,
                                              engine_cache=engine_cache)
        policy = ReferralPolicy.load(SCREENING_POLICY) if SCREENING_POLICY.exists() else ReferralPolicy()
        versions = registry.versions()
        versions["precision"] = precision
        versions["backend"] = engine.backend
        return cls(engine, policy, gate, versions, classifier)

    def _infer(self, rgb: np.ndarray, box: preprocess.Box) -> dict[str, np.ndarray]:
        return self.engine.run({"image": preprocess.to_input(rgb, box)})

    def locate_disc(self, rgb: np.ndarray) -> tuple[tuple[float, float, float] | None, tuple[float, float] | None]:
        """Pass 1 on the whole photo: disc centre and vertical diameter, and the fovea, in photo pixels. The
        fovea only where the heatmap's peak is confident and where anatomy allows it (FOVEA_DISC_DIAMETERS)."""
        box = preprocess.whole_image_box(rgb.shape)
        out = self._infer(rgb, box)
        disc = largest_component(out["disc"][0, 0] >= 0.5)
        fovea = None
        heat = out["fovea"][0, 0]
        if heat.max() >= 0.3:  # a confident peak only
            fovea = box.to_source(*preprocess.heatmap_peak(heat))
        if disc.sum() < MIN_DISC_FRACTION * disc.size:
            return None, None  # without a disc, a fovea cannot be checked against it
        ys, xs = np.nonzero(disc)
        cx, cy = box.to_source(float(xs.mean()) + 0.5, float(ys.mean()) + 0.5)
        diameter = float(disc.sum(axis=0).max()) * box.side / preprocess.INPUT_SIZE
        if fovea is not None:
            apart = float(np.hypot(fovea[0] - cx, fovea[1] - cy)) / diameter
            if not FOVEA_DISC_DIAMETERS[0] <= apart <= FOVEA_DISC_DIAMETERS[1]:
                fovea = None
        return (cx, cy, diameter), fovea

    def segment_disc(self, rgb: np.ndarray, cx: float, cy: float, diameter: float) -> DiscSegmentation:
        """Pass 2 on the disc-centred crop."""
        box = preprocess.disc_crop_box(cx, cy, diameter, rgb.shape)
        x = preprocess.to_input(rgb, box)
        batch = np.concatenate([x, x[..., ::-1]]) if self.mirror else x
        out = self.engine.run({"image": np.ascontiguousarray(batch)})
        disc, cup = out["disc"][0, 0], out["cup"][0, 0]
        if self.mirror:
            disc = (disc + out["disc"][1, 0, :, ::-1]) / 2
            cup = (cup + out["cup"][1, 0, :, ::-1]) / 2
        second = None
        if self.classifier is not None:
            second = float(self.classifier.run({"image": x})["glaucoma"].reshape(-1)[0])
        return DiscSegmentation(box, disc, cup, float(out["glaucoma"].reshape(-1)[0]), second)

    def screen(self, rgb: np.ndarray, quality: QualityReport | None = None, *, history: EyeHistory | None = None,
               progression: ProgressionAssessor | None = None, eye: str | None = None) -> ScreeningResult:
        """`quality`: the gate's report on this very photo where the caller has one (the capture loop
        assessed its still already, with the same settings), so the gate runs once per photo. With
        `progression` and the eye's `history`, the eye is also compared with its first screened visit;
        an ungradable photo gets the verdict too ("nothing to compare with"), as the worker sees it.
        `eye` ("right"/"left"), where the caller knows which eye was photographed, is checked against
        the photo: a macula on the wrong side of the disc is a photo upside down or of the other eye."""
        result = self._screen(rgb, quality, eye)
        if progression is not None and history is not None:
            result.progression = progression.assess_screening(history, rgb, result)
        return result

    def _screen(self, rgb: np.ndarray, quality: QualityReport | None, eye: str | None = None) -> ScreeningResult:
        t = {}
        t0 = time.perf_counter()
        if quality is None:
            quality = self.gate.assess(rgb)
        t["quality"] = (time.perf_counter() - t0) * 1000
        messages = [r.message for r in quality.reasons]
        result = ScreeningResult(gradable=quality.gradable, quality=quality, referral=RESCREEN, reasons=messages,
                                 model_versions=self.model_versions, timings_ms=t)
        if quality.field is None and not quality.gradable:
            return result  # not a fundus photo at all: nothing to segment
        t0 = time.perf_counter()
        found, fovea = self.locate_disc(rgb)
        t["locate_disc"] = (time.perf_counter() - t0) * 1000
        result.fovea = fovea
        if found is None:
            return _refused(result, messages, "The optic disc could not be found: centre the disc in the photo and take it again.")
        if turned_on_its_side(found, fovea):
            return _refused(result, messages, TURNED_MESSAGE)
        if eye is not None and macula_on_the_wrong_side(found, fovea, eye):
            return _refused(result, messages, WRONG_SIDE_MESSAGE.format(eye=eye))
        t0 = time.perf_counter()
        seg = self.segment_disc(rgb, *found)
        disc, cup = seg.masks()
        scale = seg.box.side / preprocess.INPUT_SIZE
        m = measure(disc, cup, scale=scale, offset=(seg.box.x0, seg.box.y0), fovea=fovea)
        t["segment_disc"] = (time.perf_counter() - t0) * 1000
        result.segmentation = seg
        result.measurements = m
        if m is None:
            return _refused(result, messages, "The optic disc could not be outlined: take the photo again with the disc in the centre.")
        result.classifier_probability = sigmoid(seg.glaucoma_logit)
        if seg.disc_classifier_logit is not None:
            result.disc_classifier_probability = sigmoid(seg.disc_classifier_logit)
        result.vcdr_probability = self.policy.vcdr_probability(m.vcdr)
        result.glaucoma_probability = self.policy.fuse(seg.glaucoma_logit, m.vcdr, seg.disc_classifier_logit)
        result.referral, result.reasons = self.policy.decide(
            gradable=quality.gradable, quality_messages=messages, vcdr=m.vcdr, probability=result.glaucoma_probability)
        t["total"] = sum(v for k, v in t.items())
        return result


def _refused(result: ScreeningResult, messages: list[str], why: str) -> ScreeningResult:
    """The photo cannot be screened: the gate's messages, then why the pipeline stopped."""
    result.gradable = False
    result.reasons = messages + [why]
    return result


def turned_on_its_side(disc: tuple[float, float, float], fovea: tuple[float, float] | None) -> bool:
    """The macula lies beside the disc, a little below it, in every upright fundus photo; a photo whose
    fovea is above or below the disc was taken or stored turned by a quarter, and its vertical
    cup-to-disc ratio would be read across the disc. Never graded as it lies."""
    if fovea is None:
        return False
    dx, dy = fovea[0] - disc[0], fovea[1] - disc[1]
    return abs(dy) > math.tan(math.radians(TURNED_ANGLE_DEG)) * abs(dx)


def macula_on_the_wrong_side(disc: tuple[float, float, float], fovea: tuple[float, float] | None, eye: str) -> bool:
    """In an upright photo of a right eye the disc lies right of the macula, of a left eye left of it
    (the photo shows the eye as the camera faces it). The other way round, the photo is upside down
    or it is the other eye, and either would be recorded against the wrong eye. No fovea: no check."""
    if fovea is None:
        return False
    if eye not in ("right", "left"):
        raise ValueError(f"eye must be 'right' or 'left', not {eye!r}")
    towards_macula = fovea[0] - disc[0]
    return towards_macula > 0 if eye == "right" else towards_macula < 0


def screen_file(pipeline: ScreeningPipeline, path: Path, *, history: EyeHistory | None = None,
                progression: ProgressionAssessor | None = None,
                look: Callable[[np.ndarray], np.ndarray] | None = None,
                max_pixels: int = MAX_PIXELS) -> tuple[dict, Photo | None, ScreeningResult | None]:
    """Screen one photo file into the JSON the CLI prints; never raises for a bad file. The photo comes back
    as read (its `original`: the file's JPEG, where a visit may store that as it is). `look` changes the
    decoded photo first (the lab shows it through a simulated other camera). A photo of more than
    `max_pixels` is refused from its header."""
    row: dict = {"image": str(path)}
    try:
        photo = read_photo(path, max_pixels=max_pixels)
    except ImageError as exc:
        row.update(ok=False, error=str(exc), gradable=False, referral=None)
        return row, None, None
    if look is not None:
        photo = Photo(look(photo.rgb))  # no longer the file's pixels: stored, it is encoded afresh
    rgb = photo.rgb
    result = pipeline.screen(rgb, history=history, progression=progression)
    row.update(ok=True, width=rgb.shape[1], height=rgb.shape[0])
    row.update(result.to_dict())
    return row, photo, result
