"""The white ring's PWM on a Raspberry Pi 5: what lgpio's software PWM gives (simulated as the real pin
quantises), and the kernel's hardware PWM, against a directory laid out like /sys/class/pwm."""
from __future__ import annotations

import logging

import pytest
from gpiozero import PWMLED
from gpiozero.pins.mock import MockFactory

from hardware import pwm
from hardware.boards import PI5_HARDWARE_PWM, PROFILES, RP1_PWM0, PWMOutput
from hardware.illumination import RING_PWM_HZ, Illumination, make_pin_factory
from hardware.pwm import HardwarePWMFactory, PWMUnavailable, SysfsPWM, find_pwm_chip
from hardware.pwm_sim import LGPIOSoftwarePWMPin, SysfsPWMTree

PI5 = PROFILES["pi5"]
RP1_PWM1 = "1f0009c000.pwm"     # RP1's other PWM controller: the Pi 5's fan
BCM2712_PWM = "107d517a80.pwm"  # the SoC's own PWM
PERIOD_NS = 1_000_000           # the ring's 1 kHz
LOW_LEVELS = (0.005, 0.012, 0.015, 0.0333, 0.05, 0.059, 0.29, 0.57, 0.8)


@pytest.fixture
def tree(tmp_path):
    """The Pi 5 on a 6.12 kernel, with dtoverlay=pwm-2chan: RP1's PWM0 is pwmchip0, the fan's is pwmchip1."""
    t = SysfsPWMTree(tmp_path / "sys")
    t.add_chip(0, RP1_PWM0)
    t.add_chip(1, RP1_PWM1)
    return t


@pytest.fixture
def kernel(tree, monkeypatch):
    """Writes to the tree answered as the kernel answers them (exports made, bad periods refused)."""
    monkeypatch.setattr(pwm, "_write_attr", tree.write)
    return tree


def test_the_pi5_ring_is_on_rp1_pwm0_channel_2():
    assert PI5.pins.white_ring == 18
    assert PI5.ring_pwm == PI5_HARDWARE_PWM[18] and PI5.ring_pwm.device == RP1_PWM0 == "1f00098000.pwm"
    assert {gpio: out.channel for gpio, out in PI5_HARDWARE_PWM.items()} == {12: 0, 13: 1, 18: 2, 19: 3}
    assert "dtoverlay=pwm-2chan" in PI5.ring_pwm.enable and "dtoverlay=pwm-2chan" in PI5.note
    assert PROFILES["jetson-orin-nano"].ring_pwm is None  # Jetson.GPIO's PWM is the kernel's already
    assert PROFILES["workstation"].ring_pwm is None


@pytest.mark.parametrize("layout, expected", [
    ({0: BCM2712_PWM, 2: RP1_PWM0, 6: RP1_PWM1}, "pwmchip2"),  # kernel 6.6
    ({0: RP1_PWM0, 1: RP1_PWM1}, "pwmchip0"),                  # kernel 6.12
])
def test_the_chip_is_found_by_its_device_whatever_its_number(tmp_path, layout, expected):
    t = SysfsPWMTree(tmp_path)
    for number, device in layout.items():
        t.add_chip(number, device)
    assert find_pwm_chip(RP1_PWM0, t.pwm).name == expected


def test_no_chip_for_the_device_is_refused_with_what_was_found(tmp_path):
    t = SysfsPWMTree(tmp_path)
    t.add_chip(0, RP1_PWM1)  # no overlay: only the fan's controller
    with pytest.raises(PWMUnavailable, match=r"1f00098000\.pwm.*pwmchip0 \(1f0009c000\.pwm\).*config\.txt"):
        find_pwm_chip(RP1_PWM0, t.pwm)


def test_a_channel_already_exported_is_driven_through_its_files(tree):
    """A static tree, written as plain files: pwm2 exported beforehand (by an earlier run, say)."""
    chip = tree.chip(0)
    tree.export(chip, 2)
    channel = SysfsPWM(chip, 2, RING_PWM_HZ)
    assert tree.channel_state(chip, 2) == {"period": PERIOD_NS, "duty_cycle": 0, "enable": 1}
    channel.duty = 0.015
    assert (chip / "pwm2" / "duty_cycle").read_text() == "15000" and channel.duty == pytest.approx(0.015)
    channel.close()
    channel.close()
    assert tree.channel_state(chip, 2) == {"period": PERIOD_NS, "duty_cycle": 0, "enable": 0}
    assert (chip / "unexport").read_text() == ""  # not exported here: left exported, dark and disabled


def test_a_channel_is_exported_set_up_in_the_order_the_kernel_accepts_and_given_back(kernel):
    chip = kernel.chip(0)
    channel = SysfsPWM(chip, 2, RING_PWM_HZ)  # a fresh export has period 0: the period must come first
    assert [w for w in kernel.writes] == [("class/pwm/pwmchip0/export", "2"),
                                          ("class/pwm/pwmchip0/pwm2/period", str(PERIOD_NS)),
                                          ("class/pwm/pwmchip0/pwm2/duty_cycle", "0"),
                                          ("class/pwm/pwmchip0/pwm2/enable", "1")]
    channel.duty = 0.5
    channel.frequency = 20_000  # a period shorter than the duty cycle it has: the duty cycle is shortened first
    assert kernel.channel_state(chip, 2) == {"period": 50_000, "duty_cycle": 25_000, "enable": 1}
    channel.frequency = 500
    assert kernel.channel_state(chip, 2) == {"period": 2_000_000, "duty_cycle": 1_000_000, "enable": 1}
    channel.close()
    assert not (chip / "pwm2").exists() and kernel.writes[-1] == ("class/pwm/pwmchip0/unexport", "2")


def test_a_channel_left_lit_by_an_earlier_run_is_darkened_before_its_period_changes(kernel):
    chip = kernel.chip(0)
    kernel.export(chip, 2, period=10_000_000, duty_cycle=7_000_000, enable=1)
    channel = SysfsPWM(chip, 2, RING_PWM_HZ)  # 1 ms: shorter than the 7 ms duty cycle it finds
    assert kernel.channel_state(chip, 2) == {"period": PERIOD_NS, "duty_cycle": 0, "enable": 1}
    channel.close()


def test_a_channel_the_chip_does_not_have_is_refused(kernel):
    with pytest.raises(PWMUnavailable, match="4 channels"):
        SysfsPWM(kernel.chip(0), 4, RING_PWM_HZ)


def test_lgpio_software_pwm_gives_whole_percent_steps_and_loses_light_at_low_levels():
    """The simulated lgpio pin quantises as gpiozero's LGPIOPin does: int(value * 100) percent."""
    with Illumination(PI5, pin_factory=MockFactory(pin_class=LGPIOSoftwarePWMPin)) as lights:
        ring = lights.white.pin
        assert lights.set_white(0.015) == pytest.approx(0.01) and ring.state == pytest.approx(0.01)
        assert 1 - ring.state / 0.015 == pytest.approx(1 / 3)  # a third of the light asked for is missing
        assert lights.set_white(0.29) == pytest.approx(0.28)  # 0.29 * 100 == 28.999999999999996
        assert lights.set_white(0.059) == pytest.approx(0.05)  # 15 % short
        errors = [1 - lights.set_white(level) / level for level in LOW_LEVELS]
        assert max(errors) == pytest.approx(1.0)  # 0.005 gives no light at all
        assert lights.state()["white_pwm"] == "pin factory"


def test_the_pi5_ring_runs_on_the_kernels_hardware_pwm_in_fine_steps(kernel):
    """The board's path (make_pin_factory), with gpiozero's mock pins quantising as lgpio's standing for
    the Pi's GPIO: the ring goes to RP1's PWM0 channel 2, and every level arrives within a millionth."""
    gpio = MockFactory(pin_class=LGPIOSoftwarePWMPin)
    factory = make_pin_factory(PI5, gpio=gpio, pwm_root=kernel.pwm)
    chip = kernel.chip(0)
    with Illumination(PI5, pin_factory=factory, max_level=0.8) as lights:
        for level in LOW_LEVELS:
            assert lights.set_white(level) == pytest.approx(level, rel=1e-5, abs=1e-6)  # the light given
            state = kernel.channel_state(chip, 2)
            assert state is not None and state["period"] == PERIOD_NS and state["enable"] == 1
            assert state["duty_cycle"] / state["period"] == pytest.approx(level, rel=1e-5, abs=1e-6)
        assert lights.state()["white_pwm"] == "hardware" and isinstance(factory, HardwarePWMFactory)
        with lights.flash(0.6, 0.05):
            assert kernel.channel_state(chip, 2)["duty_cycle"] == 600_000
        assert kernel.channel_state(chip, 2)["duty_cycle"] == 800_000  # back to the level before the flash
        lights.infrared.on()
        assert gpio.pin(PI5.pins.infrared).state  # the other parts stay on the board's GPIO factory
        assert all(info.name != "GPIO18" for info in gpio.pins)  # GPIO18 never claimed as a GPIO line
    assert kernel.channel_state(chip, 2) is None  # closed: dark, disabled and given back (unexported)
    factory.close()
    factory.close()


def test_illumination_made_for_the_board_closes_its_factory(kernel, monkeypatch):
    import hardware.illumination as illumination

    # lgpio stands in as gpiozero's mock pins quantising as its own; the kernel's PWM is the tree
    monkeypatch.setattr(illumination, "_gpio_factory", lambda profile: MockFactory(pin_class=LGPIOSoftwarePWMPin))
    monkeypatch.setattr(pwm, "PWM_SYSFS", kernel.pwm)
    lights = Illumination(PI5)
    lights.set_white(0.02)
    assert kernel.channel_state(kernel.chip(0), 2)["duty_cycle"] == 20_000
    lights.close()
    lights.close()
    assert kernel.channel_state(kernel.chip(0), 2) is None
    assert lights.state() == {"ok": False, "board": "pi5", "closed": True}


def test_without_the_overlay_the_ring_falls_back_to_software_pwm_and_says_so(tmp_path, caplog):
    t = SysfsPWMTree(tmp_path)
    t.add_chip(0, RP1_PWM1)
    gpio = MockFactory(pin_class=LGPIOSoftwarePWMPin)
    with caplog.at_level(logging.WARNING, logger="hardware.illumination"):
        assert make_pin_factory(PI5, gpio=gpio, pwm_root=t.pwm) is gpio
    assert "whole-percent" in caplog.text and "dtoverlay=pwm-2chan" in caplog.text


def test_a_hardware_pwm_pin_as_a_plain_gpiozero_device(kernel):
    factory = HardwarePWMFactory(MockFactory(pin_class=LGPIOSoftwarePWMPin), {19: PWMOutput(RP1_PWM0, 3)},
                                 root=kernel.pwm)
    led = PWMLED(19, pin_factory=factory, frequency=25_000)
    led.value = 0.123456
    assert kernel.channel_state(kernel.chip(0), 3) == {"period": 40_000, "duty_cycle": 4_938, "enable": 1}
    with pytest.raises(Exception, match="PWM output"):
        led.pin.function = "input"
    led.close()
    assert kernel.channel_state(kernel.chip(0), 3) is None
    factory.close()


def test_doctor_reports_the_rings_pwm(kernel, tmp_path, monkeypatch):
    from device import doctor
    from device.config import Config

    monkeypatch.setattr(pwm, "PWM_SYSFS", kernel.pwm)
    found = doctor.gpio(Config(board="pi5"))["white_ring_pwm"]
    assert found["ok"] and found["chip"].endswith("pwmchip0") and found["channel"] == 2
    monkeypatch.setattr(pwm, "PWM_SYSFS", tmp_path / "no-pwm")
    missing = doctor.gpio(Config(board="pi5"))
    assert not missing["ok"] and "dtoverlay=pwm-2chan" in missing["white_ring_pwm"]["error"]


def test_a_pwm_this_user_may_not_drive_falls_back_at_start(kernel, monkeypatch, caplog):
    """The chip is there but its export is refused (no udev rule giving the gpio group /sys/class/pwm):
    the lights still start, on software PWM, and the log says why."""
    real_write = kernel.write

    def refuse_export(path, value):
        if path.name == "export":
            raise PermissionError(13, "Permission denied", str(path))
        real_write(path, value)

    monkeypatch.setattr(pwm, "_write_attr", refuse_export)
    gpio = MockFactory(pin_class=LGPIOSoftwarePWMPin)
    with caplog.at_level(logging.WARNING, logger="hardware.illumination"):
        assert make_pin_factory(PI5, gpio=gpio, pwm_root=kernel.pwm) is gpio
    assert "Permission denied" in caplog.text
