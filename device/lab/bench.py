"""`glaucoscreen bench`: how fast the engines and the whole screening run here, FP32 against INT8.

Machines like ours are noisy, so every figure that matters is a ratio measured in the same run:
INT8 against FP32, and our screening against the MTL-IO paper's 17.3 M-parameter U-Net run the same
way. The load average at the start and end of the run is part of the report, because on a busy
machine every figure moves. Each engine is measured in its own process so that its peak memory is
its own.

`--profile` adds where the milliseconds of one screening go, step by step (decode, gate, each pass
and what prepares it, clean, measure, classifier, fusion, and the unwarp the visit log's masks need),
from the pipeline's own clock (`ScreeningResult.timings_ms`). The memory figures are the peak
resident memory of `glaucoscreen screen` on a 12 MP photo and of the unit as `run --simulate`
assembles it, through one visit of both eyes.
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

# The steps of one screening in the order they happen, as the pipeline books them (`timings_ms`), with the
# photo's decoding before them and the unwarp of the outlines to the photo's pixels (stored masks) after.
PROFILE_STEPS = ("decode", "gate", "pass1_input", "pass1", "locate", "pass2_input", "pass2", "classifier", "clean",
                 "measure", "fusion", "unwarp")
TWELVE_MP = (3000, 4000)  # height, width of a 12 MP phone photo
MEMORY_LIMIT_MIB = 400  # what `screen` may take for a 12 MP photo (the 4 GB Pi 5 runs the kiosk and Chromium too)


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


def profile_screening(precision: str, jpeg: bytes, runs: int, warmup: int = 2, threads: int | None = None) -> dict:
    """Milliseconds per step of screening one photo file's bytes (p50 over `runs`), and their sum."""
    from device.screening.pipeline import ScreeningPipeline
    from models.runtime.images import decode_photo

    pipeline = ScreeningPipeline.from_artifacts(precision=precision, threads=threads)
    steps: dict[str, list[float]] = {}
    whole = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        rgb = decode_photo(jpeg).rgb
        decoded = time.perf_counter()
        result = pipeline.screen(rgb)
        screened = time.perf_counter()
        if result.segmentation is not None:
            result.segmentation.masks_on_photo(rgb.shape)  # what the visit log stores and the overlay draws
        done = time.perf_counter()
        if i < warmup:
            continue
        for step, ms in result.timings_ms.items():
            steps.setdefault(step, []).append(ms)
        steps.setdefault("decode", []).append((decoded - t0) * 1000)
        steps.setdefault("unwarp", []).append((done - screened) * 1000)
        whole.append((done - t0) * 1000)
    p50 = {step: round(float(np.median(ms)), 2) for step, ms in steps.items()}
    ordered = {step: p50.pop(step) for step in PROFILE_STEPS if step in p50}
    screening = p50.pop("total", None)
    return {"precision": precision, "backend": pipeline.engine.backend,
            "pass_sizes": {"whole": pipeline.sizes.whole, "crop": pipeline.sizes.crop, "mirror": pipeline.mirror},
            "photo_pixels": f"{rgb.shape[1]}x{rgb.shape[0]}", "steps_p50_ms": ordered | p50,
            "screening_p50_ms": screening, "decode_screen_unwarp_p50_ms": round(float(np.median(whole)), 2),
            "runs": runs}


def _in_subprocess(kind: str, arg: str, precision: str, runs: int, threads: int) -> dict:
    code = ("import json,sys; from device.lab import bench; "
            f"print(json.dumps(bench._child({kind!r}, {arg!r}, {precision!r}, {runs}, {threads})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(kind: str, arg: str, precision: str, runs: int, threads: int) -> dict:
    if kind == "engine":
        if arg.endswith(".onnx"):
            path = Path(arg)
        else:  # the build ONNX Runtime runs; "int8:tensorrt" the symmetric one TensorRT takes, on ONNX Runtime
            precision, _, build = precision.partition(":")
            path = registry.model_file(arg, precision, backend=build or "onnxruntime")[0]
        return time_engine(path, runs, threads=threads)
    if kind == "profile":
        return profile_screening(precision, _jpeg(arg), runs, threads=threads)
    return time_pipeline(precision, _photo(arg), runs, threads=threads)


def _synthetic() -> np.ndarray:
    from models import synthetic

    return synthetic.render(synthetic.random_eye(7), size=(1536, 2048)).image


def _photo(arg: str) -> np.ndarray:
    from models.runtime.images import read_rgb

    return _synthetic() if arg == "synthetic" else read_rgb(arg)


def _jpeg(arg: str) -> bytes:
    from models.runtime.images import encode_jpeg

    return encode_jpeg(_synthetic(), quality=95) if arg == "synthetic" else Path(arg).read_bytes()


def twelve_mp_photo(path: Path) -> Path:
    """A 12 MP JPEG: the synthetic photo enlarged to 4000 x 3000 (the pixel count is what the memory
    figure is about; rendering a 12 MP eye takes ten seconds)."""
    import cv2

    from models.runtime.images import encode_jpeg

    big = cv2.resize(_synthetic(), TWELVE_MP[::-1], interpolation=cv2.INTER_CUBIC)
    path.write_bytes(encode_jpeg(big, quality=92))
    return path


def peak_rss_of(command: list[str], env: dict[str, str] | None = None) -> dict:
    """Run `command` from a process of its own and give its peak resident memory (the kernel's count
    for the one child of that process) and wall time."""
    watcher = ("import json,resource,subprocess,sys,time; t=time.perf_counter(); "
               "r=subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
               "print(json.dumps({'rc': r.returncode, 'wall_s': round(time.perf_counter()-t, 2), "
               "'peak_rss_mib': round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024, 1), "
               "'stderr': r.stderr.strip().splitlines()[-1:] }))")
    out = subprocess.run([sys.executable, "-c", watcher, *command], capture_output=True, text=True, check=False,
                         env=env)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(workdir: Path) -> dict:
    """Peak resident memory of `glaucoscreen screen` on a 12 MP photo and of the simulated unit through one visit."""
    env = dict(os.environ, GLAUCOSCREEN_CONFIG=str(workdir / "none.toml"))
    photo = twelve_mp_photo(workdir / "twelve-mp.jpg")
    screen = peak_rss_of([sys.executable, "-m", "device.cli", "screen", str(photo), "--data-dir", str(workdir / "cli")],
                         env)
    screen |= {"photo": f"{TWELVE_MP[1]}x{TWELVE_MP[0]}", "limit_mib": MEMORY_LIMIT_MIB,
               "within_limit": screen.get("peak_rss_mib", float("inf")) <= MEMORY_LIMIT_MIB}
    visit = peak_rss_of([sys.executable, "-c", "from device.lab import bench; bench._one_visit()", str(workdir / "unit")],
                        env)
    return {"screen_12mp": screen, "run_simulate_visit": visit}


def _one_visit() -> None:
    """The unit as `glaucoscreen run --simulate` assembles it (models, capture loop, kiosk served by
    waitress), and one visit of both eyes through the calls the kiosk's pages make."""
    import threading

    import waitress

    from device.config import Config
    from device.kiosk import create_app
    from device.unit import Unit

    config = Config.load(data_dir=Path(sys.argv[1]), simulate=True)
    unit = Unit.from_config(config)
    server = waitress.create_server(create_app(unit), host="127.0.0.1", port=0, threads=config.kiosk.threads)
    threading.Thread(target=server.run, name="kiosk-server", daemon=True).start()
    try:
        unit.start()
        if unit.pipeline is None:
            raise SystemExit(f"the screening models did not load: {unit.model_error}")
        unit.visits.add_patient("BENCH-MEMORY", name="Bench Patient", consent=True)
        uuid = unit.visits.start_visit("BENCH-MEMORY", operator="bench", device_id=config.device_id)
        for eye in ("right", "left"):
            token = unit.begin_capture(uuid, eye)
            unit.capture.press_button(token)
            end, photo = time.monotonic() + 60, None
            while photo is None and time.monotonic() < end:
                photo = unit.take_capture(uuid, eye, token)
                time.sleep(0.05)
            if photo is None:
                raise SystemExit(f"no photo of the {eye} eye within 60 s: {unit.capture.state()}")
            unit.screen_and_record(uuid, eye, photo)
        unit.visits.finalize_visit(uuid)
    finally:
        server.close()
        unit.close()


def run(runs: int = 30, photo: str = "synthetic", threads: int | None = None, json_out: Path | None = None,
        reference: bool = True, profile: bool = False, measure_memory: bool = True) -> dict:
    threads = threads or cpu_threads()
    manifest = registry.manifest()
    report: dict = {"threads": threads, "cpu": _cpu_name(), "runs": runs, "photo": photo,
                    "load_average": {"start": _load()}, "engines": {}, "pipeline": {}, "shipped_precision": {}}
    for name, entry in manifest.items():
        if not isinstance(entry, dict) or "file" not in entry:
            continue
        row: dict[str, Any] = {"parameters": entry.get("parameters")}
        for precision in ["fp32"] + (["int8"] if "int8" in entry else []):
            row[precision] = _in_subprocess("engine", name, precision, runs, threads)
        if "int8_cpu" in entry:  # the symmetric build TensorRT takes, as ONNX Runtime runs it: why there are two
            row["int8_tensorrt_build"] = _in_subprocess("engine", name, "int8:tensorrt", runs, threads)
        if "int8" in row and "p50_ms" in row["int8"]:
            row["int8_speedup"] = round(row["fp32"]["p50_ms"] / row["int8"]["p50_ms"], 2)
        report["engines"][name] = row
        report["shipped_precision"][name] = entry.get("shipped_precision", "fp32")
    precisions = ["fp32"] + (["int8"] if any("int8" in e for e in manifest.values() if isinstance(e, dict)) else [])
    for precision in precisions:
        report["pipeline"][precision] = _in_subprocess("pipeline", photo, precision, max(5, runs // 2), threads)
    shipped = report["shipped_precision"].get("segmentation", "fp32")
    if profile:
        report["profile"] = {p: _in_subprocess("profile", photo, p, max(5, runs // 2), threads) for p in precisions}
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
        pipe = report["pipeline"].get(shipped, {})
        if "p50_ms" in pipe and "p50_ms" in ref:
            # the target: the whole screening against ONE inference of the paper's network, both from this run
            report["screening_vs_reference_inference"] = {
                "precision": shipped, "screening_p50_ms": pipe["p50_ms"], "reference_inference_p50_ms": ref["p50_ms"],
                "ratio": round(ref["p50_ms"] / pipe["p50_ms"], 2)}
    if measure_memory:
        with tempfile.TemporaryDirectory() as tmp:
            report["memory"] = memory(Path(tmp))
    report["load_average"]["end"] = _load()
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1) + "\n")
    return report


def summary(report: dict) -> str:
    """The figures a person reads first, as text: the ratio to the paper's network, the profile, memory."""
    lines = [f"load average at start {report['load_average']['start']}, at end {report['load_average'].get('end')} "
             f"({report['threads']} threads, {report['cpu']})"]
    target = report.get("screening_vs_reference_inference")
    if target:
        lines.append(f"whole screening ({target['precision']}) p50 {target['screening_p50_ms']} ms; one inference of "
                     f"the paper's network p50 {target['reference_inference_p50_ms']} ms: {target['ratio']}x")
    for precision, prof in (report.get("profile") or {}).items():
        if "steps_p50_ms" not in prof:
            lines.append(f"profile {precision}: {prof.get('error')}")
            continue
        lines.append(f"one screening, {precision} on {prof['backend']} ({prof['photo_pixels']} photo; passes "
                     f"{prof['pass_sizes']['whole']} and {prof['pass_sizes']['crop']} px), p50 ms per step:")
        lines += [f"  {step:<12} {ms:8.1f}" for step, ms in prof["steps_p50_ms"].items()]
        lines.append(f"  {'screening':<12} {prof['screening_p50_ms']:8.1f}   (with decode and unwarp "
                     f"{prof['decode_screen_unwarp_p50_ms']:.1f})")
    for what, m in (report.get("memory") or {}).items():
        lines.append(f"peak memory, {what}: " + (f"{m['peak_rss_mib']} MiB" if "peak_rss_mib" in m else str(m)))
    return "\n".join(lines)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine
