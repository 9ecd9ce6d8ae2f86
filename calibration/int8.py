"""FP32 ONNX -> calibrated INT8 QDQ ONNX, one build per runtime from the same calibration inputs.

TensorRT builds its INT8 engine from explicit Q/DQ nodes (its implicit calibrators are deprecated
since 10.1 and gone in 11), and it accepts only symmetric quantization (zero points 0), per-channel
weights from opset 13 and float biases. So the `tensorrt` build has symmetric activations and
weights, per-channel weights, no bias quantization, and the sigmoid heads (the last convolution
before each output) left in float, because mask edges are where INT8 error shows first.

ONNX Runtime runs that file too, but slowly: a symmetric int8 activation cannot stand for a ReLU6's
output (its range includes negatives), so ONNX Runtime cannot fold the ReLU6 into the quantized
convolution before it, and every such convolution ran in float between a dequantize and a quantize
step. The `cpu` build differs in one thing, uint8 activations with zero points (asymmetric), the form
ONNX Runtime recommends for x86 and ARM: the whole network then runs as quantized convolutions, about
twice as fast. TensorRT refuses it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx


class ArrayReader:
    """ONNX Runtime calibration reader over already preprocessed input tensors (read once: the
    calibrator makes a single pass, and each quantization builds its own reader)."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]):
        self.input_name = input_name
        self._batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}


def head_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes that produce the outputs: each output's Sigmoid and the Conv/Gemm that feeds it."""
    producers = {out: node for node in model.graph.node for out in node.output}
    keep: list[str] = []
    for output in model.graph.output:
        node = producers.get(output.name)
        hops = 0
        while node is not None and hops < 4:
            keep.append(node.name)
            if node.op_type in ("Conv", "Gemm", "MatMul"):
                break
            node = producers.get(node.input[0])
            hops += 1
    return keep


TARGETS = ("tensorrt", "cpu")


def quantize(fp32_path: Path, int8_path: Path, calibration: Iterable[np.ndarray], *, input_name: str = "image",
             method: str = "minmax", exclude: list[str] | None = None, target: str = "tensorrt") -> dict:
    """Write the INT8 QDQ model for `target` (TARGETS); returns what was kept in float and how it was calibrated."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    symmetric = target == "tensorrt"
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    prepped = int8_path.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
    model = onnx.load(str(prepped))
    excluded = sorted(set(head_nodes(model) + list(exclude or [])))
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    try:
        quantize_static(
            str(prepped), str(int8_path), ArrayReader(input_name, calibration),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded, calibrate_method=methods[method],
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": False,
                           **({"CalibPercentile": 99.99} if method == "percentile" else {})},
        )
    finally:
        prepped.unlink(missing_ok=True)
    form = ("QDQ S8S8 symmetric, per-channel weights, float bias" if symmetric
            else "QDQ U8S8: uint8 activations with zero points, symmetric per-channel int8 weights, float bias")
    return {"excluded_nodes": excluded, "method": method, "format": form, "target": target}


def check_tensorrt_compatible(path: Path) -> list[str]:
    """Problems TensorRT would reject: non-zero zero points, quantized biases, opset < 13."""
    model = onnx.load(str(path))
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        problems.append(f"opset {opset} < 13: per-channel Q/DQ needs 13")
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = inits.get(node.input[2])
            if zp is not None and np.any(onnx.numpy_helper.to_array(zp) != 0):
                problems.append(f"{node.name}: zero point is not 0 (asymmetric)")
        if node.op_type == "DequantizeLinear":
            src = inits.get(node.input[0])
            if src is not None and src.data_type == onnx.TensorProto.INT32:
                problems.append(f"{node.name}: INT32 bias DequantizeLinear")
    return problems
