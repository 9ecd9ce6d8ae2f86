"""A Jetson's CSI camera through Argus (`nvarguscamerasrc`): the "gstreamer" backend of `hardware.rig.open_camera`.

One pipeline runs the sensor in a mode at that mode's full size. The preview is scaled from it by the
Jetson's converter (`nvvidconv`), which stretches to whatever size it is told: so the preview is given
the sensor's own aspect (640 wide by default), and a preview size of another aspect is first cut to
that aspect from the sensor's centre, written into the pipeline as `nvvidconv`'s crop rectangle. A
round field stays round. Stills are the mode's full size, never a resize of the preview.

The pipeline runs through one of two transports:

* GStreamer's own Python binding (PyGObject: JetPack's python3-gi and gir1.2-gstreamer-1.0, seen by
  the unit's venv through its system site packages), preferred. `nvarguscamerasrc` takes exposure,
  gain and ISP gain on a running capture session, so a control change restarts nothing, and a still
  comes from a second branch of the same pipeline, opened for it by a valve: no restart per photo.
* OpenCV's GStreamer backend (`cv2.VideoCapture(description, cv2.CAP_GSTREAMER)`), only when the
  OpenCV in use was built with GStreamer: JetPack's is, pip's opencv-python(-headless) wheels are
  not, and one in the venv hides the system's. OpenCV cannot reach the element, so exposure and
  gain are fixed when the pipeline starts: the camera says so (`live_controls` False), the capture
  loop then steers the light with the LED ring alone, and a control change that does come is applied
  by one restart before the next frame, however many came in between. A burst of stills costs one
  restart into the full-size pipeline and one back, on the next preview frame.

With neither, the camera is refused at `start` with what to do, and `glaucoscreen doctor` says the same.
Every pipeline start is counted (`starts`), so tests and `info()` can tell how often Argus was reopened.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np

from hardware.camera import Camera, CameraError, _check_exposure, opencv_build

log = logging.getLogger(__name__)

PREVIEW_WIDTH = 640          # the preview's width when its size follows the sensor's aspect
START_TIMEOUT_S = 10.0       # Argus takes a second or two to open a sensor; longer is a fault
FRAME_TIMEOUT_S = 2.0
STILL_SKIP_FRAMES = 1        # frames dropped after a still is asked for: the first may have been exposed before
TRANSPORTS = ("auto", "gst", "opencv")


@dataclass(frozen=True)
class SensorMode:
    """A mode the sensor runs in: its full size, its fastest frame rate, and Argus's index of it where known."""

    width: int
    height: int
    fps: float
    index: int | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width), as sizes are given everywhere in hardware/."""
        return (self.height, self.width)


# The Raspberry Pi Camera Module v2 (IMX219) at its full 3280x2464, Argus's mode 0 at 21 frames/s: the
# CSI camera JetPack supports on the Orin Nano developer kit as shipped. Used when the sensor's own
# modes cannot be read from its V4L2 node.
IMX219_FULL = SensorMode(3280, 2464, 21.0, 0)


# -- the sensor's modes, from its V4L2 node -------------------------------------------------------
# linux/videodev2.h: _IOWR('V', nr, struct) for VIDIOC_ENUM_FMT (2, v4l2_fmtdesc: 64 bytes),
# VIDIOC_ENUM_FRAMESIZES (74, v4l2_frmsizeenum: 44 bytes), VIDIOC_ENUM_FRAMEINTERVALS (75, v4l2_frmivalenum: 52 bytes).
VIDIOC_ENUM_FMT = 0xC0405602
VIDIOC_ENUM_FRAMESIZES = 0xC02C564A
VIDIOC_ENUM_FRAMEINTERVALS = 0xC034564B
_FMTDESC = struct.Struct("<3I32s2I3I")        # index, type, flags, description, pixelformat, mbus_code, reserved[3]
_FRMSIZE = struct.Struct("<3I6I2I")           # index, pixel_format, type, {discrete w,h | stepwise x6}, reserved[2]
_FRMIVAL = struct.Struct("<5I6I2I")           # index, pixel_format, width, height, type, {discrete num,den | x6}, reserved[2]
_BUF_TYPE_VIDEO_CAPTURE = 1
_DISCRETE = 1


def sensor_modes(device: str, ioctl: Callable[..., Any] = fcntl.ioctl) -> list[SensorMode]:
    """The sensor's modes as its V4L2 node lists them: each discrete size of its first pixel format, at
    that size's fastest frame rate. On a Jetson every CSI sensor's node (/dev/videoN for sensor-id N)
    lists the modes of its device tree, the same modes Argus chooses from. Raises OSError when the
    node cannot be opened or read."""
    fd = os.open(device, os.O_RDWR | os.O_NONBLOCK)
    try:
        fmt = bytearray(_FMTDESC.pack(0, _BUF_TYPE_VIDEO_CAPTURE, 0, b"", 0, 0, 0, 0, 0))
        ioctl(fd, VIDIOC_ENUM_FMT, fmt)
        pixelformat = _FMTDESC.unpack(fmt)[4]
        modes = []
        for i in range(64):
            size = bytearray(_FRMSIZE.pack(i, pixelformat, *[0] * 9))
            if not _enumerate(ioctl, fd, VIDIOC_ENUM_FRAMESIZES, size):
                break
            kind, width, height = _FRMSIZE.unpack(size)[2:5]
            if kind != _DISCRETE:
                break  # a range of sizes is a bridge or a webcam's scaler, not a sensor's modes
            fps = 0.0
            for j in range(32):
                ival = bytearray(_FRMIVAL.pack(j, pixelformat, width, height, *[0] * 9))
                if not _enumerate(ioctl, fd, VIDIOC_ENUM_FRAMEINTERVALS, ival):
                    break
                kind, num, den = _FRMIVAL.unpack(ival)[4:7]
                if kind != _DISCRETE or not num:
                    break
                fps = max(fps, den / num)
            if fps > 0:
                modes.append(SensorMode(width, height, round(fps, 3)))
        return modes
    finally:
        os.close(fd)


def _enumerate(ioctl: Callable[..., Any], fd: int, request: int, buf: bytearray) -> bool:
    """One VIDIOC_ENUM_* step: False at the end of the list (EINVAL, as V4L2 ends every enumeration)."""
    try:
        ioctl(fd, request, buf)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return True


def full_sensor_mode(modes: list[SensorMode]) -> SensorMode:
    """The mode with the most pixels (the faster of equals): the sensor's whole area, for stills."""
    if not modes:
        raise ValueError("no sensor modes")
    return max(modes, key=lambda m: (m.width * m.height, m.fps))


# -- pipeline descriptions ------------------------------------------------------------------------
def preview_geometry(sensor: tuple[int, int], preview: tuple[int, int] | None = None,
                     width: int = PREVIEW_WIDTH) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
    """The preview's (height, width) and the sensor rectangle (left, top, right, bottom) scaled into it.

    No `preview`: the sensor's aspect at `width` pixels across (even sizes, as the converter wants).
    The rectangle is the largest one of the preview's exact aspect centred on the sensor (None when
    that is the whole sensor): `nvvidconv` scales whatever it is given to whatever it is told, so
    cutting to the preview's aspect first is what keeps a circle round.
    """
    sh, sw = int(sensor[0]), int(sensor[1])
    if preview is None:
        w = int(width) - int(width) % 2
        preview = (max(2, 2 * round(w * sh / sw / 2)), w)
    ph, pw = int(preview[0]), int(preview[1])
    if min(ph, pw) < 2 or min(sh, sw) < 2:
        raise ValueError(f"a {pw}x{ph} preview of a {sw}x{sh} sensor is not a picture")
    if sw * ph >= sh * pw:  # the sensor is wider: cut its sides
        ch, cw = float(sh), sh * pw / ph
    else:                   # the sensor is taller: cut top and bottom
        ch, cw = sw * ph / pw, float(sw)
    cw_, ch_ = 2 * round(cw / 2), 2 * round(ch / 2)  # even, for NV12's chroma
    left, top = (sw - cw_) // 2, (sh - ch_) // 2
    left, top = left - left % 2, top - top % 2
    crop = None if (cw_, ch_) == (sw, sh) else (left, top, left + cw_, top + ch_)
    return (ph, pw), crop


def argus_controls(exposure_us: int, gain: float) -> dict[str, str]:
    """The element's properties that fix exposure (in nanoseconds) and gain: a range of one value fixes
    it, so Argus's auto-exposure has nothing to choose; the ISP's digital gain is held at 1."""
    ns = int(exposure_us) * 1000
    return {"exposuretimerange": f"{ns} {ns}", "gainrange": f"{gain:g} {gain:g}", "ispdigitalgainrange": "1 1"}


def argus_source(sensor_id: int, mode: SensorMode, exposure_us: int | None = None, gain: float | None = None) -> str:
    """`nvarguscamerasrc` in `mode`, at the mode's full size (the caps' size is what picks Argus's mode)."""
    src = [f"nvarguscamerasrc name=src sensor-id={int(sensor_id)}"]
    if mode.index is not None:
        src.append(f"sensor-mode={int(mode.index)}")
    if exposure_us is not None and gain is not None:
        src += [f'{k}="{v}"' for k, v in argus_controls(exposure_us, gain).items()]
    fps = max(1, int(mode.fps))  # a rate above the mode's is refused; below it, Argus lengthens the frame
    return (f"{' '.join(src)} ! video/x-raw(memory:NVMM),width={mode.width},height={mode.height},"
            f"framerate={fps}/1,format=NV12")


def _scaler(out_size: tuple[int, int], crop: tuple[int, int, int, int] | None) -> str:
    cut = "" if crop is None else " left={} top={} right={} bottom={}".format(*crop)
    return f"nvvidconv{cut} ! video/x-raw,width={out_size[1]},height={out_size[0]},format=BGRx"


def nvargus_pipeline(sensor_id: int = 0, mode: SensorMode = IMX219_FULL, out_size: tuple[int, int] | None = None,
                     exposure_us: int | None = None, gain: float | None = None,
                     preview_width: int = PREVIEW_WIDTH) -> str:
    """One-sink pipeline for OpenCV's GStreamer backend: the sensor in `mode`, scaled to `out_size`
    (None: the sensor's aspect at `preview_width`) with the aspect kept, as BGR frames.

    `out_size` the mode's own size is a still: the whole sensor, nothing cut or scaled.
    """
    out, crop = preview_geometry(mode.size, out_size, preview_width)
    return (f"{argus_source(sensor_id, mode, exposure_us, gain)} ! {_scaler(out, crop)}"
            f" ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1")


def nvargus_tee_pipeline(sensor_id: int, mode: SensorMode, preview_size: tuple[int, int] | None = None,
                         exposure_us: int | None = None, gain: float | None = None,
                         preview_width: int = PREVIEW_WIDTH) -> str:
    """Two-sink pipeline for GStreamer's Python binding: the preview (appsink "preview") and, behind a
    closed valve ("shutter"), the sensor's full size (appsink "still"), from the one running sensor."""
    out, crop = preview_geometry(mode.size, preview_size, preview_width)
    leaky = "queue leaky=downstream max-size-buffers=1 max-size-bytes=0 max-size-time=0"
    sink = "drop=true max-buffers=1 sync=false"
    # async=false: a sink behind a closed valve never gets the first buffer a sink waits for before the
    # pipeline counts as playing, and with a live source nothing at all would flow
    return (f"{argus_source(sensor_id, mode, exposure_us, gain)} ! tee name=t"
            f" t. ! {leaky} ! {_scaler(out, crop)} ! appsink name=preview {sink}"
            f" t. ! {leaky} ! valve name=shutter drop=true ! {_scaler(mode.size, None)} ! appsink name=still {sink} async=false")


# -- transports -----------------------------------------------------------------------------------
def load_gst() -> Any:
    """GStreamer's Python binding, initialised. ImportError or ValueError when it is not installed."""
    import gi

    gi.require_version("Gst", "1.0")
    from gi.repository import Gst

    Gst.init(None)
    return Gst


def capture_paths(gst_loader: Callable[[], Any] | None = None, opencv: dict | None = None) -> dict:
    """What the CSI camera could run through here, and which it will: for `start` and for `doctor`.

    "transport" is "gst", "opencv" or None; with None, "error" says why and what to do. `gst_loader`
    (default `load_gst`) and `opencv` (default `opencv_build()`) stand in for the real ones in tests.
    """
    opencv = opencv if opencv is not None else opencv_build()
    found: dict[str, Any] = {"opencv": opencv}
    gst_module = None
    try:
        gst_module = (gst_loader or load_gst)()
        has_argus = gst_module.ElementFactory.find("nvarguscamerasrc") is not None
        found["gstreamer_python"] = {"ok": True, "version": str(gst_module.version_string()), "nvarguscamerasrc": has_argus}
    except Exception as exc:  # noqa: BLE001 - ImportError, ValueError (no Gst typelib), or the library failing to start
        found["gstreamer_python"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if gst_module is not None and not found["gstreamer_python"]["nvarguscamerasrc"]:
        found["transport"] = None
        found["error"] = ("GStreamer has no nvarguscamerasrc element: the Argus camera source comes with JetPack "
                          "(package nvidia-l4t-gstreamer); is this a Jetson?")
    elif gst_module is not None:
        found["transport"] = "gst"
    elif opencv.get("gstreamer"):
        found["transport"] = "opencv"
    else:
        found["transport"] = None
        found["error"] = no_gstreamer_message(opencv, found["gstreamer_python"].get("error", ""))
    found["module"] = gst_module
    return found


def no_gstreamer_message(opencv: dict, gi_error: str = "") -> str:
    line = opencv.get("gstreamer_line") or "no GStreamer line"
    why_gi = f" ({gi_error})" if gi_error else ""
    return (f"the CSI camera needs GStreamer, and the OpenCV in use has none: OpenCV {opencv.get('version')} from "
            f"{opencv.get('file')} says \"{line}\" (pip's opencv-python wheels are built without it), and GStreamer's "
            f"Python binding is not available either{why_gi}. On a Jetson use JetPack's own OpenCV (no pip "
            f"opencv-python(-headless) in the venv, which sees the system's packages), or install python3-gi and "
            f"gir1.2-gstreamer-1.0")


class _GstSession:
    """A pipeline run through GStreamer's Python binding: frames pulled from its appsinks, and the
    source's properties set on the running pipeline."""

    live_controls = True

    def __init__(self, gst: Any, description: str, start_timeout_s: float = START_TIMEOUT_S):
        self.gst = gst
        self.description = description
        try:
            self.pipeline = gst.parse_launch(description)
        except Exception as exc:  # noqa: BLE001 - GLib.Error: an element missing or the description malformed
            raise CameraError(f"the camera's pipeline could not be made ({_gerror(exc)}): {description}") from exc
        try:
            self.src, self.preview = self._element("src"), self._element("preview")
            self.still_sink, self.shutter = self._element("still"), self._element("shutter")
            if self.pipeline.set_state(gst.State.PLAYING) == gst.StateChangeReturn.FAILURE:
                raise CameraError(f"the camera's pipeline did not start{self._bus_error()}")
            # Argus says a sensor is missing or busy only once it streams: the first frame is the proof
            if self._pull(self.preview, start_timeout_s) is None:
                raise CameraError(f"the camera sent no frame within {start_timeout_s:g} s of starting{self._bus_error()}")
        except BaseException:
            self.close()
            raise

    def _element(self, name: str) -> Any:
        element = self.pipeline.get_by_name(name)
        if element is None:
            raise CameraError(f"the camera's pipeline has no element named {name!r}: {self.description}")
        return element

    def _pull(self, sink: Any, timeout_s: float) -> Any:
        return sink.emit("try-pull-sample", int(timeout_s * self.gst.SECOND))

    def _bus_error(self) -> str:
        bus = self.pipeline.get_bus()
        message = bus.pop_filtered(self.gst.MessageType.ERROR) if bus is not None else None
        if message is None:
            return ""
        error, debug = message.parse_error()
        return f": {_gerror(error)}" + (f" ({debug})" if debug else "")

    def read(self) -> np.ndarray:
        sample = self._pull(self.preview, FRAME_TIMEOUT_S)
        if sample is None:
            raise CameraError(f"the CSI camera stopped sending frames{self._bus_error()}")
        return rgb_of_sample(sample)

    def set_properties(self, properties: dict[str, Any]) -> None:
        for name, value in properties.items():
            self.src.set_property(name, value)

    def still(self, skip_frames: int) -> np.ndarray:
        while self.still_sink.emit("try-pull-sample", 0) is not None:
            pass  # a frame that slipped past the valve as it closed after the last still
        self.shutter.set_property("drop", False)
        try:
            for _ in range(max(0, skip_frames) + 1):
                sample = self._pull(self.still_sink, FRAME_TIMEOUT_S)
                if sample is None:
                    raise CameraError(f"the CSI camera gave no full-size frame for the photo{self._bus_error()}")
        finally:
            self.shutter.set_property("drop", True)
        return rgb_of_sample(sample)

    def close(self) -> None:
        pipeline, self.pipeline = getattr(self, "pipeline", None), None
        if pipeline is not None:
            pipeline.set_state(self.gst.State.NULL)  # Argus ends its capture session and frees the sensor


def rgb_of_sample(sample: Any) -> np.ndarray:
    """An appsink's BGRx sample as HxWx3 RGB (rows may be padded: the stride is read from the size)."""
    caps = sample.get_caps().get_structure(0)
    fmt, w, h = caps.get_value("format"), int(caps.get_value("width")), int(caps.get_value("height"))
    buf = sample.get_buffer()
    data = buf.extract_dup(0, buf.get_size())
    stride = len(data) // max(1, h)
    if fmt != "BGRx" or stride < 4 * w:
        raise CameraError(f"the camera gave a {len(data)}-byte {fmt} frame where {w}x{h} BGRx was asked for")
    bgrx = np.frombuffer(data, np.uint8, count=h * stride).reshape(h, stride)[:, :4 * w].reshape(h, w, 4)
    return np.ascontiguousarray(bgrx[..., 2::-1])


def _gerror(exc: Any) -> str:
    return str(getattr(exc, "message", None) or exc)


class _OpenCVSession:
    """A one-sink pipeline run through OpenCV's GStreamer backend: controls are fixed when it starts."""

    live_controls = False

    def __init__(self, factory: Callable[..., Any], description: str, sensor_id: int):
        cap = factory(description, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"the CSI camera {sensor_id} did not start through GStreamer (is the camera connected "
                              f"and nvargus-daemon running?): {description}")
        self.cap = cap
        self.sensor_id = sensor_id

    def read(self) -> np.ndarray:
        ok, frame = self.cap.read()
        if not ok or frame is None:
            raise CameraError(f"the CSI camera {self.sensor_id} stopped sending frames")
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def grab(self) -> None:
        self.cap.grab()

    def close(self) -> None:
        self.cap.release()


# -- the camera -----------------------------------------------------------------------------------
class ArgusCamera(Camera):
    """A CSI camera on a Jetson (see the module's notes for how it runs).

    `sensor_mode`: the mode to run (None: the largest the sensor's V4L2 node lists, else IMX219_FULL).
    `preview_size`: (height, width) of the preview (None: the sensor's aspect, `preview_width` across).
    `transport`: "auto" (GStreamer's binding, else OpenCV with GStreamer), "gst" or "opencv".
    `capture_factory`, `gst_loader`, `opencv` and `modes_reader` stand in for cv2.VideoCapture, the
    binding, OpenCV's build report and the V4L2 query (tests give fakes of them).
    """

    def __init__(self, sensor_id: int = 0, *, sensor_mode: SensorMode | None = None,
                 preview_size: tuple[int, int] | None = None, preview_width: int = PREVIEW_WIDTH, transport: str = "auto",
                 still_skip_frames: int = STILL_SKIP_FRAMES, capture_factory: Callable[..., Any] | None = None,
                 gst_loader: Callable[[], Any] | None = None, opencv: dict | None = None,
                 modes_reader: Callable[[str], list[SensorMode]] = sensor_modes):
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
        self.sensor_id = int(sensor_id)
        self._mode = sensor_mode
        self._preview_request = (int(preview_size[0]), int(preview_size[1])) if preview_size is not None else None
        self.preview_width = int(preview_width)
        self.transport = transport
        self.still_skip_frames = int(still_skip_frames)
        self._factory = capture_factory or cv2.VideoCapture
        self._gst_loader = gst_loader
        self._opencv = opencv
        self._modes_reader = modes_reader
        self._paths: dict | None = None
        self._exposure_us, self._gain = 20000, 1.0
        self._session: _GstSession | _OpenCVSession | None = None
        self._in_still = False   # OpenCV: the running pipeline is the full-size one
        self._stale = False      # OpenCV: the running pipeline's controls are not the ones asked for
        self.starts = 0          # pipelines started (each one opens Argus afresh)

    # -- what it is -------------------------------------------------------------------------------
    @property
    def sensor_mode(self) -> SensorMode:
        if self._mode is None:
            device = f"/dev/video{self.sensor_id}"
            try:
                modes = self._modes_reader(device)
                self._mode = full_sensor_mode(modes)
            except (OSError, ValueError) as exc:
                log.warning("sensor modes not read from %s (%s); assuming %s", device, exc, IMX219_FULL)
                self._mode = IMX219_FULL
        return self._mode

    @property
    def fps(self) -> float:
        return self.sensor_mode.fps

    @property
    def preview_size(self) -> tuple[int, int]:
        return preview_geometry(self.sensor_mode.size, self._preview_request, self.preview_width)[0]

    @property
    def still_size(self) -> tuple[int, int]:
        return self.sensor_mode.size

    def paths(self) -> dict:
        """Which transport this camera runs through (see `capture_paths`), as `transport` allows; found once."""
        if self._paths is None:
            paths = capture_paths(self._gst_loader, self._opencv)
            if self.transport == "opencv":
                paths["transport"] = "opencv" if paths["opencv"].get("gstreamer") else None
                if paths["transport"] is None:
                    paths["error"] = no_gstreamer_message(paths["opencv"])
            elif self.transport == "gst" and paths["transport"] != "gst":
                paths["transport"] = None
                paths.setdefault("error", "GStreamer's Python binding is not available ("
                                 + paths["gstreamer_python"].get("error", "") + "): install python3-gi and gir1.2-gstreamer-1.0")
            self._paths = paths
        return self._paths

    @property
    def live_controls(self) -> bool:
        """Whether exposure and gain change on the running camera (else each change is a restart)."""
        return self.paths()["transport"] != "opencv"

    # -- running ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._session is not None:
            return
        self._launch(still=False)

    def _launch(self, still: bool) -> None:
        paths = self.paths()
        if paths["transport"] is None:
            raise CameraError(paths["error"])
        self._close_session()
        mode = self.sensor_mode
        self.starts += 1
        if paths["transport"] == "gst":
            description = nvargus_tee_pipeline(self.sensor_id, mode, self._preview_request, self._exposure_us,
                                               self._gain, self.preview_width)
            self._session = _GstSession(paths["module"], description)
        else:
            out = mode.size if still else self._preview_request
            description = nvargus_pipeline(self.sensor_id, mode, out, self._exposure_us, self._gain, self.preview_width)
            self._session = _OpenCVSession(self._factory, description, self.sensor_id)
            self._in_still = still
        self._stale = False

    def read(self) -> np.ndarray:
        session = self._started()
        if isinstance(session, _OpenCVSession) and (self._in_still or self._stale):
            self._launch(still=False)
            session = self._started()
        return session.read()

    def set_exposure(self, exposure_us: int, gain: float) -> None:
        wanted = _check_exposure(exposure_us, gain)
        if wanted == (self._exposure_us, self._gain):
            return
        self._exposure_us, self._gain = wanted
        if isinstance(self._session, _GstSession):
            self._session.set_properties(argus_controls(*wanted))
        elif self._session is not None:
            self._stale = True  # one restart before the next frame, however many changes come first

    def capture_still(self) -> np.ndarray:
        session = self._started()
        if isinstance(session, _GstSession):
            return session.still(self.still_skip_frames)
        if not self._in_still or self._stale:
            self._launch(still=True)
            session = self._started()
            assert isinstance(session, _OpenCVSession)  # what _launch just made
            for _ in range(self.still_skip_frames):
                session.grab()  # Argus's first frames after a start can be under-exposed
        return session.read()

    def stop(self) -> None:
        self._close_session()

    def _close_session(self) -> None:
        session, self._session = self._session, None
        self._in_still = False
        if session is not None:
            session.close()

    def _started(self) -> _GstSession | _OpenCVSession:
        if self._session is None:
            raise CameraError("the CSI camera is not started")
        return self._session

    def info(self) -> dict:
        mode = self.sensor_mode
        out: dict[str, Any] = {"backend": "argus", "sensor_id": self.sensor_id, "transport": self.paths()["transport"],
                               "sensor_mode": {"width": mode.width, "height": mode.height, "fps": mode.fps},
                               "preview_size": list(self.preview_size), "still_size": list(self.still_size),
                               "exposure_us": self._exposure_us, "gain": self._gain, "live_controls": self.live_controls,
                               "pipeline_starts": self.starts}
        return out
