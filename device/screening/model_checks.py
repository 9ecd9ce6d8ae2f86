"""What new models must show on this unit before it switches to them, with the bundle's own check photos.

Three checks, each refusing with its reason in words:
- **compatible**: every ONNX file takes exactly the inputs this software's screening feeds it (names,
  channels, sizes; a batch dimension left open where the pipeline feeds more than one), gives the outputs
  it reads, and matches the manifest's hash. A model trained for another input size would otherwise load
  and give nonsense.
- **INT8 accuracy gate**, where the bundle lets INT8 run (`shipped_precision` int8): its manifest must carry
  the passed verdict of `glaucoscreen gate`, and on the check photos, against their drawn outlines, the INT8
  screening may be worse than the FP32 one by no more than that verdict's own limits (disc and cup Dice,
  vCDR error). AUC needs far more photos than a bundle carries; the release's gate measured it.
- **smoke screening**: each check photo is screened with the new models as the unit would, and must come
  out as it did on the release's machine (gradable or not, the referral, vCDR within VCDR_TOLERANCE), and
  the progression network, where there is one, must run.

The check photos are made when the bundle is packed (`make_check_photos`): seeded synthetic eyes drawn by
the same renderer as the simulated camera (`models.fundus`), so their outlines are exact, each with the
result the new models gave on the release's machine.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from device.screening import progression as progression_module
from device.screening.pipeline import ScreeningPipeline
from device.screening.progression import ProgressionAssessor
from models.runtime import preprocess, registry
from models.runtime.engine import EngineError
from models.runtime.images import ImageError, decode_mask, encode_mask, encode_png, read_photo

CHECKS_FILE = "checks.json"
VCDR_TOLERANCE = 0.02  # the same models on another CPU and ONNX Runtime agree far closer than this
DEFAULT_LIMITS = {"disc_dice": 0.01, "cup_dice": 0.01, "vcdr_mae": 0.01}  # `glaucoscreen gate`'s, where a verdict omits one
BATCH = "N"  # a dimension the pipeline feeds more than one size of


@dataclass(frozen=True)
class Feed:
    inputs: dict[str, tuple]  # name -> shape, BATCH where the pipeline needs it left open
    outputs: tuple[str, ...]


def feeds() -> dict[str, Feed]:
    """What this software's screening feeds each network and reads back (see the pipeline and progression)."""
    size, crop = preprocess.INPUT_SIZE, progression_module.CROP_SIZE
    return {
        # pass 2 runs the crop and its mirror image in one batch: the batch must stay open
        "segmentation": Feed({"image": (BATCH, 3, size, size)}, ("disc", "cup", "fovea", "glaucoma")),
        "glaucoma": Feed({"image": (1, 3, size, size)}, ("glaucoma",)),
        "progression": Feed({"earlier": (1, 3, crop, crop), "current": (1, 3, crop, crop), "years": (1, 1)},
                            ("progression",)),
    }


class CheckFailed(ValueError):
    """New models that this unit must not switch to; the message says why."""


# -- compatible ------------------------------------------------------------------------------------
def incompatibilities(folder: Path) -> list[str]:
    """Why the models in `folder` cannot run in this software's screening (empty: they can)."""
    try:
        manifest = registry.manifest(folder)
    except (EngineError, ValueError) as exc:
        return [f"its manifest cannot be read: {exc}"]
    problems = []
    if "segmentation" not in manifest:
        problems.append("it has no segmentation model, which every screening runs")
    expected = feeds()
    for name, entry in manifest.items():
        if not isinstance(entry, dict) or "file" not in entry or name not in expected:
            continue  # a model this software does not run stays unused: no reason to refuse the rest
        for precision in ["fp32"] + [p for p in ("int8",) if isinstance(entry.get(p), dict)]:
            try:
                path, _ = registry.model_file(name, precision, folder)
            except EngineError as exc:
                problems.append(str(exc))
                continue
            problems += _shape_problems(name, path, expected[name])
    return problems


def _shape_problems(name: str, path: Path, feed: Feed) -> list[str]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure means the same to the IT person: not a model we run
        return [f"{path.name} is not a readable ONNX model ({type(exc).__name__}: {exc})"]
    initialisers = {i.name for i in model.graph.initializer}
    given = {i.name: tuple(d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
                           for d in i.type.tensor_type.shape.dim)
             for i in model.graph.input if i.name not in initialisers}
    problems = []
    if set(given) != set(feed.inputs):
        problems.append(f"{path.name} ({name}) takes the inputs {_names(given)}; this software feeds it {_names(feed.inputs)}")
    for input_name, shape in feed.inputs.items():
        if input_name not in given:
            continue
        have = given[input_name]
        fits = len(have) == len(shape) and all(
            h == s or (s == BATCH and isinstance(h, str)) or (s == 1 and i == 0 and isinstance(h, str))
            for i, (h, s) in enumerate(zip(have, shape)))
        if not fits:
            problems.append(f"{path.name} ({name}) takes {input_name} as {_shape(have)}; the screening feeds it "
                            f"{_shape(shape)}: these models were made for another version of the software")
    outputs = {o.name for o in model.graph.output}
    missing = [o for o in feed.outputs if o not in outputs]
    if missing:
        problems.append(f"{path.name} ({name}) does not give {', '.join(missing)}, which the screening reads")
    return problems


def _names(inputs: dict) -> str:
    return ", ".join(sorted(inputs)) or "nothing"


def _shape(shape: tuple) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# -- the check photos ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckPhoto:
    file: Path
    eye: str | None
    mask: Path | None
    expected: dict

    def rgb(self) -> np.ndarray:
        try:
            return read_photo(self.file).rgb
        except ImageError as exc:
            raise CheckFailed(f"the check photo {self.file.name} cannot be read: {exc}") from None

    def outlines(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.mask is None:
            return None
        mask = cv2.imread(str(self.mask), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise CheckFailed(f"the check photo's outlines {self.mask.name} cannot be read")
        return decode_mask(mask)


def check_photos(folder: Path) -> list[CheckPhoto]:
    """The bundle's check photos (`folder` is its checks/), as `make_check_photos` listed them."""
    try:
        listed = json.loads((Path(folder) / CHECKS_FILE).read_text())["photos"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckFailed("the bundle has no list of check photos (checks/checks.json): it was not made by "
                          "`glaucoscreen models pack`") from None
    if not listed:
        raise CheckFailed("the bundle carries no check photos: new models are never switched to unscreened")
    return [CheckPhoto(Path(folder) / p["file"], p.get("eye"), Path(folder) / p["mask"] if p.get("mask") else None,
                       dict(p.get("expected", {}))) for p in listed]


def make_check_photos(out: Path, artifacts: Path, count: int = 4, seed: int = 20240601,
                      size: tuple[int, int] = (576, 768)) -> list[Path]:
    """Draw `count` seeded synthetic eyes (both sides, with and without glaucoma) into `out`, with their exact
    outlines, screen them with the models of `artifacts` in FP32 and write what came out to checks.json."""
    from models.fundus import apply_optics, photo_mask, random_eye, render_reflectance

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipeline = ScreeningPipeline.from_artifacts(precision="fp32", artifacts=artifacts)
    listed, written = [], []
    try:
        for i in range(count):
            eye = random_eye(seed + i, glaucoma=i % 2 == 1, laterality="right" if i % 2 == 0 else "left")
            scene = render_reflectance(eye, size)
            rgb = apply_optics(scene, rng=np.random.default_rng([seed, i]))
            rim = photo_mask(scene, (0.0, 0.0))
            name = f"check-{i + 1}"
            (out / f"{name}.png").write_bytes(encode_png(rgb))
            disc, cup = decode_mask(rim)
            (out / f"{name}.mask.png").write_bytes(encode_png(encode_mask(disc, cup)))
            result = pipeline.screen(rgb, eye=eye.laterality)
            listed.append({"file": f"{name}.png", "mask": f"{name}.mask.png", "eye": eye.laterality,
                           "expected": _summary(result)})
            written += [out / f"{name}.png", out / f"{name}.mask.png"]
    finally:
        pipeline.close()
    (out / CHECKS_FILE).write_text(json.dumps({"made_with": registry.versions(artifacts), "photos": listed}, indent=1) + "\n")
    return [out / CHECKS_FILE, *written]


def _summary(result) -> dict:
    return {"gradable": bool(result.gradable), "referral": result.referral,
            "vcdr": None if result.vcdr is None else round(float(result.vcdr), 4)}


# -- the checks on the unit --------------------------------------------------------------------------
def run_checks(models: Path, checks: Path) -> dict:
    """Every check on the models in `models` with the check photos in `checks`. Returns what was measured;
    raises CheckFailed with every reason when the models must not be switched to."""
    problems = incompatibilities(models)
    if problems:
        raise CheckFailed("these models do not fit this software: " + "; ".join(problems))
    photos = check_photos(checks)
    report: dict = {"photos": len(photos)}
    fp32 = ScreeningPipeline.from_artifacts(precision="fp32", artifacts=models)
    try:
        screened = [(photo, fp32.screen(photo.rgb(), eye=photo.eye)) for photo in photos]
        report["smoke"] = _smoke(screened)
        report["progression"] = _progression_runs(models, screened)
        report["int8_gate"] = _int8_gate(models, screened)
    finally:
        fp32.close()
    return report


def _smoke(screened: list) -> dict:
    problems = []
    for photo, result in screened:
        want, got = photo.expected, _summary(result)
        why = []
        if want.get("gradable") != got["gradable"]:
            why.append(f"{'gradable' if got['gradable'] else 'ungradable'} here, {'gradable' if want.get('gradable') else 'ungradable'} "
                       "when the bundle was made")
        if want.get("referral") != got["referral"]:
            why.append(f"referral {got['referral']!r} here, {want.get('referral')!r} when the bundle was made")
        if (want.get("vcdr") is None) != (got["vcdr"] is None) or (
                got["vcdr"] is not None and abs(got["vcdr"] - want["vcdr"]) > VCDR_TOLERANCE):
            why.append(f"cup-to-disc ratio {got['vcdr']} here, {want.get('vcdr')} when the bundle was made")
        if why:
            problems.append(f"{photo.file.name}: " + ", ".join(why))
    if problems:
        raise CheckFailed("the smoke screening of the bundle's check photos came out differently on this unit: "
                          + "; ".join(problems))
    return {"passed": True, "screened": len(screened)}


def _progression_runs(models: Path, screened: list) -> dict:
    """The progression network, where the bundle has one, must load and give a finite answer on a real crop."""
    assessor = ProgressionAssessor.from_artifacts(artifacts=models)
    try:
        if assessor.engine is None:
            return {"network": False}
        measured = [(p, r.measurements) for p, r in screened if r.measurements is not None]
        if not measured:
            raise CheckFailed("no check photo could be measured, so the progression network could not be tried")
        photo, measurements = measured[0]
        disc = measurements.disc
        crop = progression_module.crop_input(photo.rgb(), disc.cx, disc.cy, disc.vertical_diameter)
        logit = assessor.engine_logit(crop, crop, 1.0)
        if logit is None or not math.isfinite(logit):
            raise CheckFailed(f"the progression network gave {logit} on a check photo, not a number")
        return {"network": True, "passed": True}
    finally:
        assessor.close()


def _int8_gate(models: Path, screened: list) -> dict:
    if registry.shipped_precision("segmentation", models) != "int8":
        return {"used": False, "why": "the bundle's manifest runs FP32 only"}
    verdict = registry.manifest(models)["segmentation"]["int8"].get("gate") or {}
    if not verdict.get("passed"):
        raise CheckFailed("the bundle lets its INT8 segmentation run, but its manifest carries no passed accuracy gate: "
                          "run `glaucoscreen gate` before packing")
    limits = dict(DEFAULT_LIMITS)
    for key, check in verdict.get("checks", {}).items():
        if key in limits and isinstance(check, dict) and isinstance(check.get("limit"), (int, float)):
            limits[key] = float(check["limit"])
    int8 = ScreeningPipeline.from_artifacts(precision="int8", artifacts=models)
    try:
        rows: dict[str, list[dict]] = {"fp32": [], "int8": []}
        for photo, fp32_result in screened:
            outlines = photo.outlines()
            if outlines is None:
                continue
            rgb = photo.rgb()
            rows["fp32"].append(_against(fp32_result, outlines, rgb.shape))
            rows["int8"].append(_against(int8.screen(rgb, eye=photo.eye), outlines, rgb.shape))
    finally:
        int8.close()
    if not rows["int8"]:
        raise CheckFailed("the bundle's check photos carry no outlines, so its INT8 build cannot be judged")
    checks = {}
    for key, limit in limits.items():
        a, b = _mean(rows["fp32"], key), _mean(rows["int8"], key)
        worse = (b - a) if key == "vcdr_mae" else (a - b)
        checks[key] = {"fp32": round(a, 4), "int8": round(b, 4), "worse_by": round(worse, 4), "limit": limit,
                       "passed": worse <= limit}
    failed = {k: c for k, c in checks.items() if not c["passed"]}
    if failed:
        raise CheckFailed("the INT8 build does worse than FP32 on the check photos beyond the accuracy gate's limits: "
                          + ", ".join(f"{k} worse by {c['worse_by']} (limit {c['limit']})" for k, c in failed.items()))
    return {"used": True, "passed": True, "n": len(rows["int8"]), "checks": checks}


def _against(result, outlines: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...]) -> dict:
    """Disc and cup Dice and vCDR error of one screening against the drawn outlines; a photo the screening could
    not outline scores 0 Dice and the whole ratio as error, as the lab's evaluation counts it."""
    disc_true, cup_true = outlines
    true_vcdr = _vcdr(disc_true, cup_true)
    if result.segmentation is None or result.measurements is None:
        return {"disc_dice": 0.0, "cup_dice": 0.0, "vcdr_mae": true_vcdr}
    disc, cup = result.segmentation.masks_on_photo(shape)
    return {"disc_dice": _dice(disc, disc_true), "cup_dice": _dice(cup, cup_true),
            "vcdr_mae": abs(float(result.measurements.vcdr) - true_vcdr)}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _vcdr(disc: np.ndarray, cup: np.ndarray) -> float:
    height = int(disc.sum(axis=0).max(initial=0))
    return int(cup.sum(axis=0).max(initial=0)) / height if height else 0.0


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))

