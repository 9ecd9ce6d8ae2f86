"""A simulated optic module controller on a real pseudo-terminal.

It speaks PROTOCOL.md byte for byte over a pty that pyserial opens like any UART, so the client is
exercised through the same termios, read timeouts and partial reads as on the unit. Behind the
protocol sits a physical model: a stepper focus motor that takes time to travel (its position can be
read mid-move), a housing temperature that warms up and wanders, and faults. Tests (and the
simulated camera) reach into the model directly; the client only ever sees the serial line.

Line trouble can be injected on purpose: garbage bytes, replies lost on the wire, replies with a
corrupted checksum, and a controller that stops answering.

Each simulated module also has optics of its own (`ModuleOptics`, drawn from its serial number, as
every real module's lens, LEDs and sensor differ): a vignetting that is stronger, off-centre or tilted,
a colour cast, a non-linear LED response and a sensor black level. The simulated camera photographs
through them, so a module's calibration has something to correct.
"""
from __future__ import annotations

import math
import os
import random
import select
import threading
import time
import tty
import zlib
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from hardware.optic_module import FrameError, LineReader, decode, encode
from models.fundus import FALLOFF, FALLOFF_POWER

PROTOCOL_VERSION = "1"
TICK_S = 0.02
FOCUS_TRAVEL = (0, 1000)  # the reference module's focus motor, in steps
NOMINAL_FOCUS = 620  # where the reference module focuses an eye without refractive error
FAULT_TEXT = {
    "MOTOR_STALL": "focus motor stalled",
    "LED_OVERTEMP": "LED ring too hot",
    "FIXATION_OPEN": "fixation LED open circuit",
}


DEFAULT_SERIAL = "GSO-SIM-0001"
DESIGN_FALLOFF, DESIGN_FALLOFF_POWER = FALLOFF, FALLOFF_POWER  # the reference camera's falloff (models.fundus)
DESIGN_FULL_IRRADIANCE_MW_CM2 = 0.2  # the design's irradiance at the pupil with the ring at full level (a light meter in a model eye)


@dataclass(frozen=True)
class ModuleOptics:
    """What makes one optic module's photos its own, on top of the retina.

    The light across the field falls off as `1 - falloff * r**falloff_power` about `centre` (field radii
    off the field's own centre: a decentred lens or LED ring), times `1 + tilt . (x, y)` (a tilted ring),
    times `colour` per channel (the LEDs' and the sensor's colour); the LEDs give `efficiency *
    level**led_power` of the design's light (an LED driver that fails: less above `led_droop_above`); the
    sensor adds `dark` (linear, per channel). `design()` is the reference module the simulator always drew;
    `ideal()` a perfect one: flat, neutral, linear, no black level."""

    falloff: float = DESIGN_FALLOFF
    falloff_power: float = DESIGN_FALLOFF_POWER
    centre: tuple[float, float] = (0.0, 0.0)
    tilt: tuple[float, float] = (0.0, 0.0)
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)
    led_power: float = 1.0
    efficiency: float = 1.0
    led_droop_above: float | None = None
    dark: tuple[float, float, float] = (0.0, 0.0, 0.0)
    full_irradiance_mw_cm2: float = DESIGN_FULL_IRRADIANCE_MW_CM2

    @classmethod
    def design(cls) -> "ModuleOptics":
        return cls()

    @classmethod
    def ideal(cls) -> "ModuleOptics":
        return cls(falloff=0.0)

    @classmethod
    def for_serial(cls, serial: str, severity: float = 1.0) -> "ModuleOptics":
        """The module of this serial number: the design, put off by that unit's own draw. `severity` scales
        how far (1: an ordinary unit; 3: a badly made or aged one, strongly vignetted and colour-cast)."""
        rng = np.random.default_rng([zlib.crc32(serial.encode()), 0x0971C5])
        s = float(severity)
        u = rng.uniform(0.0, 1.0, 8)
        angle = float(rng.uniform(0.0, 2.0 * math.pi))
        tilt_angle = angle + float(rng.uniform(-0.5, 0.5))  # a ring tilted towards where the lens is off-centre
        cast = 1.0 if rng.random() < 0.5 else -1.0  # bluish (ageing white LEDs) or reddish
        return cls(
            falloff=float(min(0.92, DESIGN_FALLOFF + 0.05 * s * (0.5 + 0.5 * u[0]))),
            centre=(0.1 * s * math.cos(angle), 0.1 * s * math.sin(angle)),
            tilt=(0.12 * s * math.cos(tilt_angle), 0.12 * s * math.sin(tilt_angle)),
            colour=(float(max(0.4, 1.0 - cast * 0.11 * s * (0.8 + 0.4 * u[1]))), 1.0,
                    float(max(0.4, 1.0 + cast * 0.13 * s * (0.8 + 0.4 * u[2])))),
            led_power=float(1.05 + 0.15 * s * u[3]),
            efficiency=float(np.clip(1.0 + 0.08 * s * (2.0 * u[4] - 1.0), 0.5, 1.5)),
            dark=(float(0.005 * s * (0.7 + 0.6 * u[5])), float(0.005 * s * (0.7 + 0.6 * u[6])),
                  float(0.005 * s * (0.7 + 0.6 * u[7]))),
        )

    def with_led_droop(self, above: float) -> "ModuleOptics":
        """This module with a failing LED driver: the light falls back above `above`."""
        return replace(self, led_droop_above=float(above))

    def led_light(self, level: float) -> float:
        """The ring's light at `level`, relative to the design's at full level."""
        level = max(0.0, float(level))
        out = self.efficiency * level ** self.led_power
        if self.led_droop_above is not None and level > self.led_droop_above:
            out *= max(0.05, 1.0 - 2.5 * (level - self.led_droop_above))
        return out

    def irradiance_mw_cm2(self, level: float) -> float:
        """What a light meter in a model eye reads at the pupil with the ring at `level`."""
        return self.full_irradiance_mw_cm2 * self.led_light(level)

    def illumination(self, h: int, w: int, center: tuple[float, float], radius: float) -> np.ndarray | None:
        """The light across a frame of this size (HxWx3 float32, 0 outside the field); None for the design,
        which `models.fundus.apply_optics` draws itself."""
        if self == ModuleOptics.design():
            return None
        return _illumination(self, h, w, float(center[0]), float(center[1]), float(radius))


@lru_cache(maxsize=8)
def _illumination(optics: ModuleOptics, h: int, w: int, cx: float, cy: float, radius: float) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = (xs - cx) / radius, (ys - cy) / radius
    edge = np.clip((1.0 - np.hypot(x, y)) * radius + 0.5, 0.0, 1.0)  # the field stop, as models.fundus draws it
    r = np.minimum(np.hypot(x - optics.centre[0], y - optics.centre[1]), 1.0)  # the edge's light, never none
    light = (1.0 - optics.falloff * r ** optics.falloff_power) * (1.0 + optics.tilt[0] * x + optics.tilt[1] * y)
    light = np.clip(light, 0.02, None) * edge
    out = np.stack([light * c for c in optics.colour], axis=-1).astype(np.float32)
    out.setflags(write=False)
    return out


class FocusMotor:
    """A stepper moving at constant speed toward its target; position is a function of time."""

    def __init__(self, position: int, steps_per_s: float, limits: tuple[int, int]):
        self.limits = limits
        self.steps_per_s = float(steps_per_s)
        self._from = float(position)
        self._target = int(position)
        self._t0 = time.monotonic()

    def position(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        travelled = (now - self._t0) * self.steps_per_s
        distance = self._target - self._from
        if abs(distance) <= travelled:
            return float(self._target)
        return self._from + math.copysign(travelled, distance)

    @property
    def target(self) -> int:
        return self._target

    def moving(self, now: float | None = None) -> bool:
        return self.position(now) != self._target

    def move_to(self, target: int) -> None:
        now = time.monotonic()
        self._from = self.position(now)
        self._target = int(target)
        self._t0 = now

    def halt(self) -> None:
        """Stop where it is (a stall): the target becomes the present position."""
        now = time.monotonic()
        self._from = float(round(self.position(now)))
        self._target = int(self._from)
        self._t0 = now


class OpticModuleSimulator:
    """The optic module's controller, served on `.port` (a pty slave path) while started."""

    def __init__(self, *, serial_number: str = DEFAULT_SERIAL, firmware: str = "1.0.0-sim",
                 focus_limits: tuple[int, int] = FOCUS_TRAVEL, start_focus: int = 500, best_focus: int = NOMINAL_FOCUS,
                 focus_steps_per_s: float = 4000.0, ambient_c: float = 28.0, warmup_c: float = 8.0,
                 warmup_s: float = 900.0, overtemp_c: float = 55.0, seed: int = 0, optics: ModuleOptics | None = None):
        if not focus_limits[0] <= start_focus <= focus_limits[1]:
            raise ValueError(f"start_focus {start_focus} is outside the focus limits {focus_limits}")
        self.serial_number = serial_number
        self.optics = optics if optics is not None else ModuleOptics.for_serial(serial_number)
        self.firmware = firmware
        self.motor = FocusMotor(start_focus, focus_steps_per_s, focus_limits)
        self.best_focus = int(best_focus)  # where the eye in front of the module is sharp (its refraction)
        self.ambient_c = ambient_c
        self.warmup_c = warmup_c
        self.warmup_s = warmup_s
        self.overtemp_c = overtemp_c
        self.fixation: tuple[str, str] | None = None
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._faults: dict[str, str] = {}
        self._wander_c = 0.0
        self._born = time.monotonic()
        self._outbox: list[bytes] = []
        self._drop: float = 0  # replies still to lose; math.inf: all of them
        self._corrupt = 0
        self._last_request: bytes | None = None
        self._last_reply: bytes | None = None
        self.requests_seen = 0     # valid requests received, re-sends included
        self.requests_executed = 0  # requests acted on: a re-send is answered, not executed again
        self._master: int | None = None
        self._slave: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.port: str | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "OpticModuleSimulator":
        if self._thread is not None:
            return self
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: bytes pass as a UART would pass them
        os.set_blocking(self._master, False)  # with nobody reading, bytes are lost, not the server
        self.port = os.ttyname(self._slave)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="optic-module-sim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Power the controller off: the pty closes, and a client reading it sees the port fail."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def __enter__(self) -> "OpticModuleSimulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the physical model, as the simulated camera and tests see it ---------------------------
    def focus_position(self) -> int:
        with self._lock:
            return int(round(self.motor.position()))

    def temperature_c(self) -> float:
        with self._lock:
            age = time.monotonic() - self._born
            return self.ambient_c + self.warmup_c * (1.0 - math.exp(-age / self.warmup_s)) + self._wander_c

    # -- fault and line-trouble injection -------------------------------------------------------
    def inject_fault(self, code: str, message: str | None = None) -> None:
        """Raise a fault; the controller announces it with a `$EVT,FAULT` line as firmware would."""
        text = message or FAULT_TEXT.get(code, code.lower().replace("_", " "))
        with self._lock:
            self._faults[code] = text
            if code == "MOTOR_STALL":
                self.motor.halt()
        self.push_event("FAULT", code, text)

    def press_button(self) -> None:
        self.push_event("BUTTON", "PRESSED")

    def push_event(self, kind: str, *fields: str) -> None:
        self._send(encode("EVT", kind, *fields))

    def inject_garbage(self, data: bytes | None = None) -> None:
        """Line noise: random bytes (including stray `$` and line ends) on the wire."""
        if data is None:
            data = bytes(self._rng.randrange(256) for _ in range(40)) + b"$GARB*ZZ\n\x00\xff$OK,1"
        self._send(data)

    def drop_replies(self, count: int | None = None) -> None:
        """Lose the next `count` replies on the wire (None: stop answering altogether, a hung controller)."""
        with self._lock:
            self._drop = math.inf if count is None else int(count)

    def corrupt_checksums(self, count: int = 1) -> None:
        with self._lock:
            self._corrupt = int(count)

    # -- serving --------------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        with self._lock:
            self._outbox.append(data)

    def _serve(self) -> None:
        reader = LineReader()
        while not self._stop.is_set():
            master = self._master
            if master is None:  # stop() has closed the pty
                break
            ready, _, _ = select.select([master], [], [], TICK_S)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:  # no client has the port open right now
                    data = b""
                for frame in reader.feed(data):
                    reply = self._handle(frame)
                    if reply is not None:
                        self._send(reply)
            self._tick()
            with self._lock:
                out, self._outbox = self._outbox, []
            for data in out:
                self._write(master, data)

    def _write(self, master: int, data: bytes) -> None:
        try:
            os.write(master, data)
        except OSError:
            pass  # a UART with nobody listening loses the bytes too

    def _tick(self) -> None:
        with self._lock:
            step = self._rng.gauss(0.0, 0.01)
            self._wander_c = max(-1.0, min(1.0, self._wander_c + step))
            overheated = self.temperature_c() > self.overtemp_c and "LED_OVERTEMP" not in self._faults
        if overheated:
            self.inject_fault("LED_OVERTEMP")

    def _handle(self, frame: bytes) -> bytes | None:
        """One request -> one reply (or none, when the line is not a valid request)."""
        try:
            fields = decode(frame)
        except FrameError:
            return None  # a corrupted request is dropped; the client's retry brings it again
        if len(fields) < 2 or not fields[1].isdigit():
            return None
        with self._lock:
            self.requests_seen += 1
            if frame == self._last_request and self._last_reply is not None:
                reply = self._last_reply  # a re-send: answer again, do not act twice
            else:
                self.requests_executed += 1
                reply = self._execute(fields[0], fields[1], fields[2:])
                self._last_request, self._last_reply = frame, reply
            if self._drop:
                self._drop -= 1
                return None
            if self._corrupt:
                self._corrupt -= 1
                return reply[:-3] + (b"00" if reply[-3:-1] != b"00" else b"FF") + b"\n"
            return reply

    def _execute(self, command: str, seq: str, args: list[str]) -> bytes:
        def ok(*values: object) -> bytes:
            return encode("OK", seq, *(str(v) for v in values))

        def err(code: str, message: str) -> bytes:
            return encode("ERR", seq, code, message)

        if command == "ID":
            return ok(self.serial_number, self.firmware, PROTOCOL_VERSION)
        if command == "FOCUS":
            if len(args) != 1 or not args[0].lstrip("-").isdigit():
                return err("ARGS", "FOCUS takes one whole number of steps")
            target = int(args[0])
            lo, hi = self.motor.limits
            if not lo <= target <= hi:
                return err("RANGE", f"focus {target} is outside {lo}..{hi}")
            if "MOTOR_STALL" in self._faults:
                return err("FAULT", "focus motor stalled")
            self.motor.move_to(target)
            return ok(target)
        if command == "FOCUS?":
            now = time.monotonic()
            state = "MOVING" if self.motor.moving(now) else "IDLE"
            return ok(int(round(self.motor.position(now))), self.motor.target, state)
        if command == "FIX":
            if args == ["OFF"]:
                self.fixation = None
                return ok("OFF")
            if len(args) != 2 or args[0] not in ("DISC", "MACULA") or args[1] not in ("R", "L"):
                return err("ARGS", "FIX takes DISC or MACULA and R or L, or OFF")
            if "FIXATION_OPEN" in self._faults:
                return err("FAULT", "fixation LED open circuit")
            self.fixation = (args[0], args[1])
            return ok(*args)
        if command == "TEMP?":
            return ok(f"{self.temperature_c():.1f}")
        if command == "FAULTS?":
            return ok(*sorted(self._faults))
        return err("UNKNOWN", f"unknown command {command}")
