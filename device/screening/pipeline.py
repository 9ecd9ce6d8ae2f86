"""The screening of one fundus photo: quality -> disc localisation -> disc/cup segmentation ->
measurements -> glaucoma probability -> referral, and, given the eye's earlier visits, progression.

The segmentation network runs twice: on the whole photo (downscaled) to find the disc, then on a
disc-centred crop so that the cup, a few dozen pixels tall on a small photo and hundreds on a
phone photo, is always segmented at the same scale. The disc-crop glaucoma classifier reads the very
same crop, and runs only where the referral rule averages its score (or a lab measure asks for it): a
network whose answer no decision reads was 13% of the screening's time (model card, "Speed"). `Engine` hides whether ONNX Runtime or TensorRT does the work.
On ONNX Runtime pass 2 runs on the middle 224 px of the 256 px crop (`preprocess.SMALL_PASSES`), the
disc at the same scale, which costs nothing measurable in accuracy (model card, "Speed"). A large photo is halved once for the gate and pass 1 alike
(`preprocess.Shrinks`), and the disc and cup are measured on the crop's grid: only the overlay and
the stored masks carry them to the photo's own pixels.

Pass 2 also runs on the crop mirrored left to right, in the same batch, and the disc and cup maps
are the mean of the two: a disc outline should not depend on which side the network's receptive
fields happen to favour, and on the 80 REFUGE validation photos the mean outlines the disc and cup
better (on 10 Drishti-GS1 ones it is a wash; model card). The glaucoma logits stay those of the crop as taken, the inputs the referral fusion
was fitted on.
"""
from __future__ import annotations

import logging
import math
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Callable

import numpy as np

from device.screening.measurements import largest_component, measure
from device.screening.progression import EyeHistory, ProgressionAssessor
from device.screening.quality import QualityGate, QualityReport
from device.screening.referral import DISC_CLASSIFIER, RESCREEN, ReferralPolicy, sigmoid
from device.screening.result import DiscSegmentation, ScreeningResult
from models.runtime import preprocess, registry
from models.runtime.engine import Engine, EngineError, close_engine
from models.runtime.images import MAX_PIXELS, ImageError, Photo, read_photo

log = logging.getLogger(__name__)

SCREENING_POLICY = registry.ARTIFACTS / "screening.json"
MIN_DISC_FRACTION = 0.0004  # disc area / the letterbox view's area below which pass 1 "found" only a speck
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
                 mirror: bool = MIRROR_PASS_2, sizes: preprocess.PassSizes | None = None):
        self.engine = engine
        self.mirror = mirror
        # the smaller pass 2 where the engine takes any image size (ONNX Runtime); a TensorRT engine is
        # built for the network's own 256 px and runs both passes at that size
        self.sizes = sizes or (preprocess.SMALL_PASSES if getattr(engine, "free_size", False) else preprocess.FULL_PASSES)
        self.classifier = classifier
        self.policy = policy
        self.gate = gate or QualityGate()
        self.model_versions = dict(model_versions or {})
        self.model_versions.setdefault("referral", policy.source)
        self.not_loaded: dict[str, str] = {}  # model -> why, for one left out (the screening runs without it)
        self.not_run: set[str] = set()  # models installed that the referral rule does not use, so not loaded

    @classmethod
    def from_artifacts(cls, precision: str = "auto", gate: QualityGate | None = None, threads: int | None = None,
                       engine_cache: Path | None = None, artifacts: Path | None = None,
                       disc_classifier: bool | None = None) -> "ScreeningPipeline":
        """The models of one folder (`artifacts`: an installed version's, from `active_artifacts`;
        default the shipped ones), every model and the policy from that same folder; `auto` takes INT8 where
        the accuracy gate allows it and this CPU runs it faster. `disc_classifier`: run the disc classifier
        (None: where the referral rule averages its score; True for a lab measure that compares opinions)."""
        artifacts = artifacts or registry.ARTIFACTS
        if precision == "auto":
            precision = registry.preferred_precision("segmentation", artifacts, measure_in=engine_cache, threads=threads)
        policy_file = artifacts / SCREENING_POLICY.name
        policy = ReferralPolicy.load(policy_file) if policy_file.exists() else ReferralPolicy()
        engine = registry.load_engine("segmentation", precision, artifacts, threads=threads, engine_cache=engine_cache,
                                      free_size=True)
        classifier, not_loaded, not_run = None, {}, set()
        if disc_classifier is None:
            disc_classifier = DISC_CLASSIFIER in policy.fused_opinions()
        if "glaucoma" in registry.manifest(artifacts) and not disc_classifier:
            not_run.add("glaucoma")
        elif "glaucoma" in registry.manifest(artifacts):
            classifier_precision = registry.preferred_precision("glaucoma", artifacts) if precision == "int8" else "fp32"
            try:
                classifier = registry.load_engine("glaucoma", classifier_precision, artifacts, threads=threads,
                                                  engine_cache=engine_cache)
            except EngineError as exc:
                if DISC_CLASSIFIER in policy.fused_opinions():  # the referral needs it: no screening without it
                    close_engine(engine)
                    raise
                # only a score shown beside the referral: screen without it (a TensorRT build that failed)
                log.error("disc classifier not loaded; screening without its score: %s", exc)
                not_loaded["glaucoma"] = f"{str(exc).rstrip('.')}. Screening runs without the disc classifier's score."
        versions = registry.versions(artifacts)
        versions["precision"] = precision
        versions["backend"] = engine.backend
        pipeline = cls(engine, policy, gate, versions, classifier)
        pipeline.not_loaded, pipeline.not_run = not_loaded, not_run
        return pipeline

    def engines(self) -> list[Engine]:
        return [e for e in (self.engine, self.classifier) if e is not None]

    def close(self) -> None:
        """Free what the engines hold (a TensorRT engine's GPU memory and CUDA context)."""
        for e in self.engines():
            close_engine(e)

    def locate_disc(self, rgb: np.ndarray | preprocess.Shrinks
                    ) -> tuple[tuple[float, float, float] | None, tuple[float, float] | None]:
        """Pass 1 on the whole photo: disc centre and vertical diameter, and the fovea, in photo pixels. The
        fovea only where the heatmap's peak is confident and where anatomy allows it (FOVEA_DISC_DIAMETERS)."""
        clock = _Clock()
        size = self.sizes.whole
        box = preprocess.whole_image_box(rgb.shape)
        view = preprocess.warp(rgb, box, size)
        # where the engine allows it, only the band of the letterbox the photo fills (its black bars need no network)
        left, top, width, height = preprocess.photo_band(rgb.shape, size) if self.sizes.trim_letterbox else (0, 0, size, size)
        x = preprocess.normalize(view[top:top + height, left:left + width])
        clock.lap("pass1_input")
        out = self.engine.run({"image": x})
        clock.lap("pass1")
        disc = largest_component(out["disc"][0, 0] >= 0.5)
        fovea = None
        heat = out["fovea"][0, 0]
        if heat.max() >= 0.3:  # a confident peak only
            fx, fy = preprocess.heatmap_peak(heat)
            fovea = box.to_source(fx + left, fy + top, size=size)
        if disc.sum() < MIN_DISC_FRACTION * size * size:
            clock.lap("locate")
            return None, None  # without a disc, a fovea cannot be checked against it
        ys, xs = np.nonzero(disc)
        cx, cy = box.to_source(float(xs.mean()) + 0.5 + left, float(ys.mean()) + 0.5 + top, size=size)
        diameter = float(disc.sum(axis=0).max()) * box.side / size
        if fovea is not None:
            apart = float(np.hypot(fovea[0] - cx, fovea[1] - cy)) / diameter
            if not FOVEA_DISC_DIAMETERS[0] <= apart <= FOVEA_DISC_DIAMETERS[1]:
                fovea = None
        clock.lap("locate")
        return (cx, cy, diameter), fovea

    def segment_disc(self, rgb: np.ndarray | preprocess.Shrinks, cx: float, cy: float, diameter: float) -> DiscSegmentation:
        """Pass 2 on the disc-centred crop: its middle `sizes.crop` pixels and their mirror image, one batch.
        The disc classifier reads the whole `INPUT_SIZE` crop, as it was trained, from the same resampling."""
        clock = _Clock()
        outer = preprocess.disc_crop_box(cx, cy, diameter, rgb.shape)
        view = preprocess.warp(rgb, outer)
        size = self.sizes.crop
        margin = (preprocess.INPUT_SIZE - size) // 2
        box = preprocess.central_box(outer, size)
        x = preprocess.normalize(view[margin:margin + size, margin:margin + size])
        batch = np.concatenate([x, x[..., ::-1]]) if self.mirror else x
        clock.lap("pass2_input")
        out = self.engine.run({"image": np.ascontiguousarray(batch)})
        disc, cup = out["disc"][0, 0], out["cup"][0, 0]
        if self.mirror:
            disc = (disc + out["disc"][1, 0, :, ::-1]) / 2
            cup = (cup + out["cup"][1, 0, :, ::-1]) / 2
        clock.lap("pass2")
        second = None
        if self.classifier is not None:
            second = float(self.classifier.run({"image": preprocess.normalize(view)})["glaucoma"].reshape(-1)[0])
            clock.lap("classifier")
        return DiscSegmentation(box, disc, cup, float(out["glaucoma"].reshape(-1)[0]), second)

    def outline_views(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pass 2's disc and cup maps (mirror averaged, as `segment_disc`) for views already cut and resampled
        (N x 256 x 256 x 3 uint8): what the progression step measures an eye's visits through. Two views (four
        images with their mirrors) per run, within a TensorRT engine's largest batch."""
        discs, cups = [], []
        for k in range(0, len(views), 2):
            x = np.concatenate([preprocess.normalize(v) for v in views[k:k + 2]])
            n = len(x)
            batch = np.concatenate([x, x[..., ::-1]]) if self.mirror else x
            out = self.engine.run({"image": np.ascontiguousarray(batch)})
            disc, cup = out["disc"][:n, 0], out["cup"][:n, 0]
            if self.mirror:
                disc = (disc + out["disc"][n:, 0, :, ::-1]) / 2
                cup = (cup + out["cup"][n:, 0, :, ::-1]) / 2
            discs.append(disc)
            cups.append(cup)
        return np.concatenate(discs), np.concatenate(cups)

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
            result.progression = progression.assess_screening(history, rgb, result, outline=self.outline_views, eye=eye)
        return result

    def _screen(self, rgb: np.ndarray, quality: QualityReport | None, eye: str | None = None) -> ScreeningResult:
        t: dict[str, float] = {}
        started = time.perf_counter()
        booked = _TIMINGS.set(t)  # the passes book their steps here too
        clock = _Clock()
        photo = preprocess.Shrinks(rgb)  # halved once for the gate and pass 1 alike
        if quality is None:
            quality = self.gate.assess(rgb, shrinks=photo)
        clock.lap("gate")
        messages = [r.message for r in quality.reasons]
        result = ScreeningResult(gradable=quality.gradable, quality=quality, referral=RESCREEN, reasons=messages,
                                 model_versions=self.model_versions, timings_ms=t)
        try:
            if quality.field is None and not quality.gradable:
                return result  # not a fundus photo at all: nothing to segment
            found, fovea = self.locate_disc(photo)
            clock.restart()
            result.fovea = fovea
            if found is None:
                return _refused(result, messages, "The optic disc could not be found: centre the disc in the photo and take it again.")
            if turned_on_its_side(found, fovea):
                return _refused(result, messages, TURNED_MESSAGE)
            if eye is not None and macula_on_the_wrong_side(found, fovea, eye):
                return _refused(result, messages, WRONG_SIDE_MESSAGE.format(eye=eye))
            seg = self.segment_disc(photo, *found)
            clock.restart()
            disc, cup = seg.masks()
            clock.lap("clean")
            # measured on the crop's own grid, in photo pixels: no map is carried to the photo's size here
            m = measure(disc, cup, scale=seg.scale, offset=(seg.box.x0, seg.box.y0), fovea=fovea)
            clock.lap("measure")
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
            clock.lap("fusion")
            return result
        finally:
            _TIMINGS.reset(booked)
            t["total"] = (time.perf_counter() - started) * 1000


# The steps of the screening now running in this thread, for its result's `timings_ms`: set by `_screen`, so
# `locate_disc` and `segment_disc` (which a caller may also use alone, or a subclass override) keep their
# signatures and book nothing when called on their own.
_TIMINGS: ContextVar[dict[str, float] | None] = ContextVar("screening_timings", default=None)


class _Clock:
    """Milliseconds per step of one screening, added into a result's `timings_ms` (what `glaucoscreen bench
    --profile` reads): each `lap` books the time since the last one to its step."""

    def __init__(self) -> None:
        self.into = _TIMINGS.get()
        self.last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        if self.into is not None:
            self.into[step] = self.into.get(step, 0.0) + (now - self.last) * 1000
        self.last = now

    def restart(self) -> None:
        """After a step that booked its own laps."""
        self.last = time.perf_counter()


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
