"""Camera sources: the board's camera (picamera2, Argus on a Jetson: hardware/argus.py, OpenCV/UVC) or recorded
photos; `hardware.rig.open_camera` picks the one a board uses.

Every source gives the same thing: HxWx3 uint8 RGB preview frames from `read()`, a full-resolution
`capture_still()`, manual exposure, and a CameraError with a sentence a health worker or the IT
person can act on when the camera is missing or goes away. The real drivers are imported only when
a camera starts, so the unit runs (and its tests run) on boards that lack the other drivers.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import cv2
import numpy as np

from models.runtime.images import ImageError, read_rgb

log = logging.getLogger(__name__)

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


def opencv_build(cv2_module: Any = cv2) -> dict:
    """Which OpenCV this process uses and whether it can run GStreamer pipelines, from its own build report.

    The pip wheels (opencv-python, -headless) are built without GStreamer; JetPack's system OpenCV is
    built with it. On a Jetson a wheel in the unit's venv hides the system's one, and the CSI camera
    then cannot open: `file` says which one was imported, `gstreamer_line` what its build says.
    """
    out: dict[str, Any] = {"version": getattr(cv2_module, "__version__", "unknown"),
                           "file": str(getattr(cv2_module, "__file__", "unknown"))}
    try:
        info = cv2_module.getBuildInformation()
    except Exception as exc:  # noqa: BLE001 - a broken cv2 is reported, not raised
        return {**out, "gstreamer": False, "gstreamer_line": None, "error": f"{type(exc).__name__}: {exc}"}
    found = re.search(r"^\s*GStreamer:\s*(.*?)\s*$", info, re.M)
    line = f"GStreamer: {found.group(1)}" if found else None
    return {**out, "gstreamer": bool(found and found.group(1).upper().startswith("YES")), "gstreamer_line": line}


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
    an auto-exposure fighting it would make the illumination control oscillate. Exposure and gain
    change on the running camera (set_controls): nothing restarts for them.

    A Picamera2 holds the camera from its construction until close(): one left open (a start that
    failed half-way) keeps every later start out ("Failed to acquire camera: Device or resource
    busy") until the process ends. So every way out of `start` that does not keep the camera closes it.
    `picamera2_factory` stands in for picamera2.Picamera2 (tests give a fake).
    """

    def __init__(self, camera_num: int = 0, preview_size: tuple[int, int] = PREVIEW_SIZE,
                 still_size: tuple[int, int] | None = None, picamera2_factory: Callable[[int], Any] | None = None):
        self.camera_num = camera_num
        self.preview_size = preview_size
        self.still_size = still_size
        self._factory = picamera2_factory
        self._cam: Any = None
        self._controls: dict = {"AeEnable": False, "ExposureTime": 20000, "AnalogueGain": 1.0}

    def start(self) -> None:
        if self._cam is not None:
            return
        factory = self._factory
        if factory is None:
            try:
                from picamera2 import Picamera2
            except (ImportError, ValueError, AttributeError) as exc:
                if isinstance(exc, ImportError) and exc.name == "picamera2":
                    raise CameraError("picamera2 is not installed (on Raspberry Pi OS: sudo apt install python3-picamera2)") from exc
                cause = f"{type(exc).__name__}: {exc}"
                # apt's picamera2 brings simplejpeg, compiled against Bookworm's numpy 1.x: under numpy 2 it
                # fails with "numpy.dtype size changed" (Cython) or "numpy.core.multiarray failed to import".
                if any(s in str(exc) for s in ("size changed", "NumPy 1.x", "_ARRAY_API", "multiarray failed to import")):
                    raise CameraError(
                        f"picamera2 did not load: the system's compiled camera modules were built for numpy 1.x, but "
                        f"this Python has numpy {np.__version__} (from {Path(np.__file__).parent}); keep numpy below 2 "
                        f"here (the [pi] extra does: pip install 'numpy<2') ({cause})") from exc
                raise CameraError(f"picamera2 did not load ({cause})") from exc
            factory = Picamera2
        try:
            cam = _open_picamera2(factory, self.camera_num)
        except (RuntimeError, IndexError, OSError) as exc:
            raise CameraError(f"the Pi camera {self.camera_num} could not be opened ({exc}); is its ribbon cable seated, "
                              f"and no other program using it?") from exc
        try:
            h, w = self.preview_size
            preview = cam.create_preview_configuration(main={"size": (w, h), "format": "RGB888"},
                                                       controls=dict(self._controls))
            cam.configure(preview)
            cam.start()
        except BaseException as exc:
            _close_picamera2(cam)  # or the camera stays acquired, and no later start gets it
            if isinstance(exc, (RuntimeError, IndexError, OSError, ValueError)):
                raise CameraError(f"the Pi camera {self.camera_num} did not start ({exc}); is its ribbon cable seated?") from exc
            raise
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
                cam.close()  # releases the camera for the next start (and for other programs)

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


def _open_picamera2(factory: Any, camera_num: int) -> Any:
    """A Picamera2 for `camera_num`, closed again if its own construction fails half-way.

    Picamera2's constructor acquires the camera and then goes on configuring; when a later step
    raises, the half-made object is kept alive by picamera2's camera manager with the camera still
    acquired, and the caller never got it to close. Made in two steps here, it can be closed (its
    close() is what its own __del__ would call, and does nothing on a camera never acquired).
    """
    if not isinstance(factory, type):
        return factory(camera_num)
    cam: Any = object.__new__(factory)
    try:
        cam.__init__(camera_num)
    except BaseException:
        _close_picamera2(cam)
        raise
    return cam


def _close_picamera2(cam: Any) -> None:
    """Close on a failure path: a close that fails too is logged, so that the first failure is the one raised."""
    try:
        cam.close()
    except Exception:  # noqa: BLE001 - the start's own failure is what the caller must see
        log.exception("the Pi camera could not be closed after a failed start")


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
