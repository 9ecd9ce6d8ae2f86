import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from calibration.int8 import check_tensorrt_compatible, head_nodes, quantize


class TinySeg(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(),
                                        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU6())
        self.head = torch.nn.Conv2d(8, 1, 1)

    def forward(self, x):
        return torch.sigmoid(self.head(self.body(x)))


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    torch.manual_seed(0)
    net = TinySeg().eval()
    path = tmp_path_factory.mktemp("int8") / "tiny.onnx"
    torch.onnx.export(net, torch.randn(1, 3, 32, 32), str(path), input_names=["image"], output_names=["disc"],
                      opset_version=17, dynamo=False)
    return path


def test_qdq_model_is_symmetric_per_channel_and_keeps_the_head_in_float(fp32_model, tmp_path):
    rng = np.random.default_rng(0)
    calib = [rng.normal(size=(1, 3, 32, 32)).astype(np.float32) for _ in range(8)]
    int8 = tmp_path / "tiny.int8.onnx"
    info = quantize(fp32_model, int8, calib)
    model = onnx.load(str(int8))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 3
    assert check_tensorrt_compatible(int8) == []
    # the head conv reads a float weight, not a dequantized one
    head = next(n for n in model.graph.node if n.op_type == "Conv" and n.name in info["excluded_nodes"])
    producers = {o: n for n in model.graph.node for o in n.output}
    assert head.input[1] not in producers or producers[head.input[1]].op_type != "DequantizeLinear"
    # per-channel: some weight scale is a vector
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    dq_scales = [inits[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits]
    assert any(s.ndim == 1 and s.size == 8 for s in dq_scales)
    # and it still computes nearly the same thing
    x = calib[0]
    a = ort.InferenceSession(str(fp32_model)).run(None, {"image": x})[0]
    b = ort.InferenceSession(str(int8)).run(None, {"image": x})[0]
    assert np.abs(a - b).max() < 0.05
    assert not np.allclose(a, b)  # it really is quantized


def test_heads_are_found_from_the_outputs(fp32_model):
    names = head_nodes(onnx.load(str(fp32_model)))
    model = onnx.load(str(fp32_model))
    kinds = {n.name: n.op_type for n in model.graph.node}
    assert sorted(kinds[n] for n in names) == ["Conv", "Sigmoid"]


def test_asymmetric_zero_point_is_reported(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.INT8, [], [3])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(m, tmp_path / "a.onnx")
    assert any("zero point" in p for p in check_tensorrt_compatible(tmp_path / "a.onnx"))


def _ops_after_onnxruntime_optimizes(path, tmp_path) -> list[str]:
    """The graph ONNX Runtime runs once it has fused what it can of the QDQ model."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]


def test_the_cpu_build_runs_the_body_quantized_throughout_and_tensorrt_would_refuse_it(fp32_model, tmp_path):
    """With symmetric activations ONNX Runtime cannot fold a ReLU6 into the quantized convolution before it:
    each one is dequantized, clipped in float and quantized again. The CPU build's uint8 activations let it
    run the body as quantized convolutions from the input's quantization to the head's dequantization."""
    rng = np.random.default_rng(0)
    calib = [rng.normal(size=(1, 3, 32, 32)).astype(np.float32) for _ in range(8)]
    symmetric, cpu = tmp_path / "tiny.int8.onnx", tmp_path / "tiny.int8-cpu.onnx"
    quantize(fp32_model, symmetric, list(calib))
    info = quantize(fp32_model, cpu, list(calib), target="cpu")
    assert info["target"] == "cpu" and "uint8" in info["format"]

    ops = _ops_after_onnxruntime_optimizes(symmetric, tmp_path)
    assert "Clip" in ops and ops.count("QuantizeLinear") > 1
    ops = _ops_after_onnxruntime_optimizes(cpu, tmp_path)
    assert "Clip" not in ops and ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == 1
    assert ops.count("QLinearConv") == 2
    assert any("zero point is not 0" in p for p in check_tensorrt_compatible(cpu))

    x = calib[0]
    a = ort.InferenceSession(str(fp32_model)).run(None, {"image": x})[0]
    b = ort.InferenceSession(str(cpu)).run(None, {"image": x})[0]
    assert np.abs(a - b).max() < 0.05 and not np.allclose(a, b)
    with pytest.raises(ValueError, match="target"):
        quantize(fp32_model, tmp_path / "x.onnx", list(calib), target="gpu")
