"""Stand-ins for `tensorrt` (8.6 or 10.x) and `pycuda.driver`, for a machine with neither.

They behave like the real APIs where the unit's code touches them, and refuse what the real ones refuse:

tensorrt
- `OnnxParser.parse` gives the network the ONNX graph's inputs (weights are not inputs), a free
  dimension as -1; on 8.x it refuses a network made without EXPLICIT_BATCH, as the 8.x parser does.
- `IOptimizationProfile.set_shape` raises RuntimeError for min/opt/max of different ranks, a negative
  dimension, or min > opt > max in any dimension (the Python binding's "Shape provided for ... is
  inconsistent with other shapes").
- `build_serialized_network` returns None (and logs the error, as TensorRT does) for a network with a
  free input and no profile, a profile missing a free input, a profile naming something that is not a
  network input, or a profile that changes a fixed dimension.
- `deserialize_cuda_engine` returns None for a plan of another TensorRT version.
- `IExecutionContext.set_input_shape` returns False outside the profile; `execute_async_v3` needs a
  current CUDA context, the stream of that context, an address for every tensor, and memory of that
  context big enough for the shapes. It then really runs the ONNX (ONNX Runtime) on the fake device
  memory, so the outputs can be compared with the CPU's.

pycuda.driver
- Contexts are per thread, as in CUDA: `push` puts one on the calling thread's stack, the static
  `Context.pop` takes it off; `retain_primary_context` does not make it current; `detach` releases, as
  pycuda does, only where the context is current or on the thread that retained it.
- `Stream`, `mem_alloc`, `pagelocked_empty` and the copies need a current context (else LogicError
  "invalid device context", pycuda's words), and memory and streams belong to the context they were
  made in. Every call is recorded with its thread and the context current then (`driver.calls`).

`install(monkeypatch, version)` puts both in `sys.modules` (with specs, so `importlib.util.find_spec`
finds them as it would the real packages).
"""
from __future__ import annotations

import importlib.machinery
import itertools
import json
import sys
import threading
import time
import types
from enum import IntEnum

import numpy as np

_PLAN_MAGIC = b"FAKETRT1"


# -- pycuda.driver ------------------------------------------------------------------------------------
class CudaError(Exception):
    pass


class LogicError(CudaError):
    pass


class Driver:
    """One fake GPU: contexts, per-thread context stacks, memory, and a log of every call."""

    def __init__(self, gpu_name: str = "Orin (nvgpu)"):
        self.gpu_name = gpu_name
        self.initialized = False
        self._local = threading.local()
        self._ids = itertools.count(1)
        self.memory: dict[int, tuple[object, bytearray]] = {}  # address -> (context, bytes)
        self._next_address = 0x7F0000000000
        self.primary = None  # the device's primary context, once retained
        self.calls: list[tuple[str, str, object]] = []  # (what, thread name, context current then)
        self.lock = threading.Lock()

    def stack(self) -> list:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def current(self):
        s = self.stack()
        return s[-1] if s else None

    def record(self, what: str):
        ctx = self.current()
        with self.lock:
            self.calls.append((what, threading.current_thread().name, ctx))
        return ctx

    def need_context(self, what: str):
        if not self.initialized:
            raise LogicError(f"{what} failed: initialization error (cuInit has not been called)")
        ctx = self.record(what)
        if ctx is None or not ctx.alive:
            raise LogicError(f"{what} failed: invalid device context")
        return ctx

    def alloc(self, ctx, nbytes: int) -> int:
        with self.lock:
            address = self._next_address
            self._next_address += (nbytes + 0xFFF) & ~0xFFF or 0x1000
            self.memory[address] = (ctx, bytearray(nbytes))
        return address

    def module(self):
        driver = self

        class Context:
            def __init__(self, primary: bool):
                self.id = next(driver._ids)
                self.primary = primary
                self.refcount = 1
                self.alive = True
                self.thread = threading.get_ident()  # pycuda remembers which thread made the Context object

            def __repr__(self):
                return f"<fake CUDA context {self.id}{' (primary)' if self.primary else ''}>"

            def push(self):
                if not self.alive:
                    raise LogicError("cuCtxPushCurrent failed: invalid device context (released)")
                driver.stack().append(self)
                driver.record("push")

            @staticmethod
            def pop():
                s = driver.stack()
                if not s:
                    raise LogicError("context::pop failed: invalid device context - cannot pop non-current context")
                s.pop()
                driver.record("pop")

            @staticmethod
            def get_current():
                return driver.current()

            def detach(self):
                """pycuda's rule (cuda.hpp, context::detach): released where current on this thread (and taken
                off the thread's stack), or on the thread that made it; from any other thread it is quietly
                left as it is ("this context's managing thread has probably exited")."""
                driver.record("detach")
                s = driver.stack()
                current = bool(s) and s[-1] is self
                if not current and self.thread != threading.get_ident():
                    return
                if current:
                    s.pop()
                self.refcount -= 1
                if self.refcount <= 0:
                    self.alive = False

        class Device:
            def __init__(self, ordinal: int):
                if not driver.initialized:
                    raise LogicError("cuDeviceGet failed: initialization error")
                if ordinal != 0:
                    raise LogicError("cuDeviceGet failed: invalid device ordinal")
                self.ordinal = ordinal

            def name(self):
                return driver.gpu_name

            def retain_primary_context(self):
                driver.record("retain_primary_context")
                if driver.primary is None or not driver.primary.alive:
                    driver.primary = Context(primary=True)
                else:
                    driver.primary.refcount += 1
                return driver.primary

            def make_context(self):
                ctx = Context(primary=False)
                ctx.push()
                return ctx

        class DeviceAllocation:
            def __init__(self, nbytes: int):
                self.context = driver.need_context("cuMemAlloc")
                self.address = driver.alloc(self.context, nbytes)
                self.nbytes = nbytes

            def __int__(self):
                return self.address

            __index__ = __int__

            def free(self):
                ctx = driver.need_context("cuMemFree")
                if ctx is not self.context:
                    raise LogicError("cuMemFree failed: invalid device context (memory of another context)")
                with driver.lock:
                    driver.memory.pop(self.address, None)

        class Stream:
            _handles = itertools.count(0x5000)

            def __init__(self, flags: int = 0):
                self.context = driver.need_context("cuStreamCreate")
                self.handle = next(Stream._handles)
                driver.streams[self.handle] = self

            def synchronize(self):
                ctx = driver.need_context("cuStreamSynchronize")
                if ctx is not self.context:
                    raise LogicError("cuStreamSynchronize failed: invalid resource handle")

        driver.streams = {}

        def init(flags: int = 0):
            driver.initialized = True
            driver.record("init")

        def mem_alloc(nbytes: int):
            return DeviceAllocation(int(nbytes))

        def pagelocked_empty(shape, dtype, order="C", mem_flags=0):
            driver.need_context("cuMemHostAlloc")
            return np.empty(shape, dtype=dtype, order=order)

        def _check_copy(what, device, stream):
            ctx = driver.need_context(what)
            if ctx is not device.context or ctx is not stream.context:
                raise LogicError(f"{what} failed: invalid device context (memory or stream of another context)")

        def memcpy_htod_async(device, host, stream=None):
            _check_copy("cuMemcpyHtoDAsync", device, stream)
            data = np.ascontiguousarray(host).tobytes()
            buf = driver.memory[int(device)][1]
            if len(data) > len(buf):
                raise LogicError("cuMemcpyHtoDAsync failed: invalid argument (copy larger than the allocation)")
            buf[: len(data)] = data

        def memcpy_dtoh_async(host, device, stream=None):
            _check_copy("cuMemcpyDtoHAsync", device, stream)
            buf = driver.memory[int(device)][1]
            flat = host.reshape(-1).view(np.uint8)
            flat[:] = np.frombuffer(bytes(buf[: flat.size]), dtype=np.uint8)

        mod = types.ModuleType("pycuda.driver")
        mod.Error, mod.LogicError = CudaError, LogicError
        mod.Context, mod.Device, mod.Stream, mod.DeviceAllocation = Context, Device, Stream, DeviceAllocation
        mod.init, mod.mem_alloc, mod.pagelocked_empty = init, mem_alloc, pagelocked_empty
        mod.memcpy_htod_async, mod.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
        mod.driver_state = driver
        return mod


# -- tensorrt -----------------------------------------------------------------------------------------
class DataType(IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    INT64 = 7


_ONNX_TO_TRT = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL, 7: DataType.INT64}
_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.BOOL: np.bool_, DataType.INT64: np.int64}


class TensorIOMode(IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class Dims(tuple):
    """What TensorRT's Python API hands back for a shape: iterable, indexable, -1 for a free dimension."""


def make_tensorrt(version: str, driver: Driver, slow_build_s: float = 0.0, refuse: set[str] | None = None):
    """A `tensorrt` module of `version` ("8.6.2", "10.3.0", ...) on the fake GPU `driver`. `refuse`: networks,
    each named by its outputs joined with commas ("progression"; "disc,cup,fovea,glaucoma"), whose build
    fails in the builder as for a layer it has no kernel for."""
    major = int(version.split(".")[0])
    refuse = set(refuse or ())
    state = types.SimpleNamespace(builds=[], errors=[], slow_build_s=slow_build_s, refuse=refuse)

    Severity = IntEnum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4})

    class ILogger:
        def __init__(self, *a):
            pass

    ILogger.Severity = Severity

    class Logger(ILogger):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = list(Severity)

        def __init__(self, min_severity=Severity.WARNING):
            self.min_severity = min_severity

        def log(self, severity, msg):
            if severity <= self.min_severity:
                print(f"[TRT] {severity.name}: {msg}", file=sys.stderr)

    def error(logger, msg: str):
        state.errors.append(msg)
        logger.log(Severity.ERROR, msg)

    flag_names = ["EXPLICIT_BATCH"] + (["STRONGLY_TYPED"] if major >= 10 else [])
    NetworkDefinitionCreationFlag = IntEnum("NetworkDefinitionCreationFlag", {n: i for i, n in enumerate(flag_names)})
    builder_flags = {"FP16": 0, "INT8": 1} if major < 11 else {"TF32": 7}
    BuilderFlag = IntEnum("BuilderFlag", builder_flags)

    class MemoryPoolType(IntEnum):
        WORKSPACE = 0

    class ITensor:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, Dims(shape), dtype

    class INetworkDefinition:
        def __init__(self, flags):
            self.flags = flags
            self.inputs: list[ITensor] = []
            self.outputs: list[ITensor] = []
            self.onnx: bytes | None = None
            self.graph_name = ""

        @property
        def num_inputs(self):
            return len(self.inputs)

        @property
        def num_outputs(self):
            return len(self.outputs)

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

        @property
        def has_explicit_batch(self):
            return major >= 10 or bool(self.flags & (1 << int(NetworkDefinitionCreationFlag.EXPLICIT_BATCH)))

    class ParserError:
        def __init__(self, desc):
            self._desc = desc

        def desc(self):
            return self._desc

        def __str__(self):
            return self._desc

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.logger, self.errors = network, logger, []

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

        def parse(self, model: bytes, path: str | None = None) -> bool:
            import onnx

            if not self.network.has_explicit_batch:
                self.errors.append(ParserError("ModelImporter: the ONNX parser only supports networks with an explicit batch dimension"))
                return False
            try:
                m = onnx.load_from_string(bytes(model))
            except Exception as exc:  # noqa: BLE001 - the real parser reports, never raises
                self.errors.append(ParserError(f"Failed to parse ONNX model: {exc}"))
                return False
            weights = {t.name for t in m.graph.initializer}

            def tensor(v):
                t = v.type.tensor_type
                dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim]
                return ITensor(v.name, dims, _ONNX_TO_TRT.get(t.elem_type, DataType.FLOAT))

            self.network.inputs = [tensor(v) for v in m.graph.input if v.name not in weights]
            self.network.outputs = [tensor(v) for v in m.graph.output]
            self.network.onnx = bytes(model)
            self.network.graph_name = m.graph.name
            return True

    class IOptimizationProfile:
        def __init__(self):
            self.shapes: dict[str, tuple[tuple, tuple, tuple]] = {}

        def set_shape(self, input, min, opt, max):  # noqa: A002 - TensorRT's own parameter names
            least, best, most = (tuple(int(d) for d in s) for s in (min, opt, max))
            if any(d < 0 for d in least):
                raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
            if len(best) != len(least) or any(o < m for o, m in zip(best, least)):
                raise RuntimeError("Shape provided for opt is inconsistent with other shapes.")
            if len(most) != len(best) or any(x < o for x, o in zip(most, best)):
                raise RuntimeError("Shape provided for max is inconsistent with other shapes.")
            self.shapes[input] = (least, best, most)

        def get_shape(self, input):  # noqa: A002 - TensorRT's own parameter name
            return [Dims(s) for s in self.shapes[input]] if input in self.shapes else []

        def __bool__(self):
            return True  # isValid: every set_shape sets all three

    class ITimingCache:
        def __init__(self, data: bytes):
            self.data = bytes(data) or b"{}"

        def serialize(self):
            return memoryview(self.data)

    class IBuilderConfig:
        def __init__(self):
            self.flags, self.profiles, self.pools, self.timing_cache = set(), [], {}, None

        def set_flag(self, flag):
            self.flags.add(flag)

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def create_timing_cache(self, data):
            return ITimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.timing_cache = cache
            return True

        def get_timing_cache(self):
            return self.timing_cache

        def add_optimization_profile(self, profile):
            if not profile:
                return -1
            self.profiles.append(profile)
            return len(self.profiles) - 1

        @property
        def num_optimization_profiles(self):
            return len(self.profiles)

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        platform_has_fast_fp16 = True

        def create_network(self, flags=0):
            if major >= 10 and flags & (1 << int(NetworkDefinitionCreationFlag.EXPLICIT_BATCH)):
                Logger().log(Severity.WARNING, "kEXPLICIT_BATCH is deprecated and has no effect")
            return INetworkDefinition(flags)

        def create_builder_config(self):
            return IBuilderConfig()

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            driver.record("build_serialized_network")
            inputs = {t.name: t for t in network.inputs}
            free = [t.name for t in network.inputs if any(d == -1 for d in t.shape)]
            if free and not config.profiles:
                error(self.logger, "Error Code 4: Internal Error (Network has dynamic or shape inputs, but no "
                                   "optimization profile has been defined.)")
                return None
            for k, profile in enumerate(config.profiles):
                for name in profile.shapes:
                    if name not in inputs:
                        error(self.logger, f"Error Code 4: API Usage Error (optimization profile {k} has dimensions "
                                           f"for {name}, which is not an input of the network)")
                        return None
                for name in free:
                    if name not in profile.shapes:
                        error(self.logger, f"Error Code 4: Internal Error ({name}: dynamic input is missing "
                                           f"dimensions in profile {k}.)")
                        return None
                for name, shapes in profile.shapes.items():
                    dims = inputs[name].shape
                    for s in shapes:
                        if len(s) != len(dims):
                            error(self.logger, f"Error Code 4: Internal Error ({name}: number of dimensions is "
                                               f"{len(s)} in profile {k}, but {len(dims)} in the network)")
                            return None
                    for i, d in enumerate(dims):
                        if d != -1 and any(s[i] != d for s in shapes):
                            error(self.logger, f"Error Code 4: Internal Error ({name}: for dimension number {i} in "
                                               f"profile {k} does not match network definition (got min={shapes[0][i]},"
                                               f" opt={shapes[1][i]}, max={shapes[2][i]}), expected min=opt=max={d}).)")
                            return None
            outputs = ",".join(t.name for t in network.outputs)
            if outputs in state.refuse:
                error(self.logger, f"Error Code 10: Internal Error (Could not find any implementation for node "
                                   f"{outputs}/unsupported.)")
                return None
            if state.slow_build_s:
                time.sleep(state.slow_build_s)
            state.builds.append([t.name for t in network.outputs])
            header = {
                "version": version,
                "inputs": [[t.name, list(t.shape), int(t.dtype)] for t in network.inputs],
                "outputs": [[t.name, list(t.shape), int(t.dtype)] for t in network.outputs],
                "profiles": [{n: [list(s) for s in v] for n, v in p.shapes.items()} for p in config.profiles],
                "flags": sorted(int(f) for f in config.flags),
            }
            config.timing_cache.data = json.dumps({"entries": len(state.builds)}).encode()
            head = json.dumps(header).encode()
            return memoryview(_PLAN_MAGIC + len(head).to_bytes(8, "little") + head + network.onnx)

    class IExecutionContext:
        def __init__(self, engine):
            self.engine = engine
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name, shape):
            shape = tuple(int(d) for d in shape)
            if name not in self.engine.inputs:
                error(self.engine.logger, f"setInputShape: {name} is not an input tensor")
                return False
            profile = self.engine.profile
            if name in profile:
                least, _, most = profile[name]
                if len(shape) != len(least) or any(not lo <= d <= hi for d, lo, hi in zip(shape, least, most)):
                    error(self.engine.logger, f"IExecutionContext::setInputShape: Error Code 3: API Usage Error "
                                              f"(Parameter check failed, condition: satisfyProfile. Set dimension "
                                              f"{list(shape)} for tensor {name} does not satisfy any optimization "
                                              f"profiles. Valid range for profile 0: {list(least)}..{list(most)}.)")
                    return False
            elif shape != tuple(self.engine.inputs[name][0]):
                error(self.engine.logger, f"setInputShape: static input {name} must be {self.engine.inputs[name][0]}")
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name):
            if name in self.engine.inputs:
                return Dims(self.shapes.get(name, self.engine.inputs[name][0]))
            if set(self.shapes) != set(self.engine.inputs):
                return Dims(self.engine.outputs[name][0])
            return Dims(self.engine.output_shapes(self.shapes)[name])

        def set_tensor_address(self, name, address):
            self.addresses[name] = int(address)
            return True

        def execute_async_v3(self, stream_handle):
            ctx = driver.record("execute_async_v3")
            if ctx is None or not ctx.alive:
                error(self.engine.logger, "Cuda Runtime (invalid device context)")
                return False
            stream = driver.streams.get(stream_handle)
            if stream is None or stream.context is not ctx:
                error(self.engine.logger, "Cuda Runtime (invalid resource handle)")
                return False
            if set(self.shapes) != set(self.engine.inputs):
                error(self.engine.logger, "enqueueV3: not all input shapes are specified")
                return False
            names = list(self.engine.inputs) + list(self.engine.outputs)
            shapes = dict(self.shapes, **self.engine.output_shapes(self.shapes))
            views = {}
            for name in names:
                if name not in self.addresses:
                    error(self.engine.logger, f"enqueueV3: Error Code 3: API Usage Error (tensor {name} has no address)")
                    return False
                owner, buf = driver.memory.get(self.addresses[name], (None, None))
                dtype = _NP[DataType((self.engine.inputs.get(name) or self.engine.outputs[name])[1])]
                need = int(np.prod(shapes[name])) * np.dtype(dtype).itemsize
                if buf is None or owner is not ctx or len(buf) < need:
                    error(self.engine.logger, f"Cuda Runtime (an illegal memory access was encountered: {name})")
                    return False
                views[name] = (buf, dtype, shapes[name], need)
            feeds = {n: np.frombuffer(bytes(views[n][0][: views[n][3]]), dtype=views[n][1]).reshape(views[n][2])
                     for n in self.engine.inputs}
            outs = self.engine.session().run(list(self.engine.outputs), feeds)
            for name, value in zip(self.engine.outputs, outs):
                data = np.ascontiguousarray(value, dtype=views[name][1]).tobytes()
                views[name][0][: len(data)] = data
            return True

    class ICudaEngine:
        def __init__(self, header: dict, onnx_bytes: bytes, logger):
            self.logger = logger
            self.onnx = onnx_bytes
            self.inputs = {n: (s, d) for n, s, d in header["inputs"]}
            self.outputs = {n: (s, d) for n, s, d in header["outputs"]}
            self.profile = {n: tuple(tuple(x) for x in v) for n, v in (header["profiles"] or [{}])[0].items()}
            self._session = None
            self._shapes: dict[tuple, dict] = {}

        def session(self):
            if self._session is None:
                import onnxruntime as ort

                self._session = ort.InferenceSession(self.onnx, providers=["CPUExecutionProvider"])
            return self._session

        def output_shapes(self, input_shapes: dict) -> dict:
            key = tuple(sorted(input_shapes.items()))
            if key not in self._shapes:
                feeds = {n: np.zeros(s, dtype=_NP[DataType(self.inputs[n][1])]) for n, s in input_shapes.items()}
                outs = self.session().run(list(self.outputs), feeds)
                self._shapes[key] = {n: tuple(o.shape) for n, o in zip(self.outputs, outs)}
            return self._shapes[key]

        @property
        def num_io_tensors(self):
            return len(self.inputs) + len(self.outputs)

        def get_tensor_name(self, i):
            return (list(self.inputs) + list(self.outputs))[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT if name in self.outputs else TensorIOMode.NONE

        def get_tensor_dtype(self, name):
            return DataType((self.inputs.get(name) or self.outputs[name])[1])

        def get_tensor_shape(self, name):
            return Dims((self.inputs.get(name) or self.outputs[name])[0])

        def get_tensor_profile_shape(self, name, profile_index):
            if profile_index != 0 or name not in self.profile:
                raise RuntimeError(f"{name} has no shapes in profile {profile_index}")
            return [Dims(s) for s in self.profile[name]]

        def create_execution_context(self):
            driver.record("create_execution_context")
            return IExecutionContext(self)

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, plan):
            driver.record("deserialize_cuda_engine")
            plan = bytes(plan)
            if not plan.startswith(_PLAN_MAGIC):
                error(self.logger, "Error Code 1: Serialization (Serialization assertion magicTagRead == kMAGIC_TAG failed.)")
                return None
            n = int.from_bytes(plan[8:16], "little")
            header = json.loads(plan[16:16 + n])
            if header["version"] != version:
                error(self.logger, f"Error Code 6: API Usage Error (The engine plan file is not compatible with this "
                                   f"version of TensorRT, expecting library version {version} got {header['version']}.)")
                return None
            return ICudaEngine(header, plan[16 + n:], self.logger)

    def nptype(dtype):
        return _NP[DataType(dtype)]

    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    mod.Logger, mod.ILogger, mod.Builder, mod.OnnxParser, mod.Runtime = Logger, ILogger, Builder, OnnxParser, Runtime
    mod.NetworkDefinitionCreationFlag, mod.BuilderFlag, mod.MemoryPoolType = NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType
    mod.DataType, mod.TensorIOMode, mod.nptype, mod.Dims = DataType, TensorIOMode, nptype, Dims
    mod.IOptimizationProfile = IOptimizationProfile
    mod.state = state
    return mod


def _with_spec(mod: types.ModuleType, name: str, package: bool = False) -> types.ModuleType:
    mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=package)
    if package:
        mod.__path__ = []
    return mod


def modules(version: str = "10.3.0", **options) -> tuple[types.ModuleType, types.ModuleType, dict]:
    """(tensorrt, pycuda.driver, the sys.modules entries that install both)."""
    driver = Driver()
    cuda = _with_spec(driver.module(), "pycuda.driver")
    trt = _with_spec(make_tensorrt(version, driver, **options), "tensorrt")
    pycuda = _with_spec(types.ModuleType("pycuda"), "pycuda", package=True)
    pycuda.driver = cuda
    return trt, cuda, {"tensorrt": trt, "pycuda": pycuda, "pycuda.driver": cuda}


def install(monkeypatch, version: str = "10.3.0", **options) -> tuple[types.ModuleType, types.ModuleType]:
    trt, cuda, entries = modules(version, **options)
    for name, mod in entries.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return trt, cuda


def install_globally(version: str = "10.3.0", **options) -> tuple[types.ModuleType, types.ModuleType]:
    """For a child process of a test (no monkeypatch there)."""
    trt, cuda, entries = modules(version, **options)
    sys.modules.update(entries)
    return trt, cuda
