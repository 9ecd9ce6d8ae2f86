"""Inference engines. The screening pipeline talks to `Engine` and never knows which backend runs.

`OnnxEngine` runs an ONNX file (FP32 or INT8 QDQ) with ONNX Runtime on any CPU. A TensorRT engine
for the Jetson implements the same protocol and is imported only where TensorRT exists.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


class EngineError(RuntimeError):
    """A model that cannot be loaded or run; the message says which model and what to do."""


@runtime_checkable
class Engine(Protocol):
    name: str
    backend: str
    precision: str
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def close_engine(engine) -> None:
    """Free what an engine holds where it holds anything outside Python (a TensorRT engine's GPU memory and
    CUDA context); ONNX Runtime's session needs no closing."""
    close = getattr(engine, "close", None)
    if close is not None:
        close()


def cpu_threads() -> int:
    """Threads for inference: GLAUCOSCREEN_THREADS, else the cores this process may use."""
    env = os.environ.get("GLAUCOSCREEN_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def spin_threads() -> bool:
    """Whether ONNX Runtime's worker threads spin while they wait: GLAUCOSCREEN_SPIN_THREADS=1, else not
    (measured by `glaucoscreen bench --profile`; see the model card's "Speed")."""
    return os.environ.get("GLAUCOSCREEN_SPIN_THREADS", "0") == "1"


def _free_height_and_width(path: Path) -> tuple[bytes, dict[str, list]]:
    """The model with the height and width of its images left free. The segmentation network is fully
    convolutional and its upsampling takes its sizes from the tensors, so only the file's declared
    256 x 256 keeps ONNX Runtime from running it on a smaller view; the file itself (and its hash) stays
    as shipped."""
    import onnx

    model = onnx.load(str(path))
    declared = {}  # the inputs' shapes as the file gives them, for `example_feeds`
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        declared[value.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
        if len(dims) == 4:  # N x C x H x W
            dims[2].dim_param, dims[3].dim_param = "height", "width"
    return model.SerializeToString(), declared


class OnnxEngine:
    """An ONNX model run by ONNX Runtime on the CPU (or another execution provider when asked)."""

    backend = "onnxruntime"
    version: str  # the manifest's version of the model, set by `registry.load_engine`

    def __init__(self, path: str | Path, name: str | None = None, precision: str = "fp32",
                 providers: list[str] | None = None, threads: int | None = None, free_size: bool = False):
        import onnxruntime as ort

        self.path = Path(path)
        self.name = name or self.path.stem
        self.precision = precision
        self.free_size = free_size  # images of any height and width (a fully convolutional network)
        self._declared: dict[str, list] = {}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or cpu_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Worker threads that spin between the network's layers hold a core the capture loop, the kiosk
        # and other work on a 2- or 4-core board need; on a busy machine they also wait on each other.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_threads() else "0")
        try:
            model: str | bytes = str(self.path)
            if free_size:
                model, self._declared = _free_height_and_width(self.path)
            self.session = ort.InferenceSession(model, opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime (and onnx, reading the file) raise their own exception types
            raise EngineError(f"model {self.name} could not be loaded from {self.path.name}: {exc}") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def example_feeds(self, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the model's own shapes (dynamic axes as `batch`), for timing and checks."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for i in self.session.get_inputs():
            shape = [d if isinstance(d, int) else batch for d in self._declared.get(i.name, i.shape)]
            feeds[i.name] = rng.normal(size=shape).astype(np.float32)
        return feeds

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = set(self.input_names) - set(feeds)
        if missing:
            raise EngineError(f"model {self.name} needs inputs {sorted(missing)}")
        outs = self.session.run(self.output_names, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, outs))
