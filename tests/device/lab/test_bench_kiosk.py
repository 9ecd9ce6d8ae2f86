"""`python -m device.lab.bench_kiosk` drives a whole visit in Chromium and writes its figures in the shape
the project reports them (speed itself is never asserted here: these machines are too noisy for
timed tests)."""
from __future__ import annotations

import json

import pytest

from device.lab import bench_kiosk

pytestmark = pytest.mark.browser


def test_one_visit_is_timed_step_by_step_with_both_eyes_screened_and_every_page_measured(tmp_path, capsys):
    out = tmp_path / "kiosk.json"
    bench_kiosk.main(["--runs", "1", "--json-out", str(out), "--size", "800x480"])
    report = json.loads(out.read_text())
    assert report["runs"] == 1 and report["size"] == "800x480" and report["target_s"] == 60.0
    assert report["completed"] == 1

    (visit,) = report["visits"]
    assert visit["error"] is None, visit["error"]
    assert visit["both_eyes_screened"] and visit["visit_status"] == "finished"
    assert visit["headline"] in bench_kiosk.HEADLINES
    for eye in ("right", "left"):
        taken = visit["eyes"][eye]
        assert taken["status"] == "screened" and taken["referral"] in ("refer", "rescreen", "normal")
        assert taken["auto_capture"] is True and taken["frames"] >= 1  # the loop took it, nobody pressed
        assert taken["capture_loop_s"] > 0 and taken["photo_after_s"] > 0 and taken["screened_after_photo_s"] > 0

    steps = visit["steps_s"]
    assert list(steps) == list(bench_kiosk.STEPS) and all(s > 0 for s in steps.values())
    assert sum(steps.values()) == pytest.approx(visit["total_s"], abs=0.06)
    assert steps["right_eye"] > visit["eyes"]["right"]["screened_after_photo_s"]
    assert report["total_s"] == {"p50": visit["total_s"], "max": visit["total_s"]}
    assert report["steps_s"]["left_eye"]["max"] == steps["left_eye"]

    assert [p["page"] for p in visit["pages"]] == list(bench_kiosk.PAGES)
    for page in visit["pages"]:
        assert "error" not in page, page
        assert page["inner_width"] == 800 and page["scroll_width"] > 0
        assert page["fits"] and page["scroll_width"] <= 800, page  # no sideways scrolling at 800x480
        assert page["targets"] >= 1 and page["smallest_target"]["height"] > 0
        assert page["targets_ok"] and page["smallest_target"]["height"] >= 44, page
    assert "/signin" in visit["pages"][0]["path"] and visit["pages"][-1]["path"].endswith("/slip")
    assert visit["pages"][0]["targets"] >= 12  # the keypad's ten digits, clear and delete are measured too
    layout = report["layout"]
    assert layout["pages_checked"] == len(bench_kiosk.PAGES)
    assert layout["ok"] and not layout["pages_scrolling_sideways"] and not layout["pages_with_small_targets"]

    printed = capsys.readouterr().out
    assert "p50" in printed and "max" in printed and f"{visit['total_s']:.2f}" in printed
