"""The frame meter measures what reaches the unit from a real (simulated) sensor, not what the camera claims."""
from __future__ import annotations

import time

from device.capture.metered import MeteredCamera
from hardware.simulated_camera import SimulatedCamera


def test_the_meter_reports_the_sensors_rate_and_an_unplugged_camera_ages():
    camera = MeteredCamera(SimulatedCamera(size=(96, 128), fps=20.0, alignment_s=None))
    assert camera.rate() == {"count": 0, "fps": None, "last_frame_age_s": None}
    camera.start()  # reached through the meter: it is the camera to everything above it
    try:
        for _ in range(12):
            camera.read()
        rate = camera.rate()
        assert rate["count"] == 12
        assert 12 <= rate["fps"] <= 24  # paced by the sensor at 20 frames a second
        time.sleep(0.3)
        assert camera.rate()["last_frame_age_s"] >= 0.3  # nothing new arrived: the age grows
    finally:
        camera.stop()
