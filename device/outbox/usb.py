"""Export finished visits to a folder (a USB stick), for a clinic whose unit cannot reach a PACS.

Layout under the chosen folder:
    <visit uuid>/<eye>/photo.dcm, segmentation.dcm, report.dcm   the files sync sends, byte for byte
    <visit uuid>/<eye>/fhir-bundle.json                            the eye as a FHIR transaction bundle, as an
                                                                   EHR would get it (device.outbox.fhir)
    visits.csv                                                     one row per screened eye, for a spreadsheet
    health.json                                                    the unit's health report (device.outbox.health)

A stick can be pulled at any moment, so every file is written under a temporary name, flushed to the
stick and only then renamed: a final name always holds a whole file. Before each eye the free space
is checked against the eye's files, so a full stick stops the export between eyes with a message
rather than in the middle of one. Exporting again to the same stick replaces the visits exported
again and keeps the other rows of visits.csv, so the sheet always describes the folders beside it.
"""
from __future__ import annotations

import csv
import datetime as dt
import errno
import io
import json
import shutil
from pathlib import Path
from typing import Callable

from pydicom import dcmread

from device.outbox import fhir
from device.outbox import health as health_report
from device.outbox.study import Unencodable, encode_item
from device.visits.followup import follow_up
from device.visits.visitlog import OUTBOX_KIND, VisitLog
from models.runtime.durable import write_whole

CSV_NAME = "visits.csv"
CSV_FIELDS = ("visit", "patient", "date", "eye", "vcdr", "glaucoma_probability", "referral")
# Every referred patient and where they stand, as of the export: the clinic follows them up from this sheet.
REFERRED_NAME = "referred.csv"
REFERRED_FIELDS = ("visit", "patient", "name", "phone", "address", "referred_on", "go_by", "state", "days_overdue",
                   "attended_on", "recorded_by")
FILE_NAMES = {"OP": "photo.dcm", "SEG": "segmentation.dcm", "SR": "report.dcm"}
HEALTH_NAME = health_report.FILE_NAME
TEMP_PREFIX = ".partial-"
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # EFBIG: a FAT stick's 4 GiB limit, or a size limit
_MARGIN = 256 * 1024  # the file system's own bookkeeping for a few files, and visits.csv


class ExportError(RuntimeError):
    """The export could not be written; the message says what to do about the stick."""


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _check_target(out: Path) -> None:
    if not out.exists():
        raise ExportError(f"{out} does not exist: is the USB stick plugged in and mounted?")
    if not out.is_dir():
        raise ExportError(f"{out} is a file, not a folder: choose the USB stick's folder")
    probe = out / f"{TEMP_PREFIX}probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ExportError(f"cannot write to {out} ({exc.strerror}): is the stick write-protected or mounted "
                          "read-only?") from None


def _chosen(visits: VisitLog, visit_uuid: str | None, since: dt.date | None, until: dt.date | None) -> list[str]:
    if visit_uuid is None:
        return visits.finished_visits(since, until)
    if since is not None or until is not None:
        raise ValueError("export one visit or the visits of a date range, not both")
    status = visits.get_visit(visit_uuid)["status"]
    if status != "finished":
        raise ValueError(f"visit {visit_uuid} is {status}, not finished: only finished visits are exported")
    return [visit_uuid]


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _earlier_rows(csv_path: Path) -> list[dict]:
    """The rows of an earlier export to this folder; read before anything is written, so a foreign file stops
    the export while the stick is still untouched."""
    if not csv_path.exists():
        return []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != CSV_FIELDS:
            raise ExportError(f"{csv_path} was not written by a GlaucoScreen export (its columns differ): "
                              "export to an empty folder, or move that file away")
        return list(reader)


def _merged(earlier: list[dict], rows: list[dict]) -> list[dict]:
    """This export's rows plus those of visits exported there before and not again now, by date."""
    exported = {r["visit"] for r in rows}
    kept = [r for r in earlier if r["visit"] not in exported]
    return sorted(kept + rows, key=lambda r: (r["date"], r["visit"], r["eye"] != "right"))


def _csv_bytes(rows: list[dict], fields: tuple[str, ...] = CSV_FIELDS) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\r\n")  # opens cleanly in a spreadsheet
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")


def export(visits: VisitLog, out: Path, *, visit_uuid: str | None = None, since: dt.date | None = None,
           until: dt.date | None = None, device_id: str, progress: Callable[[int, int], None] | None = None,
           refer_within_days: int = 30, today: dt.date | None = None, health: dict | None = None) -> dict:
    """Write one finished visit (`visit_uuid`), or the finished visits started from `since` to `until` (days
    included, the unit's local time; None leaves that end open), to the folder `out`.

    Returns what was written: visits, eyes, files, bytes, the CSV's path, and the eyes skipped because they
    cannot be encoded (a damaged photo), each with its reason. Raises ExportError when the stick is missing,
    read-only or full, and ValueError/LookupError for a visit that cannot be exported. `progress(done, total)`
    is called with the visits written so far, before the first and after each, for a screen that shows it.
    Every export also writes the whole referred list as it stands `today` (REFERRED_NAME) and, given the unit's
    `health` report (device.outbox.health), that as HEALTH_NAME: a unit that never reaches the network is
    still seen by the programme through its sticks.
    """
    out = Path(out)
    chosen = _chosen(visits, visit_uuid, since, until)
    _check_target(out)
    csv_path = out / CSV_NAME
    earlier = _earlier_rows(csv_path)
    rows: list[dict] = []
    skipped: list[dict] = []
    files = written = 0
    if progress is not None:
        progress(0, len(chosen))
    for done, uuid in enumerate(chosen, 1):
        visit = visits.get_visit(uuid)
        day = dt.datetime.fromisoformat(visit["started_at"]).astimezone().date().isoformat()
        for item in visit["outbox"]:
            if item["kind"] != OUTBOX_KIND:
                continue  # the same eye's FHIR item: its bundle is written below, beside the DICOM files
            encoded = encode_item(visits, item["id"], device_id)
            if isinstance(encoded, Unencodable):
                skipped.append({"visit": uuid, "eye": item["eye"], "reason": encoded.reason})
                continue
            try:
                bundle = fhir.encode_item(visits, item["id"], device_id)
            except (ValueError, LookupError) as exc:
                skipped.append({"visit": uuid, "eye": item["eye"], "reason": f"no FHIR bundle: {exc}"})
                continue
            size = sum(len(data) for data in encoded) + len(bundle)
            free = shutil.disk_usage(out).free
            if free < size + _MARGIN:
                raise ExportError(_full_message(out, free, size + _MARGIN, len(rows)))
            folder = out / uuid / item["eye"]
            try:
                folder.mkdir(parents=True, exist_ok=True)
                for data in encoded:
                    modality = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["Modality"]).Modality
                    write_whole(folder / FILE_NAMES[modality], data, TEMP_PREFIX)
                write_whole(folder / fhir.FILE_NAME, bundle, TEMP_PREFIX)
            except OSError as exc:
                raise _write_error(out, exc, size, len(rows)) from None
            files += len(encoded) + 1
            written += size
            result = visit["eyes"][item["eye"]]["result"]
            rows.append({"visit": uuid, "patient": visit["patient"]["identifier"], "date": day, "eye": item["eye"],
                         "vcdr": _number(result["vcdr"]), "glaucoma_probability": _number(result["glaucoma_probability"]),
                         "referral": result["referral"]})
        if progress is not None:
            progress(done, len(chosen))
    if rows:
        table = _csv_bytes(_merged(earlier, rows))
        try:
            write_whole(csv_path, table, TEMP_PREFIX)
        except OSError as exc:
            raise _write_error(out, exc, len(table), len(rows)) from None
        written += len(table)
    referred = _referred_bytes(visits, refer_within_days, today or dt.date.today())
    try:
        write_whole(out / REFERRED_NAME, referred, TEMP_PREFIX)
    except OSError as exc:
        raise _write_error(out, exc, len(referred), len(rows)) from None
    written += len(referred)
    if health is not None:
        report = (json.dumps(health, indent=1, default=str) + "\n").encode("utf-8")
        try:
            write_whole(out / HEALTH_NAME, report, TEMP_PREFIX)
        except OSError as exc:
            raise _write_error(out, exc, len(report), len(rows)) from None
        written += len(report)
    return {"out": str(out), "visits": len({r["visit"] for r in rows}), "eyes": len(rows), "files": files,
            "bytes": written, "csv": str(csv_path) if rows else None, "skipped": skipped,
            "referred_csv": str(out / REFERRED_NAME), "health_json": str(out / HEALTH_NAME) if health is not None else None}


def _referred_bytes(visits: VisitLog, refer_within_days: int, today: dt.date) -> bytes:
    rows = [{"visit": r["visit_uuid"], "patient": r["identifier"], "name": r["name"] or "", "phone": r["phone"] or "",
             "address": r["address"] or "", "referred_on": r["visited_on"].isoformat(), "go_by": r["go_by"].isoformat(),
             "state": r["state"], "days_overdue": r["days_overdue"], "attended_on": r["attended_on"] or "",
             "recorded_by": r["recorded_by"] or ""}
            for r in follow_up(visits.referred_visits(), refer_within_days, today)]
    return _csv_bytes(rows, REFERRED_FIELDS)


def _full_message(out: Path, free: int, needed: int, eyes_done: int) -> str:
    return (f"the USB stick at {out} is full: {_mib(free)} free, {_mib(needed)} needed for the next eye. "
            f"{eyes_done} eyes were written whole but are not yet listed in {CSV_NAME}; "
            "free space on the stick (or use a larger one) and export again.")


def _write_error(out: Path, exc: OSError, needed: int, eyes_done: int) -> ExportError:
    if exc.errno in _FULL:
        try:
            free = shutil.disk_usage(out).free
        except OSError:
            free = 0
        return ExportError(_full_message(out, free, needed, eyes_done))
    return ExportError(f"writing to {out} failed ({exc.strerror or exc}): was the USB stick pulled out? "
                       "Plug it in again and export again; files already there are whole.")
