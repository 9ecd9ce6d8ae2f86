"""The optic module client against the simulated controller, over a real pseudo-terminal."""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

import hardware
from hardware.optic_module import (
    ControllerError,
    Event,
    FrameError,
    LineReader,
    OpticModule,
    OpticModuleError,
    decode,
    encode,
)
from hardware.optic_module_sim import OpticModuleSimulator
from tests.waiting import wait_until

TIMEOUT = 0.2
RETRIES = 2


@pytest.fixture
def sim():
    with OpticModuleSimulator(focus_steps_per_s=2000.0, best_focus=620) as sim:
        yield sim


@pytest.fixture
def events():
    return []


@pytest.fixture
def module(sim, events):
    with OpticModule(sim.port, timeout=TIMEOUT, retries=RETRIES, on_event=events.append) as module:
        yield module


# -- framing --------------------------------------------------------------------------------------
def test_frames_round_trip_and_a_changed_byte_is_caught():
    line = encode("FOCUS", "7", "620")
    assert line.startswith(b"$FOCUS,7,620*") and line.endswith(b"\n")
    assert decode(line.rstrip(b"\n")) == ["FOCUS", "7", "620"]
    with pytest.raises(FrameError, match="checksum"):
        decode(line.rstrip(b"\n").replace(b"620", b"621"))


def test_fields_that_would_break_the_framing_are_refused():
    with pytest.raises(ValueError):
        encode("ERR", "1", "RANGE", "a, b")


def test_every_frame_in_the_protocol_document_is_valid():
    text = (Path(hardware.__file__).parent / "PROTOCOL.md").read_text()
    frames = re.findall(r"(\$[A-Z][^\n`]*?\*[0-9A-F]{2})", text)
    assert len(frames) >= 10
    for frame in frames:
        decode(frame.encode())


def test_the_line_reader_resynchronises_on_dollar_across_chunks():
    reader = LineReader()
    a, b = encode("OK", "1"), encode("EVT", "BUTTON", "PRESSED")
    stream = b"\x00\xffnoise" + a[:5] + b"$" + a[1:] + b"junk\n" + b[:7]
    frames = reader.feed(stream[:9]) + reader.feed(stream[9:]) + reader.feed(b[7:])
    assert frames == [a.rstrip(b"\n"), b.rstrip(b"\n")]
    assert reader.discarded_bytes == len(b"\x00\xffnoise") + 5 + len(b"junk")


# -- requests and replies -------------------------------------------------------------------------
def test_identify(module, sim):
    assert module.identify() == {"serial": sim.serial_number, "firmware": sim.firmware, "protocol": "1",
                                 "port": sim.port}


def test_focus_moves_the_motor_and_takes_the_time_it_takes(module, sim):
    start = time.monotonic()
    assert module.focus(900) == 900
    assert time.monotonic() - start >= (900 - 500) / 2000.0 * 0.9
    assert module.focus_position() == 900 == sim.focus_position()


def test_focus_position_can_be_read_while_the_motor_moves(module, sim):
    assert module.focus(100, wait=False) == 100
    time.sleep(0.05)
    midway = module.focus_position()
    assert 100 < midway < 500
    assert wait_until(lambda: module.focus_position() == 100)


def test_out_of_range_focus_is_a_clear_error_and_the_motor_stays(module, sim):
    with pytest.raises(ControllerError, match=r"outside 0\.\.1000") as err:
        module.focus(2000)
    assert err.value.code == "RANGE"
    assert sim.focus_position() == 500


def test_a_focus_that_is_not_a_whole_number_is_refused_before_sending(module, sim):
    seen = sim.requests_seen
    with pytest.raises(ValueError, match="whole number"):
        module.focus(12.5)
    assert sim.requests_seen == seen


def test_fixation_targets(module, sim):
    module.fixation("disc", "left")
    assert sim.fixation == ("DISC", "L")
    module.fixation("macula", "right")
    assert sim.fixation == ("MACULA", "R")
    module.fixation("off")
    assert sim.fixation is None
    with pytest.raises(ValueError, match="fixation target"):
        module.fixation("cup", "right")


def test_temperature_follows_the_housing_warming_up():
    with OpticModuleSimulator(ambient_c=25.0, warmup_c=10.0, warmup_s=0.3) as sim, \
            OpticModule(sim.port, timeout=TIMEOUT) as module:
        first = module.temperature()
        time.sleep(0.6)
        later = module.temperature()
        assert 23.5 < first < 30.0
        assert later > first + 3.0
        assert later == pytest.approx(sim.temperature_c(), abs=1.5)


# -- line trouble ---------------------------------------------------------------------------------
def test_garbage_on_the_line_is_survived(module, sim):
    sim.inject_garbage()
    sim.inject_garbage(b"\x00$$$*\n$OK,xx*00\n" + bytes(range(256)))
    assert module.identify()["serial"] == sim.serial_number
    assert module.focus_position() == 500
    assert module.stats()["discarded_bytes"] > 0 and module.stats()["bad_frames"] >= 1


def test_a_lost_reply_is_retried_and_the_command_runs_once(module, sim):
    seen, executed = sim.requests_seen, sim.requests_executed
    sim.drop_replies(1)
    start = time.monotonic()
    assert module.focus(700, wait=False) == 700
    assert time.monotonic() - start >= TIMEOUT * 0.9
    assert sim.requests_seen - seen == 2  # sent, then re-sent
    assert sim.requests_executed - executed == 1  # the re-send was answered, not acted on again


def test_a_corrupted_checksum_is_rejected_and_the_request_retried(module, sim):
    seen = sim.requests_seen
    sim.corrupt_checksums(1)
    assert module.faults() == []
    assert module.stats()["bad_frames"] == 1
    assert sim.requests_seen - seen == 2


def test_events_reach_the_handler_and_replies_still_match(module, sim, events):
    sim.inject_fault("MOTOR_STALL")
    assert wait_until(lambda: events)
    assert events[0] == Event("FAULT", ("MOTOR_STALL", "focus motor stalled"))
    assert module.faults() == ["MOTOR_STALL"]
    with pytest.raises(ControllerError) as err:
        module.focus(300)
    assert err.value.code == "FAULT"

    presses = 50

    def press_buttons():
        for _ in range(presses):
            sim.press_button()
            time.sleep(0.001)

    presser = threading.Thread(target=press_buttons)
    presser.start()
    replies = 0
    while presser.is_alive() or replies < 20:
        assert module.identify()["serial"] == sim.serial_number
        assert module.focus_position() == 500
        replies += 1
    presser.join()
    assert wait_until(lambda: sum(e.kind == "BUTTON" for e in events) == presses)
    assert module.stats()["bad_frames"] == 0


def test_a_failing_event_handler_does_not_stop_replies(sim):
    def broken(event):
        raise KeyError("handler bug")

    with OpticModule(sim.port, timeout=TIMEOUT, on_event=broken) as module:
        sim.press_button()
        time.sleep(0.05)
        assert module.identify()["serial"] == sim.serial_number


# -- a module that is gone ------------------------------------------------------------------------
def test_a_hung_controller_gives_an_error_after_the_retries(module, sim):
    sim.drop_replies()
    start = time.monotonic()
    with pytest.raises(OpticModuleError, match=f"did not answer TEMP\\? after {RETRIES + 1} tries"):
        module.temperature()
    elapsed = time.monotonic() - start
    assert (RETRIES + 1) * TIMEOUT * 0.9 <= elapsed < (RETRIES + 1) * TIMEOUT + 1.0


def test_an_unplugged_controller_gives_an_error_quickly(module, sim):
    assert module.identify()
    sim.stop()
    start = time.monotonic()
    with pytest.raises(OpticModuleError, match="optic module"):
        module.identify()
    assert time.monotonic() - start < (RETRIES + 1) * TIMEOUT + 1.0


def test_a_port_that_does_not_exist_is_a_clear_error(tmp_path):
    with pytest.raises(OpticModuleError, match="cannot open the optic module's serial port"):
        OpticModule(str(tmp_path / "ttyNONE"))
