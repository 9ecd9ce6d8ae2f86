"""The models this unit ships with, and the check that they are the files they claim to be.

`artifacts/manifest.json` names each model's ONNX file, its sha256 and its version. A file whose
hash does not match (a half-copied update, a corrupt SD card) is refused with a message instead of
producing quietly wrong results.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from models.runtime.engine import Engine, EngineError, OnnxEngine

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
MANIFEST = ARTIFACTS / "manifest.json"

if TYPE_CHECKING:
    from models.runtime.tensorrt import TensorRTEngine


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest(artifacts: Path = ARTIFACTS) -> dict:
    path = artifacts / "manifest.json"
    if not path.exists():
        raise EngineError(f"no model manifest at {path}: the models were not installed with the unit")
    return json.loads(path.read_text())


def model_file(name: str, precision: str = "fp32", artifacts: Path = ARTIFACTS, verify: bool = True,
               backend: str = "tensorrt") -> tuple[Path, dict]:
    """Path of a model's ONNX file for a precision, hash-checked against the manifest. For ONNX Runtime
    (`backend="onnxruntime"`) INT8 is the CPU build (`int8_cpu`) where the manifest has one."""
    entries = manifest(artifacts)
    if name not in entries:
        raise EngineError(f"model {name!r} is not in the manifest (have: {', '.join(sorted(entries))})")
    entry = entries[name]
    if precision != "fp32":
        key = int8_build(entry) if precision == "int8" and backend == "onnxruntime" else precision
        entry = entry.get(key)
        if entry is None:
            raise EngineError(f"model {name!r} has no {precision} build; run `glaucoscreen quantize` or use fp32")
    path = artifacts / entry["file"]
    if not path.exists():
        raise EngineError(f"model file {path.name} is missing; reinstall the unit's models")
    if verify:
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise EngineError(f"model file {path.name} is damaged (sha256 {digest[:12]}..., expected "
                              f"{entry['sha256'][:12]}...); reinstall the unit's models")
    return path, entry


def int8_build(entry: dict) -> str:
    """The manifest key of the INT8 build ONNX Runtime runs: `int8_cpu` where there is one, else `int8`.
    Two builds because the runtimes want different things: TensorRT takes only symmetric INT8 (`int8`),
    and with symmetric activations ONNX Runtime cannot fold a ReLU6 into the quantized convolution
    before it, so half the network ran in float between quantize and dequantize steps; `int8_cpu` has
    uint8 activations with zero points, which it runs as quantized convolutions throughout (2x faster
    on x86; model card, "Speed")."""
    return "int8_cpu" if isinstance(entry.get("int8_cpu"), dict) else "int8"


def shipped_precision(name: str, artifacts: Path = ARTIFACTS) -> str:
    """The precision the accuracy gate allows for this model ("fp32" until a gate has passed INT8)."""
    entry = manifest(artifacts).get(name, {})
    precision = entry.get("shipped_precision", "fp32")
    return precision if precision == "fp32" or precision in entry else "fp32"


def cpu_has_int8_dot(cpuinfo: str | None = None) -> bool:
    """INT8 only pays on a CPU with 8-bit dot-product instructions: VNNI on x86, the dot-product
    extension on ARM (the Pi 5's Cortex-A76 has it). Elsewhere ONNX Runtime's INT8 kernels run
    slower than FP32 (measured by `glaucoscreen bench`)."""
    if cpuinfo is None:
        cpuinfo = _cpuinfo()
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_vnni", "avx_vnni", "asimddp"})


def have_tensorrt() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None


def preferred_precision(name: str, artifacts: Path = ARTIFACTS, measure_in: Path | None = None,
                        threads: int | None = None) -> str:
    """What `precision = "auto"` runs here: INT8 where the gate allows it and it is faster. On a
    TensorRT GPU it is. On a CPU, 8-bit dot products are necessary but not enough (ONNX Runtime's INT8
    ran at 0.76x FP32 on an x86 CPU with VNNI), so with `measure_in` both builds are timed once on
    this CPU and the faster kept, remembered there per model files, CPU and threads."""
    allowed = shipped_precision(name, artifacts)
    if allowed != "int8":
        return "fp32"
    if have_tensorrt():
        return "int8"
    if not cpu_has_int8_dot():
        return "fp32"
    if measure_in is None:
        return "int8"
    return faster_on_this_cpu(name, artifacts, measure_in, threads)["precision"]


def faster_on_this_cpu(name: str, artifacts: Path, cache_dir: Path, threads: int | None = None,
                       runs: int = 12) -> dict:
    """Median latency of the FP32 and INT8 builds on this CPU, and the faster; cached in `cache_dir`."""
    import platform
    import statistics
    import time

    from models.runtime.engine import cpu_threads

    entry = manifest(artifacts)[name]
    int8 = entry[int8_build(entry)]
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")),
               platform.processor() or platform.machine())
    key = f"{name}:{entry['sha256'][:16]}:{int8['sha256'][:16]}:{cpu}:{threads or cpu_threads()}"
    path = Path(cache_dir) / "precision.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    timings: dict[str, float] = {}
    for precision in ("fp32", "int8"):
        engine = OnnxEngine(model_file(name, precision, artifacts, backend="onnxruntime")[0], name=name,
                            precision=precision, threads=threads)
        feeds = engine.example_feeds()
        engine.run(feeds)
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            engine.run(feeds)
            samples.append((time.perf_counter() - started) * 1000)
        timings[precision] = round(statistics.median(samples), 2)
    known[key] = {"precision": min(timings, key=timings.__getitem__), "median_ms": timings}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=1) + "\n")
    except OSError:
        pass  # measured again at the next start: slower, never wrong
    return known[key]


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def load_engine(name: str, precision: str = "fp32", artifacts: Path = ARTIFACTS, threads: int | None = None,
                backend: str = "auto", engine_cache: Path | None = None, free_size: bool = False) -> Engine:
    """The model as an `Engine`: TensorRT where it is installed (the Jetson), else ONNX Runtime.
    `free_size`: ONNX Runtime takes images of any size (a TensorRT engine stays at the file's own)."""
    engine: OnnxEngine | TensorRTEngine
    if backend == "tensorrt" or (backend == "auto" and have_tensorrt() and engine_cache is not None):
        from models.runtime.tensorrt import TensorRTEngine

        path, entry = model_file(name, precision, artifacts)
        if engine_cache is None:
            raise EngineError(f"model {name}: the TensorRT backend needs a folder for its engine cache (engine_cache)")
        engine = TensorRTEngine(path, name=name, precision=precision, model_sha256=entry["sha256"], cache_dir=engine_cache)
    else:
        path, entry = model_file(name, precision, artifacts, backend="onnxruntime")
        engine = OnnxEngine(path, name=name, precision=precision, threads=threads, free_size=free_size)
    engine.version = entry.get("version", path.stem)
    return engine


def versions(artifacts: Path = ARTIFACTS) -> dict[str, str]:
    return {name: e.get("version", "?") for name, e in manifest(artifacts).items() if isinstance(e, dict) and "file" in e}
