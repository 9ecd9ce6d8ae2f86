"""`glaucoscreen fit-progression`: the noise from stable eyes, the folds by patient, the cross-validation, and
the command itself on a small real GRAPE folder, writing the figures the model card reports."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device.lab.fit_progression import cross_validate, eye_features, fit_noise, grouped_folds
from device.screening.change import MEASURES, NoiseModel
from device.screening.progression import PROGRESSION_POLICY, ProgressionPolicy
from models.grape import patient_split, read_grape

REPO = Path(__file__).resolve().parents[3]


def _row(patient: str, progressed: int, vcdrs: list[float], years: list[float], eye: str = "OD") -> dict:
    values = [{m: (v if m == "vcdr" else 0.2) for m in MEASURES} for v in vcdrs]
    return {"eye": f"{patient}_{eye}", "patient": patient, "progressed": progressed, "years": years, "values": values,
            "spread": [{m: 0.0 for m in MEASURES} for _ in vcdrs], "registrations": [], "plain_vcdr": vcdrs,
            "plain_years": years, "engine_logit": None}


def _rows(seed: int = 0, patients: int = 40) -> list[dict]:
    """Both eyes of each patient; a quarter of the patients progress by 0.12 over three visits, the others stay
    within a measurement noise of SD 0.02."""
    rng = np.random.default_rng(seed)
    out = []
    for p in range(patients):
        progressed = int(p % 4 == 0)
        for eye in ("OD", "OS"):
            start = rng.uniform(0.4, 0.7)
            drift = 0.12 * progressed
            vcdrs = [start + drift * k / 2 + rng.normal(0, 0.02) for k in range(3)]
            out.append(_row(str(p), progressed, vcdrs, [0.0, 1.5, 3.0], eye))
    return out


def test_the_noise_is_what_stable_eyes_change_by_between_visits():
    rows = [_row("1", 0, [0.50, 0.53, 0.49], [0, 1, 2]), _row("2", 0, [0.60, 0.60], [0, 1]),
            _row("3", 1, [0.40, 0.70], [0, 1])]  # a progressing eye is not noise
    noise = fit_noise(rows, "test")
    assert noise.change_sd["vcdr"] == pytest.approx(math.sqrt((0.03 ** 2 + 0.04 ** 2 + 0.0) / 3))
    assert "3 consecutive visit pairs" in noise.source


def test_the_first_and_last_visits_are_compared_and_a_trend_needs_three():
    noise = NoiseModel(change_sd={m: 0.04 for m in MEASURES})
    grown = eye_features(_row("1", 1, [0.50, 0.56, 0.62], [0.0, 1.0, 2.0]), noise)
    assert grown["z_vcdr"] == pytest.approx(0.12 / 0.04) and grown["event"] and grown["called"]
    # three visits a year apart with a single measurement's noise of 0.04 / sqrt(2): the slope's 95% interval is
    # 0.06 +- 12.7 * 0.028 / sqrt(2), so the trend alone would not be called; the event is
    assert grown["trend"]["slope"] == pytest.approx(0.06) and not grown["trend"]["worsening"]
    assert grown["trend"]["low"] == pytest.approx(0.06 - 12.706 * 0.04 / 2, abs=1e-3)
    pair = eye_features(_row("2", 0, [0.50, 0.55], [0.0, 2.0]), noise)
    assert pair["trend"] is None and not pair["event"] and not pair["called"]  # 0.05 < 1.645 * 0.04
    alone = eye_features(_row("3", 0, [0.50], [0.0]), noise)  # the earlier photo did not line up
    assert alone["z_vcdr"] == 0.0 and not alone["called"]


def test_folds_keep_a_patients_eyes_together_and_share_out_the_progressing_ones():
    rows = _rows()
    fold = grouped_folds([r["patient"] for r in rows], [r["progressed"] for r in rows])
    for p in {r["patient"] for r in rows}:
        assert len({f for r, f in zip(rows, fold) if r["patient"] == p}) == 1
    progressing = [sum(1 for r, f in zip(rows, fold) if f == k and r["progressed"]) for k in range(5)]
    assert progressing == [4] * 5  # 10 progressing patients' 20 eyes, two patients a fold


def test_cross_validation_finds_a_real_signal_and_says_its_interval():
    cv = cross_validate(_rows())
    assert cv["folds"] == 5 and cv["eyes"] == 80 and cv["progressing_eyes"] == 20
    for opinion in ("model", "vcdr_z"):
        assert cv[opinion]["auc_low"] <= cv[opinion]["auc"] <= cv[opinion]["auc_high"]
        assert cv[opinion]["auc"] > 0.9 and len(cv[opinion]["fold_aucs"]) == 5
    assert cv["rule"]["sensitivity"] > 0.8 and cv["rule"]["specificity"] > 0.8


def _small_grape(source: Path, out: Path, progressing: int = 6, stable: int = 9, visits: int = 3) -> None:
    """A GRAPE folder of one eye each of a few patients (first photographed visits only), in GRAPE's own layout."""
    eyes = [e for e in read_grape(source) if len(e.visits) >= 2]
    chosen: dict[str, str] = {}  # patient -> the one eye kept
    wanted = {1: progressing, 0: stable}
    for e in sorted(eyes, key=lambda e: int(e.patient)):
        if e.patient not in chosen and wanted[e.progressed] > 0:
            chosen[e.patient] = e.laterality
            wanted[e.progressed] -= 1
    (out / "rois").mkdir(parents=True)
    for name in ("eyes.csv", "visits.csv"):
        with open(source / name, newline="") as f:
            rows = list(csv.reader(f))
        keep, taken = [rows[0]], {}
        for r in rows[1:]:
            key = (r[0].strip(), r[1].strip())
            if chosen.get(key[0]) != key[1]:
                continue
            if name == "visits.csv":
                if r[5].strip() in ("", "/") or taken.get(key, 0) >= visits:
                    continue
                taken[key] = taken.get(key, 0) + 1
                (out / "rois" / r[5].strip()).symlink_to(source / "rois" / r[5].strip())
            keep.append(r)
        with open(out / name, "w", newline="") as f:
            csv.writer(f).writerows(keep)


@pytest.mark.slow
def test_fit_progression_writes_the_figures_the_model_card_reports(shared_data, tmp_path):
    grape = tmp_path / "grape"
    _small_grape(shared_data / "grape", grape)
    split = patient_split(read_grape(grape))
    assert {(split[e.patient], e.progressed) for e in read_grape(grape)} == {(s, y) for s in ("train", "val", "test") for y in (0, 1)}
    shipped = PROGRESSION_POLICY.read_bytes()
    policy, figures = tmp_path / "progression.json", tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "-m", "device.cli", "fit-progression", "--grape", str(grape), "--json-out", str(figures),
                           "--policy-out", str(policy), "--simulated-eyes", "1"], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stderr
    assert PROGRESSION_POLICY.read_bytes() == shipped  # the shipped policy is left alone when told where to write
    report = json.loads(figures.read_text())
    for part in ("test", "val"):
        assert {"auc", "auc_low", "auc_high", "sensitivity", "specificity"} <= set(report[part])
        assert report[part]["eyes"] >= 3 and report[part]["progressing_eyes"] >= 1
    assert {"auc", "auc_low", "auc_high"} <= set(report["cv"]) and report["cv"]["eyes"] == 15
    rep = report["repeatability"]
    assert rep["simulated_eye"]["captures_per_eye"] == 5 and rep["simulated_eye"]["vcdr_coefficient_registered"] is not None
    assert rep["grape_stable_pairs"]["vcdr_registered"]["pairs"] > 0 and rep["noise_sd"]["vcdr"] > 0
    assert report["registration"]["pairs"] > 0 and report["registration"]["aligned"] > 0
    fitted = ProgressionPolicy.load(policy)
    assert fitted.fitted and fitted.noise_model.change_sd == pytest.approx(rep["noise_sd"])
    assert fitted.use_models == report["policy"]["use_models"]
    assert "rows" not in json.loads(done.stdout)  # the screen gets the figures, the file gets every eye too


def test_fit_progression_says_plainly_when_the_folder_is_not_grape(tmp_path):
    done = subprocess.run([sys.executable, "-m", "device.cli", "fit-progression", "--grape", str(tmp_path),
                           "--policy-out", str(tmp_path / "p.json")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "is not a GRAPE folder" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "p.json").exists()
