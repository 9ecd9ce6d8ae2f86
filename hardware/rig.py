"""The optic module's hardware as one assembly: camera, lights and button, focus/fixation controller.

Built from the board's real parts, or from simulators that behave like them (a controller on a real
pseudo-terminal, gpiozero's mock pins, a camera that renders a synthetic eye lit by those pins).
Everything above this sees the same three objects either way. It takes plain values (the light's
limits, the board's name), not the appliance's configuration: `hardware/` never imports `device/`.
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from hardware.boards import BoardProfile
    from hardware.camera import Camera
    from hardware.illumination import Illumination
    from hardware.light_dose import LedResponse, LightLimits
    from hardware.optic_module import OpticModule
    from hardware.optic_module_sim import ModuleOptics


@dataclass
class Rig:
    """The optic module's parts, opened together and closed together."""

    camera: Camera
    illumination: Illumination
    optic_module: OpticModule | None
    simulated: bool
    simulator: object | None = None
    # the model eye's light meter at the pupil (mW/cm2 at a ring level) where the rig has one: the simulator's
    light_meter: Callable[[float], float] | None = None
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "Rig":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def simulated_rig(*, max_led_level: float, max_flash_s: float, light_limits: LightLimits | None = None,
                  led_response: LedResponse | None = None, module_serial: str | None = None,
                  module_optics: ModuleOptics | None = None, **camera_options) -> Rig:
    """The simulators together. `module_serial` draws the module's own optics (`ModuleOptics.for_serial`);
    `module_optics` gives them outright (a perfect module, a failing LED driver)."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    from hardware import boards
    from hardware.illumination import Illumination
    from hardware.optic_module import OpticModule
    from hardware.optic_module_sim import DEFAULT_SERIAL, OpticModuleSimulator
    from hardware.simulated_camera import SimulatedCamera

    stack = ExitStack()
    try:
        sim = stack.enter_context(OpticModuleSimulator(serial_number=module_serial or DEFAULT_SERIAL, optics=module_optics))
        assert sim.port is not None  # entering started it, which opened its pty
        module = OpticModule(sim.port)
        stack.callback(module.close)
        lights = Illumination(boards.PROFILES["workstation"], pin_factory=MockFactory(pin_class=MockPWMPin),
                              max_level=max_led_level, max_flash_s=max_flash_s, limits=light_limits,
                              response=led_response)
        stack.callback(lights.off)
        camera = SimulatedCamera(illumination=lights, optic_module=sim, **camera_options)
    except BaseException:
        stack.close()
        raise
    return Rig(camera, lights, module, simulated=True, simulator=sim, light_meter=sim.optics.irradiance_mw_cm2, _stack=stack)


def hardware_rig(board: str, *, max_led_level: float, max_flash_s: float, light_limits: LightLimits | None = None,
                 led_response: LedResponse | None = None) -> Rig:
    from hardware import boards
    from hardware.illumination import Illumination
    from hardware.optic_module import OpticModule

    profile = boards.profile(board)
    stack = ExitStack()
    try:
        lights = Illumination(profile, max_level=max_led_level, max_flash_s=max_flash_s, limits=light_limits,
                              response=led_response)
        stack.callback(lights.close)  # dark, then the pins given back: the Pi's PWM unexported, the Jetson's chip closed
        module = OpticModule(profile.serial_port) if profile.serial_port else None
        if module is not None:
            stack.callback(module.close)
        camera = open_camera(profile)
    except BaseException:
        stack.close()
        raise
    return Rig(camera, lights, module, simulated=False, _stack=stack)


def open_rig(*, simulate: bool, board: str, max_led_level: float, max_flash_s: float,
             light_limits: LightLimits | None = None, led_response: LedResponse | None = None, **camera_options) -> Rig:
    """Simulators when `simulate`, else the named board's parts; `camera_options` go to the simulated camera.
    `light_limits` and `led_response` (the module's datasheet until its calibration is put in) go to the lights."""
    if simulate:
        return simulated_rig(max_led_level=max_led_level, max_flash_s=max_flash_s, light_limits=light_limits,
                             led_response=led_response, **camera_options)
    return hardware_rig(board, max_led_level=max_led_level, max_flash_s=max_flash_s, light_limits=light_limits,
                        led_response=led_response)


def open_camera(source: BoardProfile | str, **options) -> Camera:
    """The camera for a board profile, a board's name, or a backend's name (not yet started).

    Backends: "picamera2", "gstreamer" (Argus on a Jetson: options of hardware.argus.ArgusCamera),
    "opencv" (options `index_or_url`, ...), "replay" (option `folder`), "simulated" (options of SimulatedCamera).
    """
    from hardware.boards import PROFILES, BoardProfile
    from hardware.camera import OpenCVCamera, Picamera2Camera, ReplayCamera

    if isinstance(source, str) and source in PROFILES:
        source = PROFILES[source]
    backend = source.camera_backend if isinstance(source, BoardProfile) else source
    if backend == "picamera2":
        return Picamera2Camera(**options)
    if backend == "gstreamer":
        from hardware.argus import ArgusCamera

        return ArgusCamera(**options)
    if backend == "opencv":
        return OpenCVCamera(**options)
    if backend == "replay":
        return ReplayCamera(**options)
    if backend == "simulated":
        from hardware.simulated_camera import SimulatedCamera

        return SimulatedCamera(**options)
    raise ValueError(f"unknown camera {source!r}: use a board ({', '.join(PROFILES)}) or a backend "
                     f"(picamera2, gstreamer, opencv, replay, simulated)")
