"""The Jetson's CSI camera (hardware/argus.py) against fakes of the real elements (tests/hardware/fake_cameras.py):
the preview keeps the sensor's aspect, stills are the sensor mode's full size, controls change without
restarting Argus where the element allows it, and without GStreamer the camera (and `doctor`) say so."""
from __future__ import annotations

import errno
import json
import re
import struct
import subprocess
import sys
import textwrap
import time

import cv2
import numpy as np
import pytest

from device.capture.loop import CaptureLoop
from device.config import CaptureConfig, Config
from device.screening.quality import QualityGate
from hardware import argus
from hardware.argus import (
    IMX219_FULL,
    VIDIOC_ENUM_FMT,
    VIDIOC_ENUM_FRAMEINTERVALS,
    VIDIOC_ENUM_FRAMESIZES,
    ArgusCamera,
    SensorMode,
    capture_paths,
    full_sensor_mode,
    nvargus_pipeline,
    nvargus_tee_pipeline,
    preview_geometry,
    sensor_modes,
)
from hardware.camera import CameraError, opencv_build
from tests.conftest import REPO
from tests.hardware.fake_cameras import IMX219_MODES, Branch, FakeArgus, brightness, lit_box, parse, render

FULL, HD = IMX219_MODES[0], IMX219_MODES[2]  # 3280x2464 (4:3) and 1920x1080 (16:9)
OPENCV_WITH_GSTREAMER = {"version": "4.8.0", "file": "/usr/lib/python3/dist-packages/cv2/__init__.py",
                         "gstreamer": True, "gstreamer_line": "GStreamer: YES (1.20.3)"}


def no_gi():
    raise ImportError("No module named 'gi'")


def camera_on(fake: FakeArgus, transport: str, **options) -> ArgusCamera:
    """An Argus camera whose only way to the sensor is the named transport's fake."""
    gst = fake.gst
    loader = (lambda: gst) if transport == "gst" else no_gi
    camera = ArgusCamera(transport=transport, capture_factory=fake.video_capture, gst_loader=loader,
                         opencv=OPENCV_WITH_GSTREAMER, **options)
    camera.fake_gst = gst  # type: ignore[attr-defined]  # for the tests to look inside
    return camera


def sizes_in(description: str) -> list[tuple[int, int]]:
    """(width, height) of every caps in a pipeline description, in order."""
    return [(int(w), int(h)) for w, h in re.findall(r"width=(\d+),height=(\d+)", description)]


def crop_in(description: str, mode: SensorMode) -> tuple[int, int]:
    """(width, height) of the sensor area the first nvvidconv scales: its crop rectangle, else the whole mode."""
    found = re.search(r"nvvidconv left=(\d+) top=(\d+) right=(\d+) bottom=(\d+)", description)
    if not found:
        return mode.width, mode.height
    left, top, right, bottom = map(int, found.groups())
    return right - left, bottom - top


# -- the preview keeps the aspect -----------------------------------------------------------------
def test_the_fake_converter_squashes_as_nvvidconv_does():
    """What defect 10 was: 1920x1080 stretched to 640x480 makes the round field an ellipse."""
    squashed = render(Branch((480, 640), (0, 0, 1920, 1080), "BGR", None), HD, 100)
    h, w = lit_box(squashed[..., ::-1])
    assert w / h == pytest.approx(4 / 3 / (16 / 9), abs=0.02)


@pytest.mark.parametrize("sensor", [(2464, 3280), (1080, 1920), (1848, 3280), (1232, 1640), (3040, 4032)])
@pytest.mark.parametrize("preview", [None, (480, 640), (360, 640), (480, 480)])
def test_the_preview_geometry_keeps_the_aspect(sensor, preview):
    (ph, pw), crop = preview_geometry(sensor, preview)
    if preview is None:
        assert pw == 640 and ph % 2 == 0
        assert abs(ph - 640 * sensor[0] / sensor[1]) <= 1  # the sensor's own aspect, to the even pixel
    else:
        assert (ph, pw) == preview
    left, top, right, bottom = crop or (0, 0, sensor[1], sensor[0])
    assert 0 <= left < right <= sensor[1] and 0 <= top < bottom <= sensor[0]
    assert all(v % 2 == 0 for v in (left, top, right, bottom))
    cw, ch = right - left, bottom - top
    assert abs(cw / ch * ph - pw) < 1, (crop, (ph, pw))  # square pixels, to within a pixel of the preview
    assert abs((left + right) / 2 - sensor[1] / 2) <= 1 and abs((top + bottom) / 2 - sensor[0] / 2) <= 1


@pytest.mark.parametrize("transport", ["gst", "opencv"])
@pytest.mark.parametrize("mode, preview", [(FULL, None), (HD, None), (HD, (480, 640)), (FULL, (480, 480))])
def test_the_preview_shows_the_round_field_round(transport, mode, preview):
    fake = FakeArgus()
    with camera_on(fake, transport, sensor_mode=mode, preview_size=preview) as cam:
        frame = cam.read()
    assert frame.shape == cam.preview_size + (3,)
    if preview is not None:
        assert cam.preview_size == preview
    (description,) = fake.started
    (sw, sh), (ow, oh) = sizes_in(description)[:2]
    assert (sw, sh) == (mode.width, mode.height)  # Argus runs the sensor mode itself
    cw, ch = crop_in(description, mode)
    assert abs(cw / ch * oh - ow) < 1, description  # the area scaled has the output's aspect
    h, w = lit_box(frame)
    assert abs(h - w) <= 2, (h, w)  # and so the field is a circle, not an ellipse


# -- stills at the sensor's full size -------------------------------------------------------------
@pytest.mark.parametrize("transport", ["gst", "opencv"])
def test_a_still_is_the_sensor_modes_full_size(transport):
    fake = FakeArgus()
    with camera_on(fake, transport, sensor_mode=FULL) as cam:
        cam.read()
        still = cam.capture_still()
        assert still.shape == (2464, 3280, 3) and cam.still_size == (2464, 3280)
        assert cam.read().shape == cam.preview_size + (3,)
    inside = still[1232, 1640]
    assert inside[0] > inside[1] > inside[2] > 0  # RGB: the field is red
    h, w = lit_box(still)
    assert abs(h - w) <= 2


def write_mode_list(request: int, buf: bytearray, modes: list[SensorMode]) -> None:
    """A V4L2 node listing `modes`, written field by field at videodev2.h's offsets."""
    size = (request >> 16) & 0x3FFF  # the struct size the request number carries must be the buffer's
    assert len(buf) == size, (hex(request), len(buf))
    index = struct.unpack_from("<I", buf, 0)[0]
    if request == VIDIOC_ENUM_FMT:
        if index > 0:
            raise OSError(errno.EINVAL, "Invalid argument")
        struct.pack_into("<I", buf, 44, int.from_bytes(b"RG10", "little"))
    elif request == VIDIOC_ENUM_FRAMESIZES:
        assert struct.unpack_from("<I", buf, 4)[0] == int.from_bytes(b"RG10", "little")
        if index >= len(modes):
            raise OSError(errno.EINVAL, "Invalid argument")
        struct.pack_into("<3I", buf, 8, 1, modes[index].width, modes[index].height)
    elif request == VIDIOC_ENUM_FRAMEINTERVALS:
        width, height = struct.unpack_from("<2I", buf, 8)
        mode = next(m for m in modes if (m.width, m.height) == (width, height))
        if index > 0:
            raise OSError(errno.EINVAL, "Invalid argument")
        struct.pack_into("<3I", buf, 16, 1, 1000, round(mode.fps * 1000))
    else:
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")


def test_the_sensor_modes_are_read_from_its_v4l2_node(tmp_path):
    node = tmp_path / "video0"
    node.write_bytes(b"")
    modes = sensor_modes(str(node), ioctl=lambda fd, request, buf: write_mode_list(request, buf, IMX219_MODES))
    assert [(m.width, m.height, m.fps) for m in modes] == [(m.width, m.height, m.fps) for m in IMX219_MODES]
    assert full_sensor_mode(modes) == SensorMode(3280, 2464, 21.0)
    fake = FakeArgus()
    cam = camera_on(fake, "gst", modes_reader=lambda device: sensor_modes(
        str(node), ioctl=lambda fd, request, buf: write_mode_list(request, buf, IMX219_MODES[2:])))
    assert cam.sensor_mode == SensorMode(1920, 1080, 30.0) and cam.fps == 30.0  # that sensor's largest
    with cam:
        assert cam.capture_still().shape == (1080, 1920, 3)


def test_an_unreadable_node_falls_back_to_the_imx219(caplog):
    def unreadable(device):
        assert device == "/dev/video1"
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", device)

    cam = camera_on(FakeArgus(), "gst", sensor_id=1, modes_reader=unreadable)
    assert cam.sensor_mode == IMX219_FULL and "not read from /dev/video1" in caplog.text


# -- restarts ---------------------------------------------------------------------------------------
def test_exposure_and_gain_change_on_the_running_camera():
    fake = FakeArgus()
    with camera_on(fake, "gst", sensor_mode=FULL) as cam:
        assert cam.live_controls and cam.starts == 1
        centre = tuple(s // 2 for s in cam.preview_size)
        for exposure, gain in [(10000, 1.0), (25000, 1.0), (40000, 1.5), (8000, 2.0), (30000, 1.0)]:
            cam.set_exposure(exposure, gain)
            assert cam.read()[centre][0] == pytest.approx(brightness(exposure, gain), abs=1)
        src = cam.fake_gst.pipelines[0].elements["src"]  # type: ignore[attr-defined]  # set by camera_on
        assert ("exposuretimerange", "40000000 40000000") in src.changes and ("gainrange", "1.5 1.5") in src.changes
        assert cam.starts == 1 and len(fake.started) == 1  # no restart for any of them
        assert cam.info()["pipeline_starts"] == 1 and cam.info()["transport"] == "gst"


def test_a_burst_of_stills_restarts_nothing_and_each_is_exposed_after_it_was_asked_for():
    fake = FakeArgus()
    with camera_on(fake, "gst", sensor_mode=FULL, still_skip_frames=1) as cam:
        cam.read()
        pipeline = cam.fake_gst.pipelines[0]  # type: ignore[attr-defined]  # set by camera_on
        still_sink, shutter = pipeline.sinks["still"], pipeline.elements["shutter"]
        for _ in range(3):
            asked_at = fake.frames
            cam.set_exposure(30000, 1.0)  # the flash's own exposure, as the loop sends it
            still = cam.capture_still()
            assert still.shape == (2464, 3280, 3)
            taken = still_sink.handed[-1]
            assert taken.seq > asked_at + 1  # one frame dropped after the valve opened
            assert shutter.props["drop"] is True  # closed again: the full-size branch costs nothing between photos
            assert still[1232, 1640, 0] == pytest.approx(brightness(30000, 1.0), abs=1)
        cam.read()
        assert cam.starts == 1 and len(fake.started) == 1


def test_through_opencv_a_control_change_is_one_restart_and_a_burst_at_most_one_a_still():
    fake = FakeArgus()
    with camera_on(fake, "opencv", sensor_mode=FULL) as cam:
        assert not cam.live_controls
        cam.read()
        for exposure in (25000, 26000, 27000):  # the element cannot take them live: one restart for all three
            cam.set_exposure(exposure, 1.0)
        frame = cam.read()
        assert cam.starts == 2 and frame[tuple(s // 2 for s in cam.preview_size)][0] == pytest.approx(
            brightness(27000, 1.0), abs=1)
        assert 'exposuretimerange="27000000 27000000"' in fake.started[-1]
        before = cam.starts
        burst = [cam.capture_still() for _ in range(3)]
        cam.read()
        assert all(s.shape == (2464, 3280, 3) for s in burst)
        assert cam.starts - before == 2 <= len(burst)  # into the full-size pipeline once, back once
        full = fake.started[before]
        assert sizes_in(full)[:2] == [(3280, 2464), (3280, 2464)] and "left=" not in full  # nothing cut, nothing scaled
    assert all(d.endswith("videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1") for d in fake.started)


@pytest.mark.parametrize("transport", ["gst", "opencv"])
def test_the_capture_loop_restarts_nothing_while_it_steers_the_light(transport):
    fake = FakeArgus()
    cam = camera_on(fake, transport, sensor_mode=FULL)
    loop = CaptureLoop(cam, QualityGate(), CaptureConfig())
    lo, hi = loop.light.exposure_range
    if transport == "opencv":  # exposure fixed at the frame period, no gain: the ring alone steers
        assert lo == hi == int(0.9e6 / FULL.fps) and loop.light.max_gain == 1.0
    loop.start()
    try:
        deadline = time.monotonic() + 20
        while fake.frames < 40 and time.monotonic() < deadline and not loop.state()["error"]:
            time.sleep(0.02)
    finally:
        loop.stop()
    assert loop.state()["error"] is None and fake.frames >= 40
    assert cam.starts == 1 and len(fake.started) == 1, fake.started


# -- a camera that cannot start -------------------------------------------------------------------
def test_without_gstreamer_the_camera_is_refused_before_anything_opens():
    opened = []
    cam = ArgusCamera(capture_factory=lambda *a: opened.append(a), gst_loader=no_gi, sensor_mode=FULL)
    assert cam.live_controls  # asking does not raise: the loop is built before the camera starts
    with pytest.raises(CameraError) as refused:
        cam.start()
    message = str(refused.value)
    assert "GStreamer: NO" in message and cv2.__file__ in message  # this machine's pip OpenCV has none
    assert "No module named 'gi'" in message and "python3-gi" in message and "JetPack's own OpenCV" in message
    assert opened == [] and cam.starts == 0
    with pytest.raises(CameraError, match="GStreamer: NO"):
        ArgusCamera(transport="opencv", gst_loader=no_gi, sensor_mode=FULL).start()


def test_a_missing_sensor_is_a_camera_error_and_the_pipeline_is_released():
    fake = FakeArgus(present=False)
    cam = camera_on(fake, "gst", sensor_mode=FULL)
    with pytest.raises(CameraError, match="No cameras available"):
        cam.start()
    assert cam.fake_gst.pipelines[0].states[-1] == cam.fake_gst.State.NULL  # type: ignore[attr-defined]  # camera_on
    with pytest.raises(CameraError, match="not started"):
        cam.read()
    with pytest.raises(CameraError, match="did not start through GStreamer"):
        camera_on(fake, "opencv", sensor_mode=FULL).start()


def test_a_pipeline_the_elements_refuse_is_a_camera_error():
    fake = FakeArgus(modes=[SensorMode(1920, 1080, 30.0)])
    with pytest.raises(CameraError, match="could not be made.*no 3280x2464 mode"):
        camera_on(fake, "gst", sensor_mode=FULL).start()


def test_the_descriptions_fix_exposure_in_nanoseconds():
    p = nvargus_pipeline(sensor_id=1, mode=SensorMode(1920, 1080, 30.0, 2), out_size=(480, 640),
                         exposure_us=20000, gain=2.0)
    assert p.startswith("nvarguscamerasrc name=src sensor-id=1 sensor-mode=2 ")
    assert 'exposuretimerange="20000000 20000000"' in p and 'gainrange="2 2"' in p and 'ispdigitalgainrange="1 1"' in p
    assert "nvvidconv left=240 top=0 right=1680 bottom=1080" in p  # 4:3 out of the 16:9 mode's centre
    assert "exposuretimerange" not in nvargus_pipeline()
    tee = nvargus_tee_pipeline(0, FULL, None, 20000, 1.0)
    parsed = parse(tee, IMX219_MODES)
    assert [(b.sink, b.size, b.valve) for b in parsed.branches] == [("preview", (480, 640), None),
                                                                    ("still", (2464, 3280), "shutter")]


# -- doctor ---------------------------------------------------------------------------------------
def test_opencv_build_reads_this_machines_cv2():
    build = opencv_build()
    assert build["file"] == cv2.__file__ and build["version"] == cv2.__version__
    assert build["gstreamer"] is False and build["gstreamer_line"] == "GStreamer: NO"  # pip's wheel

    class Jetpack:
        __version__, __file__ = "4.8.0", "/usr/lib/python3/dist-packages/cv2/python-3.10/cv2.so"

        @staticmethod
        def getBuildInformation():  # noqa: N802 - OpenCV's name
            return "  Video I/O:\n    FFMPEG:                      YES\n    GStreamer:                   YES (1.20.3)\n"

    assert opencv_build(Jetpack)["gstreamer"] is True and opencv_build(Jetpack)["gstreamer_line"] == "GStreamer: YES (1.20.3)"


def test_doctor_names_the_opencv_in_use_and_refuses_argus_without_gstreamer(monkeypatch, tmp_path):
    from device import doctor

    monkeypatch.setattr(argus, "load_gst", no_gi)
    found = doctor.camera(Config(board="jetson-orin-nano", data_dir=tmp_path))
    assert found["opencv"]["file"] == cv2.__file__ and found["opencv"]["gstreamer"] is False
    assert found["opencv"]["gstreamer_line"] == "GStreamer: NO"
    assert found["ok"] is False and found["transport"] is None
    assert found["error"].startswith("the Argus camera is refused") and "GStreamer: NO" in found["error"]
    assert not found["gstreamer_python"]["ok"]
    simulated = doctor.camera(Config(board="jetson-orin-nano", simulate=True, data_dir=tmp_path))
    assert simulated["ok"] and simulated["opencv"]["gstreamer"] is False  # said wherever the doctor runs

    fake = FakeArgus()
    monkeypatch.setattr(argus, "load_gst", lambda: fake.gst)
    found = doctor.camera(Config(board="jetson-orin-nano", data_dir=tmp_path))
    assert found["transport"] == "gst" and found["live_controls"] is True
    assert "refused" not in found.get("error", "")  # (this machine has no /dev/video*: that is all it misses)
    assert found["gstreamer_python"]["nvarguscamerasrc"] is True


def test_capture_paths_prefer_the_binding_and_fall_back_to_opencv_with_gstreamer():
    fake = FakeArgus()
    assert capture_paths(lambda: fake.gst, opencv=OPENCV_WITH_GSTREAMER)["transport"] == "gst"
    assert capture_paths(no_gi, opencv=OPENCV_WITH_GSTREAMER)["transport"] == "opencv"

    class NotAJetson(type(fake.gst)):  # type: ignore[misc]  # GStreamer without NVIDIA's elements
        class ElementFactory:
            @staticmethod
            def find(name):
                return None

    found = capture_paths(lambda: NotAJetson(fake), opencv=OPENCV_WITH_GSTREAMER)
    assert found["transport"] is None and "nvidia-l4t-gstreamer" in found["error"]


def test_a_preview_frame_has_the_sensors_colours_in_rgb_order():
    fake = FakeArgus()
    for transport in ("gst", "opencv"):
        with camera_on(fake, transport, sensor_mode=HD) as cam:
            r, g, b = cam.read()[tuple(s // 2 for s in cam.preview_size)]
        assert r > g > b > 0
    assert np.array_equal(*[render(Branch((4, 4), (0, 0, 4, 4), f, None), SensorMode(4, 4, 30.0), 100)[..., :3]
                            for f in ("BGR", "BGRx")])


# -- the binding's transport on a real GStreamer --------------------------------------------------
REAL_GST = textwrap.dedent('''
    import json, re, sys
    try:
        import gi
    except ImportError:  # a venv without system site packages: the OS's binding, as a Jetson's venv sees it
        sys.path.append("/usr/lib/python3/dist-packages")
    try:
        from hardware.argus import load_gst
        Gst = load_gst()
    except (ImportError, ValueError) as exc:
        print(json.dumps({"skip": f"GStreamer's Python binding is not installed ({exc})"}))
        sys.exit(0)
    missing = [e for e in ("videotestsrc", "videoconvert", "videoscale", "tee", "queue", "valve", "appsink")
               if Gst.ElementFactory.find(e) is None]
    if missing:
        print(json.dumps({"skip": f"GStreamer lacks {missing} (gstreamer1.0-plugins-base)"}))
        sys.exit(0)
    from hardware.argus import ArgusCamera, SensorMode

    class OnATestSource:
        """Real GStreamer, with the Jetson's two elements stood in for: a test pattern for Argus (a solid
        colour, live, at the mode's size) and software conversion for nvvidconv. Everything else in the
        description (tee, leaky queues, valve, appsinks and their properties) is the driver's own."""
        def __getattr__(self, name):
            return getattr(Gst, name)
        class ElementFactory:
            find = staticmethod(lambda name: True)
        def parse_launch(self, description):
            self.description = description
            assert "left=" not in description  # the 4:3 mode scales to 640x480 without a crop
            d = re.sub(r"nvarguscamerasrc name=src [^!]*", "videotestsrc name=src is-live=true pattern=solid-color "
                       "foreground-color=0xffc04020 ", description)
            d = d.replace("video/x-raw(memory:NVMM)", "video/x-raw").replace("nvvidconv", "videoconvert ! videoscale")
            return Gst.parse_launch(d)

    gst = OnATestSource()
    cam = ArgusCamera(sensor_mode=SensorMode(1280, 960, 30.0), transport="gst", gst_loader=lambda: gst)
    out = {}
    with cam:
        preview = cam.read()
        out["preview"] = [list(preview.shape), preview[240, 320].tolist()]
        stills = [cam.capture_still() for _ in range(3)]
        out["stills"] = [list(s.shape) for s in stills]
        out["still_pixel"] = stills[0][480, 640].tolist()
        out["valve_closed"] = cam._session.shutter.get_property("drop")
        cam._session.set_properties({"foreground-color": 0xff20c040})  # a property changed on the playing source
        for _ in range(5):
            changed = cam.read()
        out["changed"] = changed[240, 320].tolist()
        out["starts"] = cam.starts
        pipeline = cam._session.pipeline
    out["state_after_stop"] = pipeline.get_state(0)[1].value_nick
    print(json.dumps(out))
''')


def test_the_binding_transport_runs_on_real_gstreamer():
    """Where GStreamer's Python binding is installed (python3-gi, gir1.2-gstreamer-1.0, plugins-base), the
    driver's two-branch description runs on the real thing: frames arrive (a sink behind a closed valve
    must not hold the live pipeline back), BGRx becomes RGB, a still comes through the valve at the full
    size, a property changes on the playing source, and stopping takes the pipeline down."""
    done = subprocess.run([sys.executable, "-c", REAL_GST], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(out["skip"])
    def near(rgb, wanted):  # the pattern goes through NV12 as the sensor's frames do: a few levels of rounding
        return all(abs(a - b) <= 4 for a, b in zip(rgb, wanted))

    shape, pixel = out["preview"]
    assert shape == [480, 640, 3] and near(pixel, (0xC0, 0x40, 0x20)), pixel  # red first: RGB
    assert out["stills"] == [[960, 1280, 3]] * 3 and near(out["still_pixel"], (0xC0, 0x40, 0x20))
    assert out["valve_closed"] is True and out["starts"] == 1
    assert near(out["changed"], (0x20, 0xC0, 0x40)), out["changed"]
    assert out["state_after_stop"] == "null"
