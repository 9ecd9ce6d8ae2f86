"""The FP32-vs-INT8 accuracy gate: INT8 ships only if it stays within a hair of FP32 on held-out photos.

Both precisions run the whole screening on the `val` split (never seen by training or calibration)
and the gate compares disc and cup Dice, vCDR error and glaucoma AUC. The verdict is written into
the manifest (`shipped_precision`), which is what `precision = "auto"` follows on the unit. INT8 runs
on ONNX Runtime here, so it is ONNX Runtime's build (`int8_cpu` where the manifest has one) that is
judged; the verdict names it.
"""
from __future__ import annotations

import json
from pathlib import Path

from device.lab import evaluate
from device.screening.pipeline import ScreeningPipeline
from models.runtime import registry

LIMITS = {"disc_dice": 0.01, "cup_dice": 0.01, "vcdr_mae": 0.01, "auc": 0.01}


def compare(fp32: dict, int8: dict, limits: dict = LIMITS) -> dict:
    """Per figure: the change, the limit and whether it passes (vCDR MAE may not rise; the rest may not fall)."""
    out = {}
    for key, limit in limits.items():
        a, b = fp32.get(key), int8.get(key)
        if a is None or b is None:
            out[key] = {"fp32": a, "int8": b, "passed": True, "note": "not measured on this data"}
            continue
        worse = (b - a) if key == "vcdr_mae" else (a - b)
        out[key] = {"fp32": a, "int8": b, "worse_by": round(worse, 4), "limit": limit, "passed": worse <= limit}
    return out


def run(name: str, data: list[Path], split: str = "val", artifacts: Path = registry.ARTIFACTS) -> dict:
    figures = {}
    for precision in ("fp32", "int8"):
        pipeline = ScreeningPipeline.from_artifacts(precision=precision)
        figures[precision] = evaluate.run(data, pipeline, split=split, progress=False)["summary"]
    checks = compare(figures["fp32"], figures["int8"])
    passed = all(c["passed"] for c in checks.values())
    verdict = {"split": split, "data": [Path(d).name for d in data], "checks": checks, "passed": passed,
               "n": figures["int8"]["n"]}
    manifest = registry.manifest(artifacts)
    # kept where every reader looks for it (the INT8 entry), naming the build that was measured: ONNX
    # Runtime's (`int8_cpu` where there is one)
    verdict["build"] = registry.int8_build(manifest[name])
    manifest[name]["int8"]["gate"] = verdict
    manifest[name]["shipped_precision"] = "int8" if passed else "fp32"
    (artifacts / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return verdict | {"shipped_precision": manifest[name]["shipped_precision"]}
