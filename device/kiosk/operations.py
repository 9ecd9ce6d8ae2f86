"""The administrator's view of the unit's insides: which models run and on what (and installing new ones, from a
file chosen in the browser or from a USB stick, or going back), the camera, lights and optic module as they are
now, and the storage.

Everything is read from the running unit (the engine it loaded, the capture loop's published state,
the lights' own state) or from `glaucoscreen doctor`'s checks, so the page shows what the unit is
doing rather than what a second look at the hardware would find.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext

from device import doctor
from device.kiosk import get_unit, languages
from device.kiosk.home import LOW_DISK_BYTES, unit_status
from device.kiosk.languages import english, filled
from device.kiosk.security import require_admin
from device.kiosk.usb_export import find_drives
from device.screening import model_update
from device.visits.datadir import DataDir
from models.runtime import registry
from models.runtime.engine import EngineError
from models.runtime.installed import active_artifacts

bp = Blueprint("operations", __name__, url_prefix="/admin")
log = logging.getLogger(__name__)

BACKEND_NAMES = {"onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT"}
MAX_BUNDLE_BYTES = 2 * 2**30
UPLOAD_PREFIX = "upload-"
BUNDLE_SUFFIX = ".tar"  # what `glaucoscreen models pack` writes
PROVIDER_NAMES = {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "CUDA GPU", "TensorrtExecutionProvider": "TensorRT"}


bp.before_request(require_admin)


@bp.app_template_filter("size")
def size(n: int | float | None) -> str:
    """Bytes as a person reads them, in the page's language (`languages.size`)."""
    return languages.size(n)


def _checked(fn, *args) -> dict:
    """A doctor check that cannot take the page down with it."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - the page says what failed instead
        log.exception("admin page: %s failed", getattr(fn, "__name__", fn))
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


# -- models -------------------------------------------------------------------------------------
def describe_engine(engine) -> dict | None:
    """The engine the screening pipeline holds, as loaded: backend, precision, file, threads."""
    if engine is None:
        return None
    out = {"name": engine.name, "precision": engine.precision, "backend": engine.backend,
           "backend_name": BACKEND_NAMES.get(engine.backend, engine.backend), "version": getattr(engine, "version", None)}
    path = getattr(engine, "path", None)
    if path is not None:
        out["file"] = Path(path).name
    session_ = getattr(engine, "session", None)
    if session_ is not None:  # ONNX Runtime
        options = session_.get_session_options()
        out["threads"] = options.intra_op_num_threads
        out["providers"] = [PROVIDER_NAMES.get(p, p) for p in session_.get_providers()]
        out["backend_name"] += " (" + ", ".join(out["providers"]) + ")"
    engine_file = getattr(engine, "engine_file", None)
    if engine_file is not None:  # TensorRT: the cached engine built for this GPU
        out["engine_file"] = Path(engine_file).name
    return out


def model_rows(unit, files: dict) -> tuple[list[dict], str | None]:
    """One row per model in the manifest, each build (FP32, INT8) with its hash check (`files`, from
    `doctor.models`), and which one runs."""
    try:
        artifacts = active_artifacts(DataDir(unit.config.data_dir).models)  # the active version's
        manifest = registry.manifest(artifacts)
    except EngineError as exc:
        return [], str(exc)
    running = {e.name: describe_engine(e) for e in unit.engines()}
    not_run: set[str] = getattr(unit.pipeline, "not_run", set())  # installed, but the referral rule does not use it
    engine_cache = DataDir(unit.config.data_dir).engines  # where the pipeline remembered what it measured
    rows = []
    for name, entry in manifest.items():
        if not isinstance(entry, dict) or "file" not in entry:
            continue
        loaded = running.get(name)
        builds = []
        for precision in ["fp32"] + [p for p in ("int8",) if isinstance(entry.get(p), dict)]:
            build = entry if precision == "fp32" else entry[precision]
            found = files.get(name if precision == "fp32" else f"{name}.{precision}", {})
            builds.append({"precision": precision, "file": build.get("file"), "version": build.get("version"),
                           "sha256": build.get("sha256"), "verified": bool(found.get("ok")), "error": found.get("error"),
                           "bytes": found.get("bytes"),
                           "in_use": bool(loaded and loaded["precision"] == precision)})
        rows.append({"name": name, "version": entry.get("version"), "builds": builds,
                     "not_loaded": getattr(unit, "model_errors", {}).get(name),
                     "not_run": name in not_run,
                     "shipped_precision": registry.shipped_precision(name, artifacts),
                     "preferred_precision": registry.preferred_precision(name, artifacts, measure_in=engine_cache),
                     "loaded": loaded})
    return rows, None


@bp.get("/models")
def models():
    unit = get_unit()
    files = _checked(doctor.models, unit.config)
    rows, manifest_error = model_rows(unit, files)
    versions = unit.pipeline.model_versions if unit.pipeline is not None else {}
    installed = _checked(lambda: {"ok": True, "versions": model_update.listing(unit.config)})
    return render_template("models.html", rows=rows, manifest_error=manifest_error, model_error=unit.model_error,
                           installed=installed, on_sticks=bundles_on_sticks(), update_error=getattr(unit, "model_errors", {}).get("update"),
                           inference=_checked(doctor.inference, unit.config), precision_setting=unit.config.precision,
                           referral=versions.get("referral"), policy=files.get("referral_policy", {}),
                           measured_on=unit.pipeline.policy.operating_point.get("cameras") if unit.pipeline is not None else None,
                           decides_on=unit.pipeline.policy.described() if unit.pipeline is not None else None)


def bundles_on_sticks() -> list[dict]:
    """The model bundles (.tar files at the top of a stick) on the USB drives the export page offers. The Models
    page lists them to install with one touch: a touch screen has no good way to drive a browser's file dialog,
    and the programme sends its releases on a stick to a unit that never reaches the network."""
    found = []
    for drive in find_drives(current_app.config["EXPORT_ROOTS"], current_app.config["EXPORT_MOUNTED_ONLY"]):
        try:
            files = sorted((p for p in Path(drive["path"]).iterdir()
                            if p.suffix.lower() == BUNDLE_SUFFIX and not p.name.startswith(".") and not p.is_symlink()
                            and p.is_file()), key=lambda p: p.name)
            found += [{"drive": drive["path"], "drive_name": drive["name"], "name": p.name, "bytes": p.stat().st_size}
                      for p in files]
        except OSError:  # a stick pulled while it was being looked at
            continue
    return found


@bp.url_value_preprocessor
def _room_for_a_bundle(endpoint: str | None, values: dict | None) -> None:
    """A model bundle is tens of megabytes; every other form is small (MAX_CONTENT_LENGTH). Raised for an
    administrator's upload only, before the CSRF check reads the form (this runs before any before_request)."""
    if endpoint == "operations.install_models" and session.get("admin"):
        request.max_content_length = MAX_BUNDLE_BYTES


@bp.post("/models/install")
def install_models():
    """Install an uploaded bundle as `glaucoscreen models install` does, then load it: the next screening
    already uses it. Refused bundles change nothing, and the page says why."""
    unit = get_unit()
    upload = request.files.get("bundle")
    if upload is None or not upload.filename:
        flash(gettext("Choose the model bundle file (a .tar from the programme) first."), "warning")
        return redirect(url_for("operations.models"))
    folder = DataDir(unit.config.data_dir).models
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(UPLOAD_PREFIX + "*"):  # an upload a power cut interrupted
        stale.unlink(missing_ok=True)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=UPLOAD_PREFIX, suffix=".tar")
    os.close(fd)
    try:
        upload.save(temp)
        _install(unit, Path(temp), upload.filename)
    finally:
        Path(temp).unlink(missing_ok=True)
    return redirect(url_for("operations.models"))


@bp.post("/models/install-from-usb")
def install_models_from_usb():
    """Install a bundle the page found on a USB stick, read where it lies (a pulled stick is a refusal like a
    damaged bundle: nothing changes). Only a file the page offers is taken: the form names a drive and a file,
    never a path the unit would follow elsewhere."""
    unit = get_unit()
    drive, name = request.form.get("drive", ""), request.form.get("name", "")
    if (drive, name) not in {(b["drive"], b["name"]) for b in bundles_on_sticks()}:
        flash(gettext("%(name)s is not on a USB stick any more: plug the stick in again and look again.",
                      name=name or "?"), "warning")
    else:
        _install(unit, Path(drive) / name, name)
    return redirect(url_for("operations.models"))


def _install(unit, bundle: Path, shown_as: str) -> None:
    """Install as `glaucoscreen models install` does, then load it: the next screening already uses it. A refused
    bundle changes nothing, and the page says why under the name the administrator knows it by."""
    try:
        report = model_update.install(unit.config, bundle)
    except model_update.UpdateRefused as exc:
        flash(filled(gettext("Refused; nothing was changed. %(reason)s"), reason=english(str(exc).replace(bundle.name, shown_as))),
              "warning")  # why, in the update's own words: for the IT person
        return
    unit.reload_models()
    log.info("models %s installed from the kiosk (%s) by %s (was %s)", report["installed"], shown_as, session.get("user"),
             report["previous"])
    flash(gettext("Models version %(version)s are installed and in use (before: %(before)s).", version=report["installed"],
                  before=report["previous"]), "info")


@bp.post("/models/rollback")
def rollback_models():
    unit = get_unit()
    try:
        report = model_update.rollback(unit.config)
    except model_update.UpdateRefused as exc:
        flash(filled(gettext("Refused; nothing was changed. %(reason)s"), reason=english(exc)), "warning")
        return redirect(url_for("operations.models"))
    unit.reload_models()
    log.info("models rolled back from the kiosk by %s: %s -> %s", session.get("user"), report["previous"], report["version"])
    flash(gettext("Back to models version %(version)s (before: %(before)s).", version=report["version"], before=report["previous"]),
          "info")
    return redirect(url_for("operations.models"))


# -- camera, lights, optic module ---------------------------------------------------------------
@bp.get("/devices")
def devices():
    unit = get_unit()
    cfg = unit.config
    status = unit_status()
    capture = unit.capture.state()
    return render_template(
        "devices.html", status=status, camera=status.get("camera", {}), lights=status.get("illumination", {}),
        module=unit.optic_module_state(identity=status.get("optic_module")), capture=capture, led_cap=cfg.led_safety_cap, settings=cfg.capture,
        board=_checked(doctor.board, cfg), camera_check=_checked(doctor.camera, cfg),
        gpio=_checked(doctor.gpio, cfg), serial=_checked(doctor.serial_port, cfg),
        calibration=status.get("calibration", {}))


@bp.post("/devices/calibrate")
def calibrate():
    """Calibrate the optic module while the administrator holds the grey target against it, as the page says:
    the capture loop pauses for the seconds it takes. A refused calibration saves nothing, and the page says why
    in the calibration's own words (for the IT person)."""
    from calibration.measure import CalibrationRefused

    unit = get_unit()
    text = request.form.get("light_meter", "").strip().replace(",", ".")
    reading = None
    if text:
        try:
            reading = float(text)
        except ValueError:
            reading = -1.0
        if not (math.isfinite(reading) and reading > 0):
            flash(gettext("The light meter reading must be a number of mW/cm², such as 0.15, or left empty. Nothing "
                          "was calibrated."), "warning")
            return redirect(url_for("operations.devices"))
    try:
        made = unit.calibrate(light_meter_mw_cm2=reading)
    except CalibrationRefused as exc:
        flash(filled(gettext("Calibration refused; nothing was saved. %(reason)s"), reason=english(exc)), "warning")
        return redirect(url_for("operations.devices"))
    except Exception as exc:  # noqa: BLE001 - a camera or module failing mid-way is said on the page, not a crash
        log.exception("calibration from the kiosk failed")
        flash(filled(gettext("Calibration refused; nothing was saved. %(reason)s"), reason=english(exc)), "warning")
        return redirect(url_for("operations.devices"))
    log.info("optic module calibrated from the kiosk by %s: version %d", session.get("user"), made.version)
    flash(gettext("The optic module is calibrated (version %(version)s). Every photo is corrected with it from now on.",
                  version=made.version), "info")
    return redirect(url_for("operations.devices"))


# -- storage ------------------------------------------------------------------------------------
def bytes_by_part(root: Path) -> dict[str, tuple[int, int]]:
    """(bytes, files) under each top-level entry of `root` (files directly in it under ""), in one walk:
    the image store may hold thousands of photos on an SD card, so it is walked once per page."""
    out: dict[str, list[int]] = {}
    stack = [(Path(root), "")]
    while stack:
        folder, part = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), part or entry.name))
                elif entry.is_file(follow_symlinks=False):
                    totals = out.setdefault(part, [0, 0])
                    totals[0] += entry.stat(follow_symlinks=False).st_size
                    totals[1] += 1
            except OSError:
                continue
    return {k: (v[0], v[1]) for k, v in out.items()}


def storage_figures(unit) -> dict:
    """Free and used space of the data directory's disk, what the unit's own parts take of it, and the
    limits: below `min_free_bytes` a new visit is refused; below LOW_DISK_BYTES the home page warns."""
    files = DataDir(unit.config.data_dir)
    data_dir = files.root
    usage = shutil.disk_usage(data_dir)
    visits = unit.visits
    log_bytes = sum(p.stat().st_size for p in files.visits_db_files())
    parts = bytes_by_part(data_dir)
    image_bytes, photos = parts.get(Path(visits.images.root).name, (0, 0))
    engine_bytes, _ = parts.get(files.engines.name, (0, 0))
    everything = sum(b for b, _ in parts.values())
    finished = visits.count_finished()
    per_visit = (log_bytes + image_bytes) / finished if finished else None
    room = usage.free - visits.min_free_bytes
    return {
        "path": str(data_dir), "total": usage.total, "used": usage.used, "free": usage.free,
        "used_fraction": usage.used / usage.total if usage.total else None,
        "visit_log": log_bytes, "images": image_bytes, "photos": photos, "engines": engine_bytes,
        "other": max(0, everything - log_bytes - image_bytes - engine_bytes),
        "refuse_below": visits.min_free_bytes, "warn_below": LOW_DISK_BYTES,
        "finished_visits": finished, "per_visit": per_visit,
        "visits_left": int(room // per_visit) if per_visit and room > 0 else (0 if room <= 0 else None),
        "state": "full" if usage.free < visits.min_free_bytes else ("low" if usage.free < LOW_DISK_BYTES else "ok"),
    }


@bp.get("/storage")
def storage():
    unit = get_unit()
    return render_template("storage.html", disk=storage_figures(unit), check=_checked(doctor.data_dir, unit.config))
