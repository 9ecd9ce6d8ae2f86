"""The capture loop on the simulated optic module: real pty controller, gpiozero mock pins, a camera
whose brightness follows the LED pin and whose sharpness follows the focus motor."""

import pytest

from device.capture import CaptureLoop, IlluminationController
from device.config import Config
from device.quality import QualityGate
from device.rig import simulated_rig
from tests.waiting import wait_until


@pytest.fixture
def rig():
    cfg = Config(simulate=True)
    with simulated_rig(cfg, seed=3, eye_seed=3, laterality="right") as r:
        yield cfg, r


def test_illumination_controller_settles_without_oscillating():
    """A plant whose brightness is proportional to LED level x exposure: the loop reaches the target
    within a few frames, never overshoots wildly, and respects the LED's safety limit."""
    ctl = IlluminationController(target=0.42, max_level=0.8)
    gain = 0.9  # brightness per (level x exposure/20 ms)
    seen = []
    for _ in range(12):
        brightness = gain * ctl.level * ctl.exposure_us / 20000
        seen.append(brightness)
        ctl.update(brightness)
        assert ctl.level <= 0.8
    assert abs(seen[-1] - 0.42) < 0.02
    assert max(seen) < 0.42 * 1.25
    # a dim eye: the LED stops at its limit and exposure makes up the rest
    dim = IlluminationController(target=0.42, max_level=0.8)
    for _ in range(20):
        dim.update(0.05 * dim.level * dim.exposure_us / 20000)
    assert dim.level == 0.8 and dim.exposure_us > 20000


def test_auto_capture_of_a_gradable_photo_and_lights_off_after(rig):
    cfg, r = rig
    loop = CaptureLoop(r.camera, QualityGate(), cfg.capture, illumination=r.illumination, optic_module=r.optic_module)
    loop.start()
    try:
        loop.begin("right")
        photo = loop.wait_photo(40)
        assert photo is not None, loop.state()
        assert photo.quality.gradable and not photo.trace["manual"]
        assert photo.rgb.shape[0] >= 1000   # a full-resolution still, not a preview frame
        assert photo.trace["frames"] >= cfg.capture.consecutive_gradable
        assert len(photo.trace["light"]) == photo.trace["frames"]
        assert loop.latest_jpeg()[:2] == b"\xff\xd8"
    finally:
        loop.stop()
    assert r.illumination.state()["white"] == 0


def test_the_capture_button_takes_the_photo_now(rig):
    cfg, r = rig
    cfg.capture.consecutive_gradable = 10_000  # auto-capture can never fire
    loop = CaptureLoop(r.camera, QualityGate(), cfg.capture, illumination=r.illumination, optic_module=r.optic_module)
    loop.start()
    try:
        loop.begin("left")
        assert wait_until(lambda: loop.trace().get("frames", 0) >= 2, 20)
        r.illumination.button.pin.drive_low()     # the physical button, through gpiozero
        r.illumination.button.pin.drive_high()
        photo = loop.wait_photo(20)
        assert photo is not None and photo.trace["manual"] and photo.eye == "left"
    finally:
        loop.stop()


def test_a_vanished_camera_is_reported_in_words(rig):
    cfg, r = rig
    loop = CaptureLoop(r.camera, QualityGate(), cfg.capture, illumination=r.illumination, optic_module=r.optic_module)
    loop.start()
    try:
        assert wait_until(lambda: loop.state()["running"], 20)
        r.camera.simulate_disconnect()
        assert wait_until(lambda: loop.state()["error"] is not None, 10)
        assert "camera" in loop.state()["error"].lower() and not loop.state()["running"]
    finally:
        loop.stop()
    assert r.illumination.state()["white"] == 0


def test_a_stuck_camera_read_makes_the_loop_unresponsive_for_the_watchdog(rig):
    """A camera whose read never returns stops the frames; the watchdog must see that. A camera that
    failed with an error is reported to the worker instead and does not count as stuck."""
    import threading

    cfg, r = rig
    release = threading.Event()
    real_read = r.camera.read
    stuck = {"on": False}

    def read():
        if stuck["on"]:
            release.wait(30)
        return real_read()

    r.camera.read = read
    loop = CaptureLoop(r.camera, QualityGate(), cfg.capture, illumination=r.illumination, optic_module=r.optic_module)
    loop.start()
    try:
        assert wait_until(lambda: loop.state()["running"], 20)
        assert loop.responsive(stall_s=2.0)
        stuck["on"] = True
        assert wait_until(lambda: not loop.responsive(stall_s=0.5), 10)
        stuck["on"] = False
        release.set()
        assert wait_until(lambda: loop.responsive(stall_s=0.5), 10)
    finally:
        release.set()
        loop.stop()
