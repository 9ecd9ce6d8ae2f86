"""A simulated optic module controller on a real pseudo-terminal.

It speaks PROTOCOL.md byte for byte over a pty that pyserial opens like any UART, so the client is
exercised through the same termios, read timeouts and partial reads as on the unit. Behind the
protocol sits a physical model: a stepper focus motor that takes time to travel (its position can be
read mid-move), a housing temperature that warms up and wanders, and faults. Tests (and the
simulated camera) reach into the model directly; the client only ever sees the serial line.

Line trouble can be injected on purpose: garbage bytes, replies lost on the wire, replies with a
corrupted checksum, and a controller that stops answering.
"""
from __future__ import annotations

import math
import os
import random
import select
import threading
import time
import tty

from hardware.optic_module import FrameError, LineReader, decode, encode

PROTOCOL_VERSION = "1"
TICK_S = 0.02
FOCUS_TRAVEL = (0, 1000)  # the reference module's focus motor, in steps
NOMINAL_FOCUS = 620  # where the reference module focuses an eye without refractive error
FAULT_TEXT = {
    "MOTOR_STALL": "focus motor stalled",
    "LED_OVERTEMP": "LED ring too hot",
    "FIXATION_OPEN": "fixation LED open circuit",
}


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

    def __init__(self, *, serial_number: str = "GSO-SIM-0001", firmware: str = "1.0.0-sim",
                 focus_limits: tuple[int, int] = FOCUS_TRAVEL, start_focus: int = 500, best_focus: int = NOMINAL_FOCUS,
                 focus_steps_per_s: float = 4000.0, ambient_c: float = 28.0, warmup_c: float = 8.0,
                 warmup_s: float = 900.0, overtemp_c: float = 55.0, seed: int = 0):
        if not focus_limits[0] <= start_focus <= focus_limits[1]:
            raise ValueError(f"start_focus {start_focus} is outside the focus limits {focus_limits}")
        self.serial_number = serial_number
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
