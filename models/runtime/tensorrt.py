"""TensorRT engine for the Jetson: build-or-load from the same (QDQ) ONNX the CPU runs, cached.

The engine is specific to the model, the TensorRT version, the GPU and the precision, so the cache
file's name carries a key of all four (as jetson-inference does) and any change rebuilds it. A
timing cache per (TensorRT version, GPU) makes rebuilds after a model update quick. pycuda holds the
buffers and the stream; inference goes through `execute_async_v3` with named tensor addresses,
which every supported version (8.5 to 11) has.

INT8 comes only from the explicit Q/DQ nodes in the ONNX: on 8.x/10.x the network is weakly typed
and the INT8 (and FP16, for the layers left in float) flags are set; on 11, where those flags are
gone, the network is strongly typed and the Q/DQ nodes alone decide.
"""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import numpy as np

from models.runtime.engine import EngineError

log = logging.getLogger(__name__)


def cache_key(model_sha256: str, trt_version: str, gpu: str, precision: str) -> str:
    """A short, filesystem-safe key that changes when any input of the engine changes."""
    text = "|".join([model_sha256, trt_version, gpu, precision])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def engine_path(cache_dir: Path, name: str, model_sha256: str, trt_version: str, gpu: str, precision: str) -> Path:
    return Path(cache_dir) / f"{name}-{precision}-{cache_key(model_sha256, trt_version, gpu, precision)}.engine"


def timing_cache_path(cache_dir: Path, trt_version: str, gpu: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{trt_version}-{gpu}")
    return Path(cache_dir) / f"timing-{safe}.cache"


def network_flags(trt, major: int) -> int:
    if major >= 11:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if major >= 10:
        return 0  # explicit batch is the only mode
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def _import():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineError("TensorRT is not installed (it comes with JetPack on a Jetson); use ONNX Runtime") from exc
    try:
        import pycuda.autoinit  # noqa: F401 - creates the CUDA context
        import pycuda.driver as cuda
    except ImportError as exc:
        raise EngineError("pycuda is not installed: pip install 'glaucoscreen[jetson]' on the Jetson") from exc
    return trt, cuda


def build(onnx_path: Path, out_path: Path, timing_cache: Path, precision: str, input_name: str = "image",
          input_shape: tuple[int, ...] = (1, 3, 256, 256), max_batch: int = 4) -> Path:
    """Parse the ONNX, build a serialized engine, write it and the updated timing cache."""
    trt, _ = _import()
    logger = trt.Logger(trt.Logger.WARNING)
    major = int(trt.__version__.split(".")[0])
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, major))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {Path(onnx_path).name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    if major < 11:
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        if precision in ("int8", "fp16") and builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    one = tuple(input_shape)
    most = (max_batch,) + one[1:]
    profile.set_shape(input_name, one, one, most)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine for {Path(onnx_path).name} ({precision})")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(out_path)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return out_path


class TensorRTEngine:
    """`Engine` over a cached TensorRT engine; builds it first when the cache has none that fits."""

    backend = "tensorrt"
    version: str  # the manifest's version of the model, set by `registry.load_engine`

    def __init__(self, onnx_path: Path, *, name: str, precision: str, model_sha256: str, cache_dir: Path):
        trt, cuda = _import()
        self.name, self.precision, self._cuda = name, precision, cuda
        gpu = cuda.Device(0).name()
        self.engine_file = engine_path(cache_dir, name, model_sha256, trt.__version__, gpu, precision)
        if not self.engine_file.exists():
            log.info("building TensorRT %s engine for %s (first start after an update takes minutes)", precision, name)
            build(onnx_path, self.engine_file, timing_cache_path(cache_dir, trt.__version__, gpu), precision)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.engine_file.read_bytes())
        if self.engine is None:
            raise EngineError(f"cached engine {self.engine_file.name} could not be loaded; delete it to rebuild")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtype = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._buffers: dict[tuple, tuple] = {}

    def _buffer(self, name: str, shape: tuple[int, ...]):
        """Pinned host and device memory for one tensor at one shape, kept per shape: the screening
        alternates batch 1 (whole photo) and batch 2 (crop and mirror), and must not reallocate each time."""
        held = self._buffers.get((name, shape))
        if held is None:
            host = self._cuda.pagelocked_empty(shape, self._dtype[name])
            held = (host, self._cuda.mem_alloc(host.nbytes))
            self._buffers[(name, shape)] = held
        self.context.set_tensor_address(name, int(held[1]))
        return held

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda = self._cuda
        for name in self.input_names:
            x = np.ascontiguousarray(feeds[name], dtype=self._dtype[name])
            self.context.set_input_shape(name, x.shape)
            host, device = self._buffer(name, x.shape)
            np.copyto(host, x)
            cuda.memcpy_htod_async(device, host, self.stream)
        outs = {}
        for name in self.output_names:
            host, device = self._buffer(name, tuple(self.context.get_tensor_shape(name)))
            outs[name] = (host, device)
        if not self.context.execute_async_v3(stream_handle=self.stream.handle):
            raise EngineError(f"TensorRT inference failed for {self.name}")
        for host, device in outs.values():
            cuda.memcpy_dtoh_async(host, device, self.stream)
        self.stream.synchronize()
        return {n: h.copy() for n, (h, _) in outs.items()}
