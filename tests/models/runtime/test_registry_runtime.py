import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from models.runtime import registry
from models.runtime.engine import Engine, EngineError, OnnxEngine


def tiny_model(path):
    """A real ONNX graph: y = sigmoid(2x)."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["image", "two"], ["t"]), helper.make_node("Sigmoid", ["t"], ["y"])],
                              "tiny", [x], [y], [two])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture()
def artifacts(tmp_path):
    tiny_model(tmp_path / "tiny.onnx")
    manifest = {"tiny": {"file": "tiny.onnx", "sha256": registry.sha256_file(tmp_path / "tiny.onnx"), "version": "tiny-1"}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_engine_runs_by_name_and_reports_its_backend(artifacts):
    engine = registry.load_engine("tiny", artifacts=artifacts, threads=1)
    assert isinstance(engine, Engine)
    assert engine.backend == "onnxruntime" and engine.version == "tiny-1"
    out = engine.run({"image": np.array([[0.0, 1.0, -1.0]], np.float32)})
    np.testing.assert_allclose(out["y"], 1 / (1 + np.exp(-2 * np.array([[0.0, 1.0, -1.0]]))), rtol=1e-6)
    assert registry.versions(artifacts) == {"tiny": "tiny-1"}


def test_damaged_or_missing_model_is_refused_with_a_reason(artifacts):
    with open(artifacts / "tiny.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(EngineError, match="damaged"):
        registry.load_engine("tiny", artifacts=artifacts)
    with pytest.raises(EngineError, match="not in the manifest"):
        registry.load_engine("glaucoma", artifacts=artifacts)
    with pytest.raises(EngineError, match="no int8 build"):
        registry.model_file("tiny", "int8", artifacts=artifacts)
    (artifacts / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(EngineError, match="could not be loaded"):
        OnnxEngine(artifacts / "junk.onnx")


def test_engine_names_missing_inputs(artifacts):
    engine = registry.load_engine("tiny", artifacts=artifacts)
    with pytest.raises(EngineError, match="image"):
        engine.run({"x": np.zeros((1, 3), np.float32)})


def test_int8_is_preferred_only_where_the_gate_allows_it_and_the_cpu_has_dot_products(artifacts):
    import json

    m = json.loads((artifacts / "manifest.json").read_text())
    m["tiny"]["int8"] = {"file": "tiny.onnx", "sha256": m["tiny"]["sha256"]}
    (artifacts / "manifest.json").write_text(json.dumps(m))
    assert registry.shipped_precision("tiny", artifacts) == "fp32"  # no gate verdict yet
    m["tiny"]["shipped_precision"] = "int8"
    (artifacts / "manifest.json").write_text(json.dumps(m))
    assert registry.shipped_precision("tiny", artifacts) == "int8"
    assert registry.cpu_has_int8_dot("flags : fpu sse avx2 avx512_vnni")
    assert registry.cpu_has_int8_dot("Features : fp asimd asimddp")
    assert not registry.cpu_has_int8_dot("flags : fpu sse avx2")


def test_auto_precision_on_a_cpu_is_the_build_measured_faster_here_and_remembered(tmp_path, monkeypatch):
    from models.runtime import registry

    monkeypatch.setattr(registry, "have_tensorrt", lambda: False)
    monkeypatch.setattr(registry, "cpu_has_int8_dot", lambda cpuinfo=None: True)
    assert registry.shipped_precision("segmentation") == "int8"  # the gate allowed it
    chosen = registry.preferred_precision("segmentation", measure_in=tmp_path, threads=1)
    measured = json.loads((tmp_path / "precision.json").read_text())
    (entry,) = measured.values()
    assert set(entry["median_ms"]) == {"fp32", "int8"} and all(v > 0 for v in entry["median_ms"].values())
    assert chosen == entry["precision"] == min(entry["median_ms"], key=entry["median_ms"].get)

    def no_second_measurement(*args, **kwargs):
        raise AssertionError("measured again instead of using the remembered choice")

    monkeypatch.setattr(registry, "OnnxEngine", no_second_measurement)
    assert registry.preferred_precision("segmentation", measure_in=tmp_path, threads=1) == chosen
    monkeypatch.setattr(registry, "cpu_has_int8_dot", lambda cpuinfo=None: False)
    assert registry.preferred_precision("segmentation", measure_in=tmp_path, threads=1) == "fp32"


def test_onnx_runtime_runs_the_cpu_build_of_int8_and_tensorrt_the_symmetric_one(artifacts):
    m = json.loads((artifacts / "manifest.json").read_text())
    tiny_model(artifacts / "tiny.int8.onnx")
    m["tiny"]["int8"] = {"file": "tiny.int8.onnx", "sha256": registry.sha256_file(artifacts / "tiny.int8.onnx")}
    (artifacts / "manifest.json").write_text(json.dumps(m))
    # without a CPU build both runtimes take the one INT8 file
    assert registry.model_file("tiny", "int8", artifacts, backend="onnxruntime")[0].name == "tiny.int8.onnx"

    (artifacts / "tiny.int8-cpu.onnx").write_bytes((artifacts / "tiny.onnx").read_bytes())
    m["tiny"]["int8_cpu"] = {"file": "tiny.int8-cpu.onnx", "sha256": registry.sha256_file(artifacts / "tiny.int8-cpu.onnx"),
                             "version": "tiny-1-int8-cpu"}
    (artifacts / "manifest.json").write_text(json.dumps(m))
    assert registry.model_file("tiny", "int8", artifacts, backend="onnxruntime")[0].name == "tiny.int8-cpu.onnx"
    assert registry.model_file("tiny", "int8", artifacts)[0].name == "tiny.int8.onnx"  # TensorRT's
    engine = registry.load_engine("tiny", "int8", artifacts, threads=1, backend="onnxruntime")
    assert engine.path.name == "tiny.int8-cpu.onnx" and engine.version == "tiny-1-int8-cpu"

    with open(artifacts / "tiny.int8-cpu.onnx", "ab") as f:  # the CPU build is hash-checked like every file
        f.write(b"\0")
    with pytest.raises(EngineError, match="damaged"):
        registry.load_engine("tiny", "int8", artifacts, backend="onnxruntime")


def test_the_segmentation_network_runs_on_smaller_views_without_its_file_changing():
    """The network is fully convolutional: with its height and width left free it runs a 160 px view, and
    at 256 px it gives what the file as shipped gives."""
    path, entry = registry.model_file("segmentation", "fp32")
    fixed, free = OnnxEngine(path, threads=1), OnnxEngine(path, threads=1, free_size=True)
    with pytest.raises(Exception, match="dimensions"):
        fixed.run({"image": np.zeros((1, 3, 160, 160), np.float32)})
    small = free.run({"image": np.random.default_rng(0).normal(size=(1, 3, 160, 160)).astype(np.float32)})
    assert small["disc"].shape == (1, 1, 160, 160) and small["glaucoma"].shape == (1, 1)
    feeds = free.example_feeds(batch=2)
    assert feeds["image"].shape == (2, 3, 256, 256)  # the file's own size, for timing
    for name, out in fixed.run(feeds).items():
        np.testing.assert_allclose(free.run(feeds)[name], out, atol=1e-5)
    assert registry.sha256_file(path) == entry["sha256"]
