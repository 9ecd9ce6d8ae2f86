"""What the optic module's calibration is worth: the quality gate's false rejections and the disc and cup Dice
on simulated captures through strongly vignetted, colour-cast modules, each without and with its own
calibration, against the reference module (the one the gate and the networks were tuned for, which needs no
calibration).

Every module photographs the same synthetic eyes, still, aligned and in focus (all gradable by construction),
lit the way the capture loop lights them: the light controller steers the LED, exposure and gain on preview
frames, through the calibration's correction where there is one, until the retina's brightness settles; then
a full-resolution still is taken, corrected, judged by the gate and screened. Each strong module is calibrated
first by the real procedure (`calibration.measure`) on its simulated grey target. Figures of a simulation,
labelled so; `glaucoscreen bench-calibration --help` (or `python -m device.lab.bench_calibration`) for options.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from calibration.measure import calibrate
from calibration.optical import FrameCorrection
from device.capture.light import LightController
from device.config import CaptureConfig
from device.screening.pipeline import ScreeningPipeline
from device.screening.quality import QualityGate
from hardware.camera import PREVIEW_SIZE
from hardware.optic_module_sim import ModuleOptics
from hardware.rig import simulated_rig
from hardware.simulated_camera import settled_photo
from models.fundus import BACKGROUND, CUP, random_eye, render_reflectance
from models.metrics import dice

STILL_SIZE = (768, 1024)  # smaller than the unit's stills, so the bench runs in minutes on a small machine
SEVERITY = 3.0            # ModuleOptics.for_serial: 1 an ordinary unit, 3 a badly made or aged one
SETTLE_FRAMES = 24        # most preview frames the light is given to settle


def calibrated(optics: ModuleOptics, serial: str, max_level: float) -> FrameCorrection:
    """The module calibrated by the real procedure on its simulated grey target and model eye."""
    with simulated_rig(max_led_level=max_level, max_flash_s=0.5, module_optics=optics, module_serial=serial,
                       fps=None) as rig:
        camera = rig.camera
        if hasattr(camera, "present_target"):
            camera.present_target()
        camera.start()
        made = calibrate(camera, rig.illumination, module_serial=serial, version=1, max_level=max_level,
                         light_meter=rig.light_meter)
    return FrameCorrection(made)


def capture(scenes: tuple, optics: ModuleOptics, correction: FrameCorrection | None, gate: QualityGate,
            settings: CaptureConfig, seed: int) -> tuple[np.ndarray, dict]:
    """The still a unit with these optics (and this correction) takes of the eye, and how its light settled."""
    preview, still = scenes
    light = LightController(settings.target_brightness, settings.max_led_level, exposure_range=(100, 30000))

    def shown(frame: np.ndarray) -> np.ndarray:
        return frame if correction is None else correction(frame)

    frames = 0
    for frames in range(1, SETTLE_FRAMES + 1):
        frame = shown(settled_photo(preview, optics, level=light.level, exposure_us=light.exposure_us, gain=light.gain,
                                    seed=seed * 1000 + frames))
        report = gate.assess(frame)
        brightness = report.metrics.get("retina_brightness", float("nan"))
        if report.field is None or not np.isfinite(brightness):
            brightness = report.metrics.get("brightness", float("nan"))
        light.update(brightness, field_found=report.field is not None)
        if light.settled and frames >= 4:
            break
    raw = settled_photo(still, optics, level=light.level, exposure_us=light.exposure_us, gain=light.gain,
                        seed=seed * 1000 + 999)
    return shown(raw), {"frames": frames, "level": round(light.level, 3), "exposure_us": light.exposure_us,
                        "gain": round(light.gain, 2)}


def judge(pipeline: ScreeningPipeline, gate: QualityGate, photo: np.ndarray, truth: np.ndarray, laterality: str) -> dict:
    report = gate.assess(photo)
    result = pipeline.screen(photo, quality=report, eye=laterality)
    disc_gt, cup_gt = truth != BACKGROUND, truth == CUP
    if result.segmentation is not None:
        disc, cup = result.segmentation.masks_on_photo(photo.shape)
    else:
        disc = cup = np.zeros(truth.shape, bool)
    return {"gate_passed": report.gradable, "reasons": [r.code for r in report.reasons],
            "disc_dice": round(dice(disc, disc_gt), 4), "cup_dice": round(dice(cup, cup_gt), 4)}


def summarise(rows: list[dict]) -> dict:
    n = len(rows)
    return {"captures": n, "gate_false_rejection": round(sum(not r["gate_passed"] for r in rows) / n, 4),
            "disc_dice": round(float(np.mean([r["disc_dice"] for r in rows])), 4),
            "cup_dice": round(float(np.mean([r["cup_dice"] for r in rows])), 4)}


def run(eyes: int = 8, units: int = 3, severity: float = SEVERITY, json_out: Path | None = None, log=print) -> dict:
    started = time.perf_counter()
    settings = CaptureConfig()
    gate = QualityGate()
    pipeline = ScreeningPipeline.from_artifacts(precision="fp32")
    reference = ModuleOptics.design()
    modules = [(f"GSO-BENCH-{i + 1:02d}", ModuleOptics.for_serial(f"GSO-BENCH-{i + 1:02d}", severity)) for i in range(units)]
    corrections = {serial: calibrated(optics, serial, settings.max_led_level) for serial, optics in modules}
    log(f"calibrated {units} modules (severity {severity:g}) in {time.perf_counter() - started:.0f} s")
    rows: dict[str, list[dict]] = {"reference": [], "uncalibrated": [], "calibrated": []}
    per_unit: dict[str, dict[str, list[dict]]] = {s: {"uncalibrated": [], "calibrated": []} for s, _ in modules}
    for i in range(eyes):
        laterality = "right" if i % 2 == 0 else "left"
        eye = random_eye(i, laterality=laterality)
        scenes = (render_reflectance(eye, PREVIEW_SIZE), render_reflectance(eye, STILL_SIZE))
        truth = np.asarray(scenes[1].mask)
        photo, settled = capture(scenes, reference, None, gate, settings, seed=i)
        rows["reference"].append({"eye": i, "module": "reference", **settled,
                                  **judge(pipeline, gate, photo, truth, laterality)})
        for serial, optics in modules:
            for condition, correction in (("uncalibrated", None), ("calibrated", corrections[serial])):
                photo, settled = capture(scenes, optics, correction, gate, settings, seed=i)
                row = {"eye": i, "module": serial, **settled, **judge(pipeline, gate, photo, truth, laterality)}
                rows[condition].append(row)
                per_unit[serial][condition].append(row)
        log(f"eye {i + 1}/{eyes}: reference {rows['reference'][-1]['disc_dice']:.3f}/{rows['reference'][-1]['cup_dice']:.3f}"
            f" (disc/cup Dice), {time.perf_counter() - started:.0f} s")
    summary = {name: summarise(r) for name, r in rows.items()}
    gap = {condition: {k: round(summary[condition][k] - summary["reference"][k], 4)
                       for k in ("gate_false_rejection", "disc_dice", "cup_dice")}
           for condition in ("uncalibrated", "calibrated")}
    report = {
        "what": "simulation: synthetic eyes through simulated optic modules (figures of a simulation)",
        "eyes": eyes, "still_size": list(STILL_SIZE), "severity": severity,
        "modules": {serial: {"falloff": round(o.falloff, 3), "centre": [round(v, 3) for v in o.centre],
                             "tilt": [round(v, 3) for v in o.tilt], "colour": [round(v, 3) for v in o.colour],
                             "led_power": round(o.led_power, 3), "dark": [round(v, 4) for v in o.dark],
                             "edge_to_centre_calibrated": corrections[serial].calibration.edge_to_centre}
                    for serial, o in modules},
        "summary": summary, "difference_from_reference": gap,
        "per_module": {s: {c: summarise(r) for c, r in d.items()} for s, d in per_unit.items()},
        "calibrated_within_0.01": all(abs(v) <= 0.01 for v in gap["calibrated"].values()),
        "seconds": round(time.perf_counter() - started, 1), "rows": rows,
    }
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def table(report: dict) -> str:
    lines = ["| module | captures | gate false rejection | disc Dice | cup Dice |", "|---|---|---|---|---|"]
    for name, s in report["summary"].items():
        lines.append(f"| {name} | {s['captures']} | {s['gate_false_rejection']:.3f} | {s['disc_dice']:.4f} | {s['cup_dice']:.4f} |")
    for condition, d in report["difference_from_reference"].items():
        lines.append(f"| {condition} - reference | | {d['gate_false_rejection']:+.3f} | {d['disc_dice']:+.4f} | {d['cup_dice']:+.4f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device.lab.bench_calibration", description=__doc__.split("\n\n")[0])
    p.add_argument("--eyes", type=int, default=8, help="synthetic eyes photographed by every module")
    p.add_argument("--modules", type=int, default=3, help="strongly vignetted, colour-cast modules")
    p.add_argument("--severity", type=float, default=SEVERITY, help="how far the modules are off the reference (1: ordinary)")
    p.add_argument("--json-out", type=Path, help="also write the figures (and every capture's row) to this JSON file")
    a = p.parse_args(argv)
    report = run(eyes=a.eyes, units=a.modules, severity=a.severity, json_out=a.json_out,
                 log=lambda text: print(text, file=sys.stderr, flush=True))
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))
    print("\n" + table(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
