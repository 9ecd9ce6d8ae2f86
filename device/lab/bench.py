"""`glaucoscreen bench`: how fast the engines and the whole screening run here, FP32 against INT8.

Machines like ours are noisy, so every figure that matters is a ratio measured in the same run:
INT8 against FP32, and our pipeline against the MTL-IO paper's 17.3 M-parameter U-Net run the same
way. Each engine is measured in its own process so that its peak memory is its own.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.runtime import registry
from models.runtime.engine import cpu_threads


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _percentiles(times_ms: list[float]) -> dict:
    a = np.asarray(times_ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2),
            "throughput_per_s": round(1000.0 / float(a.mean()), 2), "runs": len(a)}


def _timed(once, runs: int, warmup: int) -> dict:
    """Latency percentiles of `once()` after `warmup` untimed calls, and this process's peak memory."""
    for _ in range(warmup):
        once()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        once()
        times.append((time.perf_counter() - t0) * 1000)
    return _percentiles(times) | {"peak_rss_mib": round(_peak_rss_mib(), 1)}


def time_engine(path: Path, runs: int, warmup: int = 3, threads: int | None = None) -> dict:
    from models.runtime.engine import OnnxEngine

    engine = OnnxEngine(path, threads=threads)
    feeds = engine.example_feeds()
    return _timed(lambda: engine.run(feeds), runs, warmup) | {"model_mib": round(path.stat().st_size / 2**20, 2)}


def time_pipeline(precision: str, photo: np.ndarray, runs: int, warmup: int = 2, threads: int | None = None) -> dict:
    """The whole screening of one photo; precision "reference:<onnx>" runs it with that network instead."""
    from device.screening.pipeline import ScreeningPipeline

    if precision.startswith("reference:"):
        return time_reference_pipeline(precision.split(":", 1)[1], photo, runs, warmup, threads)
    pipeline = ScreeningPipeline.from_artifacts(precision=precision, threads=threads)
    return _timed(lambda: pipeline.screen(photo), runs, warmup)


def time_reference_pipeline(path: str, photo: np.ndarray, runs: int, warmup: int = 2, threads: int | None = None) -> dict:
    """The same screening with the reference network doing both passes. Its weights are random (only
    speed matters), so the disc it would find is taken from our model, found once beforehand."""
    from device.screening.measurements import measure
    from device.screening.pipeline import ScreeningPipeline
    from device.screening.referral import ReferralPolicy
    from models.runtime.engine import OnnxEngine

    found, _ = ScreeningPipeline.from_artifacts(precision="fp32", threads=threads).locate_disc(photo)
    if found is None:
        raise RuntimeError("no disc in the benchmark photo")
    ref = ScreeningPipeline(OnnxEngine(path, threads=threads), ReferralPolicy())

    def once():
        ref.gate.assess(photo)
        ref.locate_disc(photo)
        seg = ref.segment_disc(photo, *found)
        measure(*seg.masks())

    return _timed(once, runs, warmup)


def _in_subprocess(kind: str, arg: str, precision: str, runs: int, threads: int) -> dict:
    code = ("import json,sys; from device.lab import bench; "
            f"print(json.dumps(bench._child({kind!r}, {arg!r}, {precision!r}, {runs}, {threads})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(kind: str, arg: str, precision: str, runs: int, threads: int) -> dict:
    if kind == "engine":
        path = Path(arg) if arg.endswith(".onnx") else registry.model_file(arg, precision)[0]
        return time_engine(path, runs, threads=threads)
    from models import synthetic

    photo = synthetic.render(synthetic.random_eye(7), size=(1536, 2048)).image if arg == "synthetic" else _read(arg)
    return time_pipeline(precision, photo, runs, threads=threads)


def _read(path: str) -> np.ndarray:
    from models.runtime.images import read_rgb

    return read_rgb(path)


def run(runs: int = 30, photo: str = "synthetic", threads: int | None = None, json_out: Path | None = None,
        reference: bool = True) -> dict:
    threads = threads or cpu_threads()
    manifest = registry.manifest()
    report: dict = {"threads": threads, "cpu": _cpu_name(), "runs": runs, "photo": photo, "engines": {},
                    "pipeline": {}, "shipped_precision": {}}
    for name, entry in manifest.items():
        if not isinstance(entry, dict) or "file" not in entry:
            continue
        row: dict[str, Any] = {"parameters": entry.get("parameters")}
        for precision in ["fp32"] + (["int8"] if "int8" in entry else []):
            row[precision] = _in_subprocess("engine", name, precision, runs, threads)
        if "int8" in row and "p50_ms" in row["int8"]:
            row["int8_speedup"] = round(row["fp32"]["p50_ms"] / row["int8"]["p50_ms"], 2)
        report["engines"][name] = row
        report["shipped_precision"][name] = entry.get("shipped_precision", "fp32")
    for precision in ["fp32"] + (["int8"] if any("int8" in e for e in manifest.values() if isinstance(e, dict)) else []):
        report["pipeline"][precision] = _in_subprocess("pipeline", photo, precision, max(5, runs // 2), threads)
    if reference:
        from models.reference_unet import export

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "reference_unet.onnx"
            params = export(path)
            ref = _in_subprocess("engine", str(path), "fp32", max(5, runs // 3), threads)
            # the paper's network run the same way: both passes of the same screening
            ref["pipeline"] = _in_subprocess("pipeline", photo, f"reference:{path}", max(5, runs // 6), threads)
        ref["parameters"] = params
        report["reference_unet"] = ref
        seg = report["engines"].get("segmentation", {}).get("fp32", {})
        if "p50_ms" in seg and "p50_ms" in ref:
            report["segmentation_vs_reference_speedup"] = round(ref["p50_ms"] / seg["p50_ms"], 2)
        for precision, pipe in report["pipeline"].items():
            if "p50_ms" in pipe and "p50_ms" in ref.get("pipeline", {}):
                report[f"pipeline_{precision}_vs_reference_speedup"] = round(ref["pipeline"]["p50_ms"] / pipe["p50_ms"], 2)
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1) + "\n")
    return report


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine
