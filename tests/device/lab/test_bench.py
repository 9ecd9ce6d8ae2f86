"""`glaucoscreen bench` writes the figures in the shape the project reports them (speed itself is
never asserted here: these machines are too noisy for timed tests)."""
import json

from device.lab import bench
from device.screening.pipeline import SCREENING_POLICY
from device.screening.referral import DISC_CLASSIFIER, ReferralPolicy


def test_bench_reports_engines_pipeline_and_the_reference_line(tmp_path):
    report = bench.run(runs=3, json_out=tmp_path / "bench.json", profile=True)
    assert json.loads((tmp_path / "bench.json").read_text()) == report
    seg = report["engines"]["segmentation"]
    for precision in ("fp32", "int8"):
        assert seg[precision]["p50_ms"] > 0 and seg[precision]["p95_ms"] >= seg[precision]["p50_ms"]
        assert report["pipeline"][precision]["p50_ms"] > seg[precision]["p50_ms"]  # the whole screening does more
    assert seg["int8"]["model_mib"] < seg["fp32"]["model_mib"] / 2
    assert seg["int8_tensorrt_build"]["p50_ms"] > 0  # the symmetric build, timed on ONNX Runtime beside the CPU one
    assert report["reference_unet"]["parameters"] > 17_000_000
    assert report["reference_unet"]["pipeline"]["p50_ms"] > report["reference_unet"]["p50_ms"]  # two passes
    assert report["shipped_precision"]["segmentation"] in ("fp32", "int8")
    for name in ("glaucoma", "progression"):  # every shipped engine is timed with its own inputs
        assert report["engines"][name]["fp32"]["p50_ms"] > 0, report["engines"][name]
    assert report["pipeline_fp32_vs_reference_speedup"] > 0

    # the target's ratio: the whole screening against one inference of the paper's network, from this run
    target = report["screening_vs_reference_inference"]
    assert target["precision"] == report["shipped_precision"]["segmentation"]
    assert target["ratio"] == round(report["reference_unet"]["p50_ms"] / report["pipeline"][target["precision"]]["p50_ms"], 2)
    assert len(report["load_average"]["start"]) == len(report["load_average"]["end"]) == 3

    for precision in ("fp32", "int8"):  # where the milliseconds of one screening go
        profile = report["profile"][precision]
        steps = profile["steps_p50_ms"]
        assert list(steps)[:3] == ["decode", "gate", "pass1_input"] and list(steps)[-1] == "unwarp"
        assert {"pass1", "pass2", "clean", "measure", "fusion"} <= set(steps)
        # the disc classifier runs where the shipped referral rule averages its score, and only there
        assert ("classifier" in steps) == (DISC_CLASSIFIER in ReferralPolicy.load(SCREENING_POLICY).fused_opinions())
        assert all(ms >= 0 for ms in steps.values())
        assert profile["photo_pixels"] == "2048x1536" and profile["pass_sizes"]["crop"] == 224
        assert profile["decode_screen_unwarp_p50_ms"] > profile["screening_p50_ms"] > 0

    memory = report["memory"]
    assert memory["screen_12mp"]["rc"] == 0 and memory["screen_12mp"]["photo"] == "4000x3000"
    assert memory["screen_12mp"]["peak_rss_mib"] > 50  # the models alone take that: a real count, not zero
    assert memory["screen_12mp"]["within_limit"] == (memory["screen_12mp"]["peak_rss_mib"] <= 400)
    assert memory["run_simulate_visit"]["rc"] == 0, memory["run_simulate_visit"]
    assert memory["run_simulate_visit"]["peak_rss_mib"] > memory["screen_12mp"]["peak_rss_mib"] / 2

    text = bench.summary(report)
    assert "one inference of the paper's network" in text and "per step" in text and "peak memory" in text


def test_peak_memory_is_that_of_the_command_alone():
    small = bench.peak_rss_of(["python3", "-c", "pass"])
    large = bench.peak_rss_of(["python3", "-c", "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096])"])
    assert small["rc"] == large["rc"] == 0
    assert large["peak_rss_mib"] > small["peak_rss_mib"] + 150
