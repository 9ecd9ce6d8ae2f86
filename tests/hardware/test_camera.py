"""Camera sources: replay of real photos, the real backends' failure paths, and the simulated camera."""
from __future__ import annotations

import shutil
import time

import cv2
import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from hardware.argus import ArgusCamera
from hardware.boards import PROFILES
from hardware.camera import (
    Camera,
    CameraError,
    OpenCVCamera,
    Picamera2Camera,
    ReplayCamera,
)
from hardware.illumination import Illumination
from hardware.optic_module import OpticModule
from hardware.optic_module_sim import OpticModuleSimulator
from hardware.rig import open_camera
from hardware.simulated_camera import MAX_DRIFT, STILL_S, SimulatedCamera
from models.runtime.images import read_rgb
from models.synthetic import field_geometry
from tests.hardware.fake_cameras import make_picamera2

PREVIEW = (480, 640)
STILL = (384, 512)


@pytest.fixture
def photo_folder(tmp_path, shared_data):
    folder = tmp_path / "photos"
    folder.mkdir()
    for src in [shared_data / "refuge-val" / "images" / "V0001.jpg",
                shared_data / "refuge-val" / "images" / "V0002.jpg",
                next(iter(sorted((shared_data / "drishti-gs1" / "images").glob("*.jpg"))))]:
        shutil.copy(src, folder / src.name)
    (folder / "notes.txt").write_text("not a photo")
    return folder


def field_inside(size=PREVIEW, fraction=0.8):
    (cx, cy), r = field_geometry(size)
    yy, xx = np.mgrid[:size[0], :size[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 < (fraction * r) ** 2


def sharpness(rgb, inside):
    return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_32F)[inside].var())


# -- replay ---------------------------------------------------------------------------------------
def test_replay_cycles_through_the_photos_at_preview_size(photo_folder):
    with ReplayCamera(photo_folder, fps=None) as cam:
        frames = [cam.read() for _ in range(4)]
        assert all(f.shape == PREVIEW + (3,) and f.dtype == np.uint8 for f in frames)
        assert not np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[1], frames[2])
        assert np.array_equal(frames[0], frames[3])  # three photos, round and round
        assert cam.info()["photos"] == 3


def test_replay_keeps_the_photo_undistorted_and_stills_are_full_resolution(photo_folder):
    with ReplayCamera(photo_folder, fps=None) as cam:
        square = cam.read()  # V0001: 512x512 fits as 480x480 with black bars left and right
        assert square[:, :70].max() == 0 and square[:, -70:].max() == 0
        assert square[:, 160:480].mean() > 20
        still = cam.capture_still()
        assert np.array_equal(still, read_rgb(photo_folder / "V0001.jpg"))
        cam.read()
        cam.read()
        wide = cam.capture_still()  # the Drishti-GS1 photo, about 2048 pixels wide
        assert wide.shape[1] > 1500


def test_replay_paces_frames_like_a_camera(photo_folder):
    with ReplayCamera(photo_folder, fps=20.0) as cam:
        start = time.monotonic()
        for _ in range(5):
            cam.read()
        assert time.monotonic() - start >= 4 / 20.0 * 0.9


def test_replay_of_an_empty_or_missing_folder_is_a_camera_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CameraError, match="has no photos"):
        ReplayCamera(tmp_path / "empty").start()
    with pytest.raises(CameraError, match="does not exist"):
        ReplayCamera(tmp_path / "missing").start()


def test_replay_folder_that_vanishes_is_a_camera_error(photo_folder):
    cam = ReplayCamera(photo_folder, fps=None)
    cam.start()
    cam.read()
    shutil.rmtree(photo_folder)
    with pytest.raises(CameraError, match="has gone"):
        cam.read()


def test_a_broken_photo_in_the_replay_is_a_camera_error(tmp_path, refuge_photo):
    (tmp_path / "a.jpg").write_bytes(refuge_photo.read_bytes()[:5000])
    with ReplayCamera(tmp_path, fps=None) as cam, pytest.raises(CameraError, match="truncated"):
        cam.read()


def test_reading_before_start_or_after_stop_is_a_camera_error(photo_folder):
    cam = ReplayCamera(photo_folder, fps=None)
    with pytest.raises(CameraError, match="not started"):
        cam.read()
    with cam:
        cam.read()
    with pytest.raises(CameraError, match="not started"):
        cam.read()


# -- real backends, as far as this machine has them -----------------------------------------------
def test_a_usb_camera_that_is_not_there_is_a_camera_error(tmp_path):
    with pytest.raises(CameraError, match="no camera at"):
        OpenCVCamera(str(tmp_path / "video-missing")).start()
    with pytest.raises(CameraError, match="/dev/video63"):
        OpenCVCamera(63).start()


@pytest.mark.parametrize("fail_at", ["init", "configure", "start"])
def test_a_pi_camera_that_fails_to_start_is_closed_and_can_start_again(fail_at):
    """A Picamera2 holds the camera until closed: a start that fails half-way must not keep it."""
    fake = make_picamera2(fail_at=fail_at)
    cam = Picamera2Camera(picamera2_factory=fake)
    with pytest.raises(CameraError, match="the Pi camera 0"):
        cam.start()
    assert fake.acquired == set() and all(not c.is_open for c in fake.made)
    assert fake.made[0].closes == 1
    with pytest.raises(CameraError, match="not started"):
        cam.read()
    fake.fail = None  # the fault cleared (the cable reseated): the same process gets the camera back
    with cam:
        assert cam.read().shape == PREVIEW + (3,)
    assert fake.acquired == set()


def test_a_pi_camera_kept_by_another_is_a_camera_error_that_takes_nothing():
    fake = make_picamera2()
    holder = fake(0)
    with pytest.raises(CameraError, match="Device or resource busy"):
        Picamera2Camera(picamera2_factory=fake).start()
    assert fake.acquired == {0} and holder.is_open  # the other holder's camera is not closed under it


def test_the_pi_camera_changes_exposure_live_and_takes_stills_in_still_mode():
    fake = make_picamera2(sensor_resolution=(4608, 2592))
    cam = Picamera2Camera(picamera2_factory=fake)
    cam.set_exposure(15000, 1.0)
    with cam:
        made = fake.made[0]
        assert made.config["controls"] == {"AeEnable": False, "ExposureTime": 15000, "AnalogueGain": 1.0}
        frame = cam.read()
        assert frame.shape == PREVIEW + (3,) and tuple(frame[0, 0]) == (200, 20, 10)  # BGR in memory, RGB out
        cam.set_exposure(30000, 2.0)
        assert made.controls[-1] == {"AeEnable": False, "ExposureTime": 30000, "AnalogueGain": 2.0}
        still = cam.capture_still()
        assert still.shape == (2592, 4608, 3)  # the sensor's full size
        assert made.switches[-1]["controls"]["ExposureTime"] == 30000
        assert made.starts == 1  # neither the controls nor the still restarted the camera
    assert not made.is_open and fake.acquired == set()
    sized = Picamera2Camera(still_size=(1296, 2304), picamera2_factory=lambda n: fake(n))  # a factory, not a class
    with sized:
        assert sized.capture_still().shape == (1296, 2304, 3)


def test_a_csi_camera_without_gstreamer_is_a_camera_error():
    with pytest.raises(CameraError, match="GStreamer"):
        ArgusCamera(sensor_id=0).start()


def test_exposure_is_checked_before_any_camera_sees_it(photo_folder):
    with pytest.raises(ValueError, match="exposure"):
        ReplayCamera(photo_folder).set_exposure(-5, 1.0)
    with pytest.raises(ValueError, match="gain"):
        OpenCVCamera(0).set_exposure(10000, 0.5)


def test_open_camera_follows_the_board_or_the_backend(photo_folder):
    assert isinstance(open_camera("pi5"), Picamera2Camera)
    assert isinstance(open_camera(PROFILES["jetson-orin-nano"]), ArgusCamera)
    assert isinstance(open_camera("workstation"), OpenCVCamera)
    replay = open_camera("replay", folder=photo_folder)
    assert isinstance(replay, ReplayCamera) and isinstance(replay, Camera)
    assert isinstance(open_camera("simulated", fps=None), SimulatedCamera)
    with pytest.raises(ValueError, match="unknown camera"):
        open_camera("webcam")


# -- the simulated camera -------------------------------------------------------------------------
@pytest.fixture
def lights():
    with Illumination(PROFILES["workstation"], pin_factory=MockFactory(pin_class=MockPWMPin)) as lights:
        yield lights


def test_brightness_follows_the_led_ring(lights):
    inside = field_inside()
    with SimulatedCamera(illumination=lights, still_size=STILL, blinks_per_s=0, fps=None) as cam:
        means = []
        for level in (0.05, 0.15, 0.3, 0.5, 0.8):
            lights.set_white(level)
            means.append(float(cam.read()[inside].mean()))
    assert all(b > a + 3 for a, b in zip(means, means[1:])), means


def test_exposure_and_gain_brighten_like_more_light(lights):
    inside = field_inside()
    lights.set_white(0.2)
    with SimulatedCamera(illumination=lights, still_size=STILL, blinks_per_s=0, fps=None) as cam:
        dim = cam.read()[inside].mean()
        cam.set_exposure(40000, 2.0)  # 4x the light: as bright as a ring at 0.8
        boosted = cam.read()[inside].mean()
        cam.set_exposure(20000, 1.0)
        lights.set_white(0.8)
        bright = cam.read()[inside].mean()
    assert boosted > dim + 20
    assert boosted == pytest.approx(bright, abs=6)


def test_frames_are_sharpest_at_the_eyes_best_focus():
    inside = field_inside()
    with OpticModuleSimulator(best_focus=620) as sim, OpticModule(sim.port) as module, \
            SimulatedCamera(optic_module=sim, still_size=STILL, blinks_per_s=0, fps=None) as cam:
        focus = {}
        for position in (300, 500, 620, 760, 950):
            module.focus(position)
            focus[position] = sharpness(cam.read(), inside)
    assert max(focus, key=focus.get) == 620, focus
    assert focus[620] > 1.5 * focus[500] and focus[620] > 1.5 * focus[760]
    assert focus[500] > focus[300] and focus[760] > focus[950]


def test_the_eye_drifts_but_stays_within_bounds():
    radius = field_geometry(PREVIEW)[1]
    window = cv2.createHanningWindow((240, 240), cv2.CV_32F)

    def centre(rgb):
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)[120:360, 200:440]

    with SimulatedCamera(eye_seed=3, blinks_per_s=0, fps=None, seed=1) as cam:
        ref = centre(cam.read())
        shifts = []
        for _ in range(90):  # three simulated seconds
            (dx, dy), _ = cv2.phaseCorrelate(ref, centre(cam.read()), window)
            shifts.append(np.hypot(dx, dy))
    assert max(shifts) >= 2.0  # the retina moved behind the field stop
    assert max(shifts) <= 2 * MAX_DRIFT * radius * np.sqrt(2) + 1


def test_the_eye_blinks_now_and_then():
    inside = field_inside()
    with SimulatedCamera(blinks_per_s=2.0, still_size=STILL, fps=None, seed=2) as cam:
        means = np.array([cam.read()[inside].mean() for _ in range(60)])
    assert means.min() < 0.6 * np.median(means)  # the lid darkens the field
    assert (means > 0.9 * np.median(means)).mean() > 0.5  # most frames are open-eyed


def test_an_off_centre_eye_is_brought_into_line():
    def frames(offset):
        with SimulatedCamera(offset=offset, alignment_s=0.3, blinks_per_s=0, fps=None, seed=4) as cam:
            return [cam.read().astype(np.int16) for _ in range(60)]  # two simulated seconds

    off, aligned = frames((0.4, 0.0)), frames((0.0, 0.0))  # same seed: same drift and noise
    assert np.abs(off[0] - aligned[0]).mean() > 10  # far off at first
    assert np.abs(off[-1] - aligned[-1]).mean() < 1  # in line by the end


def test_infrared_alignment_shows_a_monochrome_fundus(lights):
    lights.alignment_mode()
    with SimulatedCamera(illumination=lights, still_size=STILL, blinks_per_s=0, fps=None) as cam:
        frame = cam.read()
    assert np.array_equal(frame[..., 0], frame[..., 1]) and np.array_equal(frame[..., 1], frame[..., 2])
    assert frame[field_inside()].mean() > 20


def test_a_still_is_taken_at_full_resolution_under_the_flash(lights):
    inside = field_inside(STILL)
    lights.set_white(0.1)
    with SimulatedCamera(illumination=lights, still_size=STILL, blinks_per_s=0, fps=None) as cam:
        dark = cam.capture_still()
        with lights.flash(0.8, 0.3):
            flashed = cam.capture_still()
    assert flashed.shape == STILL + (3,)
    assert flashed[inside].mean() > dark[inside].mean() + 30


def test_a_new_eye_brings_its_own_refraction():
    with OpticModuleSimulator(best_focus=620) as sim:
        cam = SimulatedCamera(optic_module=sim, fps=None)
        cam.present_eye(seed=11, laterality="left")
        assert cam.eye.laterality == "left" and cam.eye.seed == 11
        first = sim.best_focus
        cam.present_eye(seed=12, laterality="left")
        assert sim.best_focus != first
        assert abs(sim.best_focus - 620) < 300


def test_a_disconnected_camera_raises_camera_error():
    cam = SimulatedCamera(still_size=STILL, fps=None)
    cam.start()
    cam.read()
    cam.simulate_disconnect()
    with pytest.raises(CameraError, match="disconnected"):
        cam.read()
    with pytest.raises(CameraError, match="disconnected"):
        cam.capture_still()
    with pytest.raises(CameraError, match="disconnected"):
        cam.start()


def test_the_simulated_camera_keeps_up_with_a_preview(lights):
    lights.set_white(0.4)
    with SimulatedCamera(illumination=lights, still_size=STILL, fps=None) as cam:
        cam.read()
        start = time.perf_counter()
        for _ in range(30):
            cam.read()
        fps = 30 / (time.perf_counter() - start)
    assert fps >= 15, f"{fps:.1f} frames/s"


def test_simulated_time_charges_the_readers_work_and_drops_the_frames_it_missed(lights):
    period = 1 / 30
    with SimulatedCamera(illumination=lights, still_size=STILL, fps=30, simulated_time=True) as cam:
        cam.read()  # drawing the eye the first time is the simulator's cost, not the unit's
        assert cam.clock() == pytest.approx(period, abs=1e-3)
        cam.read()  # a reader that keeps up gets the very next frame
        frames = cam.info()["frames"]
        assert frames == 2
        time.sleep(0.04)  # a frame's work that takes more than a period ...
        at = cam.clock()
        assert 2 * period + 0.04 <= at < 2 * period + 0.1  # ... shows on the sensor's clock at once
        cam.read()  # ... and the frame after it is the one the sensor finished next: one was missed
        missed = cam.info()["frames"] - frames - 1
        assert missed >= 1
        after = cam.clock()
        assert after == pytest.approx((frames + missed + 1) * period, abs=0.005)  # back on the sensor's frame grid
        cam.capture_still()  # a still takes its readout time
        assert cam.clock() >= after + STILL_S - 1e-6
    started = time.monotonic()
    with SimulatedCamera(illumination=lights, still_size=STILL, fps=30, simulated_time=True, blinks_per_s=0) as cam:
        for _ in range(60):
            cam.read()
        simulated = cam.clock()
    assert simulated >= 2.0 - 1e-6 and time.monotonic() - started < simulated  # faster than the wall clock
    with pytest.raises(ValueError, match="frame rate"):
        SimulatedCamera(fps=None, simulated_time=True)


def test_an_exposure_cannot_outlast_the_frame_period(lights):
    with SimulatedCamera(illumination=lights, still_size=STILL, fps=30) as cam:
        cam.set_exposure(60000, 1.0)
        assert cam.info()["exposure_us"] == 33333
    with SimulatedCamera(illumination=lights, still_size=STILL, fps=None) as cam:  # no frame rate: no such bound
        cam.set_exposure(60000, 1.0)
        assert cam.info()["exposure_us"] == 60000


def test_the_corneal_reflex_stands_out_more_against_a_dim_fundus():
    """The reflex comes off the cornea, so it does not dim with the fundus: with the light made up for a
    dim eye (small pupil, dark pigment), more of the frame is washed white-blue than for a bright eye."""
    def white_blue(light_scale):
        with SimulatedCamera(offset=(0.25, 0.0), alignment_s=None, light_scale=light_scale, blinks_per_s=0,
                             still_size=STILL, fps=None, seed=5) as cam:
            cam.set_exposure(20000 / light_scale, 1.0)  # the fundus exposed alike in both
            rgb = cam.read().astype(np.int16)
        reflex = (rgb[..., 2] >= 0.6 * 255) & (rgb[..., 2] >= 0.7 * rgb[..., 0])
        return reflex[field_inside()].mean()

    assert white_blue(0.3) > 3 * white_blue(1.0)
