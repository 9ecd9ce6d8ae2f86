"""Fakes of the real camera APIs that behave as those APIs do, for the drivers' tests on a machine without them.

* `FakeArgus`: a Jetson's CSI sensor behind its GStreamer elements. It reads a pipeline description
  the way the elements would: `nvarguscamerasrc` runs the mode whose size the caps ask for (at no more
  than that mode's frame rate, or Argus refuses), `nvvidconv` cuts its crop rectangle (left, top,
  right, bottom: coordinates) and stretches it to the caps' size without keeping the aspect. The scene
  is the optic module's round field stop, centred, lit by exposure x gain: a pipeline that squashes
  shows an ellipse. It is reached two ways, as the driver reaches the real one: `video_capture` is a
  cv2.VideoCapture factory (OpenCV's GStreamer backend: one appsink, controls fixed in the string),
  and `gst` a stand-in for GStreamer's Python binding (parse_launch, appsinks pulled with
  "try-pull-sample", a valve, the source's properties set on the running pipeline, errors on the bus).
  Every pipeline started is recorded in `started`.
* `make_picamera2`: a picamera2.Picamera2 class whose camera stays acquired until close(), as
  libcamera's does, with a failure to inject at construction, configure or start.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

import cv2
import numpy as np

from hardware.argus import SensorMode

# The IMX219's modes as JetPack lists them on an Orin Nano (Argus's order).
IMX219_MODES = [SensorMode(3280, 2464, 21.0), SensorMode(3280, 1848, 28.0), SensorMode(1920, 1080, 30.0),
                SensorMode(1640, 1232, 30.0), SensorMode(1280, 720, 60.0)]
FIELD_RADIUS = 0.45  # of the mode's height


def brightness(exposure_us: float, gain: float) -> float:
    """The field's red level for an exposure and gain (the ISP's digital gain held at 1)."""
    return float(min(255.0, exposure_us * gain / 200.0))


def lit_box(rgb: np.ndarray, level: int = 10) -> tuple[int, int]:
    """(height, width) of the lit field's bounding box in an RGB frame."""
    ys, xs = np.nonzero(rgb[..., 0] > level)
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


# -- reading a description as the elements would --------------------------------------------------
def _props(element: str) -> tuple[str, dict[str, str]]:
    words = shlex.split(element)
    return words[0], dict(w.split("=", 1) for w in words[1:] if "=" in w)


def _caps(element: str) -> dict[str, str]:
    kind, _, rest = element.partition(",")
    out = dict(kv.split("=", 1) for kv in rest.split(",") if "=" in kv)
    out["_kind"] = kind
    return out


@dataclass
class Branch:
    """What one appsink receives: the sensor cut to `crop`, stretched to `size` (height, width)."""

    size: tuple[int, int]
    crop: tuple[int, int, int, int]
    fmt: str
    sink: str | None
    valve: str | None = None
    sink_async: bool = True     # appsink's async: waits for a first buffer before the pipeline may play


@dataclass
class Parsed:
    source: dict[str, str]
    mode: SensorMode
    index: int
    fps: int
    branches: list[Branch]


class ArgusRefused(RuntimeError):
    """What the real elements would refuse (a caps the sensor has no mode for, a crop off the frame)."""


def parse(description: str, modes: list[SensorMode]) -> Parsed:
    chains = description.split(" t. ! ")
    head = [e.strip() for e in chains[0].split(" ! ")]
    name, source = _props(head[0])
    if name != "nvarguscamerasrc":
        raise ArgusRefused(f"not an Argus source: {head[0]}")
    caps = _caps(head[1])
    if caps["_kind"] != "video/x-raw(memory:NVMM)" or caps.get("format") != "NV12":
        raise ArgusRefused(f"Argus gives NV12 in NVMM memory, not {head[1]}")
    w, h = int(caps["width"]), int(caps["height"])
    fps = int(caps["framerate"].split("/")[0])
    found = [i for i, m in enumerate(modes) if (m.width, m.height) == (w, h)]
    if not found:
        raise ArgusRefused(f"the sensor has no {w}x{h} mode")
    index = found[0]
    if "sensor-mode" in source and int(source["sensor-mode"]) != index:
        raise ArgusRefused(f"sensor-mode {source['sensor-mode']} is not the {w}x{h} mode")
    if fps > modes[index].fps:
        raise ArgusRefused("Frame Rate specified is greater than supported")
    if len(chains) == 1:
        if len(head) < 3 or "tee" in head[2]:
            raise ArgusRefused("a branch without a sink")
        bodies = [" ! ".join(head[2:])]
    else:
        if not head[2].startswith("tee name=t"):
            raise ArgusRefused("branches without a tee")
        bodies = chains[1:]
    mode = modes[index]
    return Parsed(source, mode, index, fps, [_branch(b, mode) for b in bodies])


def _branch(body: str, mode: SensorMode) -> Branch:
    elements = [e.strip() for e in body.split(" ! ")]
    names = [_props(e)[0] for e in elements]
    if "nvvidconv" not in names or "appsink" not in names:
        raise ArgusRefused(f"NVMM frames reach an appsink only through nvvidconv: {body}")
    i = names.index("nvvidconv")
    conv = _props(elements[i])[1]
    crop = (int(conv.get("left", 0)), int(conv.get("top", 0)), int(conv.get("right", mode.width)),
            int(conv.get("bottom", mode.height)))
    left, top, right, bottom = crop
    if not (0 <= left < right <= mode.width and 0 <= top < bottom <= mode.height):
        raise ArgusRefused(f"crop {crop} is off the {mode.width}x{mode.height} frame")
    out = _caps(elements[i + 1])
    if out["_kind"] != "video/x-raw" or "width" not in out:
        raise ArgusRefused(f"nvvidconv needs an output size: {elements[i + 1]}")
    fmt = out.get("format", "")
    rest = names[i + 2:]
    if rest[:2] == ["videoconvert", "video/x-raw,format=BGR"]:
        fmt = "BGR"
    valve = next((_props(e)[1].get("name") for e in elements if e.startswith("valve")), None)
    sink = _props(elements[names.index("appsink")])[1]
    return Branch((int(out["height"]), int(out["width"])), crop, fmt, sink.get("name"), valve,
                  sink.get("async", "true") != "false")


def render(branch: Branch, mode: SensorMode, level: float) -> np.ndarray:
    """The frame the branch gives: HxWx3 BGR or HxWx4 BGRx, the field red (B, G, R = 0.2, 0.5, 1 x level)."""
    h, w = branch.size
    left, top, right, bottom = branch.crop
    sx = left + (np.arange(w) + 0.5) * (right - left) / w
    sy = top + (np.arange(h) + 0.5) * (bottom - top) / h
    cx, cy, r = mode.width / 2, mode.height / 2, FIELD_RADIUS * mode.height
    inside = (sx[None, :] - cx) ** 2 + (sy[:, None] - cy) ** 2 < r * r
    channels = 4 if branch.fmt == "BGRx" else 3
    frame = np.zeros((h, w, channels), np.uint8)
    frame[inside, 0], frame[inside, 1], frame[inside, 2] = round(0.2 * level), round(0.5 * level), round(level)
    return frame


# -- the sensor -----------------------------------------------------------------------------------
@dataclass
class FakeArgus:
    modes: list[SensorMode] = field(default_factory=lambda: list(IMX219_MODES))
    present: bool = True                 # False: no sensor on the CSI port (Argus: "No cameras available")
    started: list[str] = field(default_factory=list)   # every description a pipeline was started with
    frames: int = 0                      # frames the sensor has delivered, all pipelines together

    def level_of(self, source: dict[str, str]) -> float:
        exposure_ns = float(source.get("exposuretimerange", "20000000 20000000").split()[0])
        gain = float(source.get("gainrange", "1 1").split()[0])
        return brightness(exposure_ns / 1000.0, gain)

    # cv2.VideoCapture, as OpenCV's GStreamer backend --------------------------------------------
    def video_capture(self, description: str, api: int | None = None) -> "FakeVideoCapture":
        return FakeVideoCapture(self, description, api)

    # GStreamer's Python binding -----------------------------------------------------------------
    @property
    def gst(self) -> "FakeGst":
        return FakeGst(self)


class FakeVideoCapture:
    def __init__(self, sensor: FakeArgus, description: str, api: int | None):
        self.sensor, self.description = sensor, description
        self.opened = False
        if api != cv2.CAP_GSTREAMER:
            return  # another backend reads the string as a file name, and finds none
        sensor.started.append(description)
        try:
            self.parsed = parse(description, sensor.modes)
        except ArgusRefused:
            return
        branch = self.parsed.branches[0]
        self.opened = sensor.present and len(self.parsed.branches) == 1 and branch.fmt == "BGR"

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.opened

    def read(self):
        if not self.opened:
            return False, None
        self.sensor.frames += 1
        branch = self.parsed.branches[0]
        return True, render(branch, self.parsed.mode, self.sensor.level_of(self.parsed.source))

    def grab(self) -> bool:
        if self.opened:
            self.sensor.frames += 1
        return self.opened

    def release(self) -> None:
        self.opened = False


class FakeGError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class FakeGst:
    SECOND = 1_000_000_000

    class State:
        NULL, READY, PAUSED, PLAYING = range(4)

    class StateChangeReturn:
        FAILURE, SUCCESS, ASYNC = range(3)

    class MessageType:
        ERROR = 2

    def __init__(self, sensor: FakeArgus):
        self.sensor = sensor
        self.pipelines: list[FakePipeline] = []

    class ElementFactory:
        @staticmethod
        def find(name: str):
            return object() if name in ("nvarguscamerasrc", "nvvidconv", "tee", "valve", "queue", "appsink") else None

    @staticmethod
    def version_string() -> str:
        return "GStreamer 1.20.3 (fake)"

    def parse_launch(self, description: str) -> "FakePipeline":
        try:
            parsed = parse(description, self.sensor.modes)
        except ArgusRefused as exc:
            raise FakeGError(f"could not link elements: {exc}") from exc
        pipeline = FakePipeline(self, description, parsed)
        self.pipelines.append(pipeline)
        return pipeline


class FakeMessage:
    def __init__(self, text: str):
        self.text = text

    def parse_error(self):
        return FakeGError(self.text), "gstnvarguscamerasrc.cpp: execute()"


class FakeBus:
    def __init__(self):
        self.errors: list[str] = []

    def pop_filtered(self, kind: int):
        return FakeMessage(self.errors.pop(0)) if kind == FakeGst.MessageType.ERROR and self.errors else None


class FakeElement:
    def __init__(self, pipeline: "FakePipeline", name: str, props: dict):
        self.pipeline, self.name, self.props = pipeline, name, dict(props)
        self.changes: list[tuple[str, object]] = []

    def set_property(self, name: str, value) -> None:
        if self.name == "src" and name not in ("exposuretimerange", "gainrange", "ispdigitalgainrange"):
            raise TypeError(f"nvarguscamerasrc has no property {name!r} that changes while playing")
        self.props[name] = value
        self.changes.append((name, value))

    def get_property(self, name: str):
        return self.props.get(name)


class FakeSample:
    def __init__(self, frame: np.ndarray, fmt: str, seq: int):
        self.frame, self.fmt, self.seq = frame, fmt, seq

    def get_caps(self):
        frame, fmt = self.frame, self.fmt

        class Structure:
            @staticmethod
            def get_value(key: str):
                return {"width": frame.shape[1], "height": frame.shape[0], "format": fmt}[key]

        class Caps:
            @staticmethod
            def get_structure(i: int):
                return Structure()

        return Caps()

    def get_buffer(self):
        data = self.frame.tobytes()

        class Buffer:
            @staticmethod
            def get_size() -> int:
                return len(data)

            @staticmethod
            def extract_dup(offset: int, size: int) -> bytes:
                return data[offset:offset + size]

        return Buffer()


class FakeAppSink:
    def __init__(self, pipeline: "FakePipeline", branch: Branch):
        self.pipeline, self.branch = pipeline, branch
        self.pending: FakeSample | None = None   # what slipped past a valve as it closed
        self.handed: list[FakeSample] = []

    def emit(self, signal: str, timeout_ns: int):
        assert signal == "try-pull-sample", signal
        p = self.pipeline
        if p.state != FakeGst.State.PLAYING or not p.gst.sensor.present or p.stalled:
            return None
        if self.pending is not None:
            sample, self.pending = self.pending, None
        else:
            valve = p.elements.get(self.branch.valve) if self.branch.valve else None
            if valve is not None and valve.props.get("drop") in (True, "true"):
                return None  # nothing passes a closed valve: the pull times out
            if timeout_ns == 0:
                return None  # nothing waiting, and no time given to wait for the next frame
            sample = p.next_sample(self.branch)
        self.handed.append(sample)
        return sample


class FakeValve(FakeElement):
    def set_property(self, name: str, value) -> None:
        closing = name == "drop" and value and self.props.get("drop") not in (True, "true")
        super().set_property(name, value)
        if closing:  # the frame in flight as it closes still reaches the sink
            sink = next(s for s in self.pipeline.sinks.values() if s.branch.valve == self.name)
            sink.pending = self.pipeline.next_sample(sink.branch)


class FakePipeline:
    def __init__(self, gst: FakeGst, description: str, parsed: Parsed):
        self.gst, self.description, self.parsed = gst, description, parsed
        self.state = FakeGst.State.NULL
        self.bus = FakeBus()
        self.elements: dict[str, FakeElement] = {"src": FakeElement(self, "src", parsed.source)}
        self.sinks: dict[str, FakeAppSink] = {}
        for branch in parsed.branches:
            if branch.sink:
                self.sinks[branch.sink] = FakeAppSink(self, branch)
            if branch.valve:
                drop = re.search(rf"valve name={branch.valve} drop=(\w+)", description)
                self.elements[branch.valve] = FakeValve(self, branch.valve, {"drop": drop and drop.group(1) == "true"})
        self.states: list[int] = []
        # a sink that waits for a first buffer behind a valve that starts closed holds the live pipeline
        # out of PLAYING for good: nothing reaches any sink
        self.stalled = any(b.valve and b.sink_async and self.elements[b.valve].props["drop"] for b in parsed.branches)

    def get_by_name(self, name: str):
        return self.sinks.get(name) or self.elements.get(name)

    def get_bus(self) -> FakeBus:
        return self.bus

    def set_state(self, state: int) -> int:
        self.states.append(state)
        self.state = state
        if state == FakeGst.State.PLAYING:
            self.gst.sensor.started.append(self.description)
            if not self.gst.sensor.present:
                self.bus.errors.append("Internal data stream error. (Argus: No cameras available)")
            return FakeGst.StateChangeReturn.ASYNC
        return FakeGst.StateChangeReturn.SUCCESS

    def next_sample(self, branch: Branch) -> FakeSample:
        self.gst.sensor.frames += 1
        level = self.gst.sensor.level_of(self.elements["src"].props)
        return FakeSample(render(branch, self.parsed.mode, level), branch.fmt, self.gst.sensor.frames)


# -- picamera2 ------------------------------------------------------------------------------------
def make_picamera2(fail_at: str | None = None, sensor_resolution: tuple[int, int] = (4608, 2592)):
    """A Picamera2 class (its own registry of acquired cameras). `fail_at`: "init" (after acquiring,
    as picamera2's constructor can), "configure" or "start": that step raises RuntimeError; the class
    attribute can be changed between starts."""

    class FakePicamera2:
        acquired: set[int] = set()
        made: list["FakePicamera2"] = []
        fail = fail_at

        def __init__(self, camera_num: int = 0):
            self.camera_num = camera_num
            self.is_open = False
            self.started = False
            self.starts = 0
            self.closes = 0
            self.config: dict | None = None
            self.controls: list[dict] = []
            self.switches: list[dict] = []
            self.sensor_resolution = sensor_resolution
            self.camera_properties = {"Model": "imx708"}
            FakePicamera2.made.append(self)
            if camera_num in FakePicamera2.acquired:
                raise RuntimeError("Failed to acquire camera: Device or resource busy")
            FakePicamera2.acquired.add(camera_num)
            self.is_open = True
            if FakePicamera2.fail == "init":
                raise RuntimeError("Camera __init__ sequence did not complete.")

        def _opened(self) -> None:
            if not self.is_open:
                raise RuntimeError("Camera not opened")

        def create_preview_configuration(self, main=None, controls=None, **_):
            self._opened()
            return {"use_case": "preview", "main": {"format": "XBGR8888", "size": (640, 480), **(main or {})},
                    "controls": dict(controls or {})}

        def create_still_configuration(self, main=None, controls=None, **_):
            self._opened()
            return {"use_case": "still", "main": {"format": "BGR888", "size": self.sensor_resolution, **(main or {})},
                    "controls": dict(controls or {})}

        def configure(self, config: dict) -> None:
            self._opened()
            if FakePicamera2.fail == "configure":
                raise RuntimeError("Failed to configure camera")
            w, h = config["main"]["size"]
            if w % 2 or h % 2:
                raise RuntimeError("width and height should be even")
            self.config = config

        def start(self) -> None:
            self._opened()
            if self.config is None:
                raise RuntimeError("Camera has not been configured")
            if FakePicamera2.fail == "start":
                raise RuntimeError("Failed to start camera: Device or resource busy")
            self.started = True
            self.starts += 1

        def _frame(self, size) -> np.ndarray:
            w, h = size
            frame = np.zeros((h, w, 3), np.uint8)
            frame[...] = (10, 20, 200)  # "RGB888" is B, G, R in memory: a red field
            return frame

        def capture_array(self, name: str = "main") -> np.ndarray:
            if not self.started:
                raise RuntimeError("Camera is not running")
            assert self.config is not None
            return self._frame(self.config["main"]["size"])

        def set_controls(self, controls: dict) -> None:
            self._opened()
            self.controls.append(dict(controls))

        def switch_mode_and_capture_array(self, config: dict, name: str = "main") -> np.ndarray:
            if not self.started:
                raise RuntimeError("Camera is not running")
            self.switches.append(config)
            return self._frame(config["main"]["size"])

        def stop(self) -> None:
            self.started = False

        def close(self) -> None:
            if not self.is_open:
                return
            self.stop()
            FakePicamera2.acquired.discard(self.camera_num)
            self.is_open = False
            self.closes += 1

    return FakePicamera2
