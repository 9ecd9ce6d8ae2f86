"""TensorRT engine for the Jetson: build-or-load from the same (QDQ) ONNX the CPU runs, cached.

The engine is specific to the model, the TensorRT version, the GPU and the precision, so the cache
file's name carries a key of all four (as jetson-inference does) and any change rebuilds it. A
timing cache per (TensorRT version, GPU) makes rebuilds after a model update quick. pycuda holds the
buffers and the stream; inference goes through `execute_async_v3` with named tensor addresses,
which every supported version (8.5 to 11) has.

INT8 comes only from the explicit Q/DQ nodes in the ONNX: on 8.x/10.x the network is weakly typed
and the INT8 (and FP16, for the layers left in float) flags are set; on 11, where those flags are
gone, the network is strongly typed and the Q/DQ nodes alone decide.

Three things a real Jetson needs that a single-threaded bench never shows:
- Each network gets an optimisation profile made from its own ONNX inputs (names, shapes, which
  dimension is the free batch): the segmentation and disc networks take `image` (N,3,256,256), the
  progression network `earlier`/`current` (N,3,160,160) and `years` (N,1).
- The CUDA context belongs to the engine, not to the thread that imported pycuda: the kiosk's
  request threads run inference, so the device's primary context is pushed on the calling thread
  around every use and popped after, and released on `close`.
- Two builders (the installer's `build-engines` and a starting kiosk) never write the same cache: a
  file lock on the cache folder makes the second wait and then load the first one's engine.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import threading
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from models.runtime.engine import EngineError

log = logging.getLogger(__name__)

MAX_BATCH = 4  # the screening runs batch 1 (whole photo) and 2 (crop and mirror); progression 1
LOCK_NAME = ".build.lock"


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


# -- the network's inputs and its optimisation profile ---------------------------------------------
@dataclass(frozen=True)
class InputSpec:
    """One input of an ONNX network: its name and shape, None where the dimension is left free."""

    name: str
    shape: tuple[int | None, ...]

    def text(self) -> str:
        return "(" + ",".join("N" if d is None else str(d) for d in self.shape) + ")"


def onnx_inputs(onnx_path: Path) -> list[InputSpec]:
    """The network's real inputs as its ONNX file declares them (initializers that older exporters list
    as inputs are weights, not inputs)."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, OSError and its own types
        raise EngineError(f"{Path(onnx_path).name} could not be read as ONNX: {exc}") from exc
    weights = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in weights:
            continue
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            raise EngineError(f"{Path(onnx_path).name}: input {value.name!r} has no shape; TensorRT needs one")
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)
        specs.append(InputSpec(value.name, dims))
    if not specs:
        raise EngineError(f"{Path(onnx_path).name} declares no inputs")
    return specs


def profile_shapes(inputs: list[InputSpec], max_batch: int = MAX_BATCH, opt_batch: int = 1,
                   model: str = "the model") -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) for every input with a free dimension: the batch, 1 to `max_batch`. An input with
    all dimensions fixed needs no entry. A free dimension other than the first (the batch) has no range
    the model tells us, so it is refused here rather than guessed."""
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt_batch <= max_batch, got {opt_batch} and {max_batch}")
    shapes = {}
    for spec in inputs:
        free = [i for i, d in enumerate(spec.shape) if d is None]
        if not free:
            continue
        if free != [0]:
            raise EngineError(f"{model}: input {spec.name!r} {spec.text()} has a free dimension other than the batch; "
                              "TensorRT needs its range and the model does not give one")
        rest = tuple(d for d in spec.shape[1:] if d is not None)  # all of them: checked above
        shapes[spec.name] = ((1, *rest), (opt_batch, *rest), (max_batch, *rest))
    return shapes


def _check_network_inputs(network, inputs: list[InputSpec], model: str) -> None:
    """The parsed network must have exactly the ONNX's inputs, fixed where the ONNX fixes them."""
    seen = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        seen[tensor.name] = tuple(int(d) for d in tensor.shape)
    wanted = {s.name: s for s in inputs}
    if set(seen) != set(wanted):
        raise EngineError(f"{model}: TensorRT sees inputs {sorted(seen)}, the ONNX declares {sorted(wanted)}")
    for name, dims in seen.items():
        spec = wanted[name]
        if len(dims) != len(spec.shape) or any(d != (-1 if s is None else s) for d, s in zip(dims, spec.shape)):
            raise EngineError(f"{model}: TensorRT reads input {name!r} as {dims}, the ONNX declares {spec.text()}")


# -- the CUDA context, owned ------------------------------------------------------------------------
class CudaContext:
    """The GPU's primary CUDA context, retained by one engine. pycuda's `autoinit` made a context current
    only on the thread that imported it, and the kiosk's request threads had none; here every use pushes
    this context on the calling thread and pops it after. The primary context is the one TensorRT's own
    (runtime API) calls use, so the engine's memory and pycuda's buffers always share one context."""

    def __init__(self, cuda, device: int = 0):
        self._cuda = cuda
        try:
            cuda.init()
            self.device = cuda.Device(device)
            self._context = self.device.retain_primary_context()
        except cuda.Error as exc:
            raise EngineError(f"CUDA could not be started on GPU {device}: {exc}") from exc

    @property
    def closed(self) -> bool:
        return self._context is None

    @contextmanager
    def current(self) -> Iterator[None]:
        """This context made current on the calling thread for the block, whatever thread that is."""
        if self._context is None:
            raise EngineError("the CUDA context has been released")
        self._context.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def close(self) -> None:
        """Release the retained context (the last release frees it), from any thread: pycuda releases a
        context from the thread that holds it current, so it is pushed first (and detach takes it off)."""
        context, self._context = self._context, None
        if context is not None:
            context.push()
            context.detach()


# -- the engine cache: one builder at a time --------------------------------------------------------
@contextmanager
def cache_lock(cache_dir: Path) -> Iterator[bool]:
    """An exclusive file lock on the engine cache for the block; yields whether it had to wait for another
    builder (another process, or another thread: each takes its own open file, which flock tells apart)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / LOCK_NAME, "a+b") as f:
        waited = False
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited = True
            log.info("another process is building a TensorRT engine in %s; waiting for it to finish", cache_dir)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield waited
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _no_wait(what: str) -> AbstractContextManager:
    return nullcontext()


_long_wait: Callable[[str], AbstractContextManager] = _no_wait


def set_long_wait(factory: Callable[[str], AbstractContextManager] | None) -> Callable[[str], AbstractContextManager]:
    """Entered (with what is happening, in words) around a build or a wait for another builder: minutes on
    a Jetson. The kiosk sets it to keep systemd's start timeout from running out meanwhile. Returns the
    one set before."""
    global _long_wait
    previous, _long_wait = _long_wait, factory or _no_wait
    return previous


def ensure_engine(onnx_path: Path, engine_file: Path, timing_cache: Path, precision: str,
                  max_batch: int = MAX_BATCH, name: str | None = None) -> str:
    """The engine file, built if the cache has none: "cached", "built", or "built by another process" (it
    was building the same file when we came, and we waited for it)."""
    if engine_file.exists():
        return "cached"
    name = name or Path(onnx_path).stem
    with _long_wait(f"Building the TensorRT {precision} engine for {name} (minutes, once per model update)"):
        with cache_lock(engine_file.parent) as waited:
            if engine_file.exists():
                return "built by another process" if waited else "cached"
            log.info("building TensorRT %s engine for %s (first start after an update takes minutes)", precision, name)
            build(onnx_path, engine_file, timing_cache, precision, max_batch=max_batch)
            return "built"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _import():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineError("TensorRT is not installed (it comes with JetPack on a Jetson); use ONNX Runtime") from exc
    try:
        import pycuda.driver as cuda  # no pycuda.autoinit: the engine owns its context (CudaContext)
    except ImportError as exc:
        raise EngineError("pycuda is not installed: pip install 'glaucoscreen[jetson]' on the Jetson") from exc
    return trt, cuda


def check_installed() -> str:
    """TensorRT's version, or an EngineError that says what is missing."""
    trt, _ = _import()
    return str(trt.__version__)


def build(onnx_path: Path, out_path: Path, timing_cache: Path, precision: str, max_batch: int = MAX_BATCH) -> Path:
    """Parse the ONNX, build a serialized engine with a profile for each of its free inputs, write it and
    the updated timing cache. Unlocked: use `ensure_engine`, which holds the cache's lock."""
    trt, _ = _import()
    model = Path(onnx_path).name
    inputs = onnx_inputs(onnx_path)
    shapes = profile_shapes(inputs, max_batch, model=model)
    logger = trt.Logger(trt.Logger.WARNING)
    major = int(trt.__version__.split(".")[0])
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, major))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {model}: {errors}")
    _check_network_inputs(network, inputs, model)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    if major < 11:
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        if precision in ("int8", "fp16") and builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (least, best, most) in shapes.items():
            try:
                profile.set_shape(name, least, best, most)
            except RuntimeError as exc:
                raise EngineError(f"TensorRT refused the shapes {least}..{most} for input {name!r} of {model}: {exc}") from exc
        if config.add_optimization_profile(profile) < 0:
            raise EngineError(f"TensorRT refused the optimisation profile for {model}: {shapes}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine for {model} ({precision}); its log above says why")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(out_path, bytes(serialized))
    _write_atomically(timing_cache, bytes(config.get_timing_cache().serialize()))
    return out_path


class TensorRTEngine:
    """`Engine` over a cached TensorRT engine; builds it first when the cache has none that fits.

    `run` may be called from any thread (one at a time: the engine's lock); `close` frees the GPU memory
    and releases the CUDA context."""

    backend = "tensorrt"
    version: str  # the manifest's version of the model, set by `registry.load_engine`

    def __init__(self, onnx_path: Path, *, name: str, precision: str, model_sha256: str, cache_dir: Path,
                 max_batch: int = MAX_BATCH):
        trt, cuda = _import()
        self.name, self.precision, self._cuda = name, precision, cuda
        self._lock = threading.Lock()
        self._buffers: dict[tuple, tuple] = {}
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._dtype: dict[str, np.dtype] = {}
        # TensorRT's runtime, engine and execution context, and pycuda's stream; None once closed
        self.runtime: Any = None
        self.engine: Any = None
        self.context: Any = None
        self.stream: Any = None
        self.cuda_context = CudaContext(cuda)
        try:
            with self.cuda_context.current():
                self._load(trt, Path(onnx_path), model_sha256, Path(cache_dir), max_batch)
        except BaseException:
            self.close()
            raise

    def _load(self, trt, onnx_path: Path, model_sha256: str, cache_dir: Path, max_batch: int) -> None:
        gpu = self.cuda_context.device.name()
        self.engine_file = engine_path(cache_dir, self.name, model_sha256, trt.__version__, gpu, self.precision)
        ensure_engine(onnx_path, self.engine_file, timing_cache_path(cache_dir, trt.__version__, gpu), self.precision,
                      max_batch=max_batch, name=self.name)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # kept: it must outlive the engine
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_file.read_bytes())
        if self.engine is None:
            raise EngineError(f"cached engine {self.engine_file.name} could not be loaded; delete it to rebuild")
        self.context = self.engine.create_execution_context()
        self.stream = self._cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtype = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}

    def _buffer(self, name: str, shape: tuple[int, ...]):
        """Pinned host and device memory for one tensor at one shape, kept per shape: the screening
        alternates batch 1 (whole photo) and batch 2 (crop and mirror), and must not reallocate each time."""
        held = self._buffers.get((name, shape))
        if held is None:
            host = self._cuda.pagelocked_empty(shape, self._dtype[name])
            held = (host, self._cuda.mem_alloc(max(host.nbytes, 1)))
            self._buffers[(name, shape)] = held
        self.context.set_tensor_address(name, int(held[1]))
        return held

    def _shape_refused(self, name: str, shape: tuple[int, ...]) -> EngineError:
        try:
            least, _, most = self.engine.get_tensor_profile_shape(name, 0)
            allowed = f"{tuple(least)} to {tuple(most)}"
        except Exception:  # noqa: BLE001 - only for the message
            allowed = "the engine's profile"
        return EngineError(f"TensorRT engine {self.name}: input {name!r} of shape {shape} is outside {allowed}")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise EngineError(f"model {self.name} needs inputs {sorted(missing)}")
        with self._lock:
            if self.context is None:
                raise EngineError(f"the TensorRT engine for {self.name} has been closed")
            with self.cuda_context.current():
                return self._run(feeds)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda = self._cuda
        for name in self.input_names:
            x = np.ascontiguousarray(feeds[name], dtype=self._dtype[name])
            if not self.context.set_input_shape(name, x.shape):
                raise self._shape_refused(name, x.shape)
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

    def close(self) -> None:
        """Free the buffers, the execution context, the engine and the stream with the CUDA context current,
        then release the context. Idempotent."""
        with self._lock:
            ctx = getattr(self, "cuda_context", None)
            if ctx is None or ctx.closed:
                return
            with ctx.current():
                for _, device in self._buffers.values():
                    device.free()
                self._buffers.clear()
                self.context = None  # the execution context before the engine, the engine before the runtime
                self.engine = None
                self.runtime = None
                self.stream = None
            ctx.close()
