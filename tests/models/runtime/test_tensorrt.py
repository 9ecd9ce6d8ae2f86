import importlib.util
from pathlib import Path

import pytest

from models.runtime import tensorrt as te
from models.runtime.engine import EngineError

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None


def test_cache_key_changes_with_model_version_gpu_and_precision():
    base = ("a" * 64, "10.3.0", "Orin", "int8")
    keys = {te.cache_key(*base)}
    for i, other in enumerate(("b" * 64, "8.6.2", "Orin Nano", "fp32")):
        changed = list(base)
        changed[i] = other
        keys.add(te.cache_key(*changed))
    assert len(keys) == 5
    assert te.cache_key(*base) == te.cache_key(*base)
    p = te.engine_path(Path("/cache"), "segmentation", *base)
    assert p.name.startswith("segmentation-int8-") and p.suffix == ".engine"
    assert "/" not in te.timing_cache_path(Path("/c"), "10.3.0", "NVIDIA Orin / 8GB").name


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT present: the real build test below runs instead")
def test_missing_tensorrt_is_a_clear_engine_error(tmp_path):
    with pytest.raises(EngineError, match="TensorRT is not installed"):
        te.TensorRTEngine(tmp_path / "m.onnx", name="segmentation", precision="int8", model_sha256="0" * 64, cache_dir=tmp_path)


@pytest.mark.skipif(not HAVE_TRT, reason="TensorRT and pycuda come with JetPack on a Jetson; not installable on this machine")
def test_builds_caches_and_runs_the_shipped_model(tmp_path):
    import numpy as np

    from models.runtime import registry

    path, entry = registry.model_file("segmentation")
    eng = te.TensorRTEngine(path, name="segmentation", precision="fp32", model_sha256=entry["sha256"], cache_dir=tmp_path)
    one = np.random.default_rng(0).normal(size=(1, 3, 256, 256)).astype(np.float32)
    out = eng.run({"image": one})
    assert out["disc"].shape == (1, 1, 256, 256)
    assert eng.engine_file.exists()
    # the screening alternates batch 1 and batch 2 (crop and mirror); each shape gets the right answer
    pair = eng.run({"image": np.concatenate([one, one[..., ::-1]])})
    assert pair["disc"].shape == (2, 1, 256, 256)
    assert np.abs(pair["disc"][0] - out["disc"][0]).max() < 1e-3
    held = len(eng._buffers)
    assert np.abs(eng.run({"image": one})["disc"] - out["disc"]).max() < 1e-3
    assert len(eng._buffers) == held  # both shapes' buffers kept, none allocated again
