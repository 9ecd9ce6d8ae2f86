"""`glaucoscreen bench` writes the figures in the shape the project reports them (speed itself is
never asserted here: these machines are too noisy for timed tests)."""
import json

from device.lab import bench


def test_bench_reports_engines_pipeline_and_the_reference_line(tmp_path):
    report = bench.run(runs=3, json_out=tmp_path / "bench.json")
    assert json.loads((tmp_path / "bench.json").read_text()) == report
    seg = report["engines"]["segmentation"]
    for precision in ("fp32", "int8"):
        assert seg[precision]["p50_ms"] > 0 and seg[precision]["p95_ms"] >= seg[precision]["p50_ms"]
        assert report["pipeline"][precision]["p50_ms"] > seg[precision]["p50_ms"]  # the whole screening does more
    assert seg["int8"]["model_mib"] < seg["fp32"]["model_mib"] / 2
    assert report["reference_unet"]["parameters"] > 17_000_000
    assert report["reference_unet"]["pipeline"]["p50_ms"] > report["reference_unet"]["p50_ms"]  # two passes
    assert report["shipped_precision"]["segmentation"] in ("fp32", "int8")
    for name in ("glaucoma", "progression"):  # every shipped engine is timed with its own inputs
        assert report["engines"][name]["fp32"]["p50_ms"] > 0, report["engines"][name]
    assert report["pipeline_fp32_vs_reference_speedup"] > 0
