"""`glaucoscreen doctor`: what this unit found of itself, for the clinic's IT person.

Every check reports what it found or why not, and never raises: a doctor that crashes on the
problem it should describe is no help.
"""
from __future__ import annotations

import importlib
import os
import platform
import shutil
from pathlib import Path
from typing import Any

from device.config import Config
from device.visits.datadir import DataDir


def _check(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the point is to report any failure
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def board(cfg: Config) -> dict:
    from hardware import boards

    profile = boards.profile(cfg.board)
    return {"ok": True, "name": profile.name, "description": getattr(profile, "description", ""),
            "machine": platform.machine(), "python": platform.python_version()}


def camera(cfg: Config) -> dict:
    """The board's camera backend, and the OpenCV build in use (which one, and whether it has GStreamer).

    On a Jetson the CSI camera needs GStreamer: through its Python binding, or through an OpenCV built
    with it. With neither, the check fails with what to do, as the camera itself would refuse to start.
    """
    from hardware.camera import opencv_build

    opencv = opencv_build()
    if cfg.simulate:
        return {"ok": True, "backend": "simulated", "opencv": opencv}
    from hardware import boards

    profile = boards.profile(cfg.board)
    backend = profile.camera_backend
    found: dict[str, Any] = {"backend": backend, "opencv": opencv}
    if backend == "picamera2":
        found["module"] = _import_state("picamera2")
    devices = sorted(str(p) for p in Path("/dev").glob("video*"))
    found["devices"] = devices
    if backend == "gstreamer":
        from hardware.argus import capture_paths, full_sensor_mode, sensor_modes

        paths = capture_paths(opencv=opencv)
        found["gstreamer_python"] = paths["gstreamer_python"]
        found["transport"] = paths["transport"]
        if paths["transport"] is None:
            found.update(ok=False, error=f"the Argus camera is refused: {paths['error']}")
            return found
        found["live_controls"] = paths["transport"] == "gst"  # else each exposure change restarts the camera
        try:
            mode = full_sensor_mode(sensor_modes("/dev/video0"))
            found["sensor_mode"] = f"{mode.width}x{mode.height} at {mode.fps:g} frames/s"
        except (OSError, ValueError) as exc:
            found["sensor_mode"] = f"not read from /dev/video0 ({exc})"
    found["ok"] = bool(devices) or found.get("module", {}).get("ok", False)
    if not found["ok"]:
        found["error"] = "no camera device found (is the optic module's cable seated?)"
    return found


def gpio(cfg: Config) -> dict:
    from hardware import boards

    profile = boards.profile(cfg.board)
    factory = "mock" if cfg.simulate else profile.pin_factory
    out: dict[str, Any] = {"pin_factory": factory, "gpiozero": _import_state("gpiozero")}
    if factory == "jetson-gpio":
        out["pin_factory_from"] = "hardware/jetson_gpio.py (gpiozero ships none for a Jetson)"
    if factory not in ("mock", None):
        driver = boards.GPIO_DRIVERS.get(factory, factory)
        out["driver"] = {"module": driver, **_import_state(driver)}
        out["ok"] = out["driver"]["ok"]
    else:
        out["ok"] = out["gpiozero"]["ok"]
    if not cfg.simulate and profile.ring_pwm is not None:
        out["white_ring_pwm"] = _ring_pwm(profile)
        out["ok"] = out["ok"] and out["white_ring_pwm"]["ok"]
    return out


def _ring_pwm(profile) -> dict:
    """Whether the kernel PWM channel that dims the white ring is there (else the ring is on software PWM)."""
    from hardware import pwm

    want = profile.ring_pwm
    found = {"device": want.device, "channel": want.channel}
    try:
        chip = pwm.find_pwm_chip(want.device, pwm.PWM_SYSFS)
    except pwm.PWMUnavailable as exc:
        return {"ok": False, **found, "error": (f"{exc}; the white ring would run on {profile.pin_factory}'s software "
                                                 f"PWM, in whole-percent steps. Fix: {want.enable}")}
    return {"ok": True, **found, "chip": str(chip)}


def serial_port(cfg: Config) -> dict:
    from hardware import boards

    profile = boards.profile(cfg.board)
    port = profile.serial_port
    if cfg.simulate:
        return {"ok": True, "port": "simulated optic module (pseudo-terminal)"}
    if not port:
        return {"ok": False, "port": None, "error": "this board has no optic-module serial port configured"}
    exists = os.path.exists(port)
    return {"ok": exists, "port": port, **({} if exists else {"error": f"{port} does not exist"})}


def inference(cfg: Config) -> dict:
    out: dict = {}
    try:
        import onnxruntime as ort

        out["onnxruntime"] = {"ok": True, "version": ort.__version__, "providers": ort.get_available_providers()}
    except ImportError as exc:
        out["onnxruntime"] = {"ok": False, "error": str(exc)}
    trt = _import_state("tensorrt")
    if not trt["ok"]:
        trt["why"] = "TensorRT is not installed (it comes with JetPack on a Jetson); ONNX Runtime runs the models"
    out["tensorrt"] = trt
    from models.runtime import registry

    out["backend"] = "tensorrt" if registry.have_tensorrt() else "onnxruntime"
    out["int8_dot_product_cpu"] = registry.cpu_has_int8_dot()
    # what `precision = "auto"` picks on this unit: the same measured choice the pipeline reads at start
    out["precision"] = {"segmentation": registry.preferred_precision("segmentation", measure_in=DataDir(cfg.data_dir).engines)}
    out["ok"] = out["onnxruntime"]["ok"]
    return out


def models(cfg: Config | None = None) -> dict:
    """Every model file of the active models (the installed version in use, else the shipped ones) against its hash."""
    from models.runtime import registry
    from models.runtime.installed import active_artifacts

    artifacts = registry.ARTIFACTS if cfg is None else active_artifacts(DataDir(cfg.data_dir).models)
    entries = registry.manifest(artifacts)
    found = {}
    ok = True
    for name, entry in entries.items():
        if not isinstance(entry, dict) or "file" not in entry:
            continue
        for precision in ["fp32"] + [p for p in ("int8",) if p in entry]:
            key = name if precision == "fp32" else f"{name}.{precision}"
            try:
                path, e = registry.model_file(name, precision, artifacts)
                found[key] = {"ok": True, "file": path.name, "sha256": e["sha256"], "version": e.get("version"),
                              "bytes": path.stat().st_size}
            except Exception as exc:  # noqa: BLE001 - every model is checked, each failure reported
                ok = False
                found[key] = {"ok": False, "error": str(exc)}
    policy = artifacts / "screening.json"
    found["referral_policy"] = {"ok": policy.exists(), "file": policy.name}
    return {"ok": ok and bool(found), **found}


def data_dir(cfg: Config) -> dict:
    d = cfg.data_dir
    probe = d if d.exists() else next((p for p in d.parents if p.exists()), Path("/"))
    usage = shutil.disk_usage(probe)
    writable = os.access(probe, os.W_OK)
    return {"ok": writable and usage.free > 200 * 2**20, "path": str(d), "exists": d.exists(), "writable": writable,
            "free_bytes": usage.free, "free_gib": round(usage.free / 2**30, 2)}


def calibration(cfg: Config) -> dict:
    """The optic module's calibration: its version and age, and whether it belongs to the module. The module's
    serial number is the simulator's in simulation, else the one the unit last saw (the doctor does not open the
    module's port, which the kiosk holds). Stale, missing or another module's: a warning, not a failure (the
    unit screens without it); unreadable: a failure."""
    from device.capture import calibration as optics
    from hardware.optic_module_sim import DEFAULT_SERIAL

    serial = DEFAULT_SERIAL if cfg.simulate else optics.module_last_seen(cfg)
    found = optics.state(cfg, serial)
    out = found.to_dict(cfg.calibration.max_age_days)
    out["file"] = str(optics.calibration_file(cfg))
    if serial is None:
        out["module_serial"] = "not known yet: the unit has not run with its optic module"
    out["ok"] = found.error is None
    return out


def _import_state(module: str) -> dict:
    try:
        m = importlib.import_module(module)
        return {"ok": True, "version": getattr(m, "__version__", "unknown")}
    except Exception as exc:  # noqa: BLE001 - ImportError, or a driver failing at import
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def report(cfg: Config) -> dict:
    checks = {
        "board": _check(lambda: board(cfg)),
        "camera": _check(lambda: camera(cfg)),
        "gpio": _check(lambda: gpio(cfg)),
        "serial": _check(lambda: serial_port(cfg)),
        "inference": _check(lambda: inference(cfg)),
        "models": _check(lambda: models(cfg)),
        "data_dir": _check(lambda: data_dir(cfg)),
        "calibration": _check(lambda: calibration(cfg)),
    }
    checks["ok"] = all(c.get("ok") for c in checks.values() if isinstance(c, dict))
    return checks


def as_text(report: dict) -> str:
    """The checks as an IT person reads them on a terminal: one heading per check, marked ok or FAILED,
    and its facts below it, nested facts indented (`glaucoscreen doctor --json` gives the same as JSON)."""
    lines = []

    def facts(value: dict, indent: int) -> None:
        for key, item in value.items():
            if key == "ok":
                continue
            label = " " * indent + key.replace("_", " ")
            if isinstance(item, dict):
                mark = "" if "ok" not in item else (" (ok)" if item["ok"] else " (FAILED)")
                lines.append(f"{label}:{mark}")
                facts(item, indent + 2)
            elif isinstance(item, list):
                lines.append(f"{label}: {', '.join(str(i) for i in item) or '-'}")
            else:
                lines.append(f"{label}: {item}")

    for name, check in report.items():
        if name == "ok" or not isinstance(check, dict):
            continue
        mark = ("WARN  " if check.get("warnings") else "ok    ") if check.get("ok") else "FAILED"
        lines.append(f"{mark} {name.replace('_', ' ')}")
        facts(check, 7)
    lines.append("All checks passed." if report.get("ok") else "Some checks FAILED: see above.")
    return "\n".join(lines)
