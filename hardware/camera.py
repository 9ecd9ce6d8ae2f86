"""Camera sources: the board's camera (picamera2, GStreamer on a Jetson, OpenCV/UVC) or recorded photos.

Every source gives the same thing: HxWx3 uint8 RGB preview frames from `read()`, a full-resolution
`capture_still()`, manual exposure, and a CameraError with a sentence a health worker or the IT
person can act on when the camera is missing or goes away. The real drivers are imported only when
a camera starts, so the unit runs (and its tests run) on boards that lack the other drivers.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from hardware.boards import PROFILES, BoardProfile
from models.runtime.images import ImageError, read_rgb

PREVIEW_SIZE = (480, 640)  # (height, width): what the quality gate and the kiosk's preview need
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


class CameraError(RuntimeError):
    """The camera cannot give frames; the message says what to check."""


@runtime_checkable
class Camera(Protocol):
    def start(self) -> None: ...

    def read(self) -> np.ndarray:
        """The next preview frame, HxWx3 uint8 RGB."""

    def set_exposure(self, exposure_us: int, gain: float) -> None: ...

    def capture_still(self) -> np.ndarray:
        """One frame at the camera's full resolution, HxWx3 uint8 RGB."""

    def stop(self) -> None: ...

    def info(self) -> dict: ...

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _check_exposure(exposure_us: int, gain: float) -> tuple[int, float]:
    if not (np.isfinite(exposure_us) and exposure_us > 0):
        raise ValueError(f"exposure must be a positive number of microseconds, got {exposure_us!r}")
    if not (np.isfinite(gain) and gain >= 1.0):
        raise ValueError(f"gain must be 1.0 or more, got {gain!r}")
    return int(round(exposure_us)), float(gain)


def _letterbox(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Fit the photo inside (height, width) without distorting it; black around, as a camera shows a fundus."""
    h, w = size
    scale = min(h / rgb.shape[0], w / rgb.shape[1])
    nh, nw = max(1, round(rgb.shape[0] * scale)), max(1, round(rgb.shape[1] * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(rgb, (nw, nh), interpolation=interp)
    out = np.zeros((h, w, 3), np.uint8)
    y, x = (h - nh) // 2, (w - nw) // 2
    out[y:y + nh, x:x + nw] = small
    return out


class FramePacer:
    """Holds `read()` to the camera's frame rate, as a real sensor does, so a loop does not spin a core."""

    def __init__(self, fps: float | None):
        self.period = 1.0 / fps if fps else 0.0
        self._next = 0.0

    def wait(self) -> None:
        if not self.period:
            return
        now = time.monotonic()
        if now < self._next:
            time.sleep(self._next - now)
            now = self._next
        self._next = now + self.period  # a late frame does not make the next ones come in a burst


# -- Raspberry Pi: libcamera through picamera2 ----------------------------------------------------
class Picamera2Camera(Camera):
    """A CSI camera on a Raspberry Pi: a preview stream, and a still mode switched to for each photo.

    Exposure is manual (AeEnable False): the capture loop owns brightness through the LED ring, and
    an auto-exposure fighting it would make the illumination control oscillate.
    """

    def __init__(self, camera_num: int = 0, preview_size: tuple[int, int] = PREVIEW_SIZE,
                 still_size: tuple[int, int] | None = None):
        self.camera_num = camera_num
        self.preview_size = preview_size
        self.still_size = still_size
        self._cam = None
        self._controls: dict = {"AeEnable": False, "ExposureTime": 20000, "AnalogueGain": 1.0}

    def start(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise CameraError("picamera2 is not installed (on Raspberry Pi OS: sudo apt install python3-picamera2)") from exc
        try:
            cam = Picamera2(self.camera_num)
            h, w = self.preview_size
            preview = cam.create_preview_configuration(main={"size": (w, h), "format": "RGB888"},
                                                       controls=dict(self._controls))
            cam.configure(preview)
            cam.start()
        except (RuntimeError, IndexError, OSError) as exc:
            raise CameraError(f"the Pi camera {self.camera_num} did not start ({exc}); is its ribbon cable seated?") from exc
        self._cam = cam

    def read(self) -> np.ndarray:
        cam = self._started()
        try:
            frame = cam.capture_array("main")
        except (RuntimeError, OSError) as exc:
            raise CameraError(f"the Pi camera stopped sending frames ({exc})") from exc
        return _rgb_from_picamera2(frame)

    def set_exposure(self, exposure_us: int, gain: float) -> None:
        exposure_us, gain = _check_exposure(exposure_us, gain)
        wanted = {"AeEnable": False, "ExposureTime": exposure_us, "AnalogueGain": gain}
        if wanted == self._controls:
            return
        self._controls = wanted
        if self._cam is not None:
            self._cam.set_controls(dict(wanted))

    def capture_still(self) -> np.ndarray:
        cam = self._started()
        main: dict[str, Any] = {"format": "RGB888"}
        if self.still_size is not None:
            main["size"] = (self.still_size[1], self.still_size[0])
        try:
            still = cam.create_still_configuration(main=main, controls=dict(self._controls))
            frame = cam.switch_mode_and_capture_array(still, "main")
            cam.set_controls(dict(self._controls))  # switching back restores the preview's own controls
        except (RuntimeError, OSError) as exc:
            raise CameraError(f"the Pi camera could not take a photo ({exc})") from exc
        return _rgb_from_picamera2(frame)

    def stop(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.stop()
            finally:
                cam.close()

    def info(self) -> dict:
        out = {"backend": "picamera2", "camera": self.camera_num, "preview_size": list(self.preview_size),
               "exposure_us": self._controls["ExposureTime"], "gain": self._controls["AnalogueGain"]}
        if self._cam is not None:
            out["model"] = self._cam.camera_properties.get("Model")
        return out

    def _started(self):
        if self._cam is None:
            raise CameraError("the Pi camera is not started")
        return self._cam


def _rgb_from_picamera2(frame: np.ndarray) -> np.ndarray:
    # libcamera's "RGB888" is stored B, G, R in memory (the order OpenCV expects), so flip it.
    return np.ascontiguousarray(frame[..., 2::-1])


# -- USB (UVC) cameras and video files through OpenCV ---------------------------------------------
class OpenCVCamera(Camera):
    """A UVC camera (or a stream URL) through cv2.VideoCapture.

    UVC exposure is set through V4L2's manual mode, where CAP_PROP_EXPOSURE counts 100 us units;
    whether a camera honours exposure and gain is its own business, so `info()` reports what it
    accepted. A still is taken by switching the capture to `still_size` for one frame.
    """

    def __init__(self, index_or_url: int | str = 0, preview_size: tuple[int, int] = PREVIEW_SIZE,
                 still_size: tuple[int, int] | None = None, gain_unity: float = 1.0):
        self.source = index_or_url
        self.preview_size = preview_size
        self.still_size = still_size
        self.gain_unity = gain_unity  # the camera's GAIN value that means 1x
        self._cap: cv2.VideoCapture | None = None
        self._exposure: tuple[int, float] | None = None
        self._accepted: dict[str, bool | None] = {"exposure": None, "gain": None}

    def start(self) -> None:
        cap = cv2.VideoCapture(self.source)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"no camera at {self._where()}: is the optic module's USB cable plugged in?")
        self._cap = cap
        self._set_size(self.preview_size)
        if self._exposure is not None:
            self._apply_exposure(*self._exposure)

    def read(self) -> np.ndarray:
        ok, frame = self._started().read()
        if not ok or frame is None:
            raise CameraError(f"the camera at {self._where()} stopped sending frames (unplugged?)")
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def set_exposure(self, exposure_us: int, gain: float) -> None:
        wanted = _check_exposure(exposure_us, gain)
        if wanted == self._exposure:
            return
        self._exposure = wanted
        if self._cap is not None:
            self._apply_exposure(*wanted)

    def _apply_exposure(self, exposure_us: int, gain: float) -> None:
        cap = self._started()
        cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, 1)  # V4L2_EXPOSURE_MANUAL
        self._accepted["exposure"] = bool(cap.set(cv2.CAP_PROP_EXPOSURE, exposure_us / 100.0))
        self._accepted["gain"] = bool(cap.set(cv2.CAP_PROP_GAIN, gain * self.gain_unity))

    def capture_still(self) -> np.ndarray:
        if self.still_size is None:
            return self.read()
        self._set_size(self.still_size)
        try:
            self._started().grab()  # the first frame after a mode switch may still be the old size
            return self.read()
        finally:
            self._set_size(self.preview_size)

    def stop(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def info(self) -> dict:
        out: dict[str, Any] = {"backend": "opencv", "source": str(self.source), "preview_size": list(self.preview_size),
               "exposure_accepted": self._accepted["exposure"], "gain_accepted": self._accepted["gain"]}
        if self._exposure is not None:
            out["exposure_us"], out["gain"] = self._exposure
        return out

    def _set_size(self, size: tuple[int, int]) -> None:
        cap = self._started()
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, size[1])
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, size[0])

    def _started(self) -> cv2.VideoCapture:
        if self._cap is None:
            raise CameraError(f"the camera at {self._where()} is not started")
        return self._cap

    def _where(self) -> str:
        return f"/dev/video{self.source}" if isinstance(self.source, int) else str(self.source)


# -- Jetson CSI cameras through GStreamer (Argus) -------------------------------------------------
def nvargus_pipeline(sensor_id: int = 0, sensor_size: tuple[int, int] = (1080, 1920), framerate: int = 30,
                     out_size: tuple[int, int] = PREVIEW_SIZE, exposure_us: int | None = None,
                     gain: float | None = None) -> str:
    """A GStreamer pipeline from a Jetson CSI camera to BGR frames for cv2.VideoCapture.

    nvarguscamerasrc takes exposure in nanoseconds and gain as a multiplier, each as a "low high"
    range; a range of one value fixes it, which is how manual exposure is expressed.
    """
    src = [f"nvarguscamerasrc sensor-id={int(sensor_id)}"]
    if exposure_us is not None:
        ns = int(exposure_us) * 1000
        src.append(f'exposuretimerange="{ns} {ns}"')
    if gain is not None:
        src.append(f'gainrange="{gain:g} {gain:g}"')
        src.append('ispdigitalgainrange="1 1"')
    sh, sw = sensor_size
    oh, ow = out_size
    return (f"{' '.join(src)} ! video/x-raw(memory:NVMM),width={sw},height={sh},framerate={int(framerate)}/1,format=NV12"
            f" ! nvvidconv ! video/x-raw,width={ow},height={oh},format=BGRx ! videoconvert ! video/x-raw,format=BGR"
            f" ! appsink drop=true max-buffers=1")


class GStreamerCamera(Camera):
    """A CSI camera on a Jetson through nvarguscamerasrc and OpenCV's GStreamer backend.

    Argus fixes exposure when the pipeline is built, so a new exposure rebuilds the pipeline (only
    when it changes), and a still is taken by reopening at the sensor's full size. With a
    hand-written `pipeline` the caller owns exposure and size: such a camera only streams.
    """

    def __init__(self, pipeline: str | None = None, *, sensor_id: int = 0, sensor_size: tuple[int, int] = (1080, 1920),
                 framerate: int = 30, preview_size: tuple[int, int] = PREVIEW_SIZE):
        self.pipeline = pipeline
        self.sensor_id = sensor_id
        self.sensor_size = sensor_size
        self.framerate = framerate
        self.preview_size = preview_size
        self._exposure: tuple[int, float] | None = None
        self._cap: cv2.VideoCapture | None = None

    def _build(self, out_size: tuple[int, int]) -> str:
        if self.pipeline is not None:
            return self.pipeline
        exposure, gain = self._exposure or (None, None)
        return nvargus_pipeline(self.sensor_id, self.sensor_size, self.framerate, out_size, exposure, gain)

    def _open(self, out_size: tuple[int, int]) -> cv2.VideoCapture:
        self.stop()
        description = self._build(out_size)
        cap = cv2.VideoCapture(description, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"the CSI camera {self.sensor_id} did not start through GStreamer (is the camera "
                              f"connected, nvargus-daemon running, and OpenCV built with GStreamer?): {description}")
        self._cap = cap
        return cap

    def start(self) -> None:
        self._open(self.preview_size)

    def read(self) -> np.ndarray:
        if self._cap is None:
            raise CameraError("the CSI camera is not started")
        ok, frame = self._cap.read()
        if not ok or frame is None:
            raise CameraError(f"the CSI camera {self.sensor_id} stopped sending frames")
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def set_exposure(self, exposure_us: int, gain: float) -> None:
        wanted = _check_exposure(exposure_us, gain)
        if self.pipeline is not None:
            raise CameraError("exposure is fixed by the hand-written GStreamer pipeline")
        if wanted == self._exposure:
            return
        self._exposure = wanted
        if self._cap is not None:
            self._open(self.preview_size)

    def capture_still(self) -> np.ndarray:
        if self.pipeline is not None:
            return self.read()
        cap = self._open(self.sensor_size)
        try:
            cap.grab()  # Argus's first buffer after a start can be under-exposed
            return self.read()
        finally:
            self._open(self.preview_size)

    def stop(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def info(self) -> dict:
        out = {"backend": "gstreamer", "sensor_id": self.sensor_id, "pipeline": self._build(self.preview_size)}
        if self._exposure is not None:
            out["exposure_us"], out["gain"] = self._exposure
        return out


# -- recorded photos ------------------------------------------------------------------------------
class ReplayCamera(Camera):
    """Plays the photos in a folder as a camera would show them, one per frame, round and round.

    For demonstrations and for testing the capture path with real fundus photos. Exposure cannot be
    changed on a recorded photo: it is noted in `info()` and otherwise has no effect.
    """

    def __init__(self, folder: str | Path, preview_size: tuple[int, int] = PREVIEW_SIZE, fps: float | None = 15.0):
        self.folder = Path(folder)
        self.preview_size = preview_size
        self._pacer = FramePacer(fps)
        self._photos: list[Path] = []
        self._index = -1
        self._current: Path | None = None
        self._exposure: tuple[int, float] | None = None

    def start(self) -> None:
        if not self.folder.is_dir():
            raise CameraError(f"the replay folder {self.folder} does not exist")
        self._photos = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        if not self._photos:
            raise CameraError(f"the replay folder {self.folder} has no photos ({', '.join(PHOTO_SUFFIXES)})")
        self._index = -1

    def read(self) -> np.ndarray:
        if not self._photos:
            raise CameraError("the replay camera is not started")
        self._pacer.wait()
        self._index = (self._index + 1) % len(self._photos)
        self._current = self._photos[self._index]
        return _letterbox(self._load(self._current), self.preview_size)

    def capture_still(self) -> np.ndarray:
        if self._current is None:
            raise CameraError("the replay camera has shown no photo yet")
        return self._load(self._current)

    def _load(self, path: Path) -> np.ndarray:
        if not self.folder.is_dir():
            raise CameraError(f"the replay folder {self.folder} has gone (unmounted or removed?)")
        try:
            return read_rgb(path)
        except ImageError as exc:
            raise CameraError(f"replay photo unusable: {exc}") from exc

    def set_exposure(self, exposure_us: int, gain: float) -> None:
        self._exposure = _check_exposure(exposure_us, gain)

    def stop(self) -> None:
        self._photos = []
        self._current = None

    def info(self) -> dict:
        out = {"backend": "replay", "folder": str(self.folder), "photos": len(self._photos),
               "current": self._current.name if self._current else None}
        if self._exposure is not None:
            out["exposure_us"], out["gain"] = self._exposure
        return out


def open_camera(source: BoardProfile | str, **options) -> Camera:
    """The camera for a board profile, a board's name, or a backend's name (not yet started).

    Backends: "picamera2", "gstreamer", "opencv" (options `index_or_url`, ...), "replay" (option
    `folder`), "simulated" (options of SimulatedCamera).
    """
    if isinstance(source, str) and source in PROFILES:
        source = PROFILES[source]
    backend = source.camera_backend if isinstance(source, BoardProfile) else source
    if backend == "picamera2":
        return Picamera2Camera(**options)
    if backend == "gstreamer":
        return GStreamerCamera(**options)
    if backend == "opencv":
        return OpenCVCamera(**options)
    if backend == "replay":
        return ReplayCamera(**options)
    if backend == "simulated":
        from hardware.simulated_camera import SimulatedCamera

        return SimulatedCamera(**options)
    raise ValueError(f"unknown camera {source!r}: use a board ({', '.join(PROFILES)}) or a backend "
                     f"(picamera2, gstreamer, opencv, replay, simulated)")
