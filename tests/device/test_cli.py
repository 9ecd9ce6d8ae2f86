"""The `glaucoscreen` command end to end, on real photos, with the shipped model."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.cli import main
from device.visits.visitlog import VisitLog
from models.runtime import registry


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "device.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def photos(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    refuge = shared_data / "refuge-val" / "images" / "V0001.jpg"
    drishti = sorted((shared_data / "drishti-gs1" / "images").glob("*.jpg"))[0]
    big = cv2.imread(str(refuge))
    cv2.imwrite(str(d / "refuge-2048.tiff"), cv2.resize(big, (2048, 2048), interpolation=cv2.INTER_CUBIC))
    data = refuge.read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "notes.jpg").write_text("this is not a photo")
    room = np.full((480, 640, 3), 200, np.uint8)
    cv2.rectangle(room, (100, 100), (400, 300), (40, 90, 160), -1)
    cv2.imwrite(str(d / "room.png"), room)
    return {"refuge": refuge, "drishti": drishti, "big": d / "refuge-2048.tiff", "truncated": d / "truncated.jpg",
            "notes": d / "notes.jpg", "room": d / "room.png", "missing": d / "missing.jpg"}


def test_screen_prints_one_json_object_per_photo_and_goes_on_after_bad_ones(photos, tmp_path):
    order = ["refuge", "truncated", "drishti", "notes", "room", "missing", "big"]
    out = run_cli("screen", *[photos[k] for k in order], "--json-out", tmp_path / "all.json")
    assert out.returncode == 1, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [Path(r["image"]).name for r in rows] == [Path(photos[k]).name for k in order]
    by = dict(zip(order, rows))
    assert json.loads((tmp_path / "all.json").read_text()) == rows
    for bad, words in (("truncated", "truncated"), ("notes", "not a readable image"), ("missing", "not found")):
        assert by[bad]["ok"] is False and words in by[bad]["error"]
    assert by["room"]["ok"] is True and by["room"]["gradable"] is False and by["room"]["referral"] == "rescreen"
    assert by["room"]["quality"]["reasons"], "a non-fundus photo must say why it is not gradable"
    versions = registry.versions()
    for good in ("refuge", "drishti", "big"):
        r = by[good]
        assert r["ok"] and r["disc"] and r["cup"], r
        assert r["model_versions"]["segmentation"] == versions["segmentation"]
        assert 0.1 < r["vcdr"] < 0.95
        assert 0 <= r["glaucoma_probability"] <= 1 and r["referral"] in ("refer", "normal", "rescreen")
        assert 0 < r["disc"]["cx"] < r["width"] and 0 < r["disc"]["cy"] < r["height"]
        assert r["cup"]["vertical_diameter"] < r["disc"]["vertical_diameter"]
    # the same photo at four times the size: same vCDR, diameters four times larger
    assert by["big"]["vcdr"] == pytest.approx(by["refuge"]["vcdr"], abs=0.06)
    assert by["big"]["disc"]["vertical_diameter"] == pytest.approx(4 * by["refuge"]["disc"]["vertical_diameter"], rel=0.12)


def test_screen_record_stores_a_finished_visit_like_the_kiosk(photos, tmp_path, capsys):
    code = main(["screen", str(photos["refuge"]), "--record", "--patient", "P-001", "--eye", "right", "--data-dir", str(tmp_path)])
    assert code in (0, 1)
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    log = VisitLog(tmp_path)
    visits = log.visits_for_patient("P-001")
    assert len(visits) == 1 and visits[0]["uuid"] == row["visit"]
    visit = log.get_visit(row["visit"])
    assert visit["status"] == "finished"
    eye = visit["eyes"]["right"]
    assert eye["result"]["vcdr"] == pytest.approx(row["vcdr"])
    assert log.images.get(eye["capture"]["photo_sha256"]) == photos["refuge"].read_bytes()
    assert log.outbox_counts()["pending"] == 1
    log.close()


def test_screen_record_needs_patient_and_eye(photos, capsys):
    assert main(["screen", str(photos["refuge"]), "--record"]) == 2


def make_dataset(shared_data, dest: Path, n: int = 8) -> Path:
    src = shared_data / "refuge-val"
    rows = list(csv.DictReader(open(src / "labels.csv")))
    pick = [r for r in rows if r["glaucoma"] == "1"][: n // 2] + [r for r in rows if r["glaucoma"] == "0"][: n // 2]
    (dest / "images").mkdir(parents=True)
    (dest / "masks").mkdir()
    for r in pick:
        shutil.copy(src / "images" / f"{r['id']}.jpg", dest / "images")
        shutil.copy(src / "masks" / f"{r['id']}.png", dest / "masks")
    with open(dest / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=rows[0].keys())
        w.writeheader()
        w.writerows(pick)
    return dest


def test_evaluate_reports_the_figures_that_judge_a_model(shared_data, tmp_path):
    data = make_dataset(shared_data, tmp_path / "mini")
    out = run_cli("evaluate", "--data", data, "--json-out", tmp_path / "eval.json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    for key in ("n", "disc_dice", "cup_dice", "vcdr_mae", "auc", "sensitivity_at_90_specificity", "ungradable_rate"):
        assert key in summary
    assert summary["n"] == 8
    assert summary["disc_dice"] > 0.8 and summary["cup_dice"] > 0.6
    assert summary["vcdr_mae"] < 0.15
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert len(rows) == 8 and all("disc_dice" in r for r in rows)


def test_calibrate_then_capture_in_simulation_carry_the_calibration_and_the_light_dose(tmp_path):
    data = tmp_path / "unit"
    out = run_cli("calibrate", "--simulate", "--data-dir", data)
    assert out.returncode == 0, out.stderr
    saved = json.loads((data / "calibration.json").read_text())
    assert {"flat_field", "white_balance", "led_response", "module_serial", "version", "date"} <= set(saved)
    assert saved["module_serial"] == "GSO-SIM-0001" and saved["version"] == 1
    assert (data / "calibration" / saved["flat_field"]["file"]).is_file()
    assert json.loads(out.stdout)["version"] == 1

    out = run_cli("capture", "--simulate", "--eye", "right", "--out", tmp_path / "out", "--data-dir", data)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "out" / "capture.json").read_text())
    assert report["captured"] and report["calibration"] == {"version": 1, "date": saved["date"],
                                                            "module_serial": "GSO-SIM-0001"}
    assert (tmp_path / "out" / report["raw_photo"]).is_file()  # the still before the correction, kept
    dose, limits = report["light_dose"], report["light_dose"]["limits"]
    assert dose["radiant_exposure_mj_cm2"] > 0 and dose["preview"]["seconds"] > 0 and dose["flash"]["count"] >= 1
    assert 0 < dose["peak_irradiance_mw_cm2"] < limits["max_irradiance_mw_cm2"] == 0.22
    assert dose["radiant_exposure_mj_cm2"] < limits["visit_exposure_mj_cm2"] and dose["within_limits"]
    assert "ISO 15004-2:2007" in limits["basis"] and "calibration 1" in dose["led_response"]

    out = run_cli("calibrate", "--simulate", "--data-dir", data, "--light-meter", "-3")
    assert out.returncode == 2 and "a positive number" in out.stderr


def test_a_capture_over_the_eyes_light_cap_is_stopped_and_says_why(tmp_path):
    config = tmp_path / "glaucoscreen.toml"
    config.write_text("[light_safety]\nvisit_exposure_mj_cm2 = 0.01\n")
    out = run_cli("--config", config, "capture", "--simulate", "--eye", "left", "--out", tmp_path / "out",
                  "--data-dir", tmp_path / "unit")
    assert out.returncode == 1 and "the light was stopped" in out.stderr and "the lights are off" in out.stderr
    report = json.loads((tmp_path / "out" / "capture.json").read_text())
    assert not report["captured"] and "0.01 mJ/cm2" in report["light_stopped"]
    assert report["light_dose"]["stopped"] and report["light_dose"]["limits"]["visit_exposure_mj_cm2"] == 0.01
    assert report["calibration"] is None and "has not been calibrated" in report["calibration_warnings"][0]


def test_doctor_reports_models_with_their_hashes(tmp_path):
    out = run_cli("doctor", "--json", "--simulate", "--data-dir", tmp_path)
    report = json.loads(out.stdout)
    seg = report["models"]["segmentation"]
    assert seg["ok"] and seg["sha256"] == registry.manifest()["segmentation"]["sha256"]
    assert report["inference"]["onnxruntime"]["ok"]
    assert report["inference"]["backend"] == "onnxruntime"
    assert report["inference"]["precision"]["segmentation"] in ("fp32", "int8")
    assert "TensorRT" in report["inference"]["tensorrt"].get("why", "") or report["inference"]["tensorrt"]["ok"]
    assert report["data_dir"]["free_bytes"] > 0
    assert report["board"]["name"] in ("workstation", "pi5", "jetson-orin-nano")


def test_build_engines_says_why_it_cannot_run_without_tensorrt(tmp_path):
    out = run_cli("build-engines", "--data-dir", tmp_path)
    assert out.returncode == 1 and "TensorRT is not installed" in out.stderr


def test_user_unlock_on_the_command_line(tmp_path, capsys):
    """An account locked by wrong PINs (or by a page trying them) is unlocked by an IT person at the terminal."""
    from device.accounts import MAX_FAILURES, AccountLocked, Accounts, accounts_path

    accounts = Accounts(accounts_path(tmp_path))
    accounts.add("joseph", "1357")
    for _ in range(MAX_FAILURES - 1):
        accounts.verify("joseph", "0000")
    with pytest.raises(AccountLocked):
        accounts.verify("joseph", "0000")
    assert main(["--config", str(tmp_path / "absent.toml"), "user", "--data-dir", str(tmp_path), "unlock", "joseph"]) == 0
    assert "unlocked joseph" in capsys.readouterr().out
    assert accounts.verify("joseph", "1357")
    assert main(["--config", str(tmp_path / "absent.toml"), "user", "--data-dir", str(tmp_path), "unlock", "kofi"]) == 1
    out = run_cli("user", "--help")
    assert "unlock" in out.stdout
