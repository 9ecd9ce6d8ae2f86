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
from models.datasets import DatasetError, read_dataset


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
    assert table.splitlines()[0] == "Measured on 90 photos from 2 sources: Drishti-GS1 (n=45), REFUGE (n=45)."
    lines = table.splitlines()[2:]  # the accuracy table, under the header line and a blank one
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
    assert list(summary)[0] == "measured_on" and summary["measured_on"] == {"synthetic": 6}
    assert "| all photos (synthetic) | 6 |" in err
    assert "Measured on 6 photos from 1 source: synthetic (n=6)." in err
    assert (tmp_path / "eval.md").read_text() in err
    png = cv2.imread(str(tmp_path / "roc.png"))
    assert png is not None and png.shape[0] > 500 and png.shape[1] > 500
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["summary"]["roc_png"] == str(tmp_path / "roc.png") and len(saved["rows"]) == 6


# ---------------------------------------------------------------- per camera: gate, disc, operating point

def gate_row(i: int, source: str, known_gradable, gate_passed, reasons=(), ok: bool = True, **more) -> dict:
    """A screened photo as evaluate_photo writes it, reduced to what the gate figures read."""
    return {"id": f"{source}-{i}", "source": source, "patient": None, "ok": ok, "gradable": gate_passed,
            "glaucoma": None, "glaucoma_probability": None, "known_gradable": known_gradable,
            "gate_passed": gate_passed if ok else None, "quality_reasons": list(reasons),
            "disc_found": None if not ok else bool(gate_passed), **more}


def test_false_rejections_count_the_known_gradable_photos_the_gate_turned_away():
    rows = [
        gate_row(0, "DRIVE", 1, False, ["blur", "dark"]), gate_row(1, "DRIVE", 1, True),
        gate_row(2, "DRIVE", 1, False, ["blur"]), gate_row(3, "DRIVE", 1, True),
        gate_row(4, "DRIVE", 1, None, ok=False),  # unreadable file: not the gate's doing, left out
        gate_row(5, "DRIVE", None, False, ["dark"]),  # nobody said it was gradable: not a false rejection
        gate_row(0, "DRIONS-DB", 1, False, ["dark"]), gate_row(1, "DRIONS-DB", 1, True),
        gate_row(2, "DRIONS-DB", 1, True), gate_row(3, "DRIONS-DB", 0, False, ["glare"]),
    ]
    summary = evaluate.summarize(rows, resamples=50, threshold=0.5)
    drive, drions = summary["by_source"]["DRIVE"], summary["by_source"]["DRIONS-DB"]
    assert (drive["n_rejected_known_gradable"], drive["n_known_gradable"], drive["false_rejection_rate"]) == (2, 4, 0.5)
    assert drive["first_rejection_reasons"] == {"blur": 2}  # only the first reason of each photo
    assert (drions["n_rejected_known_gradable"], drions["n_known_gradable"]) == (1, 3)
    assert drions["false_rejection_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert summary["false_rejection_rate"] == pytest.approx(3 / 7, abs=1e-4)
    assert summary["first_rejection_reasons"] == {"blur": 2, "dark": 1}
    table = evaluate.markdown(summary)
    assert "| DRIVE | 6 | 2/4 (50.0%) | blur 2 |" in table
    assert "| DRIONS-DB | 4 | 1/3 (33.3%) | dark 1 |" in table
    assert "| all photos | 10 | 3/7 (42.9%) | blur 2, dark 1 |" in table


def test_a_source_nobody_judged_has_no_false_rejection_rate_and_none_rejected_says_none():
    rows = [gate_row(i, "REFUGE", None, i % 2 == 0, ["blur"]) for i in range(4)]
    rows += [gate_row(i, "STARE", 1, True) for i in range(3)]
    summary = evaluate.summarize(rows, resamples=50)
    refuge, stare = summary["by_source"]["REFUGE"], summary["by_source"]["STARE"]
    assert refuge["false_rejection_rate"] is None and refuge["n_known_gradable"] == 0
    assert stare["false_rejection_rate"] == 0.0 and stare["first_rejection_reasons"] == {}
    table = evaluate.markdown(summary)
    assert "| REFUGE | 4 | - | - |" in table and "| STARE | 3 | 0/3 (0.0%) | none |" in table


def test_photos_without_glaucoma_labels_or_masks_give_gate_and_disc_figures_and_dashes_for_the_rest():
    rows = [gate_row(0, "DRIVE", 1, True), gate_row(1, "DRIVE", 1, True, glaucoma_probability=0.7),
            gate_row(2, "DRIVE", 1, False, ["no_fundus"])]
    rows[1]["disc_found"] = False  # the gate passed it but the disc was not found
    summary = evaluate.summarize(rows, resamples=50, threshold=0.5)
    assert summary["glaucoma"] == "no glaucoma labels"
    assert "sensitivity_at_referral_threshold" not in summary and summary["auc"] is None
    assert summary["disc_dice"] is None and summary["cup_dice"] is None and summary["vcdr_mae"] is None
    assert (summary["n_disc_found"], summary["n_disc_tried"], summary["disc_found_rate"]) == (1, 3, pytest.approx(1 / 3, abs=1e-4))
    table = evaluate.markdown(summary)
    assert "| all photos (DRIVE) | 3 | - | - | - | - | - | - | 33.3% |" in table  # glaucoma, Dice, vCDR, AUC: "-"
    assert ("| all photos (DRIVE) | 3 | 1/3 (33.3%) | no_fundus 1 | 1/3 (33.3%) | no glaucoma labels | "
            "no labels; referred 1/1 (100.0%) |") in table  # the one gradable photo with a score, at 0.7 >= 0.5


def test_sensitivity_and_specificity_at_the_referral_threshold_come_with_their_counts_per_source():
    def labelled(source, labels, scores):
        return [{"id": f"{source}{i}", "source": source, "patient": None, "ok": True, "gradable": True,
                 "glaucoma": g, "glaucoma_probability": p} for i, (g, p) in enumerate(zip(labels, scores))]

    rows = (labelled("A", [1, 1, 1, 0, 0, 0, 0], [0.9, 0.6, 0.2, 0.1, 0.7, 0.3, 0.4])
            + labelled("B", [1, 0], [0.8, 0.2]) + [gate_row(0, "DRIVE", 1, True)])
    summary = evaluate.summarize(rows, resamples=50, threshold=0.5)
    a = summary["by_source"]["A"]
    assert (a["n_glaucoma_referred"], a["n_glaucoma"], a["n_normal_not_referred"], a["n_normal"]) == (2, 3, 3, 4)
    assert a["sensitivity_at_referral_threshold"] == pytest.approx(2 / 3, abs=1e-4)
    assert a["specificity_at_referral_threshold"] == 0.75
    assert (summary["n_glaucoma_referred"], summary["n_normal_not_referred"]) == (3, 4)
    assert summary["sensitivity_at_referral_threshold"] == 0.75 and summary["specificity_at_referral_threshold"] == 0.8
    assert summary["by_source"]["DRIVE"]["glaucoma"] == "no glaucoma labels" and "glaucoma" not in summary
    assert summary["measured_on"] == {"A": 7, "B": 2, "DRIVE": 1} and list(summary)[0] == "measured_on"
    saved = json.loads(json.dumps(summary))
    assert saved["by_source"]["B"]["n_glaucoma_referred"] == 1 and saved["by_source"]["B"]["n_normal"] == 1
    table = evaluate.markdown(summary)
    assert table.splitlines()[0] == "Measured on 10 photos from 3 sources: A (n=7), B (n=2), DRIVE (n=1)."
    assert "| A | 7 | - | - | - | 0.667 (2/3) | 0.750 (3/4) |" in table
    assert "| B | 2 | - | - | - | 1.000 (1/1) | 1.000 (1/1) |" in table
    assert "| all photos | 10 | 0/1 (0.0%) | none | 1/1 (100.0%) | 0.750 (3/4) | 0.800 (4/5) |" in table
    assert "| DRIVE | 1 | 0/1 (0.0%) | none | 1/1 (100.0%) | no glaucoma labels | no glaucoma labels |" in table


def test_other_cameras_photos_are_known_gradable_and_refuge_ones_unknown(shared_data):
    other = read_dataset(shared_data / "other-cameras")
    assert len(other) == 165 and {r.gradable for r in other} == {1}
    assert {r.source for r in other} == {"DRIVE", "STARE", "DRIONS-DB"}
    refuge = read_dataset(shared_data / "refuge-val")
    assert refuge[0].gradable is None and {r.gradable for r in refuge} == {None}


def test_a_gradable_column_is_read_and_anything_but_1_0_or_empty_refused(tmp_path):
    folder = tmp_path / "other-cameras"  # the column overrides the folder's default
    (folder / "images").mkdir(parents=True)
    for name in ("a", "b", "c"):
        cv2.imwrite(str(folder / "images" / f"{name}.png"), np.zeros((8, 8, 3), np.uint8))
    (folder / "labels.csv").write_text("id,glaucoma,gradable\na,,1\nb,,0\nc,1,\n")
    assert [r.gradable for r in read_dataset(folder)] == [1, 0, None]
    (folder / "labels.csv").write_text("id,glaucoma\na,\n")
    assert read_dataset(folder)[0].gradable == 1
    renamed = folder.rename(tmp_path / "clinic-photos")
    assert read_dataset(renamed)[0].gradable is None
    (renamed / "labels.csv").write_text("id,gradable\na,yes\n")
    with pytest.raises(DatasetError, match="gradable must be 1, 0 or empty"):
        read_dataset(renamed)


def test_disc_dice_on_a_disc_only_mask_and_no_mask_at_all(shared_data):
    """DRIONS-DB outlines the disc only: disc Dice, no cup Dice; DRIVE has no mask: screened all the same."""
    records = {r.id: r for r in read_dataset(shared_data / "other-cameras")}
    pipeline = ScreeningPipeline.from_artifacts(precision="fp32")
    drions = evaluate.evaluate_photo(pipeline, records["drions-001"])
    assert drions["known_gradable"] == 1 and drions["gate_passed"] in (True, False)
    assert 0.0 <= drions["disc_dice"] <= 1.0 and "cup_dice" not in drions and "vcdr_error" not in drions
    drive = evaluate.evaluate_photo(pipeline, records["drive-01"])
    assert drive["ok"] and "disc_dice" not in drive and drive["disc_found"] in (True, False)
    summary = evaluate.summarize([drions, drive], resamples=20, threshold=pipeline.policy.refer_threshold)
    assert summary["by_source"]["DRIVE"]["disc_dice"] is None
    assert summary["by_source"]["DRIONS-DB"]["disc_dice"] == pytest.approx(drions["disc_dice"], abs=1e-4)
    assert summary["cup_dice"] is None and summary["glaucoma"] == "no glaucoma labels"
    # without labels the share the unit would refer is still counted: an operating point moving with the camera shows
    screened = [r for r in (drions, drive) if r["gradable"]]
    assert summary["n_screened"] == len(screened) and screened
    assert summary["n_referred"] == sum(r["glaucoma_probability"] >= pipeline.policy.refer_threshold for r in screened)
    assert "no labels; referred" in evaluate.markdown(summary)


def test_a_simulated_camera_changes_each_photo_the_same_way_every_run_and_says_so(tmp_path):
    from device.lab.evaluate import SimulatedCamera, measured_on_line

    config = tmp_path / "camera.json"
    config.write_text(json.dumps({"camera": {"white_balance_probability": 1.0, "noise_probability": 1.0}}))
    camera = SimulatedCamera.from_file(config, seed=3)
    photo = np.full((96, 128, 3), (180, 90, 40), np.uint8)
    first, again = camera.look_for("V0001")(photo.copy()), camera.look_for("V0001")(photo.copy())
    other = camera.look_for("V0002")(photo.copy())
    assert first.shape == photo.shape and np.abs(first.astype(int) - photo).mean() > 1  # it did change the photo
    assert np.array_equal(first, again) and not np.array_equal(first, other)  # seeded by photo, not by order
    line = measured_on_line({"n": 1, "measured_on": {"REFUGE": 1}, "simulated_camera": {"config": "camera.json", "seed": 3}})
    assert "Simulated camera" in line and "camera.json" in line and "not of a real camera" in line

    (tmp_path / "plain.json").write_text(json.dumps({"epochs": 3}))
    with pytest.raises(SystemExit, match="no \"camera\" section"):
        SimulatedCamera.from_file(tmp_path / "plain.json", seed=0)
