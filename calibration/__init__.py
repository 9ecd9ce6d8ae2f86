"""INT8 calibration of the engines and per-unit optical calibration. Never imports `device/`."""
