"""A camera that photographs a synthetic eye the way the optic module would.

What the frames show follows the rest of the (simulated) hardware, so the capture loop's control is
exercised as on a unit: brightness follows the white LED ring's PWM level times exposure times gain,
blur follows how far the focus motor stands from the eye's best focus, an infrared-only frame is
monochrome, and the eye drifts, blinks and is slowly brought into line by the worker.

Speed comes from doing the retina once per eye (`render_reflectance`) and only the optics per frame.
Simulated time advances one frame period per frame, so a seeded camera shows the same sequence
whatever the machine's speed. With `simulated_time` the camera also keeps the clock a sensor would:
frames come every frame period whether or not anyone reads them, so a reader that spends longer
than a period on a frame gets the next one the sensor finishes after it comes back, and a still
takes its readout time. Only the reader's own time counts (rendering the scene is the simulator's
cost, not the unit's), so a campaign of captures runs faster than wall time and still means what a
unit at that frame rate would see.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np

from hardware.camera import PREVIEW_SIZE, Camera, CameraError, FramePacer
from hardware.optic_module_sim import ModuleOptics
from models.fundus import EyeParams, Scene, apply_optics, field_geometry, random_eye, render_reflectance

REFERENCE_LEVEL = 0.5            # LED level that, at the reference exposure and gain 1, exposes a fundus normally
REFERENCE_EXPOSURE_US = 20000
INFRARED_LIGHT = 0.35            # what the IR LED returns, relative to the white ring at the reference
EXPOSURE_RANGE_US = (100, 200_000)
GAIN_RANGE = (1.0, 16.0)
# Blur radius per focus-motor step from best focus, in a 640-pixel-wide frame. A fundus camera's
# focus compensates about -17 to +17 dioptres, so 1000 steps are ~0.035 D each; through a ~3 mm
# imaging aperture at the pupil a dioptre of defocus blurs ~3 mrad, and a 45-degree field across
# ~540 pixels is ~1.45 mrad a pixel: ~1 pixel of blur radius per dioptre.
DEFOCUS_PX_PER_STEP = 0.03
REFRACTION_STEPS_SD = 60.0       # spread of patients' refraction, in focus-motor steps (~2 dioptres)
DRIFT_SD = 0.015                 # steady-state wander of a fixating eye, in field radii
DRIFT_TAU_S = 2.0
MAX_DRIFT = 0.06
BLINK_S = 0.3
DEFAULT_STILL_SIZE = (1152, 1536)  # 1.8 MP: a burst of stills stays around a second on a Pi-class CPU
STILL_S = 0.25                   # one full-resolution still: switching the sensor's mode and reading it out


def settled_photo(scene: Scene, optics: ModuleOptics, *, level: float, exposure_us: int = REFERENCE_EXPOSURE_US,
                  gain: float = 1.0, seed: int = 0) -> np.ndarray:
    """The eye still, aligned and in focus, lit at `level` through a module's `optics`: what its camera sees
    once eye and light have settled (the lab's benches compare modules on exactly the same eye with it)."""
    light = optics.led_light(level) / REFERENCE_LEVEL * exposure_us / REFERENCE_EXPOSURE_US * gain
    h, w = scene.reflectance.shape[:2]
    return apply_optics(scene, light=light, noise=0.006 * math.sqrt(gain), rng=np.random.default_rng(seed),
                        illumination=optics.illumination(h, w, scene.field_center, scene.field_radius),
                        dark=optics.dark if any(optics.dark) else None)


@dataclass(frozen=True)
class FlatTarget:
    """A calibration target held against the module instead of an eye: a flat card of one grey
    (`reflectance`: the grey side about 0.25, the white side about 0.9). `coverage` < 1: the card covers only
    a disc of that share of the field's radius about `offset` (field radii), as when it is held too far or
    askew; the rest of the field sees the dark inside of the housing. `ambient`: the room's light on the card
    with the module's cover open, relative to the ring's at the reference level."""

    reflectance: float = 0.25
    coverage: float = 1.5
    offset: tuple[float, float] = (0.0, 0.0)
    ambient: float = 0.0

    def scene(self, size: tuple[int, int], eye: EyeParams) -> Scene:
        h, w = size
        (cx, cy), radius = field_geometry(size)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.hypot((xs - cx) / radius - self.offset[0], (ys - cy) / radius - self.offset[1])
        card = np.clip((self.coverage - r) * radius + 0.5, 0.0, 1.0) * self.reflectance
        reflectance = np.repeat(card[..., None], 3, axis=2).astype(np.float32)
        reflectance.setflags(write=False)
        mask = np.zeros((h, w), np.uint8)
        mask.setflags(write=False)
        return Scene(reflectance=reflectance, mask=mask, fovea=(cx, cy), disc_center=(cx, cy), field_center=(cx, cy),
                     field_radius=radius, eye=eye)


class SimulatedCamera(Camera):
    """A synthetic eye in front of a simulated optic module.

    `offset` (field radii, x and y) puts the eye off-centre at the start; the worker brings it into
    line with time constant `alignment_s` (None: never). `light_scale` is how much light this eye
    returns (small pupils and dark fundi return less: < 1 starts under-lit). Out of focus at the
    start is the optic module's state (its motor far from `best_focus`); without a module,
    `defocus_px` is a fixed blur. Without illumination the ring is taken to be at the reference level.

    `simulated_time` (needs `fps`): no waiting for the wall clock; `clock()` is the sensor's time,
    which charges the reader's time between frames and each still's readout (see the module's notes).

    The photos go through the optic module's own optics (`ModuleOptics`: its vignetting, colour cast,
    LED response and black level): the simulated module's (`optic_module.optics`), else `optics`, by
    default the reference design. `present_target` puts a calibration target in front instead of the eye.
    """

    def __init__(self, eye_seed: int = 0, laterality: str = "right", size: tuple[int, int] = PREVIEW_SIZE,
                 still_size: tuple[int, int] = DEFAULT_STILL_SIZE, illumination=None, optic_module=None, seed: int = 0,
                 *, offset: tuple[float, float] = (0.0, 0.0), alignment_s: float | None = 3.0, light_scale: float = 1.0,
                 defocus_px: float = 0.0, blinks_per_s: float = 0.15, fps: float | None = 30.0,
                 simulated_time: bool = False, optics: ModuleOptics | None = None):
        if light_scale <= 0 or defocus_px < 0 or blinks_per_s < 0:
            raise ValueError("light_scale must be positive; defocus_px and blinks_per_s not negative")
        if simulated_time and not fps:
            raise ValueError("simulated time needs the sensor's frame rate (fps)")
        # tuples (a list is accepted too) so that a size can key the scene cache
        self.size = cast("tuple[int, int]", tuple(size))
        self.still_size = cast("tuple[int, int]", tuple(still_size))
        self.illumination = illumination
        self.optic_module = optic_module
        self.light_scale = float(light_scale)
        self.defocus_px = float(defocus_px)
        self.blinks_per_s = float(blinks_per_s)
        self.alignment_s = alignment_s
        self._offset = np.asarray(offset, np.float64)
        self.fps = float(fps) if fps else None
        self._dt = 1.0 / fps if fps else 1.0 / 30.0
        self.simulated_time = bool(simulated_time)
        self._pacer = FramePacer(None if simulated_time else fps)
        self._sensor_s = 0.0          # simulated time: when the reader was last handed something
        self._handed_at: float | None = None  # wall time of that hand-over (None: nothing handed yet)
        self._rng = np.random.default_rng([int(seed), 0xCA3])
        self._nominal_focus = optic_module.best_focus if optic_module is not None else None
        module_optics = getattr(optic_module, "optics", None)
        self.optics: ModuleOptics = module_optics if module_optics is not None else (optics or ModuleOptics.design())
        self._target: FlatTarget | None = None
        self._lock = threading.Lock()
        self._cache: dict[tuple[object, tuple[int, int]], Scene] = {}
        self._render_locks: dict[tuple[object, tuple[int, int]], threading.Lock] = {}
        self._exposure_us = REFERENCE_EXPOSURE_US
        self._gain = 1.0
        self._running = False
        self._connected = True
        self._frames = 0
        self._present(random_eye(eye_seed, laterality=laterality))

    # -- the scene ------------------------------------------------------------------------------
    @property
    def eye(self) -> EyeParams:
        return self._eye

    def present_eye(self, seed: int, laterality: str = "right") -> None:
        """A new eye in front of the module: its own retina, its own refraction, not yet aligned."""
        eye = random_eye(seed, laterality=laterality)
        if self.optic_module is not None:
            refraction = np.random.default_rng([int(seed), 0xF0C]).normal(0.0, REFRACTION_STEPS_SD)
            assert self._nominal_focus is not None  # read from the module given at construction
            self.optic_module.best_focus = int(round(self._nominal_focus + refraction))
        self._present(eye)

    def _present(self, eye: EyeParams) -> None:
        with self._lock:
            self._eye = eye
            self._target = None
            self._cache = {k: v for k, v in self._cache.items() if k[0] == eye}
            self._t = 0.0
            self._wander = np.zeros(2)
            self._blink_at: float | None = None

    def present_target(self, target: FlatTarget | None = None) -> None:
        """A calibration target in front of the module in place of the eye (the grey card by default)."""
        with self._lock:
            self._target = target if target is not None else FlatTarget()

    def remove_target(self) -> None:
        """The target taken away: the eye is in front again."""
        with self._lock:
            self._target = None

    def _subject(self) -> EyeParams | FlatTarget:
        """What is in front of the module now (under the lock)."""
        return self._target if self._target is not None else self._eye

    def _scene(self, eye: EyeParams | FlatTarget, size: tuple[int, int]) -> Scene:
        key = (eye, size)
        with self._lock:
            scene = self._cache.get(key)
            if scene is not None:
                return scene
            render_lock = self._render_locks.setdefault(key, threading.Lock())
        with render_lock:  # one render per eye and size, even when preview and still ask together
            with self._lock:
                scene = self._cache.get(key)
            if scene is None:
                scene = eye.scene(size, self._eye) if isinstance(eye, FlatTarget) else render_reflectance(eye, size)
                with self._lock:
                    if self._eye == eye or self._target == eye:
                        self._cache[key] = scene
        with self._lock:
            self._render_locks.pop(key, None)
        return scene

    # -- Camera ---------------------------------------------------------------------------------
    def start(self) -> None:
        if not self._connected:
            raise CameraError("the simulated camera is disconnected")
        self._scene(self._eye, self.size)
        self._running = True

    def read(self) -> np.ndarray:
        self._check()
        self._pacer.wait()
        with self._lock:
            for _ in range(self._periods_until_next_frame()):
                self._advance()
            eye, pose = self._subject(), self._pose()
        frame = self._photograph(self._scene(eye, self.size), pose)
        self._hand_over()
        return frame

    def capture_still(self) -> np.ndarray:
        self._check()
        with self._lock:
            if self.simulated_time:  # the eye goes on living while the sensor switches mode and reads out
                self._charge_reader()
                end = max(self._sensor_s, self._t_total) + STILL_S
                for _ in range(max(1, math.ceil((end - self._t_total) / self._dt - 1e-9))):
                    self._advance()
                self._sensor_s = self._t_total
            eye, pose = self._subject(), self._pose()
        still = self._photograph(self._scene(eye, self.still_size), pose)
        self._hand_over()
        return still

    def clock(self) -> float:
        """Seconds on the sensor's clock: simulated time, or the wall clock when frames are paced by it."""
        if not self.simulated_time:
            return time.monotonic()
        with self._lock:
            busy = 0.0 if self._handed_at is None else time.perf_counter() - self._handed_at
            return self._sensor_s + busy

    def _periods_until_next_frame(self) -> int:
        """Frame periods from the last frame handed over to the next one this read gets (under the lock)."""
        if not self.simulated_time:
            return 1
        self._charge_reader()
        # the sensor finishes a frame at every multiple of the period; the reader gets the first after it came back
        due = max(self._t_total + self._dt, math.ceil(self._sensor_s / self._dt - 1e-9) * self._dt)
        periods = max(1, round((due - self._t_total) / self._dt))
        self._sensor_s = self._t_total + periods * self._dt
        return periods

    def _charge_reader(self) -> None:
        """Add the reader's time since the last hand-over to the simulated clock (under the lock)."""
        if self._handed_at is not None:
            self._sensor_s += time.perf_counter() - self._handed_at
            self._handed_at = None

    def _hand_over(self) -> None:
        if self.simulated_time:
            with self._lock:
                self._handed_at = time.perf_counter()

    def set_exposure(self, exposure_us: int, gain: float) -> None:
        if not (np.isfinite(exposure_us) and exposure_us > 0 and np.isfinite(gain) and gain > 0):
            raise ValueError(f"exposure and gain must be positive numbers, got {exposure_us!r} and {gain!r}")
        longest = EXPOSURE_RANGE_US[1] if not self.fps else min(EXPOSURE_RANGE_US[1], int(1e6 / self.fps))
        with self._lock:  # a sensor clamps to what it can do, as libcamera does: no exposure outlasts a frame
            self._exposure_us = int(np.clip(exposure_us, EXPOSURE_RANGE_US[0], longest))
            self._gain = float(np.clip(gain, *GAIN_RANGE))

    def stop(self) -> None:
        self._running = False

    def info(self) -> dict:
        with self._lock:
            return {"backend": "simulated", "preview_size": list(self.size), "still_size": list(self.still_size),
                    "exposure_us": self._exposure_us, "gain": self._gain, "eye_seed": self._eye.seed,
                    "laterality": self._eye.laterality, "frames": self._frames, "connected": self._connected}

    def simulate_disconnect(self) -> None:
        """The cable comes out: every later read fails as a real camera's would."""
        self._connected = False

    def _check(self) -> None:
        if not self._connected:
            raise CameraError("the camera stopped sending frames (disconnected)")
        if not self._running:
            raise CameraError("the camera is not started")

    @property
    def _t_total(self) -> float:
        """Frame periods lived since the camera was made, in seconds."""
        return self._frames * self._dt

    # -- physics --------------------------------------------------------------------------------
    def _advance(self) -> None:
        """One frame period of the eye's life: drift (a bounded Ornstein-Uhlenbeck walk) and blinks."""
        dt = self._dt
        self._t += dt
        self._frames += 1
        kick = self._rng.normal(0.0, DRIFT_SD * math.sqrt(2.0 * dt / DRIFT_TAU_S), 2)
        self._wander = np.clip(self._wander * (1.0 - dt / DRIFT_TAU_S) + kick, -MAX_DRIFT, MAX_DRIFT)
        if self._blink_at is not None and self._t - self._blink_at > BLINK_S:
            self._blink_at = None
        if self._blink_at is None and self._rng.random() < self.blinks_per_s * dt:
            self._blink_at = self._t

    def _pose(self) -> dict:
        """Where the eye is and how it is lit right now (under the lock)."""
        aligned = 1.0 if self.alignment_s is None else math.exp(-self._t / self.alignment_s)
        shift = self._offset * aligned + self._wander
        eyelid = 0.0
        if self._blink_at is not None:
            eyelid = math.sin(math.pi * min((self._t - self._blink_at) / BLINK_S, 1.0))
        white = float(self.illumination.white.value) if self.illumination is not None else REFERENCE_LEVEL
        infrared = bool(self.illumination.infrared.value) if self.illumination is not None else False
        sensor = self._exposure_us / REFERENCE_EXPOSURE_US * self._gain * self.light_scale
        if self._target is not None:  # a card held against the module: still, flat, no cornea, lit by the ring alone
            ring = self.optics.led_light(white) / REFERENCE_LEVEL + self._target.ambient
            light = ring * self._exposure_us / REFERENCE_EXPOSURE_US * self._gain
            return {"shift": np.zeros(2), "eyelid": 0.0, "light": light, "mono": False, "defocus": 0.0, "glare": 0.0,
                    "noise": 0.006 * math.sqrt(self._gain), "seed": int(self._rng.integers(0, 2**31 - 1))}
        if white > 0 or not infrared:
            light, mono = self.optics.led_light(white) / REFERENCE_LEVEL * sensor, False
        else:
            light, mono = INFRARED_LIGHT * sensor, True
        if self.optic_module is not None:
            defocus_steps = abs(self.optic_module.focus_position() - self.optic_module.best_focus)
            defocus = defocus_steps * DEFOCUS_PX_PER_STEP
        else:
            defocus = self.defocus_px
        misaligned = float(np.hypot(*shift))
        # The cornea's reflex comes off the front of the eye, so it follows the ring and the sensor but
        # not what the fundus returns: against a dim fundus (small pupil, dark pigment) it stands out
        # more. `apply_optics` scales the reflex with the fundus's light, so it is given relative to it.
        reflex = float(np.clip((misaligned - 0.1) * 1.5, 0.0, 0.6))
        glare = min(1.0, reflex / self.light_scale) if not mono else reflex
        return {"shift": shift, "eyelid": eyelid, "light": light, "mono": mono, "defocus": defocus,
                "glare": glare, "noise": 0.006 * math.sqrt(self._gain),
                "seed": int(self._rng.integers(0, 2**31 - 1))}

    def _photograph(self, scene: Scene, pose: dict) -> np.ndarray:
        scale = scene.reflectance.shape[1] / 640.0
        # Whole pixels: a sub-pixel shift interpolates, which blurs the frame by a varying amount
        # and would make the eye's drift look like focus changing.
        shift = np.round(pose["shift"] * scene.field_radius)
        h, w = scene.reflectance.shape[:2]
        illumination = self.optics.illumination(h, w, scene.field_center, scene.field_radius)
        dark = None if not any(self.optics.dark) else self.optics.dark
        img = apply_optics(scene, light=pose["light"], defocus_px=pose["defocus"] * scale,
                           shift=(float(shift[0]), float(shift[1])), glare=pose["glare"], eyelid=pose["eyelid"],
                           noise=pose["noise"], rng=np.random.default_rng(pose["seed"]), illumination=illumination,
                           dark=dark)
        if pose["mono"]:
            img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        return img

