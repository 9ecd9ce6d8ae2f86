"""The unit's health in one small report, so a programme sees every unit it cannot visit on one page.

The same report goes three ways: `glaucoscreen health` prints it, each sync run POSTs it as JSON to
[sync] health_url, and every USB export writes it as health.json beside the visits. It holds what an IT
person asks first about a unit far away: which software and models it runs (and whether their files
still match their hashes), how full its disk is, how many results wait to be sent or were refused, the
last sending errors, the last check for new models, and how long the unit has been up.

A figure the unit does not keep is null rather than guessed. `calibration` is what the unit's own optical
calibration file (DataDir.calibration) says, as it says it, with its age in days where it names its date, or
null where the unit has none. `light_dose_totals` adds up the visit log's light ledger (every eye's radiant
exposure, the highest one eye got, the highest irradiance, the eyes whose light was stopped at a limit); null
on a unit that has no visit log yet.
"""
from __future__ import annotations

import datetime as dt
import json
import platform
import shutil
from pathlib import Path

from device.config import Config
from device.outbox import releases
from device.visits.datadir import DataDir
from device.visits.visitlog import VisitLog
from models.runtime import registry
from models.runtime.engine import EngineError
from models.runtime.installed import ModelStore, shipped_release

FILE_NAME = "health.json"
RECENT_ERRORS = 5


def report(config: Config, visits: VisitLog | None = None) -> dict:
    """The health report as of now. `visits`: the open visit log where the caller has one (else it is opened
    read as it stands, and a unit without one yet reports an empty queue)."""
    files = DataDir(config.data_dir)
    out: dict = {
        "device_id": config.device_id,
        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "software": {"version": shipped_release(), "python": platform.python_version()},
        "models": _models(files),
        "calibration": _calibration(files),
        "light_dose_totals": None,
        "disk": _disk(files.root),
        "uptime_s": _uptime(),
    }
    if visits is not None:
        out |= _queue(visits)
    elif files.visits_db.exists():
        with VisitLog(config.data_dir) as opened:
            out |= _queue(opened)
    else:
        out |= {"queue": {"pending": 0, "sent": 0, "quarantined": 0}, "last_errors": [], "last_attempt": None}
    check = _release_check(files)
    if check is not None:
        out["model_update"] = check
    return out


def _models(files: DataDir) -> dict:
    store = ModelStore(files.models)
    try:
        folder, release, _ = store.active()
    except EngineError as exc:
        return {"ok": False, "error": str(exc)}
    damaged = []
    try:
        entries = registry.manifest(folder)
        for name, entry in entries.items():
            if not isinstance(entry, dict) or "file" not in entry:
                continue
            for precision in ["fp32"] + [p for p in ("int8",) if isinstance(entry.get(p), dict)]:
                try:
                    registry.model_file(name, precision, folder)
                except EngineError as exc:
                    damaged.append(str(exc))
    except (EngineError, ValueError) as exc:
        return {"ok": False, "release": release, "error": str(exc)}
    return {"ok": not damaged, "release": release, "shipped": release == store.shipped_version,
            "versions": registry.versions(folder), **({"damaged": damaged} if damaged else {})}


def _calibration(files: DataDir) -> dict | None:
    """The optical calibration file as it stands, or None where there is none; one that cannot be read says so
    (the report goes out all the same)."""
    try:
        found = json.loads(files.calibration.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"error": f"{files.calibration.name} cannot be read: {exc}"}
    if not isinstance(found, dict):
        return {"error": f"{files.calibration.name} is not a JSON object"}
    try:
        when = dt.datetime.fromisoformat(str(found["date"]))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
    except (KeyError, ValueError):
        return found  # a file that names no date: its age is not ours to guess
    return found | {"age_days": round((dt.datetime.now(dt.timezone.utc) - when).total_seconds() / 86400, 1)}


def _disk(root: Path) -> dict:
    probe = root if root.exists() else next((p for p in root.parents if p.exists()), Path("/"))
    usage = shutil.disk_usage(probe)
    return {"free_bytes": usage.free, "total_bytes": usage.total,
            "free_fraction": round(usage.free / usage.total, 4) if usage.total else None}


def _queue(visits: VisitLog) -> dict:
    return {"queue": visits.outbox_counts(), "last_errors": visits.outbox_recent_failures(RECENT_ERRORS),
            "last_attempt": visits.outbox_last_attempt(), "light_dose_totals": visits.light_dose_totals()}


def _uptime() -> float | None:
    try:
        return round(float(Path("/proc/uptime").read_text().split()[0]), 1)
    except (OSError, ValueError, IndexError):
        return None


def _release_check(files: DataDir) -> dict | None:
    try:
        return json.loads((files.models / releases.RECORD).read_text())
    except (OSError, ValueError):
        return None


def _calibration_text(calibration: dict | None) -> str:
    if calibration is None:
        return "none on this unit"
    if "error" in calibration:
        return f"UNREADABLE: {calibration['error']}"
    return json.dumps(calibration, sort_keys=True)


def as_text(health: dict) -> str:
    """The report as an IT person reads it on a terminal (`glaucoscreen health --json` gives the JSON)."""
    models = health["models"]
    disk = health["disk"]
    queue = health["queue"]
    lines = [f"unit {health['device_id']} at {health['at']}",
             f"software  {health['software']['version']} (Python {health['software']['python']})"]
    if models.get("error"):
        lines.append(f"models    NOT LOADABLE: {models['error']}")
    else:
        state = "files match their hashes" if models.get("ok") else "DAMAGED: " + "; ".join(models.get("damaged", []))
        lines.append(f"models    release {models['release']}{' (shipped)' if models.get('shipped') else ''}, {state}")
        lines += [f"          {name} {version}" for name, version in sorted(models.get("versions", {}).items())]
    lines.append(f"calibration {_calibration_text(health['calibration'])}")
    doses = health.get("light_dose_totals")
    lines.append(f"light dose {'not recorded yet' if doses is None else json.dumps(doses, sort_keys=True)}")
    lines.append(f"disk      {disk['free_bytes'] / 2**30:.1f} GB free of {disk['total_bytes'] / 2**30:.1f} GB")
    lines.append(f"queue     {queue['pending']} waiting to be sent, {queue['quarantined']} quarantined, {queue['sent']} sent")
    for error in health.get("last_errors", []):
        lines.append(f"error     {error['at']} {error['outcome']}: {error['error']}")
    if health.get("model_update"):
        update = health["model_update"]
        lines.append(f"updates   checked {update.get('checked_at')}: {update.get('outcome')}")
    if health.get("uptime_s") is not None:
        lines.append(f"uptime    {dt.timedelta(seconds=int(health['uptime_s']))}")
    return "\n".join(lines)
