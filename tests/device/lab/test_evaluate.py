"""`glaucoscreen evaluate`: bootstrap intervals, per-source tables, fovea error and the ROC figure."""
import json

import cv2
import numpy as np
import pytest

from device.cli import main
from device.lab import evaluate
from device.lab.roc import (
    RocFigure,
    auc,
    operating_point,
    roc_curve,
    sensitivity_at_specificity,
    weighted_auc,
    weighted_sensitivity_at_specificity,
)
from device.screening.pipeline import ScreeningPipeline
from models import synthetic
from models.datasets import read_dataset


def make_rows(n: int, seed: int, sources=("REFUGE", "Drishti-GS1"), patients: bool = False) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        glaucoma = int(rng.random() < 0.3)
        rows.append({
            "id": f"p{i:04d}", "source": sources[i % len(sources)], "patient": f"{i // 2}" if patients else None,
            "ok": True, "gradable": bool(rng.random() > 0.1), "glaucoma": glaucoma,
            "glaucoma_probability": float(np.clip(rng.normal(0.3 + 0.4 * glaucoma, 0.2), 0, 1)),
            "disc_dice": float(rng.uniform(0.85, 0.99)), "cup_dice": float(rng.uniform(0.6, 0.95)),
            "vcdr_error": float(abs(rng.normal(0, 0.06))),
        })
    return rows


def test_weighted_figures_equal_the_plain_ones_on_duplicated_photos():
    rng = np.random.default_rng(5)
    for _ in range(50):
        n = int(rng.integers(4, 40))
        y = rng.integers(0, 2, n)
        s = np.round(rng.normal(size=n) + y, 1)  # rounded: ties between classes must count half
        w = rng.integers(0, 4, n)
        yy, ss = np.repeat(y, w), np.repeat(s, w)
        plain = auc(yy, ss)
        weighted = weighted_auc(y, s, w)[0]
        assert (plain is None and np.isnan(weighted)) or weighted == pytest.approx(plain)
        plain = sensitivity_at_specificity(yy, ss, 0.9) if len(yy) else None
        weighted = weighted_sensitivity_at_specificity(y, s, w, 0.9)[0]
        assert (plain is None and np.isnan(weighted)) or weighted == pytest.approx(plain)


def test_bootstrap_intervals_match_resampling_done_by_hand():
    rows = make_rows(60, seed=1)
    fig = evaluate.figures(rows, resamples=300, seed=11)
    weights = evaluate.resample_weights([evaluate._unit(r) for r in rows], 300, 11)
    by_hand = {"disc_dice": [], "vcdr_mae": [], "auc": [], "sensitivity_at_90_specificity": []}
    for counts in weights.astype(int):
        drawn = [r for r, c in zip(rows, counts) for _ in range(c)]
        by_hand["disc_dice"].append(np.mean([r["disc_dice"] for r in drawn]))
        by_hand["vcdr_mae"].append(np.mean([r["vcdr_error"] for r in drawn]))
        y = [r["glaucoma"] for r in drawn]
        s = [r["glaucoma_probability"] for r in drawn]
        by_hand["auc"].append(auc(y, s))
        by_hand["sensitivity_at_90_specificity"].append(sensitivity_at_specificity(y, s, 0.9))
    for key, values in by_hand.items():
        values = np.array([np.nan if v is None else v for v in values], float)
        lo, hi = np.percentile(values[np.isfinite(values)], [2.5, 97.5])
        assert fig["ci"][key] == pytest.approx([lo, hi], abs=1e-4), key
        assert fig["ci"][key][0] <= fig[key] <= fig["ci"][key][1]
    # seeded: the same seed gives the same intervals, another seed other ones
    assert evaluate.figures(rows, resamples=300, seed=11)["ci"] == fig["ci"]
    assert evaluate.figures(rows, resamples=300, seed=12)["ci"] != fig["ci"]


def test_whole_patients_are_resampled_together():
    rows = make_rows(40, seed=2, sources=("PAPILA",), patients=True)
    units = [evaluate._unit(r) for r in rows]
    weights = evaluate.resample_weights(units, 500, 3)
    assert (weights[:, 0::2] == weights[:, 1::2]).all()  # the two eyes of one patient are drawn together
    assert (weights.sum(axis=1) == 40).all()  # 20 patients drawn, two photos each
    fig = evaluate.figures(rows, resamples=500, seed=3)
    assert fig["bootstrap"]["unit"] == "patient" and fig["bootstrap"]["n_units"] == 20
    mixed = rows[:10] + make_rows(10, seed=4)
    assert evaluate.figures(mixed, resamples=50)["bootstrap"]["unit"] == "patient where known, else photo"


def test_summary_keeps_its_keys_and_adds_per_source_figures_and_tables():
    rows = make_rows(90, seed=6)
    summary = evaluate.summarize(rows, resamples=400, threshold=0.45)
    for key in ("n", "n_unreadable", "disc_dice", "cup_dice", "vcdr_mae", "auc", "sensitivity_at_90_specificity",
                "ungradable_rate", "n_glaucoma", "n_scored"):
        assert key in summary
    assert set(summary["by_source"]) == {"REFUGE", "Drishti-GS1"}
    refuge = [r for r in rows if r["source"] == "REFUGE"]
    assert summary["by_source"]["REFUGE"]["n"] == len(refuge)
    assert summary["by_source"]["REFUGE"]["disc_dice"] == pytest.approx(np.mean([r["disc_dice"] for r in refuge]), abs=1e-4)
    assert summary["by_source"]["REFUGE"]["ci"]["auc"] is not None
    sens, spec = operating_point([r["glaucoma"] for r in rows], [r["glaucoma_probability"] for r in rows], 0.45)
    assert summary["sensitivity_at_referral_threshold"] == pytest.approx(sens, abs=1e-4)
    assert summary["specificity_at_referral_threshold"] == pytest.approx(spec, abs=1e-4)
    assert summary["fovea"] == "no fovea labels"

    table = evaluate.markdown(summary)
    lines = table.splitlines()
    assert lines[0].startswith("| source | photos |") and "disc Dice" in lines[0] and "fovea" not in lines[0]
    assert lines[2].startswith("| all photos | 90 |")
    assert any(line.startswith("| REFUGE | 45 |") for line in lines)
    lo, hi = summary["ci"]["disc_dice"]
    assert f"{summary['disc_dice']:.3f} ({lo:.3f}-{hi:.3f})" in lines[2]
    assert "no fovea labels" in table and "400 resamples" in table


def test_a_large_evaluation_gets_intervals_pooled_and_for_each_source():
    """2000 resamples of 1500 photos in three sources (vectorised; its speed is a figure, not a test)."""
    rows = make_rows(1500, seed=7, sources=("A", "B", "C"), patients=True)
    summary = evaluate.summarize(rows, threshold=0.5)
    assert summary["bootstrap"]["resamples"] == 2000 and summary["ci"]["auc"] is not None
    from models.metrics import auc

    for source in ("A", "B", "C"):
        mine = [r for r in rows if r["source"] == source and r["glaucoma_probability"] is not None]
        lo, hi = summary["by_source"][source]["ci"]["auc"]
        assert summary["by_source"][source]["auc"] == pytest.approx(  # that source's photos only (4 places shown)
            auc([r["glaucoma"] for r in mine], [r["glaucoma_probability"] for r in mine]), abs=5e-5)
        assert lo <= summary["by_source"][source]["auc"] <= hi and hi - lo < 0.2  # ~500 photos: a usable interval


def test_roc_curve_goes_corner_to_corner_and_the_figure_marks_the_operating_point(tmp_path):
    y = [0, 0, 0, 1, 0, 1, 1]
    s = [0.1, 0.2, 0.3, 0.35, 0.4, 0.8, 0.9]
    fpr, tpr, thresholds = roc_curve(y, s)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc(y, s))
    rows = [{"id": str(i), "source": "REFUGE", "ok": True, "gradable": True, "glaucoma": g, "glaucoma_probability": p}
            for i, (g, p) in enumerate(zip(y, s))]
    summary = evaluate.summarize(rows, resamples=200, threshold=0.35)
    img = evaluate.roc_figure(rows, summary, tmp_path / "roc.png")
    written = cv2.imread(str(tmp_path / "roc.png"))
    assert written is not None and written.shape == img.shape
    fig = RocFigure()
    x, yy = fig.to_pixel(1 - summary["specificity_at_referral_threshold"], summary["sensitivity_at_referral_threshold"])
    b, g, r = (int(v) for v in written[yy, x])
    assert r > 180 and g < 80 and b < 80  # the red operating-point marker
    # (0, 2/3) -> (1/4, 2/3): the curve runs level while the normal photo at 0.4 is passed
    b, g, r = (int(v) for v in written[fig.to_pixel(0.125, 2 / 3)[::-1]])
    assert b > 100 and r < 80
    b, g, r = (int(v) for v in written[fig.to_pixel(0.125, 0.5)[::-1]])
    assert min(b, g, r) > 200  # and nothing is drawn below it there


def test_fovea_error_in_pixels_disc_diameters_and_256_px_units(tmp_path):
    synthetic.write_dataset(tmp_path / "syn", 4, seed=21)
    records = read_dataset(tmp_path / "syn")
    assert all(r.fovea is not None for r in records)  # the generator's fovea reaches the record

    class KnownFovea(ScreeningPipeline):
        """The shipped model finds the disc; the fovea answer is the expert's moved by (3, 4) pixels."""

        answer = None

        def locate_disc(self, rgb):
            found, _ = super().locate_disc(rgb)
            return found, self.answer

    pipeline = KnownFovea.__new__(KnownFovea)
    pipeline.__dict__.update(vars(ScreeningPipeline.from_artifacts(precision="fp32")))
    rows = []
    for rec in records:
        pipeline.answer = (rec.fovea[0] + 3.0, rec.fovea[1] + 4.0)
        row = evaluate.evaluate_photo(pipeline, rec)
        disc, _ = rec.load_mask()
        assert row["fovea_error_px"] == pytest.approx(5.0)
        assert row["fovea_error_256"] == pytest.approx(5.0 * 256 / 512)
        assert row["fovea_error_dd"] == pytest.approx(5.0 / (np.ptp(np.nonzero(disc)[0]) + 1))
        rows.append(row)
    pipeline.answer = None
    rows.append(evaluate.evaluate_photo(pipeline, records[0]) | {"id": "missed"})
    summary = evaluate.summarize(rows, resamples=100)
    assert summary["n_fovea"] == 5 and summary["n_fovea_missed"] == 1
    assert summary["fovea_error_px"] == pytest.approx(5.0) and summary["ci"]["fovea_error_px"] == [5.0, 5.0]
    table = evaluate.markdown(summary)
    assert "fovea error px" in table and "5.0 (5.0-5.0)" in table and "not found on 1 of 5" in table


def test_evaluate_command_writes_the_roc_png_and_prints_tables(tmp_path, capsys):
    synthetic.write_dataset(tmp_path / "syn", 6, seed=4, glaucoma_fraction=0.5)
    code = main(["evaluate", "--data", str(tmp_path / "syn"), "--roc-png", str(tmp_path / "roc.png"),
                 "--json-out", str(tmp_path / "eval.json"), "--markdown-out", str(tmp_path / "eval.md"),
                 "--resamples", "300", "--precision", "fp32"])
    assert code == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["n"] == 6 and summary["bootstrap"]["resamples"] == 300 and summary["n_fovea"] == 6
    assert summary["by_source"]["synthetic"]["n"] == 6
    assert "| all photos (synthetic) | 6 |" in err
    assert (tmp_path / "eval.md").read_text() in err
    png = cv2.imread(str(tmp_path / "roc.png"))
    assert png is not None and png.shape[0] > 500 and png.shape[1] > 500
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["summary"]["roc_png"] == str(tmp_path / "roc.png") and len(saved["rows"]) == 6
