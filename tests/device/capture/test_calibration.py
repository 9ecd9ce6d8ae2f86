"""The optic module's calibration on the unit, in simulation: judged against the module in front of the camera
(its age, its serial number) as the doctor and the admin page say it, made and put to work by the unit, and
carried with each photo and the light each eye got into the visit log and the DICOM the PACS gets."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pydicom
import pytest

from calibration import optical
from calibration.measure import CalibrationRefused, calibrate
from device import doctor
from device.capture import calibration as optics
from device.config import Config
from device.outbox.study import encode_item
from hardware.rig import simulated_rig
from hardware.simulated_camera import FlatTarget
from tests.device.kiosk.test_kiosk import make_unit
from tests.waiting import wait_until

SERIAL = "GSO-SIM-0001"


@pytest.fixture(scope="module")
def made():
    """A calibration of the simulated module, measured once for the tests that file it under other dates and serials."""
    with simulated_rig(max_led_level=0.8, max_flash_s=0.5, fps=None) as rig:
        rig.camera.present_target()
        rig.camera.start()
        return calibrate(rig.camera, rig.illumination, module_serial=SERIAL, version=1, max_level=0.8,
                         light_meter=rig.light_meter)


def config_in(tmp_path, **values) -> Config:
    return Config(data_dir=tmp_path / "unit", simulate=True, **values)


def test_none_yet_is_said_and_nothing_is_corrected(tmp_path):
    found = optics.state(config_in(tmp_path), SERIAL)
    assert not found.applied and found.correction is None and found.summary() is None
    assert found.warnings == [optics.NONE]


def test_the_doctor_warns_of_a_stale_calibration_and_of_another_modules(made, tmp_path):
    cfg = config_in(tmp_path)
    path = optics.calibration_file(cfg)
    path.parent.mkdir(parents=True)
    old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=200)).isoformat(timespec="seconds")
    optical.save(dataclasses.replace(made, date=old), path)
    report = doctor.calibration(cfg)
    assert report["ok"] and report["applied"] and report["version"] == 1 and report["age_days"] == pytest.approx(200, abs=0.1)
    assert report["warnings"] == ["The calibration is 200 days old, older than the 90 days allowed: calibrate the "
                                  "optic module again."]
    assert doctor.calibration(config_in(tmp_path, calibration=dataclasses.replace(cfg.calibration, max_age_days=365)))[
        "warnings"] == []  # within the configured interval: no warning
    optical.save(dataclasses.replace(made, version=2, module_serial="GSO-0042"), path)  # the module was swapped
    report = doctor.calibration(cfg)
    assert report["ok"] and not report["applied"] and report["calibrated_serial"] == "GSO-0042"
    assert report["warnings"] == ["The calibration was made on another optic module (GSO-0042); this one is "
                                  f"{SERIAL}. It is not used: calibrate this module."]
    text = doctor.as_text({"calibration": report, "ok": True})
    assert text.splitlines()[0] == "WARN   calibration" and "another optic module" in text


def test_an_unreadable_calibration_fails_the_doctor(made, tmp_path):
    cfg = config_in(tmp_path)
    path = optics.calibration_file(cfg)
    path.parent.mkdir(parents=True)
    optical.save(made, path)
    (optical.maps_folder(path) / "flat-field-1.npy").write_bytes(b"damaged")
    report = doctor.calibration(cfg)
    assert not report["ok"] and "does not match its hash" in report["error"] and not report["applied"]


def test_the_unit_remembers_its_module_for_the_doctor_on_real_hardware(made, tmp_path):
    cfg = config_in(tmp_path)
    optics.remember_module(cfg, "GSO-0042")
    assert optics.module_last_seen(cfg) == "GSO-0042"
    path = optics.calibration_file(cfg)
    optical.save(made, path)
    hardware = dataclasses.replace(cfg, simulate=False)
    assert "another optic module" in doctor.calibration(hardware)["warnings"][0]


def test_a_refused_calibration_saves_nothing(tmp_path):
    cfg = config_in(tmp_path)
    with simulated_rig(max_led_level=0.8, max_flash_s=0.5, fps=None) as rig:
        rig.camera.present_target(FlatTarget(coverage=0.5))
        with pytest.raises(CalibrationRefused, match="does not fill the field"):
            optics.run(cfg, rig, light_meter=rig.light_meter)
        assert rig.illumination.state()["white"] == 0
    assert not optics.calibration_file(cfg).exists()


def test_made_by_the_unit_put_to_work_and_carried_to_the_visit_log_and_the_pacs(tmp_path):
    unit = make_unit(tmp_path / "unit")
    try:
        assert unit.status()["calibration"]["warnings"] == [optics.NONE]
        made = unit.calibrate()
        assert made.version == 1 and made.module_serial == SERIAL
        status = unit.status()["calibration"]
        assert status["applied"] and status["version"] == 1 and status["warnings"] == []
        assert "calibration 1" in unit.illumination.state()["response"]
        assert wait_until(lambda: unit.capture.state()["running"], 20)  # the loop runs again after calibrating
        saved = json.loads(optics.calibration_file(unit.config).read_text())
        assert saved["module_serial"] == SERIAL and saved["version"] == 1

        unit.visits.add_patient("CAL-001", name="Akosua Boateng")
        visit = unit.visits.start_visit("CAL-001", operator="amina", device_id="test-unit")
        token = unit.begin_capture(visit, "right")
        with pytest.raises(CalibrationRefused, match="a screening is using the camera"):
            unit.calibrate()  # a patient is in front of the module
        taken: list = []
        assert wait_until(lambda: taken.append(unit.take_capture(visit, "right", token)) or taken[-1] is not None, 40), \
            unit.capture.state()
        photo = taken[-1]
        unit.screen_and_record(visit, "right", photo)
        capture = unit.visits.get_visit(visit)["eyes"]["right"]["capture"]
        assert capture["calibration"] == {"version": 1, "date": made.date, "module_serial": SERIAL}
        assert capture["raw_sha256"] and capture["raw_sha256"] != capture["photo_sha256"]
        assert unit.visits.images.get(capture["raw_sha256"])[:2] == b"\xff\xd8"  # the raw still, kept
        at_capture = unit.visits.light_dose(visit, "right")
        assert at_capture["radiant_exposure_mj_cm2"] > 0 and at_capture["flash"]["count"] >= unit.config.capture.burst
        assert at_capture["peak_irradiance_mw_cm2"] <= at_capture["limits"]["max_irradiance_mw_cm2"]
        unit.visits.skip_eye(visit, "left", "The patient did not want this eye photographed")
        unit.cancel_capture(visit)  # the worker moves on: the right eye's light is all booked
        final = unit.visits.light_dose(visit, "right")
        assert final["radiant_exposure_mj_cm2"] >= at_capture["radiant_exposure_mj_cm2"]
        [item] = unit.visits.finalize_visit(visit)
        photo_file, *_, report_file = encode_item(unit.visits, item, "test-unit")
        photo_ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(photo_file))
        assert list(photo_ds.ImageType) == ["DERIVED", "PRIMARY"]
        assert "optical calibration version 1" in photo_ds.DerivationDescription and SERIAL in photo_ds.DerivationDescription
        assert photo_ds.DateOfLastCalibration == made.date[:10].replace("-", "")
        texts = [i.TextValue for i in _items(pydicom.dcmread(pydicom.filebase.DicomBytesIO(report_file)))
                 if i.ValueType == "TEXT"]
        assert any(t.startswith("Corrected for dark level, flat field and white balance with optical calibration "
                                "version 1") for t in texts)
        dose_text = next(t for t in texts if t.startswith("Preview "))
        assert "mJ/cm2" in dose_text and "ISO 15004-2:2007" in dose_text
    finally:
        unit.close()


def _items(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def test_a_restarted_unit_goes_on_counting_an_eyes_light(tmp_path):
    """The visit log keeps what each eye had: a unit restarted mid-visit starts the eye from there, not from zero."""
    unit = make_unit(tmp_path / "unit")
    try:
        unit.visits.add_patient("CAL-002")
        visit = unit.visits.start_visit("CAL-002", operator="amina")
        unit.visits.record_light_dose(visit, "left", {
            "preview": {"seconds": 100.0, "radiant_exposure_mj_cm2": 49.99}, "flash": {"count": 0, "seconds": 0.0,
            "radiant_exposure_mj_cm2": 0.0}, "peak_irradiance_mw_cm2": 0.1, "limits": {"visit_exposure_mj_cm2": 50.0}})
        unit.begin_capture(visit, "left")  # 0.01 mJ/cm2 left: a fraction of a second of preview
        assert wait_until(lambda: unit.capture.state()["light_stopped"], 20)
        assert unit.illumination.white.value == 0
        unit.cancel_capture(visit)
        assert unit.visits.light_dose(visit, "left")["stopped"]
    finally:
        unit.close()

