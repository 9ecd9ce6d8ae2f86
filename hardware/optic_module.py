"""The optic module's controller (focus motor, fixation target, temperature, faults) over a serial line.

The wire format is in PROTOCOL.md. In short: ASCII lines `$BODY*CS\\n`, CS the XOR of BODY's bytes
in two hex digits (as in NMEA 0183), one reply per request matched by sequence number, and
unsolicited `$EVT` lines the controller may push at any time. A cable next to an LED driver and a
stepper picks up noise, so the client treats every line as suspect: it resynchronises on the next
`$`, drops lines whose checksum fails, and retries a request whose reply does not come.
"""
from __future__ import annotations

import logging
import numbers
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

import serial

log = logging.getLogger(__name__)

MAX_LINE = 200               # bytes; a longer run without a newline is noise
FOCUS_POLL_S = 0.02
FOCUS_TRAVEL_TIMEOUT_S = 5.0  # longest a full-travel focus move may take before we call it stuck
FIXATION_TARGETS = ("disc", "macula", "off")
EYES = {"right": "R", "left": "L"}
SERIAL_ERRORS = (serial.SerialException, OSError)  # a port that vanished reports either


class OpticModuleError(RuntimeError):
    """The optic module cannot be reached or did not do what was asked; the message says why."""


class ControllerError(OpticModuleError):
    """The controller answered with `$ERR`: it understood the request and refused it."""

    def __init__(self, command: str, code: str, message: str):
        self.command = command
        self.code = code
        self.message = message
        super().__init__(f"the optic module refused {command}: {message} ({code})")


# -- framing (shared with the simulator) ---------------------------------------------------------
class FrameError(ValueError):
    """A line that is not a valid frame."""


def checksum(body: str) -> str:
    value = 0
    for byte in body.encode("ascii"):
        value ^= byte
    return f"{value:02X}"


def encode(*fields: str) -> bytes:
    """One frame from its comma-separated fields."""
    for f in fields:
        if any(c in f for c in "$*,\r\n") or not f.isascii():
            raise ValueError(f"field {f!r} may not contain '$', '*', ',', line breaks or non-ASCII text")
    body = ",".join(fields)
    return f"${body}*{checksum(body)}\n".encode("ascii")


def decode(frame: bytes) -> list[str]:
    """Fields of one frame (`$BODY*CS`, without the line end); raises FrameError when it is not valid."""
    if not frame.startswith(b"$") or not 4 <= len(frame) <= MAX_LINE or frame[-3:-2] != b"*":
        raise FrameError(f"not a frame: {frame[:40]!r}")
    try:
        body = frame[1:-3].decode("ascii")
    except UnicodeDecodeError:
        raise FrameError("non-ASCII bytes in the frame") from None
    if "$" in body or "*" in body or not body.isprintable():
        raise FrameError(f"stray characters in the frame: {body[:40]!r}")
    if frame[-2:].decode("ascii", "replace").upper() != checksum(body):
        raise FrameError(f"bad checksum on {body[:40]!r}")
    return body.split(",")


class LineReader:
    """Splits a byte stream into candidate frames, resynchronising on `$`.

    Anything before the last `$` of a line is noise (or a frame cut short by a new one), and a run
    of bytes without a line end is dropped once it is longer than any frame can be.
    """

    def __init__(self) -> None:
        self._buf = b""
        self.discarded_bytes = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames = []
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                break
            line, self._buf = self._buf[:end].rstrip(b"\r"), self._buf[end + 1:]
            start = line.rfind(b"$")
            self.discarded_bytes += len(line) if start < 0 else start
            if start >= 0:
                frames.append(line[start:])
        if len(self._buf) > MAX_LINE:
            start = self._buf.rfind(b"$")
            keep = self._buf[start:] if 0 <= start and len(self._buf) - start <= MAX_LINE else b""
            self.discarded_bytes += len(self._buf) - len(keep)
            self._buf = keep
        return frames


# -- client ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """An unsolicited `$EVT` line: `kind` (FAULT, BUTTON, ...) and its fields."""

    kind: str
    fields: tuple[str, ...]


class OpticModule:
    """Client of the optic module controller over pyserial.

    One request is in flight at a time; each gets `timeout` seconds for its reply and is re-sent
    `retries` times (same sequence number, so the controller can tell a re-send from a new request)
    before OpticModuleError is raised. A background reader delivers replies to the waiting request
    and `$EVT` lines to `on_event` (called on the reader thread; keep it short).
    """

    def __init__(self, port: str, baudrate: int = 115200, timeout: float = 0.5, retries: int = 3,
                 on_event: Callable[[Event], None] | None = None):
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be positive and retries not negative")
        self.port = port
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.on_event = on_event
        try:
            self._serial = serial.Serial(port, baudrate=baudrate, timeout=0.05, write_timeout=timeout)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise OpticModuleError(f"cannot open the optic module's serial port {port}: {exc}") from exc
        self._reader = LineReader()
        self._bad_frames = 0
        self._seq = random.randrange(1, 65536)  # a restarted client does not reuse the last seq
        self._request_lock = threading.Lock()
        self._cond = threading.Condition()
        self._pending: int | None = None
        self._reply: list[str] | None = None
        self._failure: str | None = None
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._read_loop, name=f"optic-module {port}", daemon=True)
        self._thread.start()

    # -- commands -------------------------------------------------------------------------------
    def identify(self) -> dict:
        fields = self._request("ID")
        if len(fields) < 3:
            raise OpticModuleError(f"the optic module's ID reply is incomplete: {fields}")
        return {"serial": fields[0], "firmware": fields[1], "protocol": fields[2], "port": self.port}

    def focus(self, position: int, wait: bool = True) -> int:
        """Move the focus motor to `position` steps; with `wait`, return once it stands there.

        Waiting is the default because a sharpness reading is only meaningful once the lens has
        stopped: autofocus that measures mid-move climbs the wrong hill.
        """
        if isinstance(position, bool) or not isinstance(position, numbers.Integral):
            raise ValueError(f"focus position must be a whole number of motor steps, got {position!r}")
        target = _int(self._request("FOCUS", str(int(position)))[0], "FOCUS")
        if not wait:
            return target
        deadline = time.monotonic() + FOCUS_TRAVEL_TIMEOUT_S
        while True:
            now, _, moving = self._focus_state()
            if not moving:
                return now
            if time.monotonic() > deadline:
                raise OpticModuleError(f"the focus motor did not reach {target} within {FOCUS_TRAVEL_TIMEOUT_S:.0f} s "
                                       f"(it stands at {now}); it may be blocked")
            time.sleep(FOCUS_POLL_S)

    def focus_position(self) -> int:
        return self._focus_state()[0]

    def _focus_state(self) -> tuple[int, int, bool]:
        fields = self._request("FOCUS?")
        if len(fields) < 3 or fields[2] not in ("IDLE", "MOVING"):
            raise OpticModuleError(f"the optic module's FOCUS? reply is not understood: {fields}")
        return _int(fields[0], "FOCUS?"), _int(fields[1], "FOCUS?"), fields[2] == "MOVING"

    def fixation(self, target: str, eye: str = "right") -> None:
        """Light the fixation target that puts the `target` ("disc", "macula") of `eye` in view, or "off"."""
        if target not in FIXATION_TARGETS:
            raise ValueError(f"fixation target must be one of {', '.join(FIXATION_TARGETS)}, got {target!r}")
        if target == "off":
            self._request("FIX", "OFF")
            return
        if eye not in EYES:
            raise ValueError(f"eye must be 'right' or 'left', got {eye!r}")
        self._request("FIX", target.upper(), EYES[eye])

    def temperature(self) -> float:
        fields = self._request("TEMP?")
        try:
            return float(fields[0])
        except (IndexError, ValueError):
            raise OpticModuleError(f"the optic module's TEMP? reply is not a temperature: {fields}") from None

    def faults(self) -> list[str]:
        return [f for f in self._request("FAULTS?") if f]

    def stats(self) -> dict:
        """Line-quality counters: a rising count of bad frames means a noisy cable or a wrong baud rate."""
        return {"bad_frames": self._bad_frames, "discarded_bytes": self._reader.discarded_bytes}

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=1.0)
        try:
            self._serial.close()
        except SERIAL_ERRORS:
            pass

    def __enter__(self) -> "OpticModule":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- request / reply ------------------------------------------------------------------------
    def _request(self, command: str, *args: str) -> list[str]:
        """Send one request and return the fields of its `$OK` reply after the sequence number."""
        with self._request_lock:
            if self._closing.is_set():
                raise OpticModuleError(f"the optic module on {self.port} is closed")
            self._seq = self._seq % 65535 + 1
            seq = self._seq
            line = encode(command, str(seq), *args)
            attempts = 1 + self.retries
            bad_before = self._bad_frames
            for attempt in range(1, attempts + 1):
                with self._cond:
                    if self._failure:
                        raise OpticModuleError(f"the optic module's serial port {self.port} failed: {self._failure}")
                    self._pending, self._reply = seq, None
                try:
                    self._serial.write(line)
                except SERIAL_ERRORS as exc:
                    raise OpticModuleError(f"cannot write to the optic module on {self.port}: {exc}") from exc
                with self._cond:
                    self._cond.wait_for(lambda: self._reply is not None or self._failure is not None, self.timeout)
                    reply, self._pending = self._reply, None
                if reply is not None:
                    if reply[0] == "ERR":
                        code = reply[2] if len(reply) > 2 else "UNKNOWN"
                        raise ControllerError(command, code, ",".join(reply[3:]) or "no reason given")
                    return reply[2:]
                if attempt < attempts:
                    log.info("optic module: no reply to %s (seq %d), try %d of %d", command, seq, attempt + 1, attempts)
            with self._cond:
                if self._failure:
                    raise OpticModuleError(f"the optic module's serial port {self.port} failed: {self._failure}")
            garbled = self._bad_frames - bad_before
            noise = f"; {garbled} garbled lines were dropped meanwhile (noisy cable or wrong baud rate?)" if garbled else ""
            raise OpticModuleError(
                f"the optic module on {self.port} did not answer {command} after {attempts} tries of "
                f"{self.timeout:g} s: is it powered and its cable plugged in?{noise}")

    def _read_loop(self) -> None:
        while not self._closing.is_set():
            try:
                data = self._serial.read(self._serial.in_waiting or 1)
            except SERIAL_ERRORS as exc:
                if not self._closing.is_set():
                    log.error("optic module serial port %s failed: %s", self.port, exc)
                    with self._cond:
                        self._failure = str(exc) or type(exc).__name__
                        self._cond.notify_all()
                return
            if data:
                for frame in self._reader.feed(data):
                    self._dispatch(frame)

    def _dispatch(self, frame: bytes) -> None:
        try:
            fields = decode(frame)
        except FrameError as exc:
            self._bad_frames += 1
            log.debug("optic module: dropped a line: %s", exc)
            return
        kind = fields[0]
        if kind == "EVT":
            self._deliver(Event(fields[1] if len(fields) > 1 else "", tuple(fields[2:])))
        elif kind in ("OK", "ERR") and len(fields) > 1:
            with self._cond:
                if self._pending is not None and fields[1] == str(self._pending):
                    self._reply = fields
                    self._cond.notify_all()
                else:
                    log.debug("optic module: stale reply %s dropped", fields[:2])
        else:
            self._bad_frames += 1
            log.debug("optic module: unexpected line %s", fields[:3])

    def _deliver(self, event: Event) -> None:
        if self.on_event is None:
            log.info("optic module event %s %s", event.kind, ",".join(event.fields))
            return
        try:
            self.on_event(event)
        except Exception:  # noqa: BLE001 - a faulty handler must not stop replies from being read
            log.exception("optic module event handler failed on %s", event)


def _int(text: str, command: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise OpticModuleError(f"the optic module's {command} reply has {text!r} where a number belongs") from None
