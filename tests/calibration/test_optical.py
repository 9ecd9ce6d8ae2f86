"""The optic module's calibration on the simulated module (its own vignetting, colour cast, LED response and
dark level, drawn from its serial number), through gpiozero's mock pins: what it measures, that its correction
makes a flat target flat, each of its refusals, and its files."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from calibration import optical
from calibration.measure import CalibrationRefused, calibrate
from calibration.optical import CalibrationError, FrameCorrection
from hardware.optic_module_sim import ModuleOptics
from hardware.rig import simulated_rig
from hardware.simulated_camera import FlatTarget
from models.fundus import field_geometry

SERIAL = "GSO-SIM-0001"


def rig_with(optics: ModuleOptics | None = None, serial: str = SERIAL):
    return simulated_rig(max_led_level=0.8, max_flash_s=0.5, module_serial=serial, module_optics=optics, fps=None)


def measured(rig, target: FlatTarget | None = None):
    rig.camera.present_target(target)
    rig.camera.start()
    return calibrate(rig.camera, rig.illumination, module_serial=SERIAL, version=1, max_level=0.8,
                     light_meter=rig.light_meter)


def field_blocks(image: np.ndarray, inside: float = 0.9, block: int = 16) -> np.ndarray:
    """Per-channel means of the blocks wholly inside `inside` of the field's radius."""
    h, w = image.shape[:2]
    (cx, cy), r = field_geometry((h, w))
    ys, xs = np.mgrid[0:h, 0:w]
    within = np.hypot(xs - cx, ys - cy) / r < inside
    out = [image[y:y + block, x:x + block].reshape(-1, 3).mean(axis=0)
           for y in range(0, h - block + 1, block) for x in range(0, w - block + 1, block)
           if within[y:y + block, x:x + block].all()]
    return np.array(out)


@pytest.fixture(scope="module")
def unit_and_calibration():
    with rig_with() as rig:
        made = measured(rig)
        yield rig, made


def test_it_measures_the_modules_own_optics(unit_and_calibration):
    rig, made = unit_and_calibration
    truth = rig.simulator.optics
    assert made.sensor_gamma == pytest.approx(2.0, abs=0.02)  # the simulated camera encodes with a square root
    assert np.allclose(made.dark_level, truth.dark, atol=0.0015)
    # the white balance undoes the module's colour cast (relative to green)
    assert np.allclose(np.asarray(made.white_balance) * np.asarray(truth.colour), 1.0, atol=0.01)
    response = made.led_response
    assert response["levels"] == pytest.approx([0.1 * i for i in range(1, 9)])
    assert response["irradiance_mw_cm2"] == pytest.approx([truth.irradiance_mw_cm2(v) for v in response["levels"]], rel=0.01)
    assert response["power"] == pytest.approx(truth.led_power, abs=0.03)  # the LEDs' non-linearity, measured
    assert "light meter" in response["source"]
    assert rig.illumination.state()["white"] == 0 and not rig.illumination.state()["infrared"]  # lights left off


def test_a_flat_target_comes_out_flat_within_2_percent(unit_and_calibration):
    rig, made = unit_and_calibration
    correction = FrameCorrection(made)
    rig.illumination.set_white(0.5)
    frames = [rig.camera.read() for _ in range(18)][2:]  # a fresh look at the target, not the calibration's frames
    rig.illumination.off()
    raw = field_blocks(np.mean([(f / 255.0) ** 2 for f in frames], axis=0))
    flat = field_blocks(np.mean([correction.flatten(f) for f in frames], axis=0))
    assert np.abs(raw / raw.mean() - 1).max() > 0.3  # uncorrected: the module's vignetting and colour cast
    assert np.abs(flat / flat.mean() - 1).max() <= 0.02  # corrected: flat and neutral, every block and channel


def test_the_correction_gives_every_module_the_reference_falloff(unit_and_calibration):
    """The gate and the networks were tuned on photos with a camera's own falloff: the corrected target shows the
    reference camera's, wherever this module's lens and LEDs put their light."""
    rig, made = unit_and_calibration
    correction = FrameCorrection(made)
    rig.illumination.set_white(0.5)
    frames = [rig.camera.read() for _ in range(18)][2:]
    rig.illumination.off()
    shown = field_blocks(np.mean([(correction(f) / 255.0) ** 2 for f in frames], axis=0))
    h, w = frames[0].shape[:2]
    reference = field_blocks(np.repeat(optical.reference_falloff((h, w), made.field_circle)[..., None], 3, axis=2))
    ratio = shown / reference
    assert np.abs(ratio / ratio.mean() - 1).max() <= 0.03


@pytest.mark.parametrize("target, words", [
    (FlatTarget(coverage=0.6), "does not fill the field"),                  # held too far: a small disc of card
    (FlatTarget(coverage=1.0, offset=(0.9, 0.0)), "does not fill the field"),  # askew: half the field sees the housing
])
def test_a_target_that_does_not_fill_the_field_is_refused(target, words):
    with rig_with() as rig:
        with pytest.raises(CalibrationRefused, match=words) as refused:
            measured(rig, target)
        assert "covers the whole view" in str(refused.value)
        assert rig.illumination.state()["white"] == 0


def test_a_target_that_saturates_the_camera_is_refused():
    with rig_with() as rig:
        with pytest.raises(CalibrationRefused, match="saturates") as refused:
            measured(rig, FlatTarget(reflectance=0.95))  # the white side, where the grey one belongs
        assert "grey side" in str(refused.value)


def test_a_light_that_does_not_grow_with_its_level_is_refused():
    failing = ModuleOptics.for_serial(SERIAL).with_led_droop(0.5)  # a driver whose output falls back above 50%
    with rig_with(failing) as rig:
        with pytest.raises(CalibrationRefused, match="does not grow with its level") as refused:
            measured(rig)
        assert "60%" in str(refused.value) and "serviced" in str(refused.value)


def test_room_light_reaching_the_sensor_is_refused():
    with rig_with() as rig:
        with pytest.raises(CalibrationRefused, match="room light reaches the sensor") as refused:
            measured(rig, FlatTarget(ambient=0.3))  # the cover left open in a bright room
        assert "Close the module's cover" in str(refused.value)


def test_saved_versioned_and_read_back(unit_and_calibration, tmp_path):
    _, made = unit_and_calibration
    path = tmp_path / "calibration.json"
    assert optical.load(path) is None and optical.next_version(path) == 1
    optical.save(made, path)
    data = json.loads(path.read_text())
    assert {"flat_field", "white_balance", "led_response", "module_serial", "version", "date", "dark_level"} <= set(data)
    assert data["module_serial"] == SERIAL and data["flat_field"]["file"] == "flat-field-1.npy"
    back = optical.load(path)
    assert back is not None and back.version == 1 and back.white_balance == pytest.approx(made.white_balance, abs=1e-5)
    assert np.array_equal(back.flat_field, made.flat_field)
    assert optical.next_version(path) == 2
    second = optical.OpticalCalibration(**{**{f: getattr(made, f) for f in made.__dataclass_fields__}, "version": 2})
    optical.save(second, path)
    assert optical.load(path).version == 2
    folder = optical.maps_folder(path)
    assert sorted(p.name for p in folder.iterdir()) == ["calibration-1.json", "calibration-2.json", "flat-field-1.npy",
                                                        "flat-field-2.npy"]  # every version kept, for its photos


def test_a_damaged_map_or_file_is_refused_in_words(unit_and_calibration, tmp_path):
    _, made = unit_and_calibration
    path = tmp_path / "calibration.json"
    optical.save(made, path)
    (optical.maps_folder(path) / "flat-field-1.npy").write_bytes(b"not a map")
    with pytest.raises(CalibrationError, match="does not match its hash"):
        optical.load(path)
    path.write_text("{")
    with pytest.raises(CalibrationError, match="calibrate the optic module again"):
        optical.load(path)


def test_age_is_counted_from_the_calibrations_date(unit_and_calibration):
    _, made = unit_and_calibration
    later = made.when + dt.timedelta(days=100, hours=12)
    assert made.age_days(later) == pytest.approx(100.5)
